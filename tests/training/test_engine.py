"""The training engine end to end on a tiny model with the real SmolLM2 tokenizer:
config validation, 1 vs 8 devices, determinism, NaN stop with the last good checkpoint kept,
and exact resume after SIGKILL (run in subprocesses, as a user would)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from align_jax.models import ModelConfig, init_decoder, save_hf_dir
from align_jax.models.gguf_file import smollm2_gguf_path
from align_jax.models.tokenizer import Tokenizer
from align_jax.training.checkpointing import Checkpointer, NonFiniteLossError
from align_jax.training.config import parse_config
from align_jax.training.loop import run
from align_jax.training.metrics_logging import read_metrics

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from engine_config import make_config  # noqa: E402

pytestmark = pytest.mark.slow  # engine runs, SIGKILL and two-process subprocess runs

QUESTIONS = ["What is {} plus {}?", "Name a color that is not {}.", "Is {} larger than {}?", "Spell the number {}."]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_model")
    tok = Tokenizer.from_gguf(smollm2_gguf_path())
    cfg = ModelConfig(family="llama", vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id)
    save_hf_dir(init_decoder(cfg, seed=0), folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rng = np.random.RandomState(0)
    with path.open("w") as f:
        for i in range(40):
            a, b = rng.randint(0, 50, 2)
            q = QUESTIONS[i % 4].format(a, b)
            f.write(json.dumps({"prompt": q, "chosen": f"The answer is {a + b}.", "rejected": f"I don't know, maybe {a}?"}) + "\n")
    return path


def train_losses(workdir):
    return [r["loss"] for r in read_metrics(workdir, split="train")]


def test_config_rejects_unknown_keys_and_options(tiny_model_dir, pairs_file):
    c = make_config(tiny_model_dir, pairs_file)
    c.unlock()
    c.train.stepz = 3
    with pytest.raises(KeyError, match=r"config.train has unknown key\(s\) \['stepz'\]; valid keys: .*steps"):
        parse_config(c)
    # loss names and options are checked while parsing, before any model loads
    with pytest.raises(ValueError, match="unknown option.*gamma.*valid options: beta"):
        parse_config(make_config(tiny_model_dir, pairs_file, loss__gamma=1.0))
    with pytest.raises(ValueError, match=r"unknown preference loss 'dpoo'.*did you mean 'dpo'"):
        parse_config(make_config(tiny_model_dir, pairs_file, loss__name="dpoo"))
    with pytest.raises(ValueError, match=r"unknown train.task 'preferense'.*did you mean 'preference'"):
        parse_config(make_config(tiny_model_dir, pairs_file, train__task="preferense"))
    with pytest.raises(ValueError, match="train.task='sft' uses no reference"):
        parse_config(make_config(tiny_model_dir, pairs_file, train__task="sft"))


def test_dpo_run_learns_and_same_seed_same_metrics(tiny_model_dir, pairs_file, tmp_path):
    cfg = parse_config(make_config(tiny_model_dir, pairs_file, train__steps=6, optimizer__total_steps=6))
    a = run(cfg, tmp_path / "a")
    assert a["before"]["eval/loss"] == pytest.approx(np.log(2), abs=1e-5)
    assert a["final"]["eval/loss"] < np.log(2) and a["final"]["eval/rewards/accuracies"] > 0.5
    run(cfg, tmp_path / "b")
    assert train_losses(tmp_path / "a") == train_losses(tmp_path / "b")


@pytest.mark.parametrize("layout", ["separate", "shared_prefix"])
def test_step_zero_margins_are_exactly_zero(layout, tiny_model_dir, pairs_file, tmp_path):
    """While the policy is the reference, every implicit reward is 0: the precomputed reference is
    computed in the rows the steps read (loop.reference_layout), so not even rounding tells them apart."""
    cfg = parse_config(make_config(tiny_model_dir, pairs_file, data__pair_layout=layout, train__steps=1,
                                   data__max_eval_examples=12))
    before = run(cfg, tmp_path / layout)["before"]
    assert before["eval/rewards/chosen"] == before["eval/rewards/rejected"] == before["eval/rewards/margins"] == 0.0
    assert before["eval/num_examples"] == 4.0  # a count: all held-out pairs (4 of 40), not a batch mean


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (forced CPU) devices")
def test_one_device_and_eight_devices_give_the_same_losses(tiny_model_dir, pairs_file, tmp_path):
    one = parse_config(make_config(tiny_model_dir, pairs_file))
    eight = parse_config(make_config(tiny_model_dir, pairs_file, mesh__data=2, mesh__fsdp=2, mesh__tensor=2))
    run(one, tmp_path / "one")
    run(eight, tmp_path / "eight")
    np.testing.assert_allclose(train_losses(tmp_path / "eight"), train_losses(tmp_path / "one"), rtol=1e-4)


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    """A corrupt precomputed reference value (NaN) for one training example poisons the loss of
    the step that draws it: the run must stop there, with the previous step's checkpoint intact."""
    from align_jax.training import loop

    real = loop.cached_reference_logps

    def corrupt(model, source, examples, kind, cache_dir, **layout):
        values, path, hit = real(model, source, examples, kind, cache_dir, **layout)
        if len(examples) > 8:  # the train split
            values = {k: v.copy() for k, v in values.items()}
            values["reference_chosen_logps"][5] = np.nan
        return values, path, hit

    monkeypatch.setattr(loop, "cached_reference_logps", corrupt)
    cfg = parse_config(make_config(tiny_model_dir, pairs_file, train__steps=12, train__checkpoint_every=1,
                                   train__eval_every=100, optimizer__total_steps=12))
    with pytest.raises(NonFiniteLossError, match="step") as err:
        run(cfg, tmp_path / "nan")
    bad_step = err.value.step
    assert bad_step >= 2, "the corrupt example must not be in the first batch for this test"
    ckpt = Checkpointer(tmp_path / "nan" / "checkpoints")
    assert ckpt.latest_step() == bad_step - 1
    state, _ = ckpt.restore(abstract_state=None)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))
    losses = train_losses(tmp_path / "nan")
    assert len(losses) == bad_step - 1 and np.isfinite(losses).all()


def _main(config_file, workdir):
    return [sys.executable, "-m", "align_jax.main", f"--config={config_file}", f"--workdir={workdir}"]


def test_sigkill_then_same_command_resumes_exactly(tiny_model_dir, pairs_file, tmp_path, subprocess_env):
    config_file = tmp_path / "cfg.py"
    config_file.write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom engine_config import make_config\n"
        "def get_config():\n    return make_config(%r, %r, train__steps=8, optimizer__total_steps=8, train__checkpoint_every=2)\n"
        % (str(Path(__file__).parent), str(tiny_model_dir), str(pairs_file))
    )
    env = subprocess_env(1)
    subprocess.run(_main(config_file, tmp_path / "full"), env=env, check=True, capture_output=True, cwd=REPO)
    cmd = _main(config_file, tmp_path / "killed")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(r["step"] >= 5 for r in read_metrics(tmp_path / "killed", split="train")) if (tmp_path / "killed" / "metrics.jsonl").exists() else False:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Killed mid-run: the step-4 save is asynchronous and may not have finished at step 5, so the
    # last complete checkpoint is 2, 4 or 6 (never 8, which would mean the run had ended).
    assert Checkpointer(tmp_path / "killed" / "checkpoints").latest_step() in (2, 4, 6)
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=REPO)

    def trace(workdir):
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(workdir)]

    assert trace(tmp_path / "killed") == trace(tmp_path / "full")


def test_two_processes_match_one_process(tiny_model_dir, pairs_file, tmp_path, subprocess_env):
    """Two processes on localhost (gloo collectives, 2 CPU devices each, a 4-way fsdp mesh across
    them, per-host data slices) give the single-device losses, and export a whole model."""
    config_file = tmp_path / "cfg.py"
    config_file.write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom engine_config import make_config\n"
        "def get_config():\n    return make_config(%r, %r, mesh__fsdp=-1, train__export_hf=True)\n"
        % (str(Path(__file__).parent), str(tiny_model_dir), str(pairs_file))
    )
    single = parse_config(make_config(tiny_model_dir, pairs_file))
    run(single, tmp_path / "single")
    env = subprocess_env(2)
    port = 20000 + os.getpid() % 20000
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "align_jax.main", f"--config={config_file}", f"--workdir={tmp_path / 'multi'}",
             f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][-3000:] + outputs[1][-3000:]
    np.testing.assert_allclose(train_losses(tmp_path / "multi"), train_losses(tmp_path / "single"), rtol=1e-4)
    assert (tmp_path / "multi" / "export" / "model.safetensors").exists()
