"""The refusal direction of Arditi et al. (arXiv:2406.11717) on SmolLM2-135M-Instruct.

    .venv/bin/python experiments/refusal_direction.py --data_dir=../shared/data/refusal_direction \
        --out_dir=experiments/results/refusal_direction

1. Candidates: difference in means of ``resid_pre`` between ``--n_train`` harmful and harmless
   train instructions (chat-templated) at each post-instruction token and layer.
2. Selection on ``--n_val`` val prompts of each kind (``steering.directions``): lowest refusal
   score of harmful prompts under directional ablation, among candidates in the first 80% of
   layers whose addition raises harmless prompts' refusal score above ``--min_induce`` and whose
   ablation moves harmless next-token distributions by KL <= 0.1 (if no candidate's addition
   passes ``--min_induce``, the choice is made among those passing KL, and the results say so).
3. Held-out test (``--n_test`` of each kind, greedy, ``--max_new_tokens``): refusal rate of
   harmful prompts with and without ablation, of harmless prompts with and without addition
   (``+r`` at the chosen layer, every position), by the refusal-phrase judge, with Wilson 95% CIs;
   with addition also at the smallest multiple ``k r`` (``--add_scales``) whose val harmless
   refusal score passes ``--min_induce`` (else the largest tried), when that is not 1.
   ``--reuse_selection=<previous out_dir>`` skips steps 1-2 (their results are copied).

Writes ``results.json``, ``generations.jsonl`` (every test completion) and ``scores.png`` (the
bypass / induce / KL maps) to ``--out_dir``.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from align_jax.evals.refusal.substring_judge import first_refusal_phrase
from align_jax.evals.runner import chat_prompt_ids, generate_greedy
from align_jax.models.interventions import ablate_direction, add_vector
from align_jax.models.registry import DEFAULT_MODEL, load_model
from align_jax.safety.refusal.metrics import wilson_interval
from align_jax.steering.activations import site_activations
from align_jax.steering.directions import (
    DirectionChoice, diff_in_means, last_logits, refusal_log_odds, select_refusal_direction,
)


def define_flags():
    """The script's flags, defined only when it runs as a script: tests import its functions into
    a process whose other modules (align_jax.main) already own names like --workdir."""
    flags.DEFINE_string("data_dir", "../shared/data/refusal_direction", "the refusal_direction folder")
    flags.DEFINE_string("out_dir", "experiments/results/refusal_direction", "where results go")
    flags.DEFINE_string("model", DEFAULT_MODEL, "registered model")
    flags.DEFINE_string("model_path", None, "a Hugging Face folder or .gguf file instead of --model")
    flags.DEFINE_integer("n_train", 128, "train prompts of each kind")
    flags.DEFINE_integer("n_val", 24, "val prompts of each kind (direction selection)")
    flags.DEFINE_integer("n_test", 100, "held-out test prompts of each kind")
    flags.DEFINE_integer("max_new_tokens", 64, "greedy completion length")
    flags.DEFINE_integer("batch_size", 32, "generation batch")
    flags.DEFINE_list("refusal_tokens", ["I", "As"], "first tokens whose probability is the refusal score")
    flags.DEFINE_float("min_induce", 0.0, "addition must raise harmless refusal scores above this")
    flags.DEFINE_integer("seed", 0, "prompt sampling seed")
    flags.DEFINE_list("add_scales", ["1", "2", "4", "8"], "multiples of the direction tried for addition on val")
    flags.DEFINE_string("reuse_selection", None, "a previous --out_dir: reuse its direction and val scores")


def _load(data_dir: pathlib.Path, name: str, n: int, seed: int) -> list[str]:
    path = data_dir / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: pass --data_dir (the project's copy is ../shared/data/refusal_direction)")
    rows = [r["instruction"] for r in json.loads(path.read_text())]
    order = np.random.default_rng([seed, len(rows)]).permutation(len(rows))
    return [rows[i] for i in order[:n]]


def _rate(flags_: list[bool]) -> dict:
    k, n = int(sum(flags_)), len(flags_)
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n, "k": k, "n": n, "wilson_low": lo, "wilson_high": hi}


def main(argv):
    del argv
    F = flags.FLAGS
    data_dir = pathlib.Path(F.data_dir)
    out_dir = pathlib.Path(F.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    lm = load_model(None, F.model_path) if F.model_path else load_model(F.model)
    tok, cfg = lm.tokenizer, lm.model.cfg
    encode = lambda texts: [chat_prompt_ids(lm, t) for t in texts]
    refusal_ids = sorted({tok.encode(t)[0] for t in F.refusal_tokens})
    # The chat template's post-instruction tokens: what follows the instruction in every prompt.
    probe = chat_prompt_ids(lm, "x")
    suffix = probe[probe.index(tok.encode("x")[0]) + 1:]
    offsets = tuple(range(-len(suffix), 0))
    print(f"post-instruction tokens {[tok.decode([t]) for t in suffix]}; refusal tokens {refusal_ids}", flush=True)

    split = {name: encode(_load(data_dir, name, n, F.seed)) for name, n in (
        ("harmful_train", F.n_train), ("harmless_train", F.n_train), ("harmful_val", F.n_val),
        ("harmless_val", F.n_val), ("harmful_test", F.n_test), ("harmless_test", F.n_test))}
    ids = jnp.asarray(refusal_ids)
    if F.reuse_selection:
        prev_dir = pathlib.Path(F.reuse_selection)
        prev = json.loads((prev_dir / "results.json").read_text())
        val = prev["val_scores"]
        choice = DirectionChoice(offset=prev["chosen"]["offset"], layer=prev["chosen"]["layer"],
                                 direction=np.load(prev_dir / "direction.npy"), bypass=np.asarray(val["bypass"]),
                                 induce=np.asarray(val["induce"]), kl=np.asarray(val["kl"]),
                                 baseline_harmful=val["baseline_harmful"], baseline_harmless=val["baseline_harmless"],
                                 relaxed=prev["chosen"]["induce_filter_relaxed"])
        print(f"reusing the direction of {prev_dir}", flush=True)
    else:
        harmful_acts = site_activations(lm.model, split["harmful_train"], offsets=offsets, batch_size=32)
        harmless_acts = site_activations(lm.model, split["harmless_train"], offsets=offsets, batch_size=32)
        candidates = diff_in_means(harmful_acts, harmless_acts)  # [P, L, D]
        print(f"candidates {candidates.shape} in {time.time() - t0:.0f} s", flush=True)
        choice = select_refusal_direction(lm.model, candidates, offsets, split["harmful_val"], split["harmless_val"],
                                          refusal_ids, min_induce=F.min_induce, relax_if_empty=True,
                                          pad_id=tok.pad_id or 0)
    print(f"chose offset {choice.offset} layer {choice.layer}: bypass {choice.bypass[offsets.index(choice.offset), choice.layer]:.3f} "
          f"(baseline {choice.baseline_harmful:.3f}), induce {choice.induce[offsets.index(choice.offset), choice.layer]:.3f} "
          f"(baseline {choice.baseline_harmless:.3f}){' [induce filter relaxed: no candidate passed]' if choice.relaxed else ''} "
          f"in {time.time() - t0:.0f} s", flush=True)
    # Addition at larger multiples of the direction, on val: the smallest that lifts the harmless
    # refusal score above --min_induce (else the largest tried) gets a test condition of its own.
    scale_scores = {}
    for k in [float(x) for x in F.add_scales]:
        iv = add_vector("resid_pre", cfg.num_layers, choice.layer, jnp.asarray(choice.direction), alpha=k)
        scale_scores[k] = float(refusal_log_odds(last_logits(lm.model, split["harmless_val"], iv,
                                                             pad_id=tok.pad_id or 0), ids).mean())
        print(f"addition x{k:g}: harmless val refusal score {scale_scores[k]:.3f}", flush=True)
    passing = [k for k, v in scale_scores.items() if v > F.min_induce]
    add_scale = min(passing) if passing else max(scale_scores)

    ablate = ablate_direction(jnp.asarray(choice.direction), cfg.num_layers)
    add = add_vector("resid_pre", cfg.num_layers, choice.layer, jnp.asarray(choice.direction))
    conditions = {
        "harmful/plain": ("harmful_test", None), "harmful/ablated": ("harmful_test", ablate),
        "harmless/plain": ("harmless_test", None), "harmless/added": ("harmless_test", add),
    }
    if add_scale != 1.0:
        conditions[f"harmless/added_x{add_scale:g}"] = (
            "harmless_test", add_vector("resid_pre", cfg.num_layers, choice.layer, jnp.asarray(choice.direction),
                                        alpha=add_scale))
    texts = {name: _load(data_dir, name, F.n_test, F.seed) for name in ("harmful_test", "harmless_test")}
    results, lines = {}, []
    for cond, (name, iv) in conditions.items():
        gens = generate_greedy(lm, split[name], max_new_tokens=F.max_new_tokens, batch_size=F.batch_size,
                               intervention=iv, desc=cond)
        at = [first_refusal_phrase(g.text) for g in gens]
        score = np.asarray(refusal_log_odds(last_logits(lm.model, split[name], iv, pad_id=tok.pad_id or 0), ids))
        results[cond] = {"refusal_opening": _rate([0 <= a < 160 for a in at]),
                         "refusal_anywhere": _rate([a >= 0 for a in at]),
                         "refusal_score_mean": float(score.mean())}
        lines += [{"condition": cond, "prompt": p, "completion": g.text} for p, g in zip(texts[name], gens)]
        r = results[cond]["refusal_opening"]
        print(f"{cond}: refusal {r['rate']:.3f} [{r['wilson_low']:.3f}, {r['wilson_high']:.3f}] "
              f"score {score.mean():.3f} ({time.time() - t0:.0f} s)", flush=True)

    report = {
        "model": F.model_path or F.model, "seed": F.seed, "n_train": F.n_train, "n_val": F.n_val,
        "n_test": F.n_test, "max_new_tokens": F.max_new_tokens, "refusal_tokens": F.refusal_tokens,
        "offsets": list(offsets), "chosen": {"offset": choice.offset, "layer": choice.layer,
                                             "norm": float(np.linalg.norm(choice.direction)),
                                             "induce_filter_relaxed": choice.relaxed},
        "addition_scales_val": {f"{k:g}": v for k, v in scale_scores.items()}, "addition_scale_tested": add_scale,
        "val_scores": {"baseline_harmful": choice.baseline_harmful, "baseline_harmless": choice.baseline_harmless,
                       "bypass": choice.bypass.tolist(), "induce": choice.induce.tolist(), "kl": choice.kl.tolist()},
        "test": results, "seconds": round(time.time() - t0, 1),
    }
    (out_dir / "results.json").write_text(json.dumps(report, indent=1))
    with open(out_dir / "generations.jsonl", "w") as fh:
        for line in lines:
            fh.write(json.dumps(line) + "\n")
    np.save(out_dir / "direction.npy", choice.direction)
    _plot(choice, offsets, [tok.decode([t]) for t in suffix], out_dir / "scores.png")
    print(json.dumps(report["test"], indent=1))


def _plot(choice, offsets, labels, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    for ax, (name, grid) in zip(axes, (("bypass: harmful refusal score, ablated", choice.bypass),
                                       ("induce: harmless refusal score, added", choice.induce),
                                       ("KL(plain || ablated), harmless", choice.kl))):
        for i, label in enumerate(labels):
            ax.plot(grid[i], label=repr(label)[1:-1], marker=".")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("layer")
    axes[0].axhline(choice.baseline_harmful, color="k", ls="--", lw=0.8, label="no intervention")
    axes[1].axhline(choice.baseline_harmless, color="k", ls="--", lw=0.8)
    axes[0].plot([choice.layer], [choice.bypass[list(offsets).index(choice.offset), choice.layer]], "r*", ms=12)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    define_flags()
    app.run(main)
