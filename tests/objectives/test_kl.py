"""Tests for align_jax.objectives.kl against NumPy references and closed-form values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from align_jax.objectives import kl

SETTINGS = settings(max_examples=15, deadline=None)


def np_estimate(name, logp, ref_logp):
    log_r = logp - ref_logp
    if name == "k1":
        return log_r
    if name == "k2":
        return 0.5 * log_r**2
    ratio = np.exp(ref_logp - logp)  # p_ref / p
    return ratio - 1.0 - np.log(ratio)


def random_inputs(seed, shape=(3, 6)):
    rng = np.random.default_rng(seed)
    logp = np.log(rng.uniform(0.05, 1.0, shape)).astype(np.float32)
    ref_logp = np.log(rng.uniform(0.05, 1.0, shape)).astype(np.float32)
    mask = rng.uniform(size=shape) < 0.7
    return logp, ref_logp, mask


def test_registry_lists_every_estimator():
    assert kl.KL_ESTIMATORS.names() == ["k1", "k2", "k3"]


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(KeyError, match="valid choices: k1, k2, k3"):
        kl.KL_ESTIMATORS.build("k4")
    with pytest.raises(ValueError, match="kl_clamp"):
        kl.KL_ESTIMATORS.build("k3", clamp=1.0)
    with pytest.raises(ValueError, match="positive"):
        kl.KL_ESTIMATORS.build("k3", kl_clamp=0.0)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_matches_numpy_and_zero_at_padding(name):
    logp, ref_logp, mask = random_inputs(0)
    got = np.asarray(kl.KL_ESTIMATORS.build(name)(logp, ref_logp, mask))
    want = np.where(mask, np_estimate(name, logp.astype(np.float64), ref_logp.astype(np.float64)), 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_zero_when_policy_equals_reference(name):
    logp, _, mask = random_inputs(1)
    np.testing.assert_allclose(kl.KL_ESTIMATORS.build(name)(logp, logp, mask), 0.0, atol=1e-7)


@SETTINGS
@given(st.integers(0, 10_000), st.floats(0.01, 5.0))
def test_k2_k3_nonnegative_and_clamp_bounds(seed, clamp):
    logp, ref_logp, mask = random_inputs(seed)
    ref_logp = ref_logp * 4.0  # larger log-ratios
    for name in ("k2", "k3"):
        assert np.all(np.asarray(kl.KL_ESTIMATORS.build(name)(logp, ref_logp, mask)) >= 0.0)
    for name in ("k1", "k2", "k3"):
        clamped = np.asarray(kl.KL_ESTIMATORS.build(name, kl_clamp=clamp)(logp, ref_logp, mask))
        assert np.all(np.abs(clamped) <= clamp + 1e-6)


@SETTINGS
@given(st.integers(0, 10_000), st.sampled_from([np.nan, np.inf, -np.inf, 1e9]))
def test_padding_values_change_neither_values_nor_gradients(seed, garbage):
    logp, ref_logp, mask = random_inputs(seed)
    dirty_logp = np.where(mask, logp, garbage).astype(np.float32)
    dirty_ref = np.where(mask, ref_logp, -garbage).astype(np.float32)
    for name in ("k1", "k2", "k3"):
        fn = kl.KL_ESTIMATORS.build(name)
        total = lambda lp, rl: jnp.sum(fn(lp, rl, mask))  # noqa: E731
        np.testing.assert_allclose(fn(dirty_logp, dirty_ref, mask), fn(logp, ref_logp, mask), rtol=1e-6)
        clean_grad = jax.grad(total)(logp, ref_logp)
        dirty_grad = jax.grad(total)(dirty_logp, dirty_ref)
        np.testing.assert_allclose(dirty_grad, clean_grad, rtol=1e-6)
        assert np.all(np.asarray(dirty_grad)[~mask] == 0.0)


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_for_kl_under_sampling_from_policy(name):
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    q = np.array([0.2, 0.2, 0.2, 0.2, 0.2])
    exact = float(np.sum(p * np.log(p / q)))
    samples = rng.choice(len(p), size=(1, 100_000), p=p)
    logp, ref_logp = np.log(p)[samples], np.log(q)[samples]
    est = np.asarray(kl.KL_ESTIMATORS.build(name)(logp, ref_logp, np.ones_like(samples, bool)))
    stderr = est.std() / np.sqrt(est.size)
    assert abs(est.mean() - exact) < 4 * stderr + 1e-4


def test_k2_is_biased_but_close_for_near_distributions():
    p = np.array([0.3, 0.3, 0.4])
    q = np.array([0.32, 0.29, 0.39])
    exact = float(np.sum(p * np.log(p / q)))
    k2_exact_expectation = float(np.sum(p * 0.5 * np.log(p / q) ** 2))
    got = kl.kl_k2(np.log(p)[None], np.log(q)[None], np.ones((1, 3), bool))
    np.testing.assert_allclose(np.sum(p * np.asarray(got)[0]), k2_exact_expectation, rtol=1e-5)
    assert k2_exact_expectation != pytest.approx(exact, rel=1e-3)
    assert k2_exact_expectation == pytest.approx(exact, rel=0.2)


def test_last_token_mask_right_and_left_padding():
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 0]], bool)
    want = np.zeros_like(mask)
    for b, row in enumerate(mask):
        idx = np.flatnonzero(row)
        if idx.size:
            want[b, idx[-1]] = True
    np.testing.assert_array_equal(kl.last_token_mask(mask), want)


def test_kl_penalized_rewards_matches_numpy():
    logp, ref_logp, mask = random_inputs(3, shape=(4, 7))
    mask[:, 0] = True
    scores = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    beta = 0.1
    rewards, per_token_kl = kl.kl_penalized_rewards(scores, logp, ref_logp, mask, beta=beta)
    want_kl = np.where(mask, logp - ref_logp, 0.0)
    want = -beta * want_kl
    for b in range(4):
        want[b, np.flatnonzero(mask[b])[-1]] += scores[b]
    np.testing.assert_allclose(per_token_kl, want_kl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rewards, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.sum(rewards, axis=1), scores - beta * want_kl.sum(axis=1), rtol=1e-5, atol=1e-5
    )


def test_kl_penalized_rewards_uses_the_named_estimator_and_validates():
    logp, ref_logp, mask = random_inputs(4)
    _, per_token = kl.kl_penalized_rewards(np.zeros(3), logp, ref_logp, mask, estimator="k3")
    np.testing.assert_allclose(per_token, kl.kl_k3(logp, ref_logp, mask), rtol=1e-6)
    with pytest.raises(KeyError, match="valid choices"):
        kl.kl_penalized_rewards(np.zeros(3), logp, ref_logp, mask, estimator="exact")
    with pytest.raises(ValueError, match="beta"):
        kl.kl_penalized_rewards(np.zeros(3), logp, ref_logp, mask, beta=-1.0)


def test_kl_metrics_and_masked_mean():
    logp, ref_logp, mask = random_inputs(5)
    mask[0] = False  # a fully padded row counts in neither mean
    per_token = np.asarray(kl.kl_k1(logp, ref_logp, mask))
    metrics = kl.kl_metrics(per_token, mask)
    want_token = (logp - ref_logp)[mask].mean()
    want_seq = np.mean([(logp - ref_logp)[b][mask[b]].sum() for b in range(1, 3)])
    np.testing.assert_allclose(metrics["kl/token_mean"], want_token, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl/seq_mean"], want_seq, rtol=1e-5)
    assert float(kl.masked_mean(np.full((2, 2), np.nan), np.zeros((2, 2), bool))) == 0.0
