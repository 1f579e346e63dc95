"""Steering vectors from contrastive examples: CAA and GrAInS.

**CAA** (Contrastive Activation Addition; Rimsky et al., arXiv:2312.06681): each example is a
multiple-choice question with the behaviour's answer letter and the other one; the vector at
every layer is the mean difference of the residual stream at the answer-letter token,
``mean(h(q + "(A")) - mean(h(q + "(B"))`` with A the behaviour's letter. At inference
``alpha * v`` is added at one layer. (CAA adds from the end of the instruction on; here, as in
the refusal direction's activation addition, every position gets it.)

**GrAInS** (Gradient-based Attribution for Inference-time Steering; arXiv:2507.18043): for each
(prompt, preferred, dispreferred) example, integrated gradients of
``log p(preferred | prompt) - log p(dispreferred | prompt)`` score every token of both rows;
masking (replacing with ``pad_id``) the ``k`` tokens with the highest attribution in each row, the
last token's activation moves by ``h(row) - h(masked row)``; the first principal component of
those moves (sign aligned with their mean) is ``v_pos``; the same with the ``k`` lowest is
``v_neg``; the vector is ``v_pos - v_neg``. At inference it is added at one layer with the
norm of each activation kept: ``h' = (h + alpha v) * |h| / |h + alpha v|``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from align_jax.models.decoder import Decoder
from align_jax.steering.activations import site_activations
from align_jax.steering.attribution import contrastive_objective, integrated_gradients
from align_jax.steering.directions import diff_in_means


def caa_vectors(
    model: Decoder,
    positive_rows: Sequence[Sequence[int]],  # question + choices + the behaviour's "(A"
    negative_rows: Sequence[Sequence[int]],  # the same question + the other letter
    *,
    site: str = "resid_pre",
    batch_size: int = 16,
    pad_id: int = 0,
) -> np.ndarray:  # [L, D]: one vector per layer
    """CAA's mean activation difference at each row's last token, at every layer."""
    if len(positive_rows) != len(negative_rows) or not positive_rows:
        raise ValueError(f"need matching, non-empty positive/negative rows (got {len(positive_rows)} "
                         f"and {len(negative_rows)})")
    pos = site_activations(model, positive_rows, site=site, batch_size=batch_size, pad_id=pad_id)[:, 0]
    neg = site_activations(model, negative_rows, site=site, batch_size=batch_size, pad_id=pad_id)[:, 0]
    return diff_in_means(pos, neg)


def first_component(
    moves: np.ndarray,  # [N, D]
) -> np.ndarray:  # [D] unit, sign agreeing with the mean move
    """The first principal component of ``moves`` (centred), oriented like their mean."""
    x = np.asarray(moves, np.float64)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    v = vt[0]
    return (v if v @ x.mean(0) >= 0 else -v).astype(np.float32)


def token_attributions(
    model: Decoder,
    prompt: Sequence[int],
    preferred: Sequence[int],
    dispreferred: Sequence[int],
    steps: int = 20,
) -> tuple[np.ndarray, np.ndarray, float]:  # attributions [2, W], token ids [2, W], completeness gap
    """Integrated-gradients attribution (zero baseline) of every token of the rows ``prompt +
    preferred`` and ``prompt + dispreferred`` to the contrastive log-prob difference."""
    f, embeds, tokens = contrastive_objective(model, prompt, preferred, dispreferred)
    ig = integrated_gradients(f, embeds, steps=steps)
    return ig.attributions, tokens, ig.completeness_gap


def masked_top_k(
    row: Sequence[int],  # the real tokens of a row
    scores: np.ndarray,  # [len(row)] attributions
    k: int,
    highest: bool,
    pad_id: int,
) -> list[int]:
    """``row`` with its ``k`` highest (or lowest) scoring tokens replaced by ``pad_id``."""
    order = np.argsort(-scores if highest else scores, kind="stable")[:k]
    out = list(row)
    for i in order:
        out[int(i)] = pad_id
    return out


def grains_vectors(
    model: Decoder,
    examples: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]],  # (prompt, preferred, dispreferred)
    *,
    k: int = 3,
    steps: int = 20,
    pad_id: int = 0,
    batch_size: int = 16,
) -> tuple[np.ndarray, dict]:  # [L, D] vectors (resid_pre of each layer), diagnostics
    """GrAInS steering vectors at every layer (see the module docstring)."""
    if not examples:
        raise ValueError("need at least one example")
    rows, masked = [], {True: [], False: []}
    gaps = []
    for prompt, good, bad in examples:
        attr, _, gap = token_attributions(model, prompt, good, bad, steps)
        gaps.append(gap)
        for c, completion in enumerate((good, bad)):
            row = list(prompt) + list(completion)
            rows.append(row)
            for highest in (True, False):
                masked[highest].append(masked_top_k(row, attr[c, : len(row)], k, highest, pad_id))
    acts = lambda rs: site_activations(model, rs, batch_size=batch_size, pad_id=pad_id)[:, 0]  # [2N, L, D]
    full = acts(rows)
    v_pos = full - acts(masked[True])
    v_neg = full - acts(masked[False])
    n_layers = full.shape[1]
    vectors = np.stack([first_component(v_pos[:, l]) - first_component(v_neg[:, l]) for l in range(n_layers)])
    return vectors, {"completeness_gaps": np.asarray(gaps)}
