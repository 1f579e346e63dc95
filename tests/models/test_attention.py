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
