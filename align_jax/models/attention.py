"""Grouped-query self-attention with RoPE, optional QK-norm, biases and sliding windows.

Masks are built from positions and segment ids, so one code path serves padded batches
(segment 0 = padding), packed sequences (one segment id per example), and KV-cache decoding
(cache slots carry their own positions and segment ids). Optional branch ids turn a segment into
a prefix tree (a shared prompt followed by several completions, see ``attention_mask``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from align_jax.models.config import ModelConfig
from align_jax.models.layers import RMSNorm, param, rows_matmul
from align_jax.models.rope import apply_rope

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(
    q_positions: jax.Array,  # [B, T] int
    q_segments: jax.Array,  # [B, T] int, 0 = padding
    k_positions: jax.Array,  # [B, S] int
    k_segments: jax.Array,  # [B, S] int, 0 = empty / padding
    sliding_window: int | None,
    q_branches: jax.Array | None = None,  # [B, T] int: 0 = shared prefix, b > 0 = branch b
    k_branches: jax.Array | None = None,  # [B, S] int
) -> jax.Array:  # [B, T, S] bool
    """Causal, same-segment (and optionally windowed) attention mask.

    Causality and the window are by *position*, not array index: key j is visible to query i
    iff both are in the same non-zero segment and ``0 <= pos_i - pos_j (< window)``. With
    branch ids (a prefix tree, e.g. [prompt | chosen | rejected] where the rejected positions
    restart after the prompt), key j must also be on the shared prefix (branch 0) or on the
    query's own branch, so every branch sees exactly what it would see in a row of its own.
    """
    delta = q_positions[:, :, None] - k_positions[:, None, :]
    mask = (delta >= 0) & (q_segments[:, :, None] == k_segments[:, None, :])
    mask &= k_segments[:, None, :] != 0
    if sliding_window is not None:
        mask &= delta < sliding_window
    if (q_branches is None) != (k_branches is None):
        raise ValueError("give branch ids for both queries and keys, or for neither")
    if q_branches is not None:
        kb = k_branches[:, None, :]
        mask &= (kb == 0) | (kb == q_branches[:, :, None])
    return mask


def dot_product_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H] ([B, K, S, H] with kv_heads_first)
    v: jax.Array,  # [B, S, K, H] ([B, K, S, H] with kv_heads_first)
    mask: jax.Array,  # [B, T, S] bool
    scale: float,
    softcap: float | None = None,
    kv_heads_first: bool = False,
) -> jax.Array:  # [B, T, N, H]
    """Softmax attention in float32; query heads grouped over the K key/value heads.

    ``kv_heads_first`` takes keys and values head-major, as the KV cache stores them: the
    attention matmuls then read them in place (batched over B and K) instead of XLA transposing
    every layer's cache slice at every decode step.
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[1 if kv_heads_first else 2]
    kv = "bksh" if kv_heads_first else "bskh"
    q = q.reshape(b, t, kv_heads, n // kv_heads, h)
    if kv_heads_first and t == 1 and softcap is None:
        return _decode_attention(q, k, v, mask, scale).reshape(b, t, n, h)
    scores = jnp.einsum(f"btkgh,{kv}->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    scores = jnp.where(mask[:, None, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum(f"bkgts,{kv}->btkgh", probs, v)
    return out.reshape(b, t, n, h)


def _decode_attention(
    q: jax.Array,  # [B, 1, K, G, H]
    k: jax.Array,  # [B, K, S, H]
    v: jax.Array,  # [B, K, S, H]
    mask: jax.Array,  # [B, 1, S] bool
    scale: float,
) -> jax.Array:  # [B, 1, K, G, H]
    """One query token over the cache as broadcast multiplies and sums, not batched matmuls.

    With one query per row the attention matmuls are B*K tiny matrix-vector products; XLA:CPU
    runs them as batched dots at a few GFLOP/s, while the elementwise form streams each layer's
    keys and values once (about 2x faster per decode step at batch 64; same sums up to float
    rounding order).
    """
    qf = q[:, 0].astype(jnp.float32)  # [B, K, G, H]
    scores = (qf[:, :, :, None, :] * k[:, :, None].astype(jnp.float32)).sum(-1) * scale  # [B, K, G, S]
    scores = jnp.where(mask[:, None, :, :], scores, _MASK_VALUE)  # mask [B, 1, 1, S] over K, G
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = (probs[..., None] * v[:, :, None]).sum(-2)  # [B, K, G, H]
    return out[:, None].astype(q.dtype)


# ``dot_product_attention`` whose scores and probabilities are recomputed in the backward pass
# instead of stored: no ``[B, N, T, S]`` residual per layer (the flash-attention trade, without a
# kernel). ``recomputed_attention`` takes it for soft-capped logits (Gemma 2).
_checkpointed_attention = jax.checkpoint(
    dot_product_attention, static_argnums=(4, 5, 6), policy=jax.checkpoint_policies.nothing_saveable
)


def recomputed_attention(
    q: jax.Array,  # [B, T, N, H]
    k: jax.Array,  # [B, S, K, H] ([B, K, S, H] with kv_heads_first)
    v: jax.Array,  # [B, S, K, H] ([B, K, S, H] with kv_heads_first)
    mask: jax.Array,  # [B, T, S] bool
    scale: float,
    softcap: float | None = None,
    kv_heads_first: bool = False,
) -> jax.Array:  # [B, T, N, H]
    """``dot_product_attention`` (same values) storing no ``[B, N, T, S]`` residual for the backward.

    Without a soft cap it is FlashAttention's backward (arXiv:2205.14135, Algorithm 4, untiled):
    the forward keeps only the output and each query's score maximum and softmax normaliser; the
    backward recomputes the probabilities from them and forms ``dS = P * (dP - rowsum(dO * O))``,
    one pass over the scores where autodiff of a recomputed softmax makes several. On XLA:CPU its
    forward + backward is faster than autodiff's even when that stores the probabilities (SmolLM2
    shape, 4 x 384 tokens: 49 ms per layer vs 72 stored and 65 recomputed; issue #28), so the
    decoder uses it for every remat policy, except soft-capped logits under "none".
    """
    if softcap is not None:
        return _checkpointed_attention(q, k, v, mask, scale, softcap, kv_heads_first)
    if kv_heads_first and q.shape[1] == 1:  # one decode step over the cache: its multiply-sum form
        return dot_product_attention(q, k, v, mask, scale, None, kv_heads_first)
    b, t, n, h = q.shape
    kv_heads = k.shape[1 if kv_heads_first else 2]
    qh = q.reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    if not kv_heads_first:
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, H]
    out = _flash_attention(qh, k, v, mask, scale)  # [B, K, G, T, H]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _masked_scores(
    q: jax.Array,  # [B, K, G, T, H]
    k: jax.Array,  # [B, K, S, H]
    mask: jax.Array,  # [B, T, S] bool
    scale: float,
) -> jax.Array:  # [B, K, G, T, S] float32
    s = jnp.einsum("bkgth,bksh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    return jnp.where(mask[:, None, None], s, _MASK_VALUE)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash_attention(
    q: jax.Array,  # [B, K, G, T, H]
    k: jax.Array,  # [B, K, S, H]
    v: jax.Array,  # [B, K, S, H]
    mask: jax.Array,  # [B, T, S] bool
    scale: float,
) -> jax.Array:  # [B, K, G, T, H]
    """Head-major operands, so every matmul of both passes is batched over (B, K) with no
    transposes of its own (about 13% faster forward + backward than token-major on XLA:CPU)."""
    return _flash_attention_fwd(q, k, v, mask, scale)[0]


def _flash_attention_fwd(q, k, v, mask, scale):
    s = _masked_scores(q, k, mask, scale)
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    total = jnp.sum(e, axis=-1, keepdims=True)
    out = jnp.einsum("bkgts,bksh->bkgth", (e / total).astype(v.dtype), v)
    # The row max and the sum apart (not m + log(total)): on a row with no visible key the scores
    # are all _MASK_VALUE, which absorbs log(total) in float32.
    return out, (q, k, v, mask, out, m[..., 0], 1.0 / total[..., 0])  # m, 1 / total [B, K, G, T]


def _flash_attention_bwd(scale, residuals, d_out):
    q, k, v, mask, out, row_max, inv_total = residuals
    probs = jnp.exp(_masked_scores(q, k, mask, scale) - row_max[..., None]) * inv_total[..., None]
    # d_v and d_k are computed transposed ([B, K, H, S]) so that the [B, K, G, T, S] operand is the
    # right-hand side with its contracted (G, T) leading: no transposed copy of it per layer.
    d_v = jnp.einsum("bkgth,bkgts->bkhs", d_out, probs.astype(v.dtype)).swapaxes(-1, -2)
    d_probs = jnp.einsum("bkgth,bksh->bkgts", d_out, v, preferred_element_type=jnp.float32)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # rowsum(dO * O)
    d_scores = probs * (d_probs - delta[..., None]) * scale
    # A query with no visible key (padding) spreads uniform weights over masked keys: no gradient.
    d_scores = jnp.where(mask[:, None, None], d_scores, 0.0).astype(q.dtype)
    d_q = jnp.einsum("bkgts,bksh->bkgth", d_scores, k)
    d_k = jnp.einsum("bkgth,bkgts->bkhs", q, d_scores).swapaxes(-1, -2)
    return d_q, d_k.astype(k.dtype), d_v.astype(v.dtype), None


_flash_attention.defvjp(_flash_attention_fwd, _flash_attention_bwd)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, n, k, h, dt = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.jnp_param_dtype,
        )
        self.q = param(rngs, (d, n, h), ("embed", "heads", "head_dim"), dt)
        self.k = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), dt)
        self.v = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), dt)
        self.o = param(rngs, (n, h, d), ("heads", "head_dim", "embed"), dt)
        if cfg.qkv_bias:
            self.q_bias = param(rngs, (n, h), ("heads", "head_dim"), dt, zeros=True)
            self.k_bias = param(rngs, (k, h), ("kv_heads", "head_dim"), dt, zeros=True)
            self.v_bias = param(rngs, (k, h), ("kv_heads", "head_dim"), dt, zeros=True)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(h, "head_dim", cfg, rngs=rngs)
            self.k_norm = RMSNorm(h, "head_dim", cfg, rngs=rngs)
        self.cfg = cfg
        scalar = cfg.query_pre_attn_scalar or cfg.head_dim
        self.scale = float(scalar) ** -0.5

    def project_qkv(
        self,
        x: jax.Array,  # [B, T, D]
        positions: jax.Array,  # [B, T] int
        inv_freq: jax.Array,  # [H/2] float32 rotary inverse frequencies
    ) -> tuple[jax.Array, jax.Array, jax.Array]:  # q [B, T, N, H]; k, v [B, T, K, H]
        """x -> rotated q, rotated k, and v (the query / key / value projections)."""
        dt = self.cfg.jnp_dtype
        q, k, v = (
            rows_matmul(x, w.reshape(w.shape[0], -1), self.cfg.jnp_matmul_dtype).reshape(*x.shape[:-1], *w.shape[1:])
            for w in (self.q[...], self.k[...], self.v[...])
        )
        if self.cfg.qkv_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v

    def output(self, attended: jax.Array) -> jax.Array:  # attended [B, T, N, H] -> [B, T, D]
        """The output projection of the heads' attended values."""
        o = self.o[...]
        return rows_matmul(attended.reshape(*attended.shape[:-2], -1), o.reshape(-1, o.shape[-1]), self.cfg.jnp_matmul_dtype)
