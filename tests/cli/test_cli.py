"""The training command line (align_jax.main): config keys set from flags, errors in one line before
anything loads, Ctrl-C, quiet logs; the off-terminal progress line; the report's curves."""

import dataclasses
import io
import json
import logging
import os
import pathlib
import runpy
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from ml_collections import config_dict

from align_jax import main as cli
from align_jax.training.metrics_logging import ProgressBar

pytestmark = pytest.mark.slow  # align_jax.main run in subprocesses

REPO = pathlib.Path(__file__).resolve().parents[2]
TRAINING_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.py") if p.name != "common.py")
NOWHERE = "/nonexistent/model"  # loading it would fail with a different error


def _main(*args, timeout=120):
    """Runs ``python -m align_jax.main``; returns (exit status, stdout, stderr lines, seconds)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "align_jax.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr.splitlines(), time.monotonic() - start


def _leaves(config, prefix=""):
    for key in config.keys():
        value = config[key]
        if isinstance(value, config_dict.ConfigDict) and len(value):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", config.get_type(key), value


def _another(kind, value):
    """A value of ``kind`` different from ``value`` (which may be None)."""
    if kind is str:
        return "set-from-flag"
    if kind is bool:
        return not value
    return {int: 1, float: 0.5}[kind] + (value or 0)


def _parse(argv):
    """main's --config flag, parsed from ``argv`` on fresh flag values."""
    flag_values = flags.FlagValues()
    holder = cli.define_config_flag(flag_values, sys_argv=argv)
    flag_values(argv)
    return holder


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_every_key_of_every_config_is_settable_from_flags(path, tmp_path):
    """Each leaf (None defaults included) parsed from ``--config.<key>=...`` by main's own config flag."""
    wanted, argv = {}, ["x", f"--config={path}"]
    for key, kind, value in _leaves(_parse(argv).value):  # the config as the file builds it
        if kind is config_dict.ConfigDict:  # an empty mapping (data.fields): one entry
            key, kind, value = f"{key}.prompt", str, None
        new = _another(kind, value)
        wanted[key] = new
        argv.append(f"--config.{key}={str(new).lower() if kind is bool else new}")
    holder = _parse(argv)
    for key, value in wanted.items():
        got = holder.value
        for part in key.split("."):
            got = got[part]
        assert got == value, key


def test_base_config_declares_every_key_of_the_run_config():
    """So every key the engine reads can be set from the command line; and every config parses."""
    from align_jax.training.config import _SECTIONS, parse_config

    from align_jax.rewards.model import RewardModelError

    for path in TRAINING_CONFIGS:
        config = _parse(["x", f"--config={path}"]).value
        if str(config.rl.rewards).startswith("rm:"):  # a reward model an experiment writes first (ppo_hh)
            folder = config.rl.rewards[3:].split("@")[0]
            if not pathlib.Path(folder).is_dir():
                with pytest.raises(RewardModelError, match=folder):
                    parse_config(config)
                config.rl.rewards = "toy_letter"  # the rest of the config must still parse
        parse_config(config)
    base = runpy.run_path(str(REPO / "configs" / "common.py"))["base_config"]()
    for name, section in _SECTIONS.items():
        assert sorted(base[name].keys()) == sorted(f.name for f in dataclasses.fields(section)), name


def test_none_default_keys_and_new_loss_options_reach_the_run_config(tmp_path):
    rc, out, err, _ = _main(
        "--config=configs/dpo_demo.py", f"--workdir={tmp_path}", "--dry_run",
        f"--config.model.path={NOWHERE}", "--config.data.train_path=/data/train.jsonl",
        "--config.data.eval_path=/data/eval.jsonl", "--config.reference.cache_dir=/cache", "--config.data.format=jsonl",
        "--config.data.fields.prompt=question", "--config.loss.name=simpo", "--config.loss.gamma=1.0",
    )
    assert rc == 0, err
    cfg = json.loads(out)
    assert cfg["model"]["path"] == NOWHERE
    assert (cfg["data"]["train_path"], cfg["data"]["eval_path"]) == ("/data/train.jsonl", "/data/eval.jsonl")
    assert (cfg["reference"]["cache_dir"], cfg["data"]["format"]) == ("/cache", "jsonl")
    assert cfg["data"]["fields"] == [["prompt", "question"]]
    assert cfg["loss_name"] == "simpo" and dict(cfg["loss_options"])["gamma"] == 1.0
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_unset_none_keys_parse_to_none(tmp_path):
    rc, out, err, _ = _main("--config=configs/dpo_demo.py", f"--workdir={tmp_path}", "--dry_run")
    assert rc == 0, err
    cfg = json.loads(out)
    assert cfg["model"]["path"] is None and cfg["data"]["eval_path"] is None and cfg["reference"]["cache_dir"] is None


@pytest.mark.parametrize("override, fragments, flags_only", [
    ("--config.train.stepz=5", ("config.train has unknown key(s) ['stepz']; valid keys: [", "(did you mean 'steps'?)"), True),
    ("--config.trian.steps=5", ("config has unknown key(s) ['trian']; valid keys: [", "(did you mean 'train'?)"), True),
    ("--config.loss.name=dpoo", ("unknown preference loss 'dpoo'",), False),
    ("--config.loss.betaa=0.2", ("got unknown option(s) ['betaa']",), False),
])
def test_config_errors_are_one_line_before_the_model_loads(override, fragments, flags_only, tmp_path):
    rc, _, err, seconds = _main("--config=configs/dpo_demo.py", f"--workdir={tmp_path / 'run'}",
                                f"--config.model.path={NOWHERE}", override)
    assert rc == 1 and len(err) == 1 and all(f in err[0] for f in fragments), err
    assert not (tmp_path / "run").exists()  # run() never started: it creates the workdir first
    if flags_only:
        assert seconds < 10  # refused while the flags are parsed: no JAX import


@pytest.fixture
def parsed_flags(monkeypatch, tmp_path):
    """Global flags parsed as `python -m align_jax.main --config=configs/dpo_demo.py --workdir=...`."""
    argv = [str(REPO / "align_jax" / "main.py"), f"--config={REPO / 'configs' / 'dpo_demo.py'}",
            f"--workdir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(cli, "quiet_logs", lambda: None)  # no filter left on the process's handler
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    yield tmp_path / "run"
    flags.FLAGS.unparse_flags()


def test_ctrl_c_names_the_last_checkpoint_and_the_resume_command(parsed_flags, monkeypatch, capsys):
    import align_jax.training.loop as loop

    for name in ("4", "8", "12.orbax-checkpoint-tmp-1733"):  # 12: a save cut short, not a checkpoint
        (parsed_flags / "checkpoints" / name).mkdir(parents=True)

    def interrupted_run(cfg, workdir):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "run", interrupted_run)
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 130
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"interrupted; last checkpoint: step 8 ({parsed_flags / 'checkpoints'}); run the same command again to "
        f"resume: python -m align_jax.main --config={REPO / 'configs' / 'dpo_demo.py'} --workdir={parsed_flags}"
    ]


def test_malformed_rows_name_the_skip_option(parsed_flags, monkeypatch):
    import align_jax.training.loop as loop
    from align_jax.data.sources import DataError

    def bad_data(cfg, workdir):
        raise DataError("pairs.jsonl, line 3: missing field: 'chosen'")

    monkeypatch.setattr(loop, "run", bad_data)
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == ("pairs.jsonl, line 3: missing field: 'chosen'; to skip malformed rows "
                                "(counted and logged): --config.data.on_error=skip")


def test_last_checkpoint_agrees_with_the_checkpointer(tmp_path):
    from align_jax.training.checkpointing import Checkpointer

    assert cli.last_checkpoint(tmp_path) is None
    with Checkpointer(tmp_path / cli.CHECKPOINTS, async_save=False) as ckpt:
        for step in (2, 4):
            ckpt.save(step, {"w": np.zeros(3, np.float32)})
        assert cli.last_checkpoint(tmp_path) == ckpt.latest_step() == 4


def test_quiet_logs_keep_warnings_and_align_jax_lines():
    def record(path, level):
        return logging.LogRecord("absl", level, path, 1, "msg", None, None)

    orbax = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    assert not cli.warning_or_own(record(orbax, logging.INFO))
    assert cli.warning_or_own(record(orbax, logging.WARNING))
    assert cli.warning_or_own(record(str(REPO / "align_jax" / "training" / "loop.py"), logging.INFO))


def test_progress_off_terminal_prints_a_line_every_30_seconds(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    out, times = io.StringIO(), iter(np.arange(0.0, 100.0, 0.5))  # StringIO is not a TTY
    bar = ProgressBar(100, file=out, clock=lambda: next(times))  # starts at 0 s, then 2 steps/s
    for step in range(1, 101):
        bar.update(step, {"loss": 0.5, "perf/tokens_per_sec": 12345.6, "grad_norm": 1.0})
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["1/100", "61/100", "100/100"]  # first, +30 s, last
    assert lines[1] == ("train step 61/100 (61%) loss=0.5000 | 2 step/s | 12,346 tok/s | elapsed 0:00:30 | "
                        "ETA 0:00:20")


def test_report_draws_evaluations_as_markers_and_training_as_lines():
    from align_jax.report import curves_figure

    rows = [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 21)]
    rows += [{"step": s, "split": "eval", "eval/loss": 1.0 / (s + 1)} for s in (0, 10, 20)]
    (ax,) = curves_figure(rows).axes
    train, evals = ax.get_lines()
    assert train.get_marker() in ("None", None, "") and train.get_linestyle() == "-"
    assert evals.get_marker() == "o" and len(evals.get_xdata()) == 3
    assert evals.get_linewidth() < train.get_linewidth()
