"""SamplingParams validation and the logit processors against NumPy references."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from align_jax.sampling.decoding import SamplingParams, sampling_logprobs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.2), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(min_p=1.0), "min_p"),
        (dict(min_p=-0.1), "min_p"),
        (dict(n=0), "n "),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(stop_sequences=((),)), "empty"),
        (dict(temperature=float("nan")), "temperature"),
    ],
)
def test_invalid_params_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_params_frozen_and_normalised():
    p = SamplingParams(stop_sequences=[[1, 2], (3,)])
    assert p.stop_sequences == ((1, 2), (3,))
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'temperature'"):
        p.temperature = 2.0  # type: ignore[misc]
    assert SamplingParams(temperature=0).structure().greedy


def reference_logprobs(logits, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """NumPy: temperature, then top-k, top-p, min-p, each renormalising (float64)."""
    def log_softmax(x):
        x = x - x[np.isfinite(x)].max()
        return x - np.log(np.exp(x).sum())

    lp = log_softmax(np.asarray(logits, np.float64) / temperature)
    if top_k:
        kth = np.sort(lp)[::-1][min(top_k, lp.size) - 1]
        lp = log_softmax(np.where(lp >= kth, lp, -np.inf))
    if top_p < 1.0:
        order = np.argsort(-lp, kind="stable")
        p = np.exp(lp[order])
        before = np.cumsum(p) - p
        keep = np.zeros(lp.size, bool)
        keep[order[before < top_p]] = True
        keep[order[0]] = True
        lp = log_softmax(np.where(keep, lp, -np.inf))
    if min_p > 0:
        lp = log_softmax(np.where(np.exp(lp) >= min_p * np.exp(lp).max(), lp, -np.inf))
    return lp


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    temperature=st.sampled_from([0.5, 1.0, 1.7]),
    top_k=st.sampled_from([0, 1, 3, 20]),
    top_p=st.sampled_from([1.0, 0.9, 0.5, 0.05]),
    min_p=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_processors_match_numpy(seed, temperature, top_k, top_p, min_p):
    logits = np.random.default_rng(seed).normal(0, 3, (3, 50)).astype(np.float32)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    got = np.asarray(sampling_logprobs(logits, params.structure(), params.values()))
    for row in range(3):
        want = reference_logprobs(logits[row], temperature, top_k, top_p, min_p)
        np.testing.assert_array_equal(np.isfinite(got[row]), np.isfinite(want))
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[row][fin], want[fin], atol=1e-5)


def test_greedy_is_point_mass():
    logits = np.random.default_rng(0).normal(size=(4, 30)).astype(np.float32)
    p = SamplingParams(temperature=0)
    got = np.asarray(sampling_logprobs(logits, p.structure(), p.values()))
    assert (got.argmax(-1) == logits.argmax(-1)).all()
    assert (np.isfinite(got).sum(-1) == 1).all() and (got.max(-1) == 0).all()


def test_greedy_choice_matches_argmax_and_log_softmax_with_ties():
    import jax
    import jax.numpy as jnp

    from align_jax.sampling.decoding import choose_tokens, greedy_argmax

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 1000)).astype(np.float32)
    logits[1, [7, 500]] = 9.0  # a tie: the lower index wins, as with argmax
    logits[2, -1] = 12.0  # the last index
    logits[3] = 0.0  # all equal
    idx, top = greedy_argmax(jnp.asarray(logits))
    np.testing.assert_array_equal(np.asarray(idx), logits.argmax(-1))
    np.testing.assert_array_equal(np.asarray(top), logits.max(-1))
    p = SamplingParams(temperature=0.0)
    choice = choose_tokens(jax.random.key(0), jnp.asarray(logits), p.structure(), p.values())
    ref = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))[np.arange(6), logits.argmax(-1)]
    np.testing.assert_array_equal(np.asarray(choice.tokens), logits.argmax(-1))
    np.testing.assert_allclose(np.asarray(choice.model_logprobs), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(choice.sampling_logprobs), 0.0)
