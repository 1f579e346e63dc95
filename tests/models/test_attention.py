"""The recomputing attention (custom VJP, FlashAttention's backward) against autodiff of the plain one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.models.attention import attention_mask, dot_product_attention, recomputed_attention
from align_jax.models.layers import rows_matmul

B, T, N, K, H = 2, 9, 6, 2, 4


def _inputs(seed, *, kv_heads_first, dtype=jnp.float32):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (B, T, N, H), dtype)
    k = jax.random.normal(ks[1], (B, T, K, H), dtype)
    v = jax.random.normal(ks[2], (B, T, K, H), dtype)
    if kv_heads_first:
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    return q, k, v, jax.random.normal(ks[3], (B, T, N, H), jnp.float32)


def _mask(window=None, branches=False):
    # Row 0: two packed segments then two padding positions (queries with no visible key).
    # Row 1: a prefix tree [prompt 0-3 | branch 1: 4-6 | branch 2: 7-8], positions restarting per branch.
    segments = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0, 0], [1] * T])
    positions = jnp.array([[0, 1, 2, 3, 0, 1, 2, 0, 0], [0, 1, 2, 3, 4, 5, 6, 4, 5]])
    ids = jnp.array([[0] * T, [0, 0, 0, 0, 1, 1, 1, 2, 2]]) if branches else None
    return attention_mask(positions, segments, positions, segments, window, ids, ids)


@pytest.mark.parametrize("kv_heads_first", [False, True])
@pytest.mark.parametrize("window,branches,softcap", [(None, False, None), (3, False, None), (None, True, None),
                                                     (None, False, 5.0)])
def test_values_and_gradients_match_autodiff_of_the_plain_attention(kv_heads_first, window, branches, softcap):
    q, k, v, w = _inputs(0, kv_heads_first=kv_heads_first)
    mask = _mask(window, branches)

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask, 0.4, softcap, kv_heads_first) * w)

    want = dot_product_attention(q, k, v, mask, 0.4, softcap, kv_heads_first)
    got = recomputed_attention(q, k, v, mask, 0.4, softcap, kv_heads_first)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    grads_want = jax.grad(loss(dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    grads_got = jax.jit(jax.grad(loss(recomputed_attention), argnums=(0, 1, 2)))(q, k, v)
    for name, g, r in zip("qkv", grads_got, grads_want):
        assert g.shape == r.shape and g.dtype == r.dtype
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=2e-6, err_msg=f"d{name}")
    # The padding queries of row 0 see no key: no gradient reaches their q, and the gradient of
    # the keys they spread uniform weight over comes from the real queries only.
    np.testing.assert_array_equal(np.asarray(grads_got[0])[0, 7:], 0.0)


def test_gradients_match_finite_differences():
    q, k, v, w = _inputs(1, kv_heads_first=False)
    q, k, v = (x.astype(jnp.float64) if jax.config.jax_enable_x64 else x for x in (q, k, v))
    mask = _mask(branches=True)
    f = lambda q: jnp.sum(recomputed_attention(q, k, v, mask, 0.4) * w)  # noqa: E731
    d = jax.random.normal(jax.random.PRNGKey(9), q.shape)
    eps = 1e-2
    numeric = (f(q + eps * d) - f(q - eps * d)) / (2 * eps)
    analytic = jnp.sum(jax.grad(f)(q) * d)
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=2e-3)


def test_bfloat16_inputs_keep_their_dtype_and_track_float32():
    q, k, v, w = _inputs(2, kv_heads_first=False)
    mask = _mask()
    loss = lambda fn, *xs: jnp.sum(fn(*xs, mask, 0.4).astype(jnp.float32) * w)  # noqa: E731
    lo = tuple(x.astype(jnp.bfloat16) for x in (q, k, v))
    got = jax.grad(lambda *xs: loss(recomputed_attention, *xs), argnums=(0, 1, 2))(*lo)
    want = jax.grad(lambda *xs: loss(dot_product_attention, *xs), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(got, want):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r), atol=0.1, rtol=0.05)


def test_rows_matmul_is_the_batched_matmul():
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 7))
    w = jax.random.normal(jax.random.PRNGKey(4), (7, 3))
    np.testing.assert_allclose(np.asarray(rows_matmul(x, w)), np.asarray(x @ w), atol=1e-6)
    g = jax.grad(lambda x, w: jnp.sum(jnp.sin(rows_matmul(x, w))), argnums=(0, 1))(x, w)
    r = jax.grad(lambda x, w: jnp.sum(jnp.sin(x @ w)), argnums=(0, 1))(x, w)
    for a, b in zip(g, r):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def _round_bf16(a) -> np.ndarray:  # float64 values of the bfloat16 rounding of a
    return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("x_dtype", [jnp.float32, jnp.bfloat16])
def test_mixed_precision_rows_matmul_equals_numpy_on_rounded_operands(x_dtype):
    """bf16 operands, float32 accumulation: value and both gradients against float64 NumPy of the
    bf16-rounded operands (the output cotangent rounded too); gradients keep each input's dtype."""
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 5, 64)).astype(x_dtype)
    w = jax.random.normal(jax.random.PRNGKey(6), (64, 3))  # float32 master weight
    c = jax.random.normal(jax.random.PRNGKey(7), (2, 5, 3))  # output cotangent
    xr, wr, cr = _round_bf16(x).reshape(10, 64), _round_bf16(w), _round_bf16(c).reshape(10, 3)
    y = rows_matmul(x, w, jnp.bfloat16, jnp.float32)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y).reshape(10, 3), xr @ wr, rtol=1e-5, atol=1e-5)
    dx, dw = jax.grad(lambda x, w: jnp.sum(rows_matmul(x, w, jnp.bfloat16, jnp.float32) * c), argnums=(0, 1))(x, w)
    assert (dx.dtype, dw.dtype) == (x_dtype, jnp.float32)
    tol = 1e-5 if x_dtype == jnp.float32 else 1e-2  # dx is rounded to bf16 when x is bf16
    np.testing.assert_allclose(np.asarray(dx, np.float64).reshape(10, 64), cr @ wr.T, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(dw), xr.T @ cr, rtol=1e-5, atol=1e-5)
    # Not the float32 answer: the operands really were rounded.
    assert np.abs(np.asarray(dw) - np.asarray(x, np.float64).reshape(10, 64).T @ np.asarray(c).reshape(10, 3)).max() > 1e-4


def test_a_decode_step_keeps_the_multiply_sum_form():
    """One query over a head-major cache goes to the decode form (no batched matmuls, issue #28)."""
    q, k, v, _ = _inputs(5, kv_heads_first=True)
    q = q[:, -1:]
    mask = _mask()[:, -1:]
    jaxpr = str(jax.make_jaxpr(recomputed_attention, static_argnums=(4, 5, 6))(q, k, v, mask, 0.4, None, True))
    assert "dot_general" not in jaxpr
    token_major = recomputed_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, 0.4)  # matmul form
    np.testing.assert_allclose(np.asarray(recomputed_attention(q, k, v, mask, 0.4, None, True)),
                               np.asarray(token_major), atol=1e-5)
