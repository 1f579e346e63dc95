"""Per-pair log-probs from a prefix-shared, packed preference batch (:mod:`align_jax.data.pair_packing`).

One decoder pass over ``[R, L]`` rows with tree attention (``branch_ids``) gives the final hidden
states; each scored token reads the hidden state of its *parent* (``packed_parent``: the previous
token, or the last prompt token for the first rejected token), then the float32, vocabulary-
chunked log-softmax of :func:`align_jax.objectives.logprobs.sequence_logps`. The per-token values
are scattered to ``[P, T]`` per side by ``packed_pair_index`` / ``packed_completion_offset``, so the
losses receive the same :class:`SequenceLogps` (sums, lengths, per-token values in completion
order) as from the separate layout; only the time axis differs (completion-aligned, no prompt
columns), which no sequence-level loss can see.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from align_jax.models.decoder import Decoder
from align_jax.objectives.logprobs import sequence_logps
from align_jax.objectives.types import SequenceLogps

Batch = Mapping[str, jax.Array]
SIDE_CODES = {"chosen": 1, "rejected": 2}  # packed_target_side values


def is_packed(batch: Batch) -> bool:
    """Whether a batch is in the prefix-shared layout (``packed_*`` keys)."""
    return "packed_tokens" in batch


def packed_token_logps(model: Decoder, batch: Batch) -> SequenceLogps:  # [R, L], aligned with the rows
    """``log p(token_i | its prefix in the tree)`` for every scored token of the rows, 0 elsewhere."""
    tokens = batch["packed_tokens"]
    hidden = model(
        tokens,
        batch["packed_positions"],
        batch["packed_segment_ids"],
        branch_ids=batch["packed_branch_ids"],
        return_logits=False,
    ).final_hidden  # [R, L, D]
    parent = jnp.clip(batch["packed_parent"], 0, tokens.shape[-1] - 1)
    parent_hidden = jnp.take_along_axis(hidden, parent[..., None], axis=1)
    logits = model.logits_from_hidden(parent_hidden)  # [R, L, V]: row i predicts token i
    return sequence_logps(logits, tokens, batch["packed_target_side"] > 0)


def packed_sides_logps(
    model: Decoder, batch: Batch, max_completion_len: int | None = None
) -> dict[str, SequenceLogps]:
    """``{"chosen", "rejected"}`` -> SequenceLogps ``[P, max_completion_len]`` (default: row length).

    ``P = pair_mask.shape[-1]``; padding pairs get all-zero rows. Completion tokens at offsets
    ``>= max_completion_len`` would be dropped: keep it at least the longest completion.
    """
    logps = packed_token_logps(model, batch)
    num_pairs = batch["pair_mask"].shape[-1]
    width = max_completion_len or batch["packed_tokens"].shape[-1]
    side = batch["packed_target_side"]
    out = {}
    for name, code in SIDE_CODES.items():
        sel = side == code
        pair = jnp.where(sel, batch["packed_pair_index"], num_pairs)  # out of range: dropped
        offset = jnp.where(sel, batch["packed_completion_offset"], 0)

        def scatter(values, pair=pair, offset=offset, sel=sel):
            zeros = jnp.zeros((num_pairs, width), jnp.float32)
            return zeros.at[pair, offset].add(jnp.where(sel, values, 0.0).astype(jnp.float32), mode="drop")

        out[name] = SequenceLogps(scatter(logps.token_logps), scatter(sel.astype(jnp.float32)))
    return out


def packed_example_weight(batch: Batch) -> jax.Array:  # [P] float32: pair_mask times example_weight
    weight = batch["pair_mask"].astype(jnp.float32)
    if "example_weight" in batch:
        weight = weight * batch["example_weight"].astype(jnp.float32)
    return weight
