"""Activations of many prompts at a site, at positions counted from each prompt's end.

Prompts are left-padded so that offset ``-1`` is every row's last token (``-k``: the k-th from
the end, e.g. the chat template's post-instruction tokens); rows run ``batch_size`` at a time in
widths rounded up to ``bucket`` (one compile per width).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.models.decoder import Decoder
from align_jax.models.interventions import SITES, Intervention
from align_jax.sampling.sampler import pad_prompts


def left_padded_positions(mask: jax.Array) -> jax.Array:  # [B, W] -> [B, W] int32, first real token 0
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "site", "offsets"))
def _site_at_offsets(state, tokens, mask, intervention, *, graphdef, site, offsets):
    model = nnx.merge(graphdef, state)
    out = model(tokens, left_padded_positions(mask), mask, return_logits=False, capture=(site,),
                intervention=intervention)
    acts = out.captured[site]  # [L, B, W, D]
    picked = jnp.stack([acts[:, :, o] for o in offsets], axis=0)  # [P, L, B, D]
    return jnp.transpose(picked, (2, 0, 1, 3)).astype(jnp.float32)  # [B, P, L, D]


def site_activations(
    model: Decoder,
    rows: Sequence[Sequence[int]],  # N prompts (token ids), each at least max(-offsets) long
    *,
    site: str = "resid_pre",
    offsets: Sequence[int] = (-1,),  # negative: counted from each row's end
    batch_size: int = 16,
    bucket: int = 16,
    pad_id: int = 0,
    intervention: Intervention | None = None,
) -> np.ndarray:  # [N, P, L, D] float32
    """``site``'s activations of every row at ``offsets``, at every layer."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose from {SITES}")
    offsets = tuple(int(o) for o in offsets)
    if not offsets or any(o >= 0 for o in offsets):
        raise ValueError(f"offsets count from the end and must be negative, got {offsets}")
    for i, r in enumerate(rows):
        if len(r) < -min(offsets):
            raise ValueError(f"row {i} has {len(r)} tokens; offset {min(offsets)} needs {-min(offsets)}")
    graphdef, state = nnx.split(model)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = np.zeros((len(rows), len(offsets), model.cfg.num_layers, model.cfg.hidden_size), np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = [rows[i] for i in idx]
        batch += [batch[-1]] * (batch_size - len(batch))
        tokens, mask = pad_prompts(batch, pad_id, bucket)
        acts = _site_at_offsets(state, jnp.asarray(tokens), jnp.asarray(mask), intervention,
                                graphdef=graphdef, site=site, offsets=offsets)
        out[idx] = np.asarray(acts)[: len(idx)]
    return out
