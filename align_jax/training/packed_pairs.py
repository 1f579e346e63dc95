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
SCORED_TOKEN_CHUNK = 256  # default positions per unembedding chunk of scored_token_logps (opt-in)
DIGEST_MULTIPLIER = 2654435761  # Knuth's multiplicative hash (an example's identity, mod 2^32)


def is_packed(batch: Batch) -> bool:
    """Whether a batch is in the prefix-shared layout (``packed_*`` keys)."""
    return "packed_tokens" in batch


def packed_token_logps(
    model: Decoder, batch: Batch, *, token_chunk_size: int | None = None
) -> SequenceLogps:  # [R, L], aligned with the rows
    """``log p(token_i | its prefix in the tree)`` for every scored token of the rows, 0 elsewhere.

    ``None`` (default) unembeds every position of ``[R, L]``; with ``token_chunk_size`` only the
    scored positions are, see :func:`scored_token_logps`. Measured on XLA:CPU (benchmarks/README.md,
    2026-12-02) the scored-only path is no faster on the fixed workload and 30% slower on the
    realistic one, so it is opt-in.
    """
    tokens = batch["packed_tokens"]
    hidden = model(
        tokens,
        batch["packed_positions"],
        batch["packed_segment_ids"],
        branch_ids=batch["packed_branch_ids"],
        return_logits=False,
    ).final_hidden  # [R, L, D]
    parent = jnp.clip(batch["packed_parent"], 0, tokens.shape[-1] - 1)
    scored = batch["packed_target_side"] > 0
    if token_chunk_size is not None:
        values = scored_token_logps(model, hidden, parent, tokens, scored, token_chunk_size)
        return SequenceLogps(values, scored.astype(jnp.float32))
    parent_hidden = jnp.take_along_axis(hidden, parent[..., None], axis=1)
    logits = model.logits_from_hidden(parent_hidden)  # [R, L, V]: row i predicts token i
    return sequence_logps(logits, tokens, scored)


def scored_token_logps(
    model: Decoder,
    hidden: jax.Array,  # [R, L, D] final hidden states
    parent: jax.Array,  # [R, L] int: the position in the row whose state predicts each token
    tokens: jax.Array,  # [R, L] int
    scored: jax.Array,  # [R, L] bool
    token_chunk_size: int = SCORED_TOKEN_CHUNK,
) -> jax.Array:  # [R, L] float32, 0 where not scored
    """Log-probs of the scored tokens without unembedding the others (prompts, padding).

    The ``R * L`` positions are ordered scored-first (a stable sort), their parents' hidden
    states gathered, and cut into chunks of ``token_chunk_size``; each chunk runs the
    unembedding and the vocabulary-chunked log-softmax under ``lax.cond`` (a chunk with no
    scored token is skipped, in the forward and in the backward) inside a rematerialised
    ``lax.map``, so at most one ``[chunk, V]`` slice of logits exists at a time. The cost of the
    output layer is then proportional to the scored tokens, rounded up to one chunk.
    """
    if token_chunk_size < 1:
        raise ValueError(f"token_chunk_size must be >= 1, got {token_chunk_size}")
    r, length, d = hidden.shape
    n = r * length
    chunk = min(token_chunk_size, n)
    num_chunks = -(-n // chunk)
    flat_scored = scored.reshape(n)
    order = jnp.argsort(jnp.logical_not(flat_scored), stable=True)  # scored positions first
    source = (jnp.arange(r)[:, None] * length + parent).reshape(n)[order]
    pad = num_chunks * chunk - n
    h = jnp.pad(hidden.reshape(n, d)[source], ((0, pad), (0, 0))).reshape(num_chunks, chunk, d)
    labels = jnp.pad(tokens.reshape(n)[order], (0, pad)).reshape(num_chunks, chunk)
    mask = jnp.pad(flat_scored[order], (0, pad)).reshape(num_chunks, chunk)
    unembedding = model.unembedding()

    def one_chunk(args):
        h_c, labels_c, mask_c = args

        def compute():
            logits = model.logits_from_hidden(h_c[None], unembedding)  # [1, chunk, V]
            return sequence_logps(logits, labels_c[None], mask_c[None]).token_logps[0]

        return jax.lax.cond(mask_c.any(), compute, lambda: jnp.zeros((chunk,), jnp.float32))

    values = jax.lax.map(jax.checkpoint(one_chunk, prevent_cse=False), (h, labels, mask))  # [K, chunk]
    return jnp.zeros((n,), jnp.float32).at[order].set(values.reshape(-1)[:n]).reshape(r, length)


def packed_sides_logps(
    model: Decoder, batch: Batch, max_completion_len: int | None = None,
    *, token_chunk_size: int | None = None,
) -> dict[str, SequenceLogps]:
    """``{"chosen", "rejected"}`` -> SequenceLogps ``[P, max_completion_len]`` (default: row length).

    ``P = pair_mask.shape[-1]``; padding pairs get all-zero rows. Completion tokens at offsets
    ``>= max_completion_len`` would be dropped: keep it at least the longest completion.
    """
    logps = packed_token_logps(model, batch, token_chunk_size=token_chunk_size)
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


def packed_last_hidden(model: Decoder, batch: Batch) -> dict[str, jax.Array]:
    """``{"chosen", "rejected"}`` -> ``[P, D]``: the final hidden state of each pair's last token of
    that side (of its prompt, were the side empty), from one tree-attention pass: what a reward
    model's head reads, equal to the last token of the side's own row in the separate layout
    (same tokens, positions and visible context). Padding pairs read an arbitrary row."""
    hidden = model(batch["packed_tokens"], batch["packed_positions"], batch["packed_segment_ids"],
                   branch_ids=batch["packed_branch_ids"], return_logits=False).final_hidden  # [R, L, D]
    r, length, d = hidden.shape
    flat = hidden.reshape(r * length, d)
    index = jnp.arange(r * length, dtype=jnp.int32).reshape(r, length)
    num_pairs = batch["pair_mask"].shape[-1]
    prompt = (batch["packed_branch_ids"] == 0) & (batch["packed_segment_ids"] > 0)
    out = {}
    for name, code in SIDE_CODES.items():
        sel = prompt | (batch["packed_target_side"] == code)  # the side's tokens follow its prompt in the row
        pair = jnp.where(sel, batch["packed_pair_index"], num_pairs)  # out of range: dropped
        last = jnp.zeros((num_pairs,), jnp.int32).at[pair].max(jnp.where(sel, index, 0), mode="drop")
        out[name] = flat[last]
    return out


def digest_terms(
    tokens: jax.Array,  # [..., L] int
    positions: jax.Array,  # [..., L] int
) -> jax.Array:  # [..., L] uint32: token * (position + 1) * DIGEST_MULTIPLIER mod 2^32
    """Each token's share of its example's identity (summed over the example's real tokens)."""
    return tokens.astype(jnp.uint32) * ((positions.astype(jnp.uint32) + jnp.uint32(1)) * jnp.uint32(DIGEST_MULTIPLIER))


def packed_example_digest(batch: Batch) -> jax.Array:  # [P] uint32
    """:func:`align_jax.training.tasks.losses.example_digest` of each pair's prompt + chosen tokens,
    the same number as from the pair's chosen row in the separate layout."""
    num_pairs = batch["pair_mask"].shape[-1]
    sel = (batch["packed_segment_ids"] > 0) & (batch["packed_branch_ids"] <= 1)  # prompt and chosen
    terms = digest_terms(batch["packed_tokens"], batch["packed_positions"])
    pair = jnp.where(sel, batch["packed_pair_index"], num_pairs)
    return jnp.zeros((num_pairs,), jnp.uint32).at[pair].add(jnp.where(sel, terms, jnp.uint32(0)), mode="drop")


def packed_example_weight(batch: Batch) -> jax.Array:  # [P] float32: pair_mask times example_weight
    weight = batch["pair_mask"].astype(jnp.float32)
    if "example_weight" in batch:
        weight = weight * batch["example_weight"].astype(jnp.float32)
    return weight
