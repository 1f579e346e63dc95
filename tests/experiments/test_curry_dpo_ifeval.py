"""experiments/curry_dpo_ifeval.py: ranked lists scored by the verifier, the curriculum and random
orders of the same pairs, the held-out prompts, and a train command the engine accepts."""

import importlib.util
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import align_jax.main  # noqa: F401  (owns --workdir: importing the script must define no flags)
from align_jax.data.prompt_sets import ifeval_constraints
from align_jax.rewards import REWARDS
from align_jax.sampling.greedy import Generation

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("curry_dpo_ifeval", REPO / "experiments" / "curry_dpo_ifeval.py")
E = importlib.util.module_from_spec(spec)
spec.loader.exec_module(E)


def _lists(scores):
    return [{"prompt": f"p{i}", "responses": [f"p{i}r{k}" for k in range(len(s))], "scores": list(s),
             "stopped": [True] * len(s)} for i, s in enumerate(scores)]


def test_pairs_curriculum_random_and_held_out_prompts():
    lists = _lists([[1.0, 0.0, 0.5, 0.5], [0.2, 0.2, 0.2, 0.2], [0.0, 1.0, 0.0, 0.5], [1.0, 0.0, 0.0, 0.0],
                    [0.5, 1.0, 0.5, 0.5]])
    files, summary = E.make_pairs(lists, eval_fraction=0.2, seed=0)
    assert {r["prompt"] for r in files["eval"]} == {"p4"}  # the last 20% of prompts
    assert all(r["prompt"] != "p4" for r in files["curriculum"])
    # p0: scores 1, 0, .5, .5 -> 5 pairs (the .5/.5 tie dropped); p1 all equal -> none; p2: 5; p3: 3
    assert summary["train_pairs"] == len(files["curriculum"]) == 13
    score = {f"p{i}r{k}": s for i, l in enumerate(lists) for k, s in enumerate(l["scores"])}
    assert all(score[r["chosen"]] > score[r["rejected"]] for r in files["curriculum"])
    levels = [r["level"] for r in files["curriculum"]]
    assert levels == sorted(levels) and levels[:3] == [0, 0, 0]
    assert [r["gap"] for r in files["curriculum"][:3]] == [1.0, 1.0, 1.0]  # each list's best vs worst first
    key = lambda r: (r["prompt"], r["chosen"], r["rejected"])  # noqa: E731
    assert sorted(map(key, files["random"])) == sorted(map(key, files["curriculum"]))
    assert list(map(key, files["random"])) != list(map(key, files["curriculum"]))
    assert summary["pairs_per_level"] == {0: 3, 1: 3, 2: 3, 3: 2, 4: 2}


def test_lists_are_scored_by_the_ifeval_verifier():
    records = ifeval_constraints(0, num_train=3, num_eval=1)[0]
    texts = [["hello", "HELLO WORLD, " * 40], ["a b c", ""], ["Yes.", "No."]]
    gens = [[Generation(t, (1, 2), np.zeros(2), stopped=k == 0) for k, t in enumerate(ts)] for ts in texts]
    lists = E.score_lists(records, gens, REWARDS.build("ifeval"))
    reward = REWARDS.build("ifeval")
    for rec, ts, lst in zip(records, texts, lists):
        assert lst["prompt"] == rec.prompt[-1]["content"] and lst["responses"] == [t.strip() for t in ts]
        assert lst["scores"] == [reward(rec, t.strip()) for t in ts]
    summary = E.list_summary(lists)
    assert summary["n_prompts"] == 3 and summary["samples"] == 2 and summary["share_truncated"] == 0.5


def test_the_train_command_passes_the_engines_config_checks(tmp_path):
    files, _ = E.make_pairs(_lists([[1.0, 0.0], [0.0, 1.0], [0.5, 0.0]]), eval_fraction=0.34, seed=0)
    for k, rows in files.items():
        E.write_jsonl(tmp_path / f"pairs_{k}.jsonl", rows)
    cmd = E.train_command(tmp_path, "random", 17, model="smollm2-135m-instruct", batch=8, seed=0,
                          learning_rate=2e-5, beta=0.3)
    out = subprocess.run(cmd + ["--dry_run"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = json.loads(out.stdout[out.stdout.index("{"):])
    assert cfg["train"]["steps"] == 3 and cfg["data"]["max_train_examples"] == 17  # one pass: ceil(17 / 8)
    assert cfg["data"]["shuffle"] is False and cfg["data"]["train_path"] == str(tmp_path / "pairs_random.jsonl")
    assert cfg["data"]["eval_path"] == str(tmp_path / "pairs_eval.jsonl") and cfg["loss_options"] == [["beta", 0.3]]


def test_paired_differences_by_hand():
    def rows(strict, split_of):
        return [{"key": f"k{i}", "split": split_of(i), "strict": s, "follow_all_strict": all(s)}
                for i, s in enumerate(strict)]
    split_of = lambda i: E.SPLITS[i % 4]  # noqa: E731
    base = rows([[True, False], [False], [True, True], [False, False]] * 3, split_of)
    other = rows([[True, True], [False], [True, True], [True, False]] * 3, split_of)
    out = E.paired_vs_base(base, other)
    # every 4 prompts: +1 instruction of 2 (in_distribution), +1 of 2 (unseen_topics); 7 instructions
    assert out["all"]["instruction_level_diff"] == pytest.approx(6 / 21)
    assert out["all"]["prompt_level_diff"] == pytest.approx(3 / 12)  # k0, k4, k8 now follow all
    assert out["in_distribution"]["instruction_level_diff"] == pytest.approx(0.5)
    assert out["ood"]["instruction_level_diff"] == pytest.approx(3 / 15) and out["ood"]["prompts"] == 9
    assert (out["all"]["prompts_better"], out["all"]["prompts_worse"]) == (6, 0)
    lo, hi = out["all"]["instruction_ci"]
    assert lo <= out["all"]["instruction_level_diff"] <= hi
    with pytest.raises(ValueError, match="different prompts"):
        E.paired_vs_base(base, other[:-1])
