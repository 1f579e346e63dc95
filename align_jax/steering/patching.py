"""Activation patching (causal tracing; Meng et al., arXiv:2202.05262; Heimersheim & Nanda,
arXiv:2404.15255): run a corrupted prompt, restore one (layer, position) of a site to its value in
the clean run, and measure how much of the clean behaviour comes back.

The metric is the logit difference ``logit[clean answer] - logit[corrupt answer]`` at the last
position; a cell's score is ``(m - m_corrupt) / (m_clean - m_corrupt)``: 1 where restoring that
activation alone recovers the clean answer, 0 where it does nothing. Each layer runs as one batch
of T rows, row t patching position t (a patch ``Intervention`` per row).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.models.decoder import Decoder
from align_jax.models.interventions import SITES, Edit, Intervention


@dataclasses.dataclass(frozen=True)
class PatchingResult:
    scores: np.ndarray  # [L, T] normalised logit-difference recovery
    logit_diffs: np.ndarray  # [L, T] raw patched logit differences
    clean_diff: float
    corrupt_diff: float
    site: str


@functools.partial(jax.jit, static_argnames=("graphdef", "site"))
def _patched_diffs(state, corrupt, clean_acts, layer, answers, *, graphdef, site):
    """Logit differences of T corrupted rows, row t with (layer, t) restored: [T]."""
    model = nnx.merge(graphdef, state)
    L = clean_acts.shape[0]
    t = corrupt.shape[0]
    rows = jnp.broadcast_to(corrupt, (t, t))
    mask = (jnp.arange(L)[:, None, None] == layer) & jnp.eye(t, dtype=bool)[None]  # [L, T rows, T positions]
    iv = Intervention(**{site: Edit(patch=clean_acts, patch_mask=mask)})
    logits = model(rows, intervention=iv).logits[:, -1].astype(jnp.float32)  # [T, V]
    return logits[:, answers[0]] - logits[:, answers[1]]


def patching_heatmap(
    model: Decoder,
    clean: Sequence[int],  # T token ids
    corrupt: Sequence[int],  # T token ids (same length: positions correspond)
    answers: tuple[int, int],  # (clean answer token, corrupt answer token)
    *,
    site: str = "resid_pre",
    layers: Sequence[int] | None = None,
) -> PatchingResult:
    """The recovery score of every (layer, position) of ``site`` (layers not run stay NaN)."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose from {SITES}")
    if len(clean) != len(corrupt):
        raise ValueError(f"clean and corrupt prompts need the same length, got {len(clean)} and {len(corrupt)}")
    clean_arr = jnp.asarray([clean], jnp.int32)
    corrupt_arr = jnp.asarray(corrupt, jnp.int32)
    run = model(clean_arr, capture=(site,))
    clean_logits = np.asarray(run.logits[0, -1], np.float64)
    corrupt_logits = np.asarray(model(corrupt_arr[None]).logits[0, -1], np.float64)
    a, b = answers
    clean_diff, corrupt_diff = clean_logits[a] - clean_logits[b], corrupt_logits[a] - corrupt_logits[b]
    L, t = model.cfg.num_layers, len(clean)
    diffs = np.full((L, t), np.nan)
    graphdef, state = nnx.split(model)
    for layer in range(L) if layers is None else layers:
        diffs[layer] = np.asarray(_patched_diffs(state, corrupt_arr, run.captured[site], jnp.int32(layer),
                                                 jnp.asarray(answers, jnp.int32), graphdef=graphdef, site=site))
    scores = (diffs - corrupt_diff) / (clean_diff - corrupt_diff)
    return PatchingResult(scores=scores, logit_diffs=diffs, clean_diff=float(clean_diff),
                          corrupt_diff=float(corrupt_diff), site=site)


def plot_heatmap(result: PatchingResult, token_labels: Sequence[str], path: str, title: str = "") -> None:
    """The layer x position heat-map as a PNG."""
    from matplotlib.figure import Figure  # a standalone figure: the caller's pyplot backend is left alone

    L, t = result.scores.shape
    fig = Figure(figsize=(max(6, 0.55 * t + 2), max(4, 0.22 * L + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(result.scores, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, origin="lower")
    ax.set_xticks(range(t), [repr(s)[1:-1] for s in token_labels], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"layer ({result.site})")
    ax.set_title(title or f"activation patching: recovered logit difference (clean {result.clean_diff:.2f}, "
                          f"corrupt {result.corrupt_diff:.2f})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
