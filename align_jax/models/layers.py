"""Small building blocks of the decoder: parameters with logical axes, RMSNorm, gated MLP."""

from __future__ import annotations

import functools
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


def rows_matmul(
    x: jax.Array,  # [..., K] activations
    w: jax.Array,  # [K, N] weight in its stored (parameter) dtype
    operand_dtype=None,  # dtype both operands are cast to; None: x's dtype
    out_dtype=None,  # result dtype; None: x's dtype
) -> jax.Array:  # [..., N]
    """``x @ w`` computed as one 2-D matmul over all leading positions (same values).

    The point is the backward pass. Autodiff's weight gradient of a 2-D matmul is one
    ``[K, rows] x [rows, N]`` dot. That of the batched form (``[B, T, K] @ [K, N]``, or an einsum
    over ``b t``) is a dot followed by a transpose, which XLA:CPU fuses into the producer of the
    output gradient as a strided copy: on a 30-layer SwiGLU stack at 4 x 384 tokens, forward +
    backward runs about 1.3x faster in this form (issue #28).

    Float32 operands: the plain matmul. Lower-precision operands (``operand_dtype`` or x's dtype
    bfloat16 / float16): the product and both matmuls of the backward pass take low-precision
    operands and accumulate in float32 (``preferred_element_type``); the gradients leave their dots
    in float32 and are cast once to x's and w's own dtypes, so float32 master weights get a float32
    weight gradient without a round trip through bfloat16. On XLA:CPU bf16 x bf16 -> f32 dots run
    at up to ~1.8x the f32 rate, bf16 -> bf16 ones slower than f32 (measured, issue #28).
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    operand = jnp.dtype(x.dtype if operand_dtype is None else operand_dtype)
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if operand.itemsize >= 4 and x.dtype == operand:
        y = x2 @ w.astype(operand)
    else:
        y = _mixed_matmul(x2, w, operand)
    return y.astype(out_dtype).reshape(*lead, w.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _mixed_matmul(x: jax.Array, w: jax.Array, operand) -> jax.Array:  # [M, K], [K, N] -> [M, N] float32
    return jnp.dot(x.astype(operand), w.astype(operand), preferred_element_type=jnp.float32)


def _mixed_matmul_fwd(x, w, operand):
    return _mixed_matmul(x, w, operand), (x, w)


def _mixed_matmul_bwd(operand, res, g):  # g [M, N] float32, the cotangent of the product
    x, w = res
    g = g.astype(operand)
    dx = jnp.dot(g, w.astype(operand).T, preferred_element_type=jnp.float32).astype(x.dtype)
    dw = jnp.dot(x.astype(operand).T, g, preferred_element_type=jnp.float32).astype(w.dtype)
    return dx, dw


_mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


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
        self.matmul_dtype = cfg.jnp_matmul_dtype

    def __call__(self, x: jax.Array) -> jax.Array:  # x [..., D] -> [..., D]
        gate = rows_matmul(x, self.gate[...], self.matmul_dtype)
        up = rows_matmul(x, self.up[...], self.matmul_dtype)
        if self.activation == "silu":
            act = jax.nn.silu(gate)
        else:
            act = jax.nn.gelu(gate, approximate=True)
        return rows_matmul(act * up, self.down[...], self.matmul_dtype)
