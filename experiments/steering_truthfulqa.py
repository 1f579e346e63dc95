"""TruthfulQA MC1 under steering: baseline vs CAA (arXiv:2312.06681) vs GrAInS (arXiv:2507.18043).

    .venv/bin/python experiments/steering_truthfulqa.py --data_path=../shared/data/truthfulqa/TruthfulQA.csv \
        --models=smollm2-135m-instruct,gemma3-270m --out_dir=experiments/results/steering_truthfulqa

The 817 questions are split in half by a seeded permutation. The **fit half** gives the vectors
(``--n_select`` of its questions are kept apart to choose each method's layer and strength); the
**test half** is only scored at the end, once per method. MC1: each option is the continuation
``" <answer>"`` of ``"Q: <question>\\nA:"``, scored by its summed log-prob (the
``truthfulqa_mc`` suite's ``sum`` scoring); accuracy with Wilson 95% CIs, and the paired
difference to the baseline with a bootstrap CI.

- CAA: the fit questions as chat-templated A/B questions (best answer vs one incorrect answer,
  letters shuffled), the vector the mean ``resid_pre`` difference at the answer letter between
  the truthful and the untruthful letter; ``alpha * v`` added at one layer, every position
  (multipliers ``--caa_alphas``).
- GrAInS: ``--grains_examples`` fit questions as (prompt, best answer, an incorrect answer);
  integrated-gradients token attributions (``--ig_steps``), top/bottom ``--grains_k`` tokens
  masked, first principal components of the activation moves; added at one layer with each
  activation's norm kept, ``alpha = c * (median residual norm at that layer)``, c in
  ``--grains_scales``.
- Capability check: greedy short answers to ``--factual_n`` questions of the project's factual QA
  test split (``evals/suites/factual_qa.py``'s prompt and matcher), with each method's chosen
  intervention.

Writes ``results.json`` and ``accuracy.png`` to ``--out_dir``.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from align_jax.bootstrap import bootstrap_ci
from align_jax.data.factual_qa import split_factual_qa
from align_jax.evals.factual_qa import answer_matches
from align_jax.evals.runner import chat_prompt_ids, generate_greedy
from align_jax.evals.suites.factual_qa import QUESTION_PROMPT, first_line
from align_jax.evals.suites.truthfulqa_mc import option_logprobs
from align_jax.evals.truthfulqa import load_truthfulqa, mc_scoring_pairs
from align_jax.models.interventions import add_vector
from align_jax.models.registry import load_model
from align_jax.safety.refusal.metrics import wilson_interval
from align_jax.steering.activations import site_activations
from align_jax.steering.vectors import caa_vectors, grains_vectors


def define_flags():
    """The script's flags, defined only when it runs as a script: tests import its functions into
    a process whose other modules (align_jax.main) already own names like --workdir."""
    flags.DEFINE_string("data_path", "../shared/data/truthfulqa/TruthfulQA.csv", "TruthfulQA.csv")
    flags.DEFINE_list("models", ["smollm2-135m-instruct", "gemma3-270m"], "registered models")
    flags.DEFINE_string("out_dir", "experiments/results/steering_truthfulqa", "where results go")
    flags.DEFINE_integer("seed", 0, "split, shuffling and bootstrap seed")
    flags.DEFINE_integer("n_select", 60, "fit-half questions held apart to choose layer and strength")
    flags.DEFINE_list("layer_fracs", ["0.3", "0.5", "0.7"], "candidate layers, as fractions of the depth")
    flags.DEFINE_list("caa_alphas", ["1", "2", "4"], "CAA multipliers")
    flags.DEFINE_list("grains_scales", ["0.1", "0.25", "0.5"], "GrAInS alpha / median residual norm")
    flags.DEFINE_integer("grains_examples", 50, "GrAInS fit examples (the paper: 50)")
    flags.DEFINE_integer("grains_k", 3, "tokens masked per row (the paper: 3)")
    flags.DEFINE_integer("ig_steps", 20, "integrated-gradients steps (the paper: 20)")
    flags.DEFINE_integer("factual_n", 100, "factual QA test questions for the capability check")
    flags.DEFINE_integer("batch_size", 32, "scoring batch")
    flags.DEFINE_integer("limit", 0, "use only this many TruthfulQA questions (0: all; smoke runs)")


LETTERS = ("A", "B")


def _ab_rows(lm, items, rng) -> tuple[list[list[int]], list[list[int]]]:
    """CAA rows: chat-templated A/B question + the truthful / untruthful answer letter."""
    pos, neg = [], []
    for item in items:
        wrong = [c for i, c in enumerate(item.choices) if i != item.correct_index]
        pair = [item.correct_answer, wrong[rng.integers(len(wrong))]]
        truthful_first = bool(rng.integers(2))
        shown = pair if truthful_first else pair[::-1]
        text = f"{item.question}\n\nChoices:\n (A) {shown[0]}\n (B) {shown[1]}"
        prompt = chat_prompt_ids(lm, text)
        good, bad = ("A", "B") if truthful_first else ("B", "A")
        pos.append(prompt + lm.tokenizer.encode(f"({good}"))
        neg.append(prompt + lm.tokenizer.encode(f"({bad}"))
    return pos, neg


def _mc1(lm, items, iv, batch_size) -> np.ndarray:
    """[N] bool: the best answer has the highest summed log-prob."""
    per_item = option_logprobs(lm, items, batch_size=batch_size, bucket=32, intervention=iv)
    return np.asarray([int(np.argmax([lp.sum() for lp in lps])) == it.correct_index
                       for lps, it in zip(per_item, items)])


def _factual(lm, items, iv, batch_size) -> np.ndarray:
    prompts = [chat_prompt_ids(lm, QUESTION_PROMPT.format(question=it.question)) for it in items]
    gens = generate_greedy(lm, prompts, max_new_tokens=24, batch_size=batch_size, intervention=iv)  # as the suite
    return np.asarray([bool(first_line(g.text)) and answer_matches(first_line(g.text), it, mode="contains")
                       for g, it in zip(gens, items)])


def _acc(flags_: np.ndarray) -> dict:
    k, n = int(flags_.sum()), int(flags_.size)
    lo, hi = wilson_interval(k, n)
    return {"accuracy": k / n, "k": k, "n": n, "wilson_low": lo, "wilson_high": hi}


def _paired(a: np.ndarray, b: np.ndarray, seed: int) -> dict:
    ci = bootstrap_ci(lambda x, y: float(np.mean(x) - np.mean(y)), a.astype(float), b.astype(float), seed=seed)
    return {"diff": ci.point, "low": ci.low, "high": ci.high}


def run_model(name: str, items, F, log) -> dict:
    t0 = time.time()
    lm = load_model(name)
    cfg = lm.model.cfg
    rng = np.random.default_rng(F.seed)
    order = rng.permutation(len(items))
    fit = [items[i] for i in order[: len(items) // 2]]
    test = [items[i] for i in order[len(items) // 2:]]
    select, vec_fit = fit[: F.n_select], fit[F.n_select:]
    layers = sorted({int(float(f) * cfg.num_layers) for f in F.layer_fracs})
    pool = split_factual_qa(seed=F.seed)["test"]  # grouped by category: sample across them
    factual = [pool[i] for i in np.random.default_rng([F.seed, 3]).permutation(len(pool))[: F.factual_n]]
    out = {"model": name, "num_layers": cfg.num_layers, "n_fit": len(vec_fit), "n_select": len(select),
           "n_test": len(test), "candidate_layers": layers}

    base_select = _mc1(lm, select, None, F.batch_size)
    log(f"[{name}] baseline on select {base_select.mean():.3f} ({time.time() - t0:.0f} s)")

    # CAA vectors from the fit questions (minus the selection ones).
    pos, neg = _ab_rows(lm, vec_fit, np.random.default_rng([F.seed, 1]))
    caa = caa_vectors(lm.model, pos, neg, batch_size=F.batch_size, pad_id=lm.tokenizer.pad_id or 0)
    log(f"[{name}] CAA vectors from {len(pos)} A/B pairs ({time.time() - t0:.0f} s)")

    # GrAInS vectors from the first fit questions: (prompt, best answer, an incorrect answer).
    tok = lm.tokenizer
    g_rng = np.random.default_rng([F.seed, 2])
    examples = []
    for item in vec_fit[: F.grains_examples]:
        pairs = mc_scoring_pairs(item)
        wrong = [i for i in range(len(item.choices)) if i != item.correct_index]
        bad = wrong[g_rng.integers(len(wrong))]
        examples.append((tok.encode(pairs[0][0], add_special_tokens=True), tok.encode(pairs[item.correct_index][1]),
                         tok.encode(pairs[bad][1])))
    grains, info = grains_vectors(lm.model, examples, k=F.grains_k, steps=F.ig_steps, pad_id=tok.pad_id or 0,
                                  batch_size=F.batch_size)
    gaps = info["completeness_gaps"]
    log(f"[{name}] GrAInS vectors from {len(examples)} examples, |completeness gap| median "
        f"{np.median(np.abs(gaps)):.3f} ({time.time() - t0:.0f} s)")
    prompts = [tok.encode(mc_scoring_pairs(it)[0][0], add_special_tokens=True) for it in vec_fit[:64]]
    norms = np.median(np.linalg.norm(site_activations(lm.model, prompts, batch_size=F.batch_size,
                                                      pad_id=tok.pad_id or 0)[:, 0], axis=-1), axis=0)  # [L]

    def intervention(method, layer, strength):
        if method == "caa":
            return add_vector("resid_pre", cfg.num_layers, layer, jnp.asarray(caa[layer]), alpha=strength)
        v = grains[layer] / np.linalg.norm(grains[layer])
        return add_vector("resid_pre", cfg.num_layers, layer, jnp.asarray(v), alpha=strength * float(norms[layer]),
                          keep_norm=True)

    sweeps, chosen = {}, {}
    for method, strengths in (("caa", [float(a) for a in F.caa_alphas]),
                              ("grains", [float(c) for c in F.grains_scales])):
        grid = {}
        for layer in layers:
            for s in strengths:
                grid[(layer, s)] = float(_mc1(lm, select, intervention(method, layer, s), F.batch_size).mean())
                log(f"[{name}] {method} layer {layer} strength {s}: select acc {grid[(layer, s)]:.3f} "
                    f"({time.time() - t0:.0f} s)")
        best = max(grid, key=lambda k: (grid[k], -k[1]))  # ties: the weaker intervention
        chosen[method] = best
        sweeps[method] = [{"layer": l, "strength": s, "select_accuracy": a} for (l, s), a in grid.items()]

    base = _mc1(lm, test, None, F.batch_size)
    base_fact = _factual(lm, factual, None, F.batch_size)
    out["baseline"] = {"select_accuracy": float(base_select.mean()), "test": _acc(base), "factual_qa": _acc(base_fact)}
    for method, (layer, s) in chosen.items():
        iv = intervention(method, layer, s)
        acc = _mc1(lm, test, iv, F.batch_size)
        fact = _factual(lm, factual, iv, F.batch_size)
        out[method] = {"layer": layer, "strength": s, "sweep": sweeps[method], "test": _acc(acc),
                       "test_minus_baseline": _paired(acc, base, F.seed), "factual_qa": _acc(fact),
                       "factual_minus_baseline": _paired(fact, base_fact, F.seed)}
        log(f"[{name}] {method} (layer {layer}, strength {s}): test {acc.mean():.3f} vs baseline {base.mean():.3f}; "
            f"factual QA {fact.mean():.3f} vs {base_fact.mean():.3f} ({time.time() - t0:.0f} s)")
    out["grains_completeness_gap_median_abs"] = float(np.median(np.abs(gaps)))
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main(argv):
    del argv
    F = flags.FLAGS
    path = pathlib.Path(F.data_path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: pass --data_path (the project's copy is "
                                f"../shared/data/truthfulqa/TruthfulQA.csv)")
    items = load_truthfulqa(path, seed=F.seed)
    if F.limit:
        items = items[: F.limit]
    out_dir = pathlib.Path(F.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)
    results = {"seed": F.seed, "n_questions": len(items), "models": []}
    for name in F.models:
        results["models"].append(run_model(name, items, F, log))
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    _plot(results, out_dir / "accuracy.png")
    log(json.dumps(results, indent=1))


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    methods = ("baseline", "caa", "grains")
    for ax, key, title in ((axes[0], "test", "TruthfulQA MC1 (held-out half)"),
                           (axes[1], "factual_qa", "factual QA (capability)")):
        for j, m in enumerate(results["models"]):
            vals = [m[x][key] for x in methods]
            x = np.arange(len(methods)) + 0.35 * j
            y = [v["accuracy"] for v in vals]
            err = [[v["accuracy"] - v["wilson_low"] for v in vals], [v["wilson_high"] - v["accuracy"] for v in vals]]
            ax.bar(x, y, 0.35, yerr=err, capsize=3, label=m["model"])
        ax.set_xticks(np.arange(len(methods)) + 0.175, methods)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("accuracy (Wilson 95% CI)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    define_flags()
    app.run(main)
