"""experiments/overoptimization_hh.py: the prompt-disjoint split, best-of-N against NumPy, the
teacher-forced reply layout against the sampler's log-probs, configs the engine accepts, and every
stage end to end on the toy model."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import align_jax.main  # noqa: F401  (owns --workdir: importing the script must define no flags)

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("overoptimization_hh", REPO / "experiments" / "overoptimization_hh.py")
E = importlib.util.module_from_spec(spec)
spec.loader.exec_module(E)


def _pairs(n_prompts, per_prompt=1):
    return [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": f"c{i}.{k}", "rejected": f"r{i}.{k}"}
            for i in range(n_prompts) for k in range(per_prompt)]


def test_split_is_disjoint_by_prompt_and_seeded():
    pairs = _pairs(20, per_prompt=2) + _pairs(3)  # prompts q0..q2 carry 3 pairs
    split = E.split_pairs(pairs, eval_prompts=5, seed=0)
    prompts = {k: {json.dumps(p["prompt"]) for p in v} for k, v in split.items()}
    assert len(split["eval"]) == len(prompts["eval"]) == 5  # one pair per held-out prompt
    assert not prompts["eval"] & prompts["proxy"] and not prompts["eval"] & prompts["gold"]
    assert not prompts["proxy"] & prompts["gold"]
    assert len(prompts["proxy"]) + len(prompts["gold"]) == 15 and abs(len(prompts["proxy"]) - len(prompts["gold"])) <= 1
    held = {json.dumps(p["prompt"]) for p in split["eval"]}
    kept = [p for p in pairs if json.dumps(p["prompt"]) not in held]
    assert sorted(map(json.dumps, split["proxy"] + split["gold"])) == sorted(map(json.dumps, kept))  # every pair kept
    assert split == E.split_pairs(pairs, eval_prompts=5, seed=0)
    assert split["eval"] != E.split_pairs(pairs, eval_prompts=5, seed=1)["eval"]
    with pytest.raises(ValueError, match="distinct prompts"):
        E.split_pairs(_pairs(6), eval_prompts=5, seed=0)
    # only eligible (short) prompts are held out; the others still train a reward model
    short = lambda prompt: int(prompt[0]["content"][1:]) % 2 == 0  # noqa: E731
    split = E.split_pairs(pairs, eval_prompts=5, seed=0, eligible=short)
    assert all(short(p["prompt"]) for p in split["eval"])
    assert any(not short(p["prompt"]) for p in split["proxy"] + split["gold"])
    with pytest.raises(ValueError, match="10 eligible"):
        E.split_pairs(pairs, eval_prompts=11, seed=0, eligible=short)


def test_best_of_n_equals_the_average_over_every_subset():
    import itertools

    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(30, 6)), rng.normal(size=(30, 6))
    ens = proxy[..., None] + rng.normal(size=(30, 6, 4))
    sel = E.selector_scores({"proxy": proxy, "proxy_ens": ens})
    np.testing.assert_allclose(sel["ensemble_min"], ens.min(-1))
    np.testing.assert_allclose(sel["ensemble_mean_minus_std"], ens.mean(-1) - ens.std(-1))
    select = sel["ensemble_min"]
    points = E.best_of_n(select, proxy, gold, [1, 2, 3, 6])
    for p in points:
        n = p["n"]
        # brute force: every n-subset of each prompt's 6 samples, the pick = argmax of the selector
        per_prompt = {"proxy": [], "gold": []}
        for i in range(30):
            picks = [max(sub, key=lambda j: select[i, j]) for sub in itertools.combinations(range(6), n)]
            per_prompt["proxy"].append(np.mean(proxy[i, picks]))
            per_prompt["gold"].append(np.mean(gold[i, picks]))
        for name in ("proxy", "gold"):
            assert math.isclose(p[name], np.mean(per_prompt[name]), rel_tol=1e-10), (n, name)
        assert math.isclose(p["gold_se"], np.std(per_prompt["gold"], ddof=1) / math.sqrt(30), rel_tol=1e-10)
        assert math.isclose(p["kl"], math.log(n) - (n - 1) / n)
    assert points[0]["kl"] == 0 and math.isclose(points[0]["gold"], gold.mean())  # N = 1: every sample
    assert math.isclose(points[-1]["gold"], gold[np.arange(30), select.argmax(1)].mean())  # N = N_max
    for n in range(1, 7):
        assert math.isclose(E.best_of_n_weights(6, n).sum(), 1.0)
    # selecting by gold itself: best-of-N's gold rises with N
    by_gold = E.best_of_n(gold, proxy, gold, [1, 2, 4, 6])
    assert [p["gold"] for p in by_gold] == sorted(p["gold"] for p in by_gold)


def test_within_prompt_correlation_ignores_prompt_means():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20, 5))
    b = 3 * a + rng.normal(size=(20, 1)) * 100  # same ranking inside each prompt, wild prompt offsets
    assert math.isclose(E.within_prompt_correlation(a, b), 1.0, rel_tol=1e-12)
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.5  # pooled correlation is swamped by the offsets


def test_reference_logps_match_the_sampler_logprobs():
    """The KL estimate subtracts the judge's teacher-forced reference log-probs from the sampler's own."""
    from align_jax.models import load_model
    from align_jax.sampling.greedy import chat_ids, generate_sampled

    lm = load_model("toy-chars")
    prompts = [chat_ids(lm, [{"role": "user", "content": t}]) for t in ("write a", "say something longer here")]
    gens = generate_sampled(lm, prompts, n=2, max_new_tokens=6, batch_size=2, seed=3)
    flat = [(p, g) for p, gs in zip(prompts, gens) for g in gs]
    judge = E.Judge.__new__(E.Judge)
    judge.ref = lm
    logps = judge.ref_logps([p for p, _ in flat], [g.token_ids for _, g in flat], batch=3)
    for got, (_, g) in zip(logps, flat):
        assert got.shape == (len(g.token_ids),)
        np.testing.assert_allclose(got, g.logprobs, atol=1e-4)


def test_configs_pass_the_engines_checks(tmp_path):
    from align_jax.models import load_model
    from align_jax.rewards.model import save_reward_model

    toy = load_model("toy-chars")
    d = toy.model.cfg.hidden_size
    for name in ("rm_proxy", "rm_gold"):  # PPO reads the normalised folders
        save_reward_model(tmp_path / name / E.NORMALIZED, toy.model, {"w": np.zeros(d, np.float32), "b": np.float32(0)},
                          toy.tokenizer, max_length=64)
    save_reward_model(tmp_path / "rm_proxy_ens" / E.NORMALIZED, toy.model,
                      {"w": np.zeros((3, d), np.float32), "b": np.zeros(3, np.float32)}, toy.tokenizer, max_length=64)
    (tmp_path / "proxy_pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in _pairs(30)))
    cmd = E.rm_command(tmp_path, "proxy_ens", 30, model="toy-chars", batch=4, max_length=96, max_prompt_length=64,
                       learning_rate=1e-4, seed=0, ensemble_size=3)
    out = subprocess.run(cmd + ["--dry_run"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = json.loads(out.stdout[out.stdout.index("{"):])
    assert cfg["train"]["steps"] == 7  # ceil(27 / 4): one pass over the 90% not held out
    assert dict(map(tuple, cfg["loss_options"]))["ensemble_size"] == 3
    for variant in E.VARIANTS:
        o = E.ppo_overrides(tmp_path, variant, model="toy-chars", steps=4, every=2, kl_coef=0.05, learning_rate=1e-3,
                            max_new_tokens=8, seed=0)
        c = E.ppo_config(o)
        assert c.rl.rewards == o["rl.rewards"] and c.train.keep_checkpoints == 3
        # the same overrides as the script passes them: command-line strings into the engine
        out = subprocess.run([sys.executable, "-m", "align_jax.main", "--config=configs/ppo_hh.py",
                              f"--workdir={tmp_path / variant}", "--dry_run", *[f"--config.{k}={v}" for k, v in o.items()]],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        cfg = json.loads(out.stdout[out.stdout.index("{"):])
        assert cfg["rl"]["rewards"] == o["rl.rewards"] and cfg["train"]["checkpoint_every_seconds"] == 0
        # the gold model is scored on every rollout but weighs nothing in the optimised reward
        assert cfg["rl"]["rewards"].endswith(f",rm:{tmp_path / 'rm_gold' / E.NORMALIZED}")
        assert cfg["rl"]["reward_weights"] == "1,0"
        assert cfg["rl"]["reward_transform"] == ("log-sigmoid" if variant == "log_sigmoid" else "identity")
    with pytest.raises(ValueError, match="unknown variant"):
        E.ppo_overrides(tmp_path, "gold", model="toy-chars", steps=4, every=2, kl_coef=0.05, learning_rate=1e-3,
                        max_new_tokens=8, seed=0)


def test_normalized_reward_models_score_in_reference_standard_deviations(tmp_path):
    from align_jax.models import load_model
    from align_jax.rewards.model import load_reward_model, read_head, save_reward_model

    toy = load_model("toy-chars")
    d = toy.model.cfg.hidden_size
    rng = np.random.default_rng(0)
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    replies = [f"reply {'ab' * i} {i}" for i in range(6)]
    for name, w, b in (("single", rng.normal(size=d), 0.3), ("ens", rng.normal(size=(3, d)), rng.normal(size=3))):
        save_reward_model(tmp_path / name / "export", toy.model, {"w": np.float32(w), "b": np.float32(b)},
                          toy.tokenizer, max_length=64)
        raw = load_reward_model(tmp_path / name / "export").score(prompts, replies)  # [6] or [6, 3]
        mean, std = E.reference_moments(raw.reshape((2, 3) + raw.shape[1:]))  # as [P, N(, E)] samples
        np.testing.assert_allclose(mean, raw.mean(0), rtol=1e-6)
        np.testing.assert_allclose(std, raw.std(0), rtol=1e-6)
        E.write_normalized(tmp_path / name / "export", tmp_path / name / E.NORMALIZED, mean, std)
        got = load_reward_model(tmp_path / name / E.NORMALIZED).score(prompts, replies)
        np.testing.assert_allclose(got, (raw - mean) / std, atol=1e-5)
        np.testing.assert_allclose(got.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(got.std(0), 1, atol=1e-5)
        _, meta = read_head(tmp_path / name / E.NORMALIZED)
        np.testing.assert_allclose(meta["normalized"]["std"], std, rtol=1e-6)
        assert (tmp_path / name / E.NORMALIZED / "model.safetensors").stat().st_nlink == 2  # a link, not a copy
    with pytest.raises(ValueError, match="do not vary"):
        E.reference_moments(np.ones((2, 3)))


def test_rm_pairs_caps_the_pass_after_the_held_out_tenth(tmp_path):
    kw = dict(model="toy-chars", batch=4, max_length=96, max_prompt_length=64, learning_rate=1e-4, seed=0,
              ensemble_size=3)

    def opts(cmd):
        return dict(a[len("--config."):].split("=", 1) for a in cmd if a.startswith("--config."))

    full = opts(E.rm_command(tmp_path, "gold", 30, **kw))
    assert (full["train.steps"], full["data.max_train_examples"], full["data.max_eval_examples"]) == ("7", "0", "3")
    capped = opts(E.rm_command(tmp_path, "gold", 30, max_pairs=10, **kw))
    assert (capped["train.steps"], capped["data.max_train_examples"]) == ("3", "10")  # ceil(10 / 4)
    assert capped["data.max_eval_examples"] == "3" and capped["optimizer.total_steps"] == "3"
    assert opts(E.rm_command(tmp_path, "gold", 30, max_pairs=100, **kw))["train.steps"] == "7"  # fewer exist


def test_training_curve_reads_the_optimised_and_gold_rewards_and_the_sequence_kl():
    rows = [{"step": 0, "split": "eval", "eval/reward": 0.1},
            {"step": 2, "split": "train", "rl/kl_to_reference": 0.02, "rl/response_length": 50.0,
             "reward/rm:/w/rm_proxy_ens/export@min": 1.5, "reward/rm:/w/rm_gold/export": -0.5},
            {"step": 1, "split": "train", "rl/kl_to_reference": 0.01, "rl/response_length": 40.0,
             "reward/rm:/w/rm_proxy_ens/export@min": 1.0, "reward/rm:/w/rm_gold/export": -0.25}]
    curve = E.training_curve(rows)
    assert [p["step"] for p in curve] == [1, 2]
    np.testing.assert_allclose([p["kl"] for p in curve], [0.4, 1.0])
    assert [p["optimised"] for p in curve] == [1.0, 1.5] and [p["gold"] for p in curve] == [-0.25, -0.5]
    with pytest.raises(ValueError, match="one optimised and one gold"):
        E.training_curve([{"step": 1, "rl/kl_to_reference": 0.0, "rl/response_length": 1.0,
                           "reward/rm:/w/rm_gold/export": 1.0}])
    assert E.training_curve([{"step": 1, "rl/kl_to_reference": 0.0, "rl/response_length": 1.0,
                              "reward/rm:/w/x": 1.0}]) == []  # a log from before gold was watched
    rows[1]["reward/rm:/w/rm_gold/export"] = float("nan")  # a failed batch: the step is left out
    assert [p["step"] for p in E.training_curve(rows)] == [1]


def test_smooth_is_a_trailing_mean():
    v = np.array([1.0, 3.0, 2.0, 8.0, 0.0])
    want = [np.mean(v[max(0, i - 2):i + 1]) for i in range(len(v))]
    np.testing.assert_allclose(E.smooth(v, 3), want)


def _hh_row(i):
    prompt = f"\n\nHuman: tell me about {'cats' if i % 2 else 'dogs'} number {i}"
    return {"chosen": prompt + f"\n\nAssistant: a kind answer {i}", "rejected": prompt + f"\n\nAssistant: no {i}"}


@pytest.mark.slow
def test_every_stage_runs_on_the_toy_model(tmp_path):
    hh = tmp_path / "hh.jsonl"
    hh.write_text("".join(json.dumps(_hh_row(i)) + "\n" for i in range(48)) + '{"chosen": "malformed"}\n')
    wd = tmp_path / "run"
    cmd = [sys.executable, "experiments/overoptimization_hh.py", f"--workdir={wd}", f"--hh_path={hh}",
           "--model=toy-chars", "--eval_prompts=8", "--max_prompt_tokens=120", "--rm_max_length=160", "--rm_batch=4",
           "--rm_learning_rate=1e-3", "--ensemble_size=2", "--max_new_tokens=6", "--bon_max=4", "--sample_batch=4",
           "--variants=plain,ensemble_min", "--ppo_steps=2", "--checkpoint_every=1", "--measure_samples=2"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((wd / "data_summary.json").read_text())
    assert summary["rows_malformed"] == 1 and summary["eval_prompts"] == 8
    assert summary["proxy_pairs"] + summary["gold_pairs"] + 8 == summary["pairs"] == 48
    results = json.loads((wd / "results.json").read_text())
    bon = results["best_of_n"]
    assert set(bon["curves"]) == set(E.SELECTORS) and [p["n"] for p in bon["curves"]["proxy"]] == [1, 2, 4]
    proxy = [p["proxy"] for p in bon["curves"]["proxy"]]
    assert proxy == sorted(proxy)  # best-of-N by the proxy raises the proxy
    # in reference-sample standard deviations: best-of-1 is the reference samples' mean, 0
    assert bon["units"].startswith("reference-sample") and abs(proxy[0]) < 1e-5
    assert set(json.loads((wd / "normalization.json").read_text())) == set(E.RMS)
    ppo = results["ppo"]
    assert abs(ppo["reference"]["kl"]) < 1e-3  # the reference's log-ratio to itself
    assert sorted(ppo["plain"], key=int) == ["1", "2"] and sorted(ppo["ensemble_min"], key=int) == ["1", "2"]
    assert (wd / "overoptimization.png").stat().st_size > 10_000
    for variant in ("plain", "ensemble_min"):  # the gold model watched every PPO step
        curve = results["ppo_training"][variant]
        assert [p["step"] for p in curve] == [1, 2] and all(np.isfinite(p["gold"]) for p in curve)
    # a second run skips every stage
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and again.stdout.count("exists, skipped") >= 6, again.stdout[-2000:]
    # a PPO sweep over the same reward models: its upstream stages are those of the first workdir
    sweep = [c for c in cmd if not c.startswith("--workdir")] + [f"--workdir={tmp_path / 'sweep'}", "--kl_coef=0.5",
                                                                    f"--reward_models_from={wd}",
                                                                    "--stages=data,rm,bon,normalize,report"]
    linked = subprocess.run(sweep, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert linked.returncode == 0, linked.stderr[-3000:]
    assert linked.stdout.count("exists, skipped") >= 4, linked.stdout[-2000:]
    assert json.loads((tmp_path / "sweep" / "results.json").read_text())["best_of_n"] == bon


def test_reward_models_from_links_finished_upstream_stages_of_the_same_settings(tmp_path):
    settings = {k: 1 for k in E.SETTINGS}
    src, wd = tmp_path / "src", tmp_path / "wd"
    src.mkdir()
    (src / "settings.json").write_text(json.dumps(settings))
    for name in E.UPSTREAM_FILES:
        (src / name).write_text(name)
    for name in E.RMS:
        for folder in ("export", E.NORMALIZED, "checkpoints"):
            (src / f"rm_{name}" / folder).mkdir(parents=True)
            (src / f"rm_{name}" / folder / "model.safetensors").write_text(f"{name} {folder}")
        (src / f"rm_{name}" / "metrics.jsonl").write_text("{}\n")
    E.check_upstream(src, {**settings, "kl_coef": 0.1, "ppo_steps": 80})  # PPO settings may differ
    with pytest.raises(ValueError, match="--rm_pairs: 1 there, 400 here"):
        E.check_upstream(src, {**settings, "rm_pairs": 400})
    with pytest.raises(FileNotFoundError, match="no settings.json"):
        E.check_upstream(wd, settings)
    E.link_upstream(src, wd)
    for name in E.UPSTREAM_FILES:
        assert (wd / name).read_text() == name
        assert not (wd / name).samefile(src / name)  # copies: a stage rewriting one here leaves src alone
    for name in E.RMS:
        for folder in ("export", E.NORMALIZED):
            assert (wd / f"rm_{name}" / folder / "model.safetensors").samefile(src / f"rm_{name}" / folder /
                                                                                 "model.safetensors")
        assert (wd / f"rm_{name}" / "metrics.jsonl").exists() and not (wd / f"rm_{name}" / "checkpoints").exists()
    (src / "normalization.json").unlink()
    with pytest.raises(FileNotFoundError, match="normalize stage"):
        E.check_upstream(src, settings)
