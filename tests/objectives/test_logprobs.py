"""sequence_logps (chunked log-softmax) and SequenceLogps reductions vs NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from align_jax.objectives.logprobs import sequence_logps
from align_jax.objectives.types import SequenceLogps


# One compile per (shape, options) instead of one per primitive in eager mode.
jit_sequence_logps = jax.jit(sequence_logps, static_argnames=("vocab_chunk_size", "with_sq_norm"))


def run(logits, labels, mask, **options):
    return jit_sequence_logps(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask), **options)


def np_token_logps(logits, labels, mask):
    """Reference: float64 log-softmax, gather, zero at masked positions."""
    x = np.asarray(logits, np.float64)
    shifted = x - x.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    out = np.zeros(labels.shape)
    for b, t in zip(*np.nonzero(mask)):
        out[b, t] = log_softmax[b, t, labels[b, t]]
    return out


def np_log_sum_sq(logits):
    x = np.asarray(logits, np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.log((p**2).sum(-1))


def make_batch(seed, b, t, v, pad_label=-100):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (b, t, v)).astype(np.float32)
    labels = rng.integers(0, v, (b, t))
    mask = rng.random((b, t)) < 0.7
    labels = np.where(mask, labels, pad_label)  # garbage where masked
    return logits, labels, mask.astype(np.float32)


@pytest.mark.parametrize("chunk", [1, 8, 64])  # one-wide, uneven last chunk, larger than V
def test_matches_numpy_and_full_log_softmax(chunk):
    logits, labels, mask = make_batch(0, 3, 6, 37)
    out = run(logits, labels, mask, vocab_chunk_size=chunk)
    np.testing.assert_allclose(out.token_logps, np_token_logps(logits, labels, mask), atol=2e-5)
    full = jax.nn.log_softmax(jnp.asarray(logits))
    gathered = jnp.take_along_axis(full, jnp.clip(jnp.asarray(labels), 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.token_logps, np.where(mask > 0, gathered, 0.0), atol=2e-5)
    assert out.token_logps.dtype == jnp.float32


def test_sq_norm_matches_numpy():
    logits, labels, mask = make_batch(1, 2, 5, 23)
    out = run(logits, labels, mask, vocab_chunk_size=5, with_sq_norm=True)
    expected = np.where(mask > 0, np_log_sum_sq(logits), 0.0)
    np.testing.assert_allclose(out.token_log_sq_norm, expected, atol=3e-5)


def test_out_of_range_labels_at_masked_positions_are_safe():
    logits, labels, mask = make_batch(3, 2, 5, 11)
    for garbage in (-100, 11, 10**6):
        bad = jnp.asarray(np.where(mask > 0, labels, garbage))
        out = run(logits, bad, mask, vocab_chunk_size=4)
        np.testing.assert_allclose(out.token_logps, np_token_logps(logits, labels, mask), atol=2e-5)


def test_gradient_matches_full_log_softmax_despite_garbage_labels():
    logits, labels, mask = make_batch(2, 2, 4, 19)
    labels_j, mask_j = jnp.asarray(labels), jnp.asarray(mask)  # labels are -100 where masked

    def chunked(x):
        return jnp.sum(sequence_logps(x, labels_j, mask_j, vocab_chunk_size=6).sum)

    def full(x):
        lp = jnp.take_along_axis(jax.nn.log_softmax(x), jnp.clip(labels_j, 0)[..., None], -1)[..., 0]
        return jnp.sum(lp * mask_j)

    grad = jax.jit(jax.grad(chunked))(jnp.asarray(logits))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, jax.jit(jax.grad(full))(jnp.asarray(logits)), atol=1e-5)


def test_bfloat16_logits_are_reduced_in_float32():
    logits, labels, mask = make_batch(4, 2, 3, 29)
    bf16 = jnp.asarray(logits, jnp.bfloat16)
    out = run(bf16, labels, mask, vocab_chunk_size=8)
    ref = np_token_logps(np.asarray(bf16.astype(jnp.float32)), labels, mask)
    np.testing.assert_allclose(out.token_logps, ref, atol=1e-4)


def _float32_shapes(jaxpr):
    """Every float32 intermediate shape in a jaxpr, sub-jaxprs (scan, remat) included."""
    shapes = []
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            aval = var.aval
            if getattr(aval, "dtype", None) == jnp.float32:
                shapes.append(tuple(aval.shape))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes.extend(_float32_shapes(inner))
    return shapes


def test_no_full_vocab_float32_array_in_forward_or_backward():
    b, t, v, chunk = 2, 3, 64, 16
    labels = jnp.zeros((b, t), jnp.int32)
    mask = jnp.ones((b, t))

    def loss(x):
        return jnp.sum(sequence_logps(x, labels, mask, vocab_chunk_size=chunk, with_sq_norm=True).sum)

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(jnp.zeros((b, t, v), jnp.bfloat16)).jaxpr
    shapes = _float32_shapes(jaxpr)
    assert (b, t, chunk) in shapes  # the chunk is float32 ...
    assert all(not (len(s) >= 1 and s[-1] == v) for s in shapes), shapes  # ... the full vocab never is


def test_bad_chunk_size_raises():
    with pytest.raises(ValueError, match="vocab_chunk_size"):
        sequence_logps(
            jnp.zeros((1, 1, 4)), jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1)), vocab_chunk_size=0
        )


def test_sequence_reductions_ignore_padding_values():
    tok = np.array([[-1.0, -2.0, np.nan], [np.inf, -0.5, -0.25]], np.float32)
    mask = np.array([[1, 1, 0], [0, 1, 1]], np.float32)
    seq = SequenceLogps(jnp.asarray(tok), jnp.asarray(mask))
    np.testing.assert_allclose(seq.sum, [-3.0, -0.75])
    np.testing.assert_allclose(seq.length, [2.0, 2.0])
    np.testing.assert_allclose(seq.mean, [-1.5, -0.375])
    empty = SequenceLogps(jnp.full((1, 3), jnp.nan), jnp.zeros((1, 3)))
    np.testing.assert_allclose(empty.mean, [0.0])


@settings(max_examples=8, deadline=None)
@given(
    shape=st.sampled_from([(1, 1, 2), (2, 5, 40), (3, 2, 17)]),  # few shapes: each one compiles
    chunk=st.sampled_from([3, 16, 64]),
    seed=st.integers(0, 2**16),
)
def test_property_any_shape_and_mask(shape, chunk, seed):
    b, t, v = shape
    logits, labels, mask = make_batch(seed, b, t, v, pad_label=v + 7)
    out = run(logits, labels, mask, vocab_chunk_size=chunk)
    expected = np_token_logps(logits, labels, mask)
    np.testing.assert_allclose(out.token_logps, expected, atol=3e-5)
    np.testing.assert_allclose(out.sum, expected.sum(-1), atol=1e-4)
    np.testing.assert_allclose(out.length, mask.sum(-1))
