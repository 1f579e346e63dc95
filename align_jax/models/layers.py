"""Small building blocks of the decoder: parameters with logical axes, RMSNorm, gated MLP."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from align_jax.models.config import ModelConfig


def param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str | None], dtype, *, std=0.02, zeros=False):
    """A parameter carrying its logical axis names (``axes``) as metadata."""
    if zeros:
        value = jnp.zeros(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, axes=tuple(axes))


def rows_matmul(x: jax.Array, w: jax.Array) -> jax.Array:  # x [..., K] @ w [K, N] -> [..., N]
    """``x @ w`` computed as one 2-D matmul over all leading positions (same values).

    The point is the backward pass. Autodiff's weight gradient of a 2-D matmul is one
    ``[K, rows] x [rows, N]`` dot. That of the batched form (``[B, T, K] @ [K, N]``, or an einsum
    over ``b t``) is a dot followed by a transpose, which XLA:CPU fuses into the producer of the
    output gradient as a strided copy: on a 30-layer SwiGLU stack at 4 x 384 tokens, forward +
    backward runs about 1.3x faster in this form (issue #28).
    """
    lead = x.shape[:-1]
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*lead, w.shape[-1])


class RMSNorm(nnx.Module):
    """RMSNorm (arXiv:1910.07467) in float32; Gemma scales by (1 + w) with w stored zero-centred."""

    def __init__(self, dim: int, axis_name: str, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.eps = cfg.rms_norm_eps
        self.plus_one = cfg.norm_plus_one
        if cfg.norm_plus_one:
            self.weight = param(rngs, (dim,), (axis_name,), cfg.jnp_param_dtype, zeros=True)
        else:
            self.weight = nnx.Param(jnp.ones((dim,), cfg.jnp_param_dtype), axes=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:  # x [..., dim] -> [..., dim], x's dtype
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        w = self.weight[...].astype(jnp.float32)
        if self.plus_one:
            return (normed * (1.0 + w)).astype(x.dtype)
        # Llama casts back to the activation dtype before scaling.
        return normed.astype(x.dtype) * w.astype(x.dtype)


class GatedMLP(nnx.Module):
    """SwiGLU (Llama) or GeGLU-tanh (Gemma) MLP: down(act(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, m, dt = cfg.hidden_size, cfg.intermediate_size, cfg.jnp_param_dtype
        self.gate = param(rngs, (d, m), ("embed", "mlp"), dt)
        self.up = param(rngs, (d, m), ("embed", "mlp"), dt)
        self.down = param(rngs, (m, d), ("mlp", "embed"), dt)
        self.activation = cfg.activation
        self.dtype = cfg.jnp_dtype

    def __call__(self, x: jax.Array) -> jax.Array:  # x [..., D] -> [..., D]
        dt = self.dtype
        gate = rows_matmul(x, self.gate[...].astype(dt))
        up = rows_matmul(x, self.up[...].astype(dt))
        if self.activation == "silu":
            act = jax.nn.silu(gate)
        else:
            act = jax.nn.gelu(gate, approximate=True)
        return rows_matmul(act * up, self.down[...].astype(dt))
