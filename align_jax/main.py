"""Training entry point.

    python -m align_jax.main --config=configs/dpo.py --config.loss.beta=0.05 --workdir=runs/dpo

Multi-process (one process per host, or several on one CPU machine for testing):
    python -m align_jax.main ... --coordinator_address=localhost:12355 --num_processes=2 --process_id=0
"""

from __future__ import annotations

import json

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "An ml_collections config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, export, report.", required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")


def main(argv):
    del argv
    import jax

    if _COORDINATOR.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives; no effect on GPU/TPU
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from align_jax.training.config import parse_config
    from align_jax.training.loop import run
    from align_jax.training.report import write_report

    cfg = parse_config(_CONFIG.value)
    logging.info("config: %s", cfg)
    result = run(cfg, _WORKDIR.value)
    if cfg.train.report and jax.process_index() == 0:
        path = write_report(cfg, _WORKDIR.value, result)
        print(path.read_text())
    print(json.dumps({k: result[k] for k in ("final", "before")}, indent=2, default=str))


if __name__ == "__main__":
    app.run(main)
