"""The README's own jobs, each run once on a tiny model (no real weights), so none breaks silently:
`make demo` (align_jax.main on configs/dpo_demo.py: one step, its evaluations and report), the
Generation command (python -m align_jax.generate), an evaluation suite (align_jax.evaluate's
runner on configs/eval/constraints_ood.py) and `make chat` (align_jax.chat_demo).

Every job is the shipped config or entry point with only its sizes shrunk. main and chat_demo run
in-process on the global absl flags; generate runs as the README's command in a subprocess (its
flags --model / --max_new_tokens share names with chat_demo's, so both cannot be defined in one
process); the evaluation calls the runner align_jax.evaluate.main calls (its flags --config /
--workdir share names with main's; `python -m align_jax.evaluate` itself runs in
tests/evals/test_runner.py)."""

import json
import math
import pathlib
import runpy
import subprocess
import sys

import pytest
from absl import flags

from align_jax import main as cli

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))
from test_engine import tiny_model_dir  # noqa: E402,F401  (a fixture: the tiny model with SmolLM2's tokenizer)

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def parse_flags(monkeypatch):
    """``parse(argv)``: the global flags parsed from ``argv`` (unparsed again afterwards)."""

    def parse(argv):
        monkeypatch.setattr(sys, "argv", argv)
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)

    monkeypatch.setattr(cli, "quiet_logs", lambda: None)  # no filter left on the process's handler
    yield parse
    flags.FLAGS.unparse_flags()


def _demo_argv(tiny_model_dir, workdir):
    """`make demo`'s command, shrunk to one step on the tiny model."""
    overrides = dict(model__path=tiny_model_dir, mesh__fsdp=1, train__steps=1, train__eval_every=1,
                     train__checkpoint_every=1, optimizer__warmup_steps=0, data__batch_size=2,
                     data__max_train_examples=2, data__max_eval_examples=2)
    return [str(REPO / "align_jax" / "main.py"), f"--config={REPO / 'configs' / 'dpo_demo.py'}",
            f"--workdir={workdir}", *(f"--config.{k.replace('__', '.')}={v}" for k, v in overrides.items())]


@pytest.mark.slow  # ~27 s on 2 cores: the reference pass, a step, two evaluations, the report's greedy answers
def test_make_demo_runs_one_step_with_its_evaluations_and_report(tiny_model_dir, parse_flags, monkeypatch,
                                                                   tmp_path, capsys):
    import align_jax.report as report
    from align_jax.training.metrics_logging import read_metrics

    monkeypatch.setattr(report, "COMPLIANCE_PROMPTS", 2)  # greedy answers per held-out split, before and after
    workdir = tmp_path / "demo"
    parse_flags(_demo_argv(tiny_model_dir, workdir))
    cli.main([])
    train = read_metrics(workdir, split="train")
    assert [r["step"] for r in train] == [1] and math.isfinite(train[0]["loss"])
    evals = read_metrics(workdir, split="eval")
    assert [r["step"] for r in evals] == [0, 1]  # before training and after the step
    assert all(math.isfinite(r["eval/loss"]) for r in evals)
    text = (workdir / "report.md").read_text()
    assert "## Held-out metrics" in text and "## Instruction compliance of greedy answers" in text
    compliance = json.loads((workdir / "compliance.json").read_text())
    assert sorted(compliance) == ["test", "test_ood"]
    printed = capsys.readouterr().out
    assert '"final"' in printed and '"before"' in printed


def test_readme_generation_command(tiny_model_dir, subprocess_env, tmp_path):
    """README "## Generation": python -m align_jax.generate --prompt=... --temperature=0 --max_new_tokens=...,
    on a model folder (--model_path) instead of the registered model."""
    out = tmp_path / "out.jsonl"
    prompts = ["What is the capital of France?", "Name a color."]
    proc = subprocess.run(
        [sys.executable, "-m", "align_jax.generate", f"--model_path={tiny_model_dir}",
         *(f"--prompt={p}" for p in prompts), "--temperature=0", "--max_new_tokens=4", "--n=2",
         f"--output_jsonl={out}"],
        cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt_index"], r["sample_index"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in rows:
        assert 1 <= len(r["token_ids"]) <= 4 and r["finish_reason"] in ("eos", "length", "stop")
        assert math.isfinite(r["model_logprob"])
    assert rows[0]["token_ids"] == rows[1]["token_ids"]  # greedy: both samples of a prompt agree
    assert f"wrote 4 completions to {out}" in proc.stderr


def test_evaluation_suite_on_a_model_folder(tiny_model_dir, tmp_path):
    """configs/eval/constraints_ood.py through align_jax.evaluate's runner, with --config.model.path."""
    from align_jax.evals.runner import evaluate

    c = runpy.run_path(str(REPO / "configs" / "eval" / "constraints_ood.py"))["get_config"]()
    c.model.path = str(tiny_model_dir)
    c.splits = ("in_distribution", "ood_unseen_topics")
    c.limit, c.max_new_tokens, c.n_resamples = 2, 8, 20
    results = evaluate(c, tmp_path / "eval", progress=False)
    assert results["suite"] == "constraints_ood" and results["n"] == 4
    assert results["metrics"]
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["n"] == 4 and saved["metrics"] == results["metrics"]
    assert len((tmp_path / "eval" / "examples.jsonl").read_text().splitlines()) == 4


def test_make_chat_answers_every_question(tiny_model_dir, parse_flags, monkeypatch, capsys):
    """`make chat` (python -m align_jax.chat_demo) with the tiny model in place of the registered one
    (chat_demo takes a registered name only)."""
    from align_jax import chat_demo
    from align_jax.models import load_model

    monkeypatch.setattr(chat_demo, "load_model", lambda name: load_model(None, tiny_model_dir))
    # main's --config / --workdir are required wherever align_jax.main is imported
    parse_flags(["chat_demo", f"--config={REPO / 'configs' / 'dpo_demo.py'}", "--workdir=unused",
                 "--max_new_tokens=4"])
    chat_demo.main([])
    out = capsys.readouterr().out
    assert out.count("\nuser: ") == len(chat_demo.QUESTIONS)
    assert out.count("\nassistant: ") == len(chat_demo.QUESTIONS)
    assert "compile + generate:" in out and "\ngenerate:" in out
