"""Training entry point.

    python -m align_jax.main --config=configs/dpo.py --config.loss.beta=0.05 --workdir=runs/dpo

Every config key is set with ``--config.<section>.<key>=value`` (``loss.*`` takes any option of the
chosen objective). A key that does not exist, an unknown ``loss.name`` or loss option and a bad value
each fail in one line before anything loads; ``--dry_run`` stops after that check and prints the
parsed config. Ctrl-C stops a run with the command that resumes it from its last checkpoint.
absl, JAX and Orbax INFO lines are hidden unless ``--verbosity`` (``-v``) is given; the progress line
and align_jax's own log lines always show.

Multi-process (one process per host, or several on one CPU machine for testing):
    python -m align_jax.main ... --coordinator_address=localhost:12355 --num_processes=2 --process_id=0
"""

from __future__ import annotations

import dataclasses
import json
import logging as py_logging
import pathlib
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from align_jax.cli import one_line, parse_flags


def define_config_flag(flag_values: flags.FlagValues = flags.FLAGS, sys_argv: list[str] | None = None):
    """``--config`` and its ``--config.<path>`` overrides. Not locked here: configs/common.py locks
    every section but the open ones (loss, data.fields), so a new loss option is accepted and a
    misspelt key elsewhere fails while the flags are parsed."""
    return config_flags.DEFINE_config_file("config", None, "An ml_collections config file (configs/*.py).",
                                           flag_values=flag_values, lock_config=False, accept_new_attributes=True,
                                           sys_argv=sys_argv)


_CONFIG = define_config_flag()
flags.mark_flag_as_required("config")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, export, report.", required=True)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Check the config, print it parsed, and exit without loading anything.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")

CHECKPOINTS = "checkpoints"  # under the workdir, as align_jax.training.loop.run writes them
INTERRUPTED = 130  # the shell's exit status for SIGINT
_PACKAGE_DIR = str(pathlib.Path(__file__).parent)


def quiet_logs() -> None:
    """Below WARNING, only align_jax's own records pass unless --verbosity asks for more (Orbax
    logs whole CheckpointManagerOptions at INFO; absl and JAX are nearly as chatty)."""
    if not flags.FLAGS["verbosity"].present:
        logging.get_absl_handler().addFilter(warning_or_own)


def warning_or_own(record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def last_checkpoint(workdir: str | pathlib.Path) -> int | None:
    """The newest complete checkpoint step under ``workdir``: Orbax renames a step's directory to
    ``<step>`` only once it is fully written (align_jax/training/checkpointing.py)."""
    directory = pathlib.Path(workdir) / CHECKPOINTS
    steps = [int(p.name) for p in directory.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(steps, default=None)


def interrupted_message(workdir: str | pathlib.Path, argv: list[str]) -> str:
    step = last_checkpoint(workdir)
    where = "none yet" if step is None else f"step {step}"
    command = shlex.join(["python", "-m", "align_jax.main", *argv[1:]])
    return (f"interrupted; last checkpoint: {where} ({pathlib.Path(workdir) / CHECKPOINTS}); "
            f"run the same command again to resume: {command}")


def main(argv):
    del argv
    quiet_logs()
    from align_jax.data.sources import DataError
    from align_jax.training.config import parse_config

    try:
        cfg = parse_config(_CONFIG.value)  # before anything is loaded: a bad config fails in seconds
    except (KeyError, ValueError) as e:
        sys.exit(one_line(e))
    if _DRY_RUN.value:
        print(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
        return
    try:
        _train(cfg)
    except KeyboardInterrupt:
        print(interrupted_message(_WORKDIR.value, sys.argv), file=sys.stderr)
        sys.exit(INTERRUPTED)
    except DataError as e:
        hint = "; to skip malformed rows (counted and logged): --config.data.on_error=skip"
        sys.exit(one_line(e) + (hint if cfg.data.on_error == "raise" else ""))


def _train(cfg) -> None:
    import jax

    if _COORDINATOR.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives; no effect on GPU/TPU
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from align_jax.training.loop import run
    from align_jax.report import write_report

    logging.info("config: %s", cfg)
    result = run(cfg, _WORKDIR.value)
    if cfg.train.report and jax.process_index() == 0:
        path = write_report(cfg, _WORKDIR.value, result)
        print(path.read_text())
    print(json.dumps({k: result[k] for k in ("final", "before")}, indent=2, default=str))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
