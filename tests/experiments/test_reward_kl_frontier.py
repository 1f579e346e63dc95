"""experiments/reward_kl_frontier.py on the smallest sizes: the KL of the reference against itself is
0, best-of-N's reward grows with N and its measured KL stays below the closed form (which it meets
when rewards never tie), DPO pairs are ranked by the reward, and the whole script runs end to end."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import align_jax.main  # noqa: F401  (owns --workdir: importing the script must define no flags; CI ran them in one process)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "experiments" / "reward_kl_frontier.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("reward_kl_frontier", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


E = _load_script()


@pytest.fixture(scope="module")
def scorer():
    from align_jax.data.prompt_sets import toy_letters
    from align_jax.models import load_model

    return E.Scorer(load_model("toy-chars"), toy_letters(0)[1][0], max_new_tokens=8)


def test_the_reference_against_itself_has_kl_zero(scorer):
    """The policy's log-probs (from the sampler) and the reference's (teacher-forced) agree, so
    log pi - log pi_ref summed over each reply is 0; the reward is the toy task's (~1% of 'a')."""
    p = scorer.measure(scorer.ref.model, 256, seed=1)
    assert p["samples"] == 256 and abs(p["kl"]) < 1e-4 and p["kl_se"] < 1e-4
    assert 0.0 <= p["reward"] < 0.05
    assert 6 < p["mean_length"] <= 8


def test_best_of_n_reward_grows_and_its_kl_stays_below_the_closed_form(scorer):
    groups, n_max = 256, 16
    pool = scorer.sample(scorer.ref.model, groups * n_max, seed=2)
    points = E.best_of_n(pool["rewards"].reshape(groups, n_max), pool["texts"], [1, 2, 4, 8, 16])
    rewards = [p["reward"] for p in points]
    assert all(a <= b for a, b in zip(rewards, rewards[1:])) and rewards[-1] > rewards[0] + 0.03
    assert points[0]["kl"] == 0.0 and points[0]["kl_closed_form"] == 0.0
    for p in points:
        assert p["samples"] == groups
        # exact with ties (plug-in) <= closed form; the Monte-Carlo estimate agrees with the plug-in
        assert p["kl_exact_plugin"] <= p["kl_closed_form"] + 1e-9
        assert abs(p["kl"] - p["kl_exact_plugin"]) <= 4 * p["kl_se"] + 1e-9
    assert points[-1]["kl"] < points[-1]["kl_closed_form"] - 0.2  # the toy reward ties a lot (most replies: 0)


def test_best_of_n_kl_meets_the_closed_form_without_ties():
    rng = np.random.default_rng(0)
    rewards = rng.random((8192, 8))  # continuous: no ties
    for p in E.best_of_n(rewards, ["x"] * rewards.size, [2, 8]):
        assert p["kl_exact_plugin"] == pytest.approx(p["kl_closed_form"], abs=0.01)
        assert p["kl"] == pytest.approx(p["kl_closed_form"], abs=4 * p["kl_se"] + 0.01)
        assert p["reward"] == pytest.approx(p["n"] / (p["n"] + 1), abs=0.01)  # E[max of n uniforms]


def test_pairs_rank_by_reward_drop_ties_and_unusable_replies(scorer):
    tok, template = scorer.ref.tokenizer, scorer.ref.chat_template
    texts = ["abc", "xyz", "aa", "ab", "q", "r", "a", "bb"]
    rewards = np.array([1 / 3, 0.0, 1.0, 0.5, 0.0, 0.0, 1.0, 0.0])
    usable = [True] * 6 + [False, True]
    pairs = E.preference_pairs(texts, rewards, "Write the letter a.", usable)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("abc", "xyz"), ("aa", "ab")]
    assert all(p["reward_chosen"] > p["reward_rejected"] for p in pairs)

    ids = tok.encode("ab")
    assert E.usable_reply(tok, template, ids, "ab")  # cut at the limit: the template adds the end of turn
    assert E.usable_reply(tok, template, ids + [tok.eos_id], "ab")  # ended by the model
    assert not E.usable_reply(tok, template, [tok.eos_id], "")  # blank
    # a sampled <pad> decodes to nothing: the text is not what was sampled
    assert not E.usable_reply(tok, template, ids[:1] + [tok.pad_id] + ids[1:], "ab")


def test_frontier_keeps_the_points_nothing_beats():
    pts = [{"kl": 0.0, "reward": 0.1}, {"kl": 1.0, "reward": 0.3}, {"kl": 2.0, "reward": 0.2},
           {"kl": 3.0, "reward": 0.5}, {"kl": 3.0, "reward": 0.4}]
    assert [(p["kl"], p["reward"]) for p in E.frontier(pts)] == [(0.0, 0.1), (1.0, 0.3), (3.0, 0.5)]


@pytest.mark.slow
def test_the_script_runs_end_to_end(tmp_path, subprocess_env):
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), f"--workdir={tmp_path / 'work'}", f"--out={out}", "--eval_samples=64",
           "--bon_n=1,2,4", "--ppo_kl_coefs=0.05", "--ppo_steps=2", "--ppo_checkpoint_every=1", "--dpo_betas=0.1",
           "--pair_samples=4096", "--dpo_steps=2", "--dpo_checkpoint_every=1"]
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert (out / "frontier.png").stat().st_size > 10_000
    assert [p["n"] for p in results["points"]["best-of-N"]] == [1, 2, 4]
    assert [(p["kl_coef"], p["step"]) for p in results["points"]["PPO"]] == [(0.05, 1), (0.05, 2)]
    assert [(p["beta"], p["step"]) for p in results["points"]["DPO"]] == [(0.1, 1), (0.1, 2)]
    assert all(p["samples"] == 64 for pts in results["points"].values() for p in pts)
    assert results["dpo_pairs"]["train"] > 32
