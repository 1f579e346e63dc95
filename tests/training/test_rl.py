"""The online RL loop (train.task="grpo") on the tiny character model: the loss and its gradient
against NumPy, sampler log-probs against the trainer's, the toy task learning, 1 vs 8 devices,
rewards that fail, and exact resume after SIGKILL."""

import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from align_jax import rewards as R
from align_jax.data.records import PromptRecord
from align_jax.models import load_model
from align_jax.objectives.policy_gradient import POLICY_LOSSES
from align_jax.parallel.mesh import make_mesh
from align_jax.sampling.decoding import SamplingParams
from align_jax.training.checkpointing import Checkpointer
from align_jax.training.config import parse_config
from align_jax.training.loop import run
from align_jax.training.metrics_logging import read_metrics
from align_jax.training.rl_loop import OnlineRL, PromptSet, group_advantages, overlong_penalty
from align_jax.training.tasks.online import completion_logps, policy_gradient_loss

pytestmark = pytest.mark.slow  # training runs and a SIGKILL subprocess run

REPO = Path(__file__).resolve().parents[2]
grpo_toy_config = runpy.run_path(str(REPO / "configs" / "grpo_toy.py"))["get_config"]


def toy_config(**overrides):
    c = grpo_toy_config()
    c.train.report = False
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-chars")


def _rollout(toy, temperature):
    cfg = parse_config(toy_config(rl__prompts_per_step=4, rl__group_size=4, rl__max_new_tokens=12,
                                  rl__temperature=temperature))
    from align_jax.training.loop import build_state

    mesh = make_mesh(1, 1, 1)
    spec, state, state_sh = build_state(cfg, toy, mesh, task_loss=None)
    records = [PromptRecord(f"Write the letter {c}.", {"letter": c}) for c in "abab"]
    prompts = PromptSet(records, toy)
    engine = OnlineRL(cfg, toy, mesh, spec, state_sh, prompts.width)
    params = SamplingParams(temperature=temperature, n=4, max_new_tokens=12)
    return jax.device_get(engine.rollout(state, prompts.tokens, prompts.mask, jax.random.key(3), params))


@pytest.fixture(scope="module")
def rollout(toy):
    """One sampled rollout batch of the toy model (4 prompts x 4 samples, 12 new tokens)."""
    return _rollout(toy, 1.0)


def test_sampler_logprobs_equal_the_trainers(toy, rollout):
    """fp32: the sampler's per-token log-probs are the teacher-forced ones, so the first epoch's
    importance ratio is 1 (the sampler/trainer mismatch of vLLM-based trainers does not exist)."""
    mask = rollout["completion_mask"]
    assert mask.sum() > 20 and (mask.sum(1) > 0).all()
    logps, _ = completion_logps(toy.model, {k: jnp.asarray(v) for k, v in rollout.items()})
    diff = np.abs(np.asarray(logps) - rollout["sampler_logps"]) * mask
    assert diff.max() < 1e-4
    ratio = np.exp((np.asarray(logps) - rollout["sampler_logps"]) * mask)
    assert np.abs(ratio - 1).max() < 1e-4
    # at another temperature the trainer scores softmax(logits / T), the distribution sampled from
    tempered = _rollout(toy, 0.7)
    logps, _ = completion_logps(toy.model, {k: jnp.asarray(v) for k, v in tempered.items()}, 0.7)
    assert (np.abs(np.asarray(logps) - tempered["sampler_logps"]) * tempered["completion_mask"]).max() < 1e-4


def _numpy_ppo(logits, tokens, width, mask, old, adv, eps_low, eps_high):
    """Token-mean clipped surrogate from full logits, in float64 NumPy."""
    m = mask.shape[1]
    lg = logits[:, width - 1 : width - 1 + m].astype(np.float64)
    lg = lg - lg.max(-1, keepdims=True)
    logp_all = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    logp = np.take_along_axis(logp_all, tokens[:, width:][..., None], -1)[..., 0]
    ratio = np.exp(logp - old)
    a = adv[:, None]
    per_token = np.maximum(-a * ratio, -a * np.clip(ratio, 1 - eps_low, 1 + eps_high))
    return (per_token * mask).sum() / mask.sum(), logp, ratio


def test_policy_loss_and_gradient_match_numpy(toy, rollout):
    """On one rollout batch with old log-probs moved off the policy (so some ratios clip): the
    loss equals a NumPy PPO/GRPO computation, its gradient w.r.t. the log-probs equals the closed
    form, and the full-model gradient matches finite differences along a random direction."""
    rng = np.random.default_rng(0)
    mask = rollout["completion_mask"].astype(np.float32)
    old = (rollout["sampler_logps"] + rng.normal(0, 0.3, mask.shape)).astype(np.float32) * mask
    adv = rng.normal(0, 1, mask.shape[0]).astype(np.float32)
    batch = {**{k: jnp.asarray(v) for k, v in rollout.items()}, "old_logps": jnp.asarray(old),
             "advantages": jnp.asarray(adv), "completion_mask": jnp.asarray(mask)}
    loss_fn = POLICY_LOSSES.build("ppo", clip_eps_low=0.2, clip_eps_high=0.28, aggregation="token-mean")
    loss, metrics, weight = policy_gradient_loss(toy.model, batch, loss_fn=loss_fn)
    width = rollout["tokens"].shape[1] - mask.shape[1]
    logits = np.asarray(toy.model(batch["tokens"], batch["positions"], batch["segment_ids"]).logits)
    expected, logp, ratio = _numpy_ppo(logits, rollout["tokens"], width, mask, old, adv, 0.2, 0.28)
    assert float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert float(weight) == mask.sum()
    clipped = ((adv[:, None] > 0) & (ratio > 1.28)) | ((adv[:, None] < 0) & (ratio < 0.8))
    assert 0 < (clipped * mask).sum() < mask.sum(), "the test needs both clipped and unclipped tokens"

    # d loss / d logp: -A r / N where the unclipped term is active, 0 where clipping holds it.
    g = jax.grad(lambda lp: loss_fn(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask))[0])(
        jnp.asarray(logp, jnp.float32))
    closed = np.where(clipped, 0.0, -adv[:, None] * ratio) * mask / mask.sum()
    np.testing.assert_allclose(np.asarray(g), closed, atol=1e-6)

    graphdef, state = nnx.split(toy.model)

    def loss_of(s):
        return policy_gradient_loss(nnx.merge(graphdef, s), batch, loss_fn=loss_fn)[0]

    grads = jax.grad(loss_of)(state)
    direction = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 1, x.shape), x.dtype), state)
    norm = np.sqrt(sum(float(jnp.vdot(d, d)) for d in jax.tree.leaves(direction)))
    direction = jax.tree.map(lambda d: d / norm, direction)  # unit length: small steps stay off the clip kinks
    analytic = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    h = 1e-2
    shifted = lambda sign: jax.tree.map(lambda x, d: x + sign * h * d, state, direction)  # noqa: E731
    numeric = (float(loss_of(shifted(1))) - float(loss_of(shifted(-1)))) / (2 * h)
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-4)


def test_group_advantages_dynamic_sampling_and_overlong():
    rewards = np.array([1.0, 0.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5], np.float32)
    valid = np.array([True, True, True, False, True, True, True, True])
    adv, keep, dropped = group_advantages(rewards, valid, 4, "grpo", dynamic_sampling=True)
    r = np.array([1.0, 0.0, 1.0])
    np.testing.assert_allclose(adv[:3], (r - r.mean()) / (r.std(ddof=1) + 1e-6), rtol=1e-5)
    assert adv[3] == 0 and np.all(adv[4:] == 0)
    np.testing.assert_array_equal(keep, [1, 1, 1, 0, 0, 0, 0, 0])  # invalid row; all-equal group
    assert dropped == 0.5
    np.testing.assert_allclose(overlong_penalty(np.array([4, 12, 14, 16]), 16, 4, 1.0), [0, 0, -0.5, -1.0])


def test_a_failing_reward_is_recorded_not_zeroed():
    records = [PromptRecord("q", {"letter": "a"}), PromptRecord("q", {})]
    scores = R.score(("toy_letter",), R.build(["toy_letter"]), records, ["aab", "aaa"])
    assert scores.values[0, 0] == pytest.approx(2 / 3)
    assert np.isnan(scores.values[1, 0]) and scores.failed[1, 0] and not scores.ok[1]
    assert "KeyError" in scores.errors[0] and "completion 1" in scores.errors[0]


def test_bad_reward_name_and_empty_prompts_fail_before_loading(tmp_path):
    with pytest.raises(KeyError, match="unknown reward 'toy_leter'.*toy_letter"):
        parse_config(toy_config(rl__rewards="toy_leter"))
    with pytest.raises(ValueError, match="needs a reference"):
        parse_config(toy_config(rl__kl_coef=0.1))
    with pytest.raises(ValueError, match="precomputed"):
        parse_config(toy_config(reference__mode="precomputed"))
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("")
    cfg = parse_config(toy_config(data__source="prompt", data__train_path=str(empty), model__name="no-such-model"))
    with pytest.raises(ValueError, match="no prompt records"):  # the data fails first: the model name is never read
        run(cfg, tmp_path / "run")


def test_grpo_toy_learns_and_eight_devices_match_one(tmp_path):
    """configs/grpo_toy.py raises its reward from ~0 to ~1; the first steps on a 2x2x2 mesh
    give the same rewards and losses as one device."""
    result = run(parse_config(toy_config()), tmp_path / "one")
    assert result["before"]["eval/reward"] < 0.1
    assert result["final"]["eval/reward"] > 0.9
    rows = read_metrics(tmp_path / "one", split="train")
    assert rows[-1]["reward"] > 0.9 and rows[0]["reward"] < 0.1
    assert all(abs(r["rl/ratio_mean_epoch0"] - 1) < 1e-4 for r in rows)

    run(parse_config(toy_config(train__steps=3, mesh__data=2, mesh__fsdp=2, mesh__tensor=2, train__eval_every=100,
                                train__checkpoint_every=100)), tmp_path / "eight")
    eight = read_metrics(tmp_path / "eight", split="train")
    np.testing.assert_allclose([r["reward"] for r in eight], [r["reward"] for r in rows[:3]], rtol=1e-5)
    np.testing.assert_allclose([r["loss"] for r in eight], [r["loss"] for r in rows[:3]], rtol=1e-3, atol=1e-6)

    # a watched reward (weight 0) that fails on every completion (the toy prompts carry no answer)
    # is logged as failed and changes neither the rewards nor the updates
    run(parse_config(toy_config(train__steps=3, train__eval_every=100, train__checkpoint_every=100,
                                rl__rewards="toy_letter,exact_match", rl__reward_weights="1,0")), tmp_path / "watched")
    watched = read_metrics(tmp_path / "watched", split="train")
    assert [r["reward"] for r in watched] == [r["reward"] for r in rows[:3]]
    assert [r["loss"] for r in watched] == [r["loss"] for r in rows[:3]]
    assert all(np.isnan(r["reward/exact_match"]) and r["rl/reward_failures"] == 0 for r in watched)


def test_sigkill_mid_run_then_same_command_resumes_exactly(tmp_path, subprocess_env):
    config_file = tmp_path / "cfg.py"
    config_file.write_text(
        "import runpy\n"
        "def get_config():\n    c = runpy.run_path(%r)['get_config']()\n    c.train.update(steps=8, checkpoint_every=2, eval_every=4, report=False)\n"
        "    c.rl.epochs = 2\n    c.rl.minibatches = 2\n    return c\n" % str(REPO / "configs" / "grpo_toy.py")
    )
    env = subprocess_env(1)
    cmd = lambda w: [sys.executable, "-m", "align_jax.main", f"--config={config_file}", f"--workdir={w}"]  # noqa: E731
    subprocess.run(cmd(tmp_path / "full"), env=env, check=True, capture_output=True, cwd=REPO)
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any(r["step"] >= 5 for r in read_metrics(tmp_path / "killed", split="train")):
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert Checkpointer(tmp_path / "killed" / "checkpoints").latest_step() in (2, 4, 6)
    subprocess.run(cmd(tmp_path / "killed"), env=env, check=True, capture_output=True, cwd=REPO)

    def trace(workdir):
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(workdir)]

    assert trace(tmp_path / "killed") == trace(tmp_path / "full")
    assert json.loads((tmp_path / "killed" / "result.json").read_text())["before"] is not None


def test_ppo_with_a_value_head_learns_and_lora_rollouts_read_the_merged_policy(tmp_path):
    """configs/ppo.py (value head, GAE, KL to a frozen reference in the reward) learns the toy
    task; with LoRA the sampler reads the adapters merged into the base: ratio 1 at epoch 0, and
    the base is the KL reference (no copy)."""
    ppo = runpy.run_path(str(REPO / "configs" / "ppo.py"))["get_config"]()
    ppo.train.update(steps=10, eval_every=100, checkpoint_every=100, report=False)
    result = run(parse_config(ppo), tmp_path / "ppo")
    rows = read_metrics(tmp_path / "ppo", split="train")
    assert rows[-1]["reward"] > 0.8 and result["final"]["eval/reward"] > 0.8
    assert all(np.isfinite(r["vf/loss"]) and r["rl/kl_to_reference"] >= -1e-6 for r in rows)

    lora = toy_config(lora__rank=8, lora__alpha=16.0, rl__kl_coef=0.05, train__steps=3, train__eval_every=100,
                      train__checkpoint_every=100)
    run(parse_config(lora), tmp_path / "lora")
    rows = read_metrics(tmp_path / "lora", split="train")
    assert all(abs(r["rl/ratio_mean_epoch0"] - 1) < 1e-4 for r in rows)
    assert rows[0]["rl/kl_to_reference"] == pytest.approx(0.0, abs=1e-6)  # adapters start at zero
    assert rows[-1]["rl/kl_to_reference"] > 0


def test_grpo_toy_learns_with_par_rewards_relative_to_the_reference(tmp_path):
    """rl.reward_transform='par' (arXiv:2502.18770): the frozen reference samples 4 completions per
    prompt each step; the policy's reward is its mean win probability against them, in (0, 1).
    The policy learns past the reference, whose own reward stays where the run started."""
    cfg = toy_config(rl__reward_transform="par", rl__reference_samples=4, reference__mode="frozen",
                     train__steps=20, train__eval_every=100, train__checkpoint_every=100)
    run(parse_config(cfg), tmp_path / "par")
    rows = read_metrics(tmp_path / "par", split="train")
    assert all(0 < r["rl/transformed_reward"] < 1 for r in rows)
    assert max(r["rl/reference_reward"] for r in rows) < 0.1  # the frozen reference does not learn
    assert rows[-1]["reward/toy_letter"] > 0.5 > rows[0]["reward/toy_letter"]
    # rewards are in [0, 1] and the reference's near 0, so PAR tops out near sigmoid(1) = 0.73
    assert rows[0]["rl/transformed_reward"] < 0.55 < 0.65 < rows[-1]["rl/transformed_reward"] < 1 / (1 + np.exp(-1)) + 1e-6
