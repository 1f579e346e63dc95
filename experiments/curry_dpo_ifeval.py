"""Curry-DPO on verifier-ranked samples of instruction-constraint prompts (issue #26, rows 3 and 5).

Curry-DPO (arXiv:2403.07230) samples several responses per prompt, ranks them (there by a reward
model or GPT-4), and trains DPO on the pairs of each ranked list in a curriculum: every list's
easiest pair (best vs worst) first, then harder ones (smaller score gaps). Its claim: the
curriculum beats the same pairs in random order (MT-Bench, Vicuna, WizardLM win rates). Here the
ranker is a verifier: the fraction of a prompt's IFEval instructions a sample follows (``ifeval``
reward), so the same run also gives row 5's "DPO on verifier-ranked pairs", measured in
distribution and under shift against the GRPO run of ``configs/grpo_ifeval.py``.

    python experiments/curry_dpo_ifeval.py --workdir=runs/curry_dpo_ifeval

Stages (each skipped when its outputs exist; ``--stages`` picks some):

1. ``sample``: ``--num_prompts`` prompts of the constraint generator's train split, ``--samples``
   samples each from SmolLM2-135M-Instruct at temperature 1 (``--max_new_tokens``), each scored by
   the verifier; ``lists.jsonl`` (one ranked list per prompt) and ``sample_summary.json``.
2. ``pairs``: the last ``--eval_prompt_fraction`` of the prompts give ``pairs_eval.jsonl`` (held
   out, both arms); the rest give every pair with distinct scores (:func:`curriculum_pairs`),
   written in curriculum order (``pairs_curriculum.jsonl``: level 0 = each list's largest gap, ...)
   and as a seeded permutation of the same pairs (``pairs_random.jsonl``).
3. ``train``: ``configs/curry_dpo_ifeval.py`` once per arm, one pass in file order
   (``data.shuffle=False``), same steps, seed and learning rate.
4. ``eval``: ``configs/eval/constraints_ood.py`` (in-distribution and three OOD splits, greedy) for
   each of ``--eval_arms`` (``base``: the untrained model).
5. ``report``: ``report.md`` and ``results.json``: each arm's prompt- and instruction-level strict
   accuracy beside the GRPO run's (``experiments/results/grpo_ifeval``).
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
import shlex
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from align_jax.run_settings import read_jsonl, run_stages, work_folder, write_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]
ARMS = ("curriculum", "random")
GRPO_AFTER = REPO / "experiments" / "results" / "grpo_ifeval" / "constraints_ood_after.json"


def define_flags():
    """Defined only when run as a script (tests import this module beside align_jax.main)."""
    flags.DEFINE_string("workdir", "runs/curry_dpo_ifeval", "lists, pairs, runs, evaluations, report")
    flags.DEFINE_list("stages", ["sample", "pairs", "train", "eval", "report"], "which stages to run")
    flags.DEFINE_string("model", "smollm2-135m-instruct", "registered model to sample from and train")
    flags.DEFINE_integer("num_prompts", 240, "train-split constraint prompts to sample")
    flags.DEFINE_integer("samples", 4, "samples per prompt (a ranked list)")
    flags.DEFINE_integer("max_new_tokens", 192, "tokens per sample")
    flags.DEFINE_float("temperature", 1.0, "sampling temperature")
    flags.DEFINE_integer("batch_size", 16, "prompts per sampling batch (x samples rows)")
    flags.DEFINE_float("eval_prompt_fraction", 0.1, "prompts whose pairs are held out for the DPO eval loss")
    flags.DEFINE_integer("seed", 0, "prompts, samples, random order, training")
    flags.DEFINE_integer("train_batch", 8, "pairs per step")
    flags.DEFINE_float("learning_rate", 2e-5, "peak learning rate (cosine)")
    flags.DEFINE_float("beta", 0.1, "DPO beta")
    flags.DEFINE_list("arms", list(ARMS), "training orders to run")
    flags.DEFINE_list("eval_arms", ["base", *ARMS], "models to evaluate (base = the untrained model)")
    flags.DEFINE_integer("eval_limit", 60, "prompts per constraints_ood split")


F = flags.FLAGS


# -- 1. sample ------------------------------------------------------------------------------------

def score_lists(records, generations, reward) -> list[dict]:
    """One ranked list per prompt: ``{prompt, info, responses, scores, stopped}``."""
    lists = []
    for rec, gens in zip(records, generations, strict=True):
        texts = [g.text.strip() for g in gens]
        lists.append({"prompt": rec.prompt[-1]["content"], "info": dict(rec.info), "responses": texts,
                      "scores": [float(reward(rec, t)) for t in texts], "stopped": [g.stopped for g in gens]})
    return lists


def list_summary(lists: list[dict]) -> dict:
    scores = np.array([r["scores"] for r in lists], np.float64)  # [P, K]
    distinct = np.array([len(set(s)) for s in scores.tolist()])
    return {
        "n_prompts": len(lists), "samples": int(scores.shape[1]),
        "mean_score": float(scores.mean()), "share_zero": float((scores == 0).mean()),
        "share_full": float((scores == 1).mean()), "lists_all_equal": int((distinct == 1).sum()),
        "distinct_scores_per_list": {int(k): int(v) for k, v in sorted(collections.Counter(distinct).items())},
        "share_truncated": float(1 - np.mean([s for r in lists for s in r["stopped"]])),
    }


def sample_stage(wd: pathlib.Path) -> None:
    if (wd / "lists.jsonl").exists():
        print("sample: exists, skipped", flush=True)
        return
    from align_jax.data.prompt_sets import ifeval_constraints
    from align_jax.models.registry import load_model
    from align_jax.rewards import REWARDS
    from align_jax.sampling.greedy import chat_ids, generate_sampled

    records = ifeval_constraints(F.seed, num_train=F.num_prompts, num_eval=1)[0]
    lm = load_model(F.model)
    t0 = time.time()
    gens = generate_sampled(lm, [chat_ids(lm, r.prompt) for r in records], n=F.samples,
                            max_new_tokens=F.max_new_tokens, batch_size=F.batch_size, temperature=F.temperature,
                            seed=F.seed, progress=True)
    lists = score_lists(records, gens, REWARDS.build("ifeval"))
    write_jsonl(wd / "lists.jsonl", lists)
    summary = {**list_summary(lists), "model": F.model, "max_new_tokens": F.max_new_tokens,
               "temperature": F.temperature, "seconds": round(time.time() - t0, 1)}
    (wd / "sample_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1), flush=True)


# -- 2. pairs -------------------------------------------------------------------------------------

def make_pairs(lists: list[dict], eval_fraction: float, seed: int) -> tuple[dict[str, list[dict]], dict]:
    """(files, summary): ``curriculum`` / ``random`` train pairs (the same pairs in two orders) and
    ``eval`` pairs from the held-out last prompts, each ``{prompt, chosen, rejected, gap, level}``."""
    from align_jax.objectives.ranking import curriculum_pairs

    n_eval = int(round(len(lists) * eval_fraction))
    train_lists, eval_lists = lists[:len(lists) - n_eval], lists[len(lists) - n_eval:]

    def rows(ls):
        if not ls:
            return []
        cp = curriculum_pairs(np.array([r["scores"] for r in ls], np.float64))
        return [{"prompt": ls[e]["prompt"], "chosen": ls[e]["responses"][c], "rejected": ls[e]["responses"][r],
                 "gap": float(g), "level": int(lv)}
                for e, c, r, g, lv in zip(cp.example, cp.chosen, cp.rejected, cp.gap, cp.level)]

    curriculum = rows(train_lists)
    shuffled = [curriculum[i] for i in np.random.default_rng(seed).permutation(len(curriculum))]
    levels = collections.Counter(r["level"] for r in curriculum)
    summary = {
        "train_prompts": len(train_lists), "eval_prompts": len(eval_lists), "train_pairs": len(curriculum),
        "pairs_per_level": {int(k): int(v) for k, v in sorted(levels.items())},
        "mean_gap_per_level": {int(k): float(np.mean([r["gap"] for r in curriculum if r["level"] == k]))
                               for k in sorted(levels)},
    }
    return {"curriculum": curriculum, "random": shuffled, "eval": rows(eval_lists)}, summary


def pairs_stage(wd: pathlib.Path) -> None:
    if all((wd / f"pairs_{k}.jsonl").exists() for k in ("curriculum", "random", "eval")):
        print("pairs: exist, skipped", flush=True)
        return
    files, summary = make_pairs(read_jsonl(wd / "lists.jsonl"), F.eval_prompt_fraction, F.seed)
    if not files["curriculum"] or not files["eval"]:
        raise ValueError(f"no train or eval pairs from {wd / 'lists.jsonl'} (every list's scores tie?): {summary}")
    for k, rows in files.items():
        write_jsonl(wd / f"pairs_{k}.jsonl", rows)
    summary["eval_pairs"] = len(files["eval"])
    (wd / "pairs_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1), flush=True)


# -- 3. train -------------------------------------------------------------------------------------

def train_command(wd: pathlib.Path, arm: str, n_pairs: int, *, model: str, batch: int, seed: int,
                  learning_rate: float, beta: float) -> list[str]:
    """One pass over ``n_pairs`` pairs of ``pairs_<arm>.jsonl`` in file order."""
    steps = max(math.ceil(n_pairs / batch), 1)
    return [
        sys.executable, "-m", "align_jax.main", "--config=configs/curry_dpo_ifeval.py", f"--workdir={wd / arm}",
        f"--config.model.name={model}", f"--config.data.train_path={wd / f'pairs_{arm}.jsonl'}",
        f"--config.data.eval_path={wd / 'pairs_eval.jsonl'}", f"--config.data.batch_size={batch}",
        f"--config.data.max_train_examples={n_pairs}", f"--config.data.seed={seed}",
        f"--config.train.steps={steps}", f"--config.train.eval_every={max(steps // 2, 1)}",
        f"--config.train.checkpoint_every={max(steps // 2, 1)}",
        f"--config.optimizer.learning_rate={learning_rate}", f"--config.loss.beta={beta}",
    ]


def train_stage(wd: pathlib.Path) -> None:
    n_pairs = sum(1 for _ in (wd / "pairs_curriculum.jsonl").open())
    for arm in F.arms:
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}; valid: {ARMS}")
        if (wd / arm / "export").exists():
            print(f"train {arm}: exists, skipped", flush=True)
            continue
        cmd = train_command(wd, arm, n_pairs, model=F.model, batch=F.train_batch, seed=F.seed,
                            learning_rate=F.learning_rate, beta=F.beta)
        (wd / arm).mkdir(parents=True, exist_ok=True)
        (wd / arm / "command.txt").write_text(shlex.join(cmd) + "\n")
        print(f"train {arm}:", shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)


# -- 4. eval, 5. report ---------------------------------------------------------------------------

def eval_stage(wd: pathlib.Path) -> None:
    for arm in F.eval_arms:
        out = wd / f"eval_{arm}"
        if (out / "results.json").exists():
            print(f"eval {arm}: exists, skipped", flush=True)
            continue
        model = f"--config.model.name={F.model}" if arm == "base" else f"--config.model.path={wd / arm / 'export'}"
        cmd = [sys.executable, "-m", "align_jax.evaluate", "--config=configs/eval/constraints_ood.py",
               f"--config.limit={F.eval_limit}", model, f"--workdir={out}", "--progress=false"]
        print(f"eval {arm}:", shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)


SPLITS = ("in_distribution", "ood_unseen_combinations", "ood_more_constraints", "ood_unseen_topics")


def report_table(results: dict[str, dict]) -> str:
    """Markdown: one row per model, prompt- and instruction-level strict accuracy per split, 95% CIs."""
    head = "| model | " + " | ".join(f"{s} prompt / instruction" for s in SPLITS) + " | OOD mean prompt |"
    lines = [head, "|---|" + "---|" * (len(SPLITS) + 1)]
    for name, r in results.items():
        m = r["metrics"]
        cells = [f"{m[f'{s}/prompt_level_strict']['value']:.3f} [{m[f'{s}/prompt_level_strict']['low']:.2f}, "
                 f"{m[f'{s}/prompt_level_strict']['high']:.2f}] / {m[f'{s}/instruction_level_strict']['value']:.3f}"
                 for s in SPLITS]
        ood = np.mean([m[f"{s}/prompt_level_strict"]["value"] for s in SPLITS[1:]])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ood:.3f} |")
    return "\n".join(lines)


def paired_vs_base(base: list[dict], other: list[dict], *, seed: int = 0, resamples: int = 2000) -> dict[str, dict]:
    """Paired differences (other - base) on the same constraints_ood prompts (``examples.jsonl`` rows):
    instruction-level strict (followed / all instructions) and prompt-level strict, per split, for
    the OOD splits together and for all, with 95% bootstrap intervals over prompts."""
    b, o = {r["key"]: r for r in base}, {r["key"]: r for r in other}
    if b.keys() != o.keys():
        raise ValueError("the two evaluations hold different prompts")
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("all", *SPLITS, "ood"):
        keys = [k for k in b if split == "all" or b[k]["split"] == split or (split == "ood" and b[k]["split"] != SPLITS[0])]
        nb, no = (np.array([sum(d[k]["strict"]) for k in keys], float) for d in (b, o))
        n = np.array([len(b[k]["strict"]) for k in keys], float)
        pb, po = (np.array([d[k]["follow_all_strict"] for k in keys], float) for d in (b, o))
        idx = rng.integers(0, len(keys), (resamples, len(keys)))
        boot_i = (no[idx].sum(1) - nb[idx].sum(1)) / n[idx].sum(1)
        boot_p = (po[idx] - pb[idx]).mean(1)
        out[split] = {"prompts": len(keys), "instruction_level_diff": float((no.sum() - nb.sum()) / n.sum()),
                      "instruction_ci": np.percentile(boot_i, [2.5, 97.5]).tolist(),
                      "prompt_level_diff": float((po - pb).mean()), "prompt_ci": np.percentile(boot_p, [2.5, 97.5]).tolist(),
                      "prompts_better": int((no > nb).sum()), "prompts_worse": int((no < nb).sum())}
    return out


def report_stage(wd: pathlib.Path) -> None:
    results = {arm: json.loads((wd / f"eval_{arm}" / "results.json").read_text())
               for arm in F.eval_arms if (wd / f"eval_{arm}" / "results.json").exists()}
    if GRPO_AFTER.exists():
        results["grpo (configs/grpo_ifeval.py, 30 steps)"] = json.loads(GRPO_AFTER.read_text())
    summary = {k: json.loads((wd / f"{k}_summary.json").read_text()) for k in ("sample", "pairs")
               if (wd / f"{k}_summary.json").exists()}
    train = {}
    for arm in ARMS:
        metrics = wd / arm / "metrics.jsonl"
        if metrics.exists():
            rows = read_jsonl(metrics)
            evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
            train[arm] = {"last_eval": evals[-1] if evals else None, "steps": max(r.get("step", 0) for r in rows)}
    md = ["# Curry-DPO vs random order vs GRPO on verifiable instruction constraints", "",
          f"Samples: `{json.dumps(summary.get('sample', {}))}`", "",
          f"Pairs: `{json.dumps(summary.get('pairs', {}))}`", "",
          "Greedy, 256 tokens, constraints_ood (95% bootstrap CIs for prompt-level strict):", "",
          report_table(results), ""]
    def examples(name):
        path = wd / f"eval_{name}" / "examples.jsonl"
        return read_jsonl(path) if path.exists() else None

    # each arm against the base, then Curry-DPO's claim itself: curriculum against random order
    comparisons = [(arm, "base") for arm in ARMS] + [("curriculum", "random")]
    paired = {}
    for arm, against in comparisons:
        a, b = examples(arm), examples(against)
        if a is not None and b is not None:
            paired[arm if against == "base" else f"{arm}_vs_{against}"] = paired_vs_base(b, a)
    for arm, rows in paired.items():
        title = f"against the base ({arm}; " if arm in ARMS else f"{arm.replace('_vs_', ' minus ')} ("
        md += [f"Paired {title}95% bootstrap over prompts):", "",
               "| split | instruction-level diff | prompt-level diff | prompts better / worse |", "|---|---|---|---|"]
        md += [f"| {k} | {r['instruction_level_diff']:+.3f} [{r['instruction_ci'][0]:.3f}, {r['instruction_ci'][1]:.3f}] | "
               f"{r['prompt_level_diff']:+.3f} [{r['prompt_ci'][0]:.3f}, {r['prompt_ci'][1]:.3f}] | "
               f"{r['prompts_better']} / {r['prompts_worse']} |" for k, r in rows.items()]
        md.append("")
    (wd / "report.md").write_text("\n".join(md))
    (wd / "results.json").write_text(json.dumps({"summary": summary, "train": train,
                                                 "eval": {k: v["metrics"] for k, v in results.items()},
                                                 "paired": paired}, indent=1))
    print("\n".join(md), flush=True)


def main(argv):
    del argv
    wd = work_folder(F.workdir, REPO)
    wd.mkdir(parents=True, exist_ok=True)
    stages = {"sample": sample_stage, "pairs": pairs_stage, "train": train_stage, "eval": eval_stage,
              "report": report_stage}
    run_stages(stages, F.stages, wd)


if __name__ == "__main__":
    define_flags()
    app.run(main)
