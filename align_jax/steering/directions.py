"""Difference-in-means directions and the refusal direction (Arditi et al., arXiv:2406.11717).

A candidate direction at (position, layer) is ``mean(harmful) - mean(harmless)`` of ``resid_pre``
activations at the chat template's post-instruction positions. Each candidate is scored on
validation prompts by

- ``bypass``: the mean refusal score of harmful prompts with the direction ablated everywhere
  (lower: ablation removes refusal better),
- ``induce``: the mean refusal score of harmless prompts with the direction added at its layer
  (must be > ``min_induce``, 0 in the paper: addition makes the model refuse),
- ``kl``: the mean KL(plain || ablated) of harmless prompts' last-position next-token
  distributions (must be <= ``max_kl``: ablation leaves harmless behaviour alone),

and the kept candidate (layers below ``max_layer_frac`` of the depth) with the lowest ``bypass``
wins. The refusal score is the log-odds that the first answer token is one of ``refusal_ids``
(e.g. "I" of "I cannot"): ``log p - log(1 - p)``, ``p = sum softmax(logits)[refusal_ids]``.
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
from align_jax.models.interventions import Intervention, ablate_direction, add_vector
from align_jax.sampling.sampler import pad_prompts
from align_jax.steering.activations import left_padded_positions


def diff_in_means(
    positive: np.ndarray,  # [N, ...] activations
    negative: np.ndarray,  # [M, ...]
) -> np.ndarray:  # [...] float32
    """``mean(positive) - mean(negative)`` (accumulated in float64)."""
    return (np.mean(np.asarray(positive, np.float64), 0) - np.mean(np.asarray(negative, np.float64), 0)).astype(np.float32)


def refusal_log_odds(
    logits: jax.Array,  # [B, V]
    refusal_ids: jax.Array,  # [R] int
) -> jax.Array:  # [B]
    """``log p - log(1 - p)`` with ``p`` the probability of the refusal tokens (eps 1e-8 as in the paper)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    p = probs[:, refusal_ids].sum(-1)
    return jnp.log(p + 1e-8) - jnp.log(1 - p + 1e-8)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _last_logits(state, tokens, mask, intervention, *, graphdef):
    model = nnx.merge(graphdef, state)
    out = model(tokens, left_padded_positions(mask), mask, return_logits=False, intervention=intervention)
    return model.logits_from_hidden(out.final_hidden[:, -1]).astype(jnp.float32)  # [B, V]


def last_logits(
    model: Decoder,
    rows: Sequence[Sequence[int]],
    intervention: Intervention | None = None,
    *,
    bucket: int = 16,
    pad_id: int = 0,
) -> jax.Array:  # [N, V] float32: next-token logits after each row
    tokens, mask = pad_prompts(rows, pad_id, bucket)
    graphdef, state = nnx.split(model)
    return _last_logits(state, jnp.asarray(tokens), jnp.asarray(mask), intervention, graphdef=graphdef)


@dataclasses.dataclass(frozen=True)
class DirectionChoice:
    offset: int  # position, counted from the prompt's end
    layer: int  # resid_pre of this block
    direction: np.ndarray  # [D] unnormalised difference in means
    bypass: np.ndarray  # [P, L] harmful refusal score under ablation (NaN: not scored)
    induce: np.ndarray  # [P, L] harmless refusal score under addition
    kl: np.ndarray  # [P, L]
    baseline_harmful: float  # mean refusal score without intervention
    baseline_harmless: float
    relaxed: bool = False  # no candidate passed ``induce > min_induce``; chosen among those passing KL only


def select_refusal_direction(
    model: Decoder,
    candidates: np.ndarray,  # [P, L, D] difference in means per (offset, layer)
    offsets: Sequence[int],  # the P offsets the candidates were taken at
    harmful_val: Sequence[Sequence[int]],
    harmless_val: Sequence[Sequence[int]],
    refusal_ids: Sequence[int],
    *,
    max_layer_frac: float = 0.8,
    max_kl: float = 0.1,
    min_induce: float = 0.0,
    relax_if_empty: bool = False,
    pad_id: int = 0,
) -> DirectionChoice:
    """The candidate that best removes refusal under ablation (see the module docstring).

    With ``relax_if_empty``, when no candidate's addition lifts the harmless refusal score above
    ``min_induce`` (a model that seldom refuses), the choice is made among the candidates that pass
    the KL filter, and ``DirectionChoice.relaxed`` says so; otherwise that raises ValueError.
    """
    n_pos, n_layers, _ = candidates.shape
    if n_layers != model.cfg.num_layers or n_pos != len(offsets):
        raise ValueError(f"candidates {candidates.shape} need [len(offsets)={len(offsets)}, "
                         f"num_layers={model.cfg.num_layers}, D]")
    ids = jnp.asarray(list(refusal_ids), jnp.int32)
    base_harmful = refusal_log_odds(last_logits(model, harmful_val, pad_id=pad_id), ids)
    base_logits = last_logits(model, harmless_val, pad_id=pad_id)
    base_harmless = refusal_log_odds(base_logits, ids)
    base_logp = jax.nn.log_softmax(base_logits, -1)
    bypass, induce, kl = (np.full((n_pos, n_layers), np.nan) for _ in range(3))
    for i in range(n_pos):
        for layer in range(int(max_layer_frac * n_layers)):
            r = jnp.asarray(candidates[i, layer])
            ablate = ablate_direction(r, n_layers)
            bypass[i, layer] = float(refusal_log_odds(last_logits(model, harmful_val, ablate, pad_id=pad_id), ids).mean())
            added = add_vector("resid_pre", n_layers, layer, r)
            induce[i, layer] = float(refusal_log_odds(last_logits(model, harmless_val, added, pad_id=pad_id), ids).mean())
            logp = jax.nn.log_softmax(last_logits(model, harmless_val, ablate, pad_id=pad_id), -1)
            kl[i, layer] = float((jnp.exp(base_logp) * (base_logp - logp)).sum(-1).mean())
    kept = np.where((induce > min_induce) & (kl <= max_kl) & np.isfinite(bypass), bypass, np.inf)
    relaxed = relax_if_empty and not np.isfinite(kept).any()
    if relaxed:
        kept = np.where((kl <= max_kl) & np.isfinite(bypass), bypass, np.inf)
    if not np.isfinite(kept).any():
        raise ValueError(f"no candidate direction passes the filters (induce > {min_induce}, KL <= {max_kl}); "
                         f"best induce {np.nanmax(induce):.3f}, least KL {np.nanmin(kl):.3f}")
    i, layer = np.unravel_index(np.argmin(kept), kept.shape)
    return DirectionChoice(offset=int(offsets[i]), layer=int(layer), direction=np.asarray(candidates[i, layer]),
                           bypass=bypass, induce=induce, kl=kl, baseline_harmful=float(base_harmful.mean()),
                           baseline_harmless=float(base_harmless.mean()), relaxed=relaxed)
