"""Per-token log-probabilities of given labels, with a log-softmax chunked over the vocabulary.

A full float32 log-softmax over a 256k vocabulary is ``B*T*256k*4`` bytes (and as much
again for its gradient residuals). Here the normaliser ``logsumexp_v logits`` is
accumulated over vocabulary chunks with ``lax.scan``; each step is rematerialised
(``jax.checkpoint``), so neither the forward nor the backward pass holds more than one
``[B, T, vocab_chunk_size]`` float32 slice. The logits keep their dtype (e.g. bfloat16).
Caveat: XLA:CPU upcasts a bfloat16 ``logits`` input to float32 as a whole before the loop
(its bf16 normalisation; seen in the compiled HLO), so on CPU the saving holds for float32
logits only. Backends with native bfloat16 are expected not to do this (not yet checked).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from align_jax.objectives.types import SequenceLogps


def _chunked_logsumexp(
    logits: jax.Array,  # [B, T, V] any float dtype
    vocab_chunk_size: int,
    scale: float,
) -> jax.Array:  # [B, T] float32: logsumexp_v(scale * logits)
    vocab = logits.shape[-1]
    chunk = min(vocab_chunk_size, vocab)
    num_chunks = math.ceil(vocab / chunk)

    def step(acc: jax.Array, index: jax.Array) -> tuple[jax.Array, None]:
        start = index * chunk
        # The last chunk is shifted left to stay in range; columns it shares with the
        # previous chunk are masked so that each vocabulary entry counts once.
        offset = jnp.minimum(start, vocab - chunk)
        x = lax.dynamic_slice_in_dim(logits, offset, chunk, axis=-1).astype(jnp.float32)
        fresh = offset + jnp.arange(chunk) >= start
        x = jnp.where(fresh, scale * x, -jnp.inf)
        return jnp.logaddexp(acc, jax.nn.logsumexp(x, axis=-1)), None

    init = jnp.full(logits.shape[:-1], -jnp.inf, jnp.float32)
    total, _ = lax.scan(jax.checkpoint(step, prevent_cse=False), init, jnp.arange(num_chunks))
    return total


def sequence_logps(
    logits: jax.Array,  # [B, T, V] float (bf16 or f32); position t predicts labels[:, t]
    labels: jax.Array,  # [B, T] int; any value (e.g. -100) where loss_mask == 0
    loss_mask: jax.Array,  # [B, T] 1 = score this token
    *,
    vocab_chunk_size: int = 16384,
    with_sq_norm: bool = False,
) -> SequenceLogps:
    """``log p(labels[b, t] | ...)`` per token, 0 at masked positions.

    Labels must already be aligned with the logits (the caller shifts). Masked labels are
    never used as indices, so padding ids such as -100 are safe. With ``with_sq_norm`` the
    result also carries ``log sum_v p_v^2`` per token (WPO's aligned weights), computed in
    the same chunked way.
    """
    if vocab_chunk_size < 1:
        raise ValueError(f"vocab_chunk_size must be >= 1, got {vocab_chunk_size}")
    valid = loss_mask > 0
    safe_labels = jnp.clip(jnp.where(valid, labels, 0), 0, logits.shape[-1] - 1)
    label_logits = jnp.take_along_axis(logits, safe_labels[..., None], axis=-1)[..., 0]
    log_normaliser = _chunked_logsumexp(logits, vocab_chunk_size, 1.0)
    token_logps = jnp.where(valid, label_logits.astype(jnp.float32) - log_normaliser, 0.0)
    sq_norm = None
    if with_sq_norm:
        log_sum_sq = _chunked_logsumexp(logits, vocab_chunk_size, 2.0) - 2.0 * log_normaliser
        sq_norm = jnp.where(valid, log_sum_sq, 0.0)
    return SequenceLogps(token_logps, valid.astype(jnp.float32), token_log_sq_norm=sq_norm)
