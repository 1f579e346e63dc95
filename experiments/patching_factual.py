"""Activation patching and the logit lens on a factual-recall prompt pair (SmolLM2-135M-Instruct).

    .venv/bin/python experiments/patching_factual.py --out_dir=experiments/results/patching_factual

The clean prompt (``--clean``, answer ``--clean_answer``) and the corrupted one (``--corrupt``, a
different landmark with as many tokens, answer ``--corrupt_answer``) run once each; then every
(layer, position) of ``resid_pre``, ``attn_out`` and ``mlp_out`` is restored in turn to its clean
value inside the corrupted run (``steering.patching``), and the recovered share of the clean logit
difference ``logit[clean answer] - logit[corrupt answer]`` at the last position is plotted.
The logit lens reads the clean run's residual stream after every block: the answer's probability
and rank by layer, at the last position.

Writes ``patching.png``, ``lens.png`` and ``results.json`` to ``--out_dir``.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from align_jax.models.interventions import SITES
from align_jax.models.registry import DEFAULT_MODEL, load_model
from align_jax.steering.lens import logit_lens
from align_jax.steering.patching import patching_heatmap


def define_flags():
    """The script's flags, defined only when it runs as a script: tests import its functions into
    a process whose other modules (align_jax.main) already own names like --workdir."""
    flags.DEFINE_string("model", DEFAULT_MODEL, "registered model")
    flags.DEFINE_string("clean", "The Eiffel Tower is located in the city of", "clean prompt")
    flags.DEFINE_string("corrupt", "The Colosseum is located in the city of", "corrupted prompt (same token count)")
    flags.DEFINE_string("clean_answer", " Paris", "the clean prompt's answer (its first token is scored)")
    flags.DEFINE_string("corrupt_answer", " Rome", "the corrupted prompt's answer")
    flags.DEFINE_string("out_dir", "experiments/results/patching_factual", "where results go")


def main(argv):
    del argv
    F = flags.FLAGS
    t0 = time.time()
    lm = load_model(F.model)
    tok = lm.tokenizer
    clean, corrupt = tok.encode(F.clean), tok.encode(F.corrupt)
    if len(clean) != len(corrupt):
        raise ValueError(f"the prompts must have the same token count: {len(clean)} vs {len(corrupt)} "
                         f"({[tok.decode([t]) for t in clean]} / {[tok.decode([t]) for t in corrupt]})")
    answers = (tok.encode(F.clean_answer)[0], tok.encode(F.corrupt_answer)[0])
    labels = [tok.decode([t]) for t in clean]
    out_dir = pathlib.Path(F.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {site: patching_heatmap(lm.model, clean, corrupt, answers, site=site) for site in SITES}
    lens = np.asarray(logit_lens(lm.model, jnp.asarray([clean]))[:, 0, -1])  # [L + 1, V]
    ranks = [(row > row[answers[0]]).sum() for row in lens]
    report = {
        "model": F.model, "clean": F.clean, "corrupt": F.corrupt, "tokens": labels,
        "answers": [F.clean_answer, F.corrupt_answer],
        "clean_logit_diff": results["resid_pre"].clean_diff, "corrupt_logit_diff": results["resid_pre"].corrupt_diff,
        "scores": {site: np.round(r.scores, 4).tolist() for site, r in results.items()},
        "lens_answer_prob": [float(np.exp(row[answers[0]])) for row in lens],
        "lens_answer_rank": [int(r) for r in ranks],
        "lens_top_token": [tok.decode([int(np.argmax(row))]) for row in lens],
        "seconds": round(time.time() - t0, 1),
    }
    (out_dir / "results.json").write_text(json.dumps(report, indent=1))
    _plot(results, labels, report, out_dir)
    print(f"clean diff {report['clean_logit_diff']:.2f}, corrupt diff {report['corrupt_logit_diff']:.2f}; "
          f"lens rank of{F.clean_answer!r} by layer {report['lens_answer_rank']}; {report['seconds']} s")


def _plot(results, labels, report, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5), sharey=True)
    for ax, (site, r) in zip(axes, results.items()):
        im = ax.imshow(r.scores, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, origin="lower")
        ax.set_xticks(range(len(labels)), [repr(s)[1:-1] for s in labels], rotation=60, ha="right", fontsize=8)
        ax.set_title(site, fontsize=10)
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=axes, fraction=0.02, label="share of the clean logit difference recovered")
    fig.suptitle(f"patching {report['clean']!r} into {report['corrupt']!r}: logit{report['answers'][0]!r} - "
                 f"logit{report['answers'][1]!r} (clean {report['clean_logit_diff']:.2f}, corrupt "
                 f"{report['corrupt_logit_diff']:.2f})", fontsize=10)
    fig.savefig(out_dir / "patching.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(report["lens_answer_prob"], marker=".")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel(f"p({report['answers'][0].strip()}) at the last position")
    ax.set_title(f"logit lens on {report['clean']!r}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "lens.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    define_flags()
    app.run(main)
