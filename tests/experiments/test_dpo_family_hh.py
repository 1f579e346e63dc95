"""experiments/dpo_family_hh.py: the method-independent held-out accuracies and the win rate against
NumPy-by-hand cases, every method's run accepted by the engine with the same budget, and the whole
script on the toy model."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import align_jax.main  # noqa: F401  (owns --workdir: importing the script must define no flags)

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("dpo_family_hh", REPO / "experiments" / "dpo_family_hh.py")
E = importlib.util.module_from_spec(spec)
spec.loader.exec_module(E)


def test_pair_accuracies_by_hand():
    a = np.array
    # pair 0: policy raises chosen (log-ratio +1.0 vs 0.0) -> implicit win; mean log-prob -1.0 vs -0.5 -> loss
    # pair 1: log-ratios -0.5 vs +0.5 -> implicit loss; mean log-prob -1.0 vs -2.0 -> win
    # pair 2: log-ratios equal -> a half each way; means equal -> a half
    pol_c = [a([-1.0, -1.0]), a([-1.0]), a([-1.0])]
    pol_r = [a([-0.5]), a([-2.0, -2.0]), a([-1.0])]
    ref_c = [a([-1.5, -1.5]), a([-0.5]), a([-2.0])]
    ref_r = [a([-0.5]), a([-4.5]), a([-2.0])]
    out = E.pair_accuracies(pol_c, pol_r, ref_c, ref_r)
    assert out["implicit_reward_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert out["mean_logp_accuracy"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert out["implicit_margin"] == pytest.approx((1.0 - 1.0 + 0.0) / 3)
    assert out["implicit_reward_accuracy_ci"][0] < out["implicit_reward_accuracy"] < out["implicit_reward_accuracy_ci"][1]
    assert E.pair_accuracies(ref_c, ref_r, ref_c, ref_r)["implicit_reward_accuracy"] == 0.5  # the base: all ties


def test_win_rate_counts_ties_as_halves():
    # prompt 4: the same reply as the base's, scored 1e-7 apart (differently padded batches): a tie
    method, base = np.array([2.0, 1.0, 0.0, 3.0, 0.5 + 1e-7]), np.array([1.0, 1.0, 1.0, 0.0, 0.5])
    out = E.win_rate(method, base, np.array([False, False, False, False, True]))
    assert (out["wins"], out["ties"], out["losses"], out["n"]) == (2, 2, 1, 5)
    assert out["win_rate"] == pytest.approx(3 / 5) and out["low"] < 3 / 5 < out["high"]


def test_the_training_order_is_one_seeded_permutation():
    pairs = [{"i": i} for i in range(50)]
    a, b = E.order_pairs(pairs, 0), E.order_pairs(pairs, 0)
    assert a == b and sorted(p["i"] for p in a) == list(range(50)) and a != pairs
    assert E.order_pairs(pairs, 1) != a


def test_every_method_passes_the_engines_checks_with_the_same_budget(tmp_path):
    row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": "hello", "rejected": "go away"}
    for name in ("proxy_pairs.jsonl", "eval_pairs.jsonl"):
        (tmp_path / name).write_text(json.dumps(row) + "\n")
    seen = {}
    for method in E.METHODS:
        config, o = E.train_overrides(method, train_pairs=tmp_path / "proxy_pairs.jsonl",
                                      eval_pairs=tmp_path / "eval_pairs.jsonl", cache=tmp_path / "cache",
                                      model="toy-chars", steps=7, batch=4, learning_rate=1e-5, max_length=160,
                                      max_prompt_length=128, seed=0)
        out = subprocess.run([sys.executable, "-m", "align_jax.main", f"--config={config}",
                              f"--workdir={tmp_path / method}", "--dry_run", *[f"--config.{k}={v}" for k, v in o.items()]],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (method, out.stderr[-2000:])
        cfg = json.loads(out.stdout[out.stdout.index("{"):])
        assert cfg["loss_name"] == E.METHODS[method][1] and cfg["train"]["steps"] == 7
        assert dict(map(tuple, cfg["loss_options"])) == E.loss_defaults(method), method  # no stray beta=0.1
        assert cfg["data"]["shuffle"] is False
        assert cfg["data"]["max_train_examples"] == 7 * cfg["data"]["batch_size"]  # one pass, no more referenced
        seen[method] = (cfg["data"]["batch_size"], cfg["data"]["train_path"], cfg["optimizer"]["learning_rate"])
    assert seen["kto"][0] == 2 * seen["dpo"][0]  # KTO: each pair as two single replies
    assert len({v[1:] for v in seen.values()}) == 1
    assert E.loss_defaults("simpo")["beta"] == 2.0
    with pytest.raises(ValueError, match="unknown method"):
        E.train_overrides("rlhf", train_pairs=tmp_path, eval_pairs=tmp_path, cache=tmp_path, model="toy-chars", steps=1,
                          batch=1, learning_rate=1e-5, max_length=64, max_prompt_length=32, seed=0)


@pytest.mark.slow
def test_the_script_runs_on_the_toy_model(tmp_path):
    from align_jax.models import load_model
    from align_jax.rewards.model import save_reward_model

    overopt = tmp_path / "overopt"
    overopt.mkdir()
    rows = [{"prompt": [{"role": "user", "content": f"say {w}"}], "chosen": f"{w} {w}", "rejected": "no"}
            for w in ("aa", "bb", "cc", "dd", "ee", "ff", "gg", "hh")]
    (overopt / "proxy_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (overopt / "eval_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    toy = load_model("toy-chars")
    d = toy.model.cfg.hidden_size
    w = np.random.default_rng(0).normal(size=d).astype(np.float32)
    save_reward_model(overopt / "rm_gold" / "export", toy.model, {"w": w, "b": np.float32(0)}, toy.tokenizer,
                      max_length=96)
    wd = tmp_path / "run"
    cmd = [sys.executable, "experiments/dpo_family_hh.py", f"--workdir={wd}", f"--overopt_dir={overopt}",
           "--model=toy-chars", "--methods=dpo,simpo,kto", "--steps=2", "--batch=2", "--learning_rate=1e-3",
           "--max_length=64", "--max_prompt_length=32", "--reply_tokens=6", "--score_tokens=8"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((wd / "results.json").read_text())["judged"]
    assert set(results) == {"base", "dpo", "simpo", "kto"}
    assert results["base"]["implicit_reward_accuracy"] == 0.5
    for m in ("dpo", "simpo", "kto"):
        assert results[m]["pairs"] == 4 and 0 <= results[m]["vs_base"]["win_rate"] <= 1
    assert "| dpo |" in (wd / "report.md").read_text() and "(raw scores)" in (wd / "report.md").read_text()
    assert results["dpo"]["judge_model"] == str(overopt / "rm_gold" / "export")
    assert (wd / "dpo_family.png").stat().st_size > 10_000
    missing = subprocess.run([sys.executable, "experiments/dpo_family_hh.py", f"--workdir={wd}",
                              f"--overopt_dir={tmp_path / 'nowhere'}"], cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode != 0 and "--stages=data,rm" in missing.stderr


def test_training_needs_only_the_pair_splits_and_judging_also_the_gold_model(tmp_path):
    overopt = tmp_path / "overopt"
    overopt.mkdir()

    def fails(stages):
        out = subprocess.run([sys.executable, "experiments/dpo_family_hh.py", f"--workdir={tmp_path / 'run'}",
                              f"--overopt_dir={overopt}", f"--stages={stages}"], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode != 0
        return out.stderr

    err = fails("train")
    assert "proxy_pairs.jsonl" in err and "rm_gold" not in err and "--stages=data`" in err
    for name in ("proxy_pairs.jsonl", "eval_pairs.jsonl"):
        (overopt / name).write_text("")
    err = fails("train,judge")
    assert "rm_gold/export/reward_model.json" in err and "proxy_pairs" not in err and "--stages=data,rm`" in err


def test_the_judge_reads_the_normalised_gold_model_once_the_normalize_stage_is_complete(tmp_path):
    assert E.gold_folder(tmp_path) == tmp_path / "rm_gold" / "export"
    (tmp_path / "rm_gold" / "export_normalized").mkdir(parents=True)  # a half-written normalize stage
    assert E.gold_folder(tmp_path) == tmp_path / "rm_gold" / "export"
    (tmp_path / "normalization.json").write_text("{}")
    assert E.gold_folder(tmp_path) == tmp_path / "rm_gold" / "export_normalized"
    normalized = {"base": {"judge_model": str(E.gold_folder(tmp_path))}}
    assert "std units" in E._units(normalized) and E._units({}) == ""
    with pytest.raises(ValueError, match="mixes"):
        E._units({**normalized, "dpo": {"judge_model": str(tmp_path / "rm_gold" / "export")}})
