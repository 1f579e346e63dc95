"""Tests for align_jax.objectives.reward against NumPy references and closed forms."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from align_jax.objectives import reward

SETTINGS = settings(max_examples=15, deadline=None)


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_registries_list_every_piece():
    assert reward.ENSEMBLE_AGGREGATIONS.names() == ["mean", "mean-minus-std", "min"]
    assert reward.REWARD_TRANSFORMS.names() == ["identity", "log-sigmoid", "par"]


def test_registries_reject_unknown_names_and_invalid_options():
    with pytest.raises(KeyError, match="valid choices: mean, mean-minus-std, min"):
        reward.ENSEMBLE_AGGREGATIONS.build("median")
    with pytest.raises(ValueError, match="lam"):
        reward.ENSEMBLE_AGGREGATIONS.build("mean-minus-std", lam=-1.0)
    with pytest.raises(ValueError, match="valid options: \\(none\\)"):
        reward.ENSEMBLE_AGGREGATIONS.build("min", lam=1.0)
    with pytest.raises(KeyError, match="valid choices: identity, log-sigmoid, par"):
        reward.REWARD_TRANSFORMS.build("tanh")
    with pytest.raises(ValueError, match="quantile"):
        reward.REWARD_TRANSFORMS.build("log-sigmoid", quantile=1.5)


# ----------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_at_equal_rewards_is_ln2():
    r = np.array([0.3, -1.0, 2.0], np.float32)
    loss, metrics = reward.bradley_terry_loss(r, r)
    assert float(loss) == pytest.approx(np.log(2.0), rel=1e-6)
    assert float(metrics["rm/accuracy"]) == 0.0 and float(metrics["rm/margin"]) == 0.0


def test_bradley_terry_matches_numpy_with_margin_centering_and_mask():
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(size=(2, 8)).astype(np.float32)
    margin = rng.uniform(0, 1, 8).astype(np.float32)
    mask = rng.uniform(size=8) < 0.7
    mask[0] = True
    loss, metrics = reward.bradley_terry_loss(chosen, rejected, margin, mask, center_coef=0.01)
    per_pair = -np_log_sigmoid(chosen - rejected - margin) + 0.01 * (chosen + rejected) ** 2
    np.testing.assert_allclose(loss, per_pair[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rm/loss"], loss)
    np.testing.assert_allclose(metrics["rm/accuracy"], np.mean((chosen > rejected)[mask]), rtol=1e-6)
    np.testing.assert_allclose(metrics["rm/margin"], np.mean((chosen - rejected)[mask]), rtol=1e-5)
    np.testing.assert_allclose(metrics["rm/chosen"], chosen[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["rm/rejected"], rejected[mask].mean(), rtol=1e-5)


def test_bradley_terry_gradient_signs_and_centering():
    chosen = np.array([0.5, 2.0], np.float32)
    rejected = np.array([1.0, 1.5], np.float32)
    g_chosen, g_rejected = jax.grad(lambda c, r: reward.bradley_terry_loss(c, r)[0], argnums=(0, 1))(
        chosen, rejected
    )
    assert np.all(np.asarray(g_chosen) < 0) and np.all(np.asarray(g_rejected) > 0)
    # the centering term pulls a positive offset down: both gradients grow
    shifted = (chosen + 5.0, rejected + 5.0)
    plain = jax.grad(lambda c: reward.bradley_terry_loss(c, shifted[1])[0])(shifted[0])
    centered = jax.grad(lambda c: reward.bradley_terry_loss(c, shifted[1], center_coef=0.1)[0])(shifted[0])
    assert np.all(np.asarray(centered) > np.asarray(plain))
    with pytest.raises(ValueError, match="center_coef"):
        reward.bradley_terry_loss(chosen, rejected, center_coef=-1.0)



def test_bradley_terry_count_weights_equal_repeated_pairs():
    """A bootstrap resample's counts weigh each pair as if it were drawn that many times."""
    rng = np.random.default_rng(1)
    chosen, rejected = rng.normal(size=(2, 6)).astype(np.float32)
    counts = np.array([0, 1, 3, 2, 0, 1], np.float32)
    loss, metrics = reward.bradley_terry_loss(chosen, rejected, None, counts, center_coef=0.01)
    repeat = counts.astype(int)
    want_loss, want_metrics = reward.bradley_terry_loss(np.repeat(chosen, repeat), np.repeat(rejected, repeat),
                                                        center_coef=0.01)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for key in want_metrics:
        np.testing.assert_allclose(metrics[key], want_metrics[key], rtol=1e-6, err_msg=key)

@SETTINGS
@given(st.integers(0, 10_000), st.sampled_from([np.nan, np.inf, 1e9]))
def test_bradley_terry_padding_never_changes_results(seed, garbage):
    rng = np.random.default_rng(seed)
    chosen, rejected = rng.normal(size=(2, 6)).astype(np.float32)
    mask = rng.uniform(size=6) < 0.6
    mask[0] = True
    dirty = [np.where(mask, x, garbage).astype(np.float32) for x in (chosen, rejected)]
    clean_loss, clean_metrics = reward.bradley_terry_loss(chosen, rejected, None, mask, center_coef=0.01)
    dirty_loss, dirty_metrics = reward.bradley_terry_loss(*dirty, None, mask, center_coef=0.01)
    np.testing.assert_allclose(dirty_loss, clean_loss, rtol=1e-6)
    for key in clean_metrics:
        np.testing.assert_allclose(dirty_metrics[key], clean_metrics[key], rtol=1e-6, err_msg=key)
    grad = jax.grad(lambda c: reward.bradley_terry_loss(c, dirty[1], None, mask)[0])(dirty[0])
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~mask] == 0.0)


# ----------------------------------------------------------------------------- ensembles


def test_ensemble_aggregations_match_numpy():
    rewards = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    agg = reward.ENSEMBLE_AGGREGATIONS
    np.testing.assert_allclose(agg.build("mean")(rewards), rewards.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(agg.build("min")(rewards), rewards.min(0))
    want = rewards.mean(0) - 0.5 * rewards.std(0)
    np.testing.assert_allclose(agg.build("mean-minus-std", lam=0.5)(rewards), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(agg.build("mean-minus-std", lam=0.0)(rewards), rewards.mean(0), atol=1e-6)


def test_uncertainty_penalty_prefers_agreeing_ensembles():
    agree = np.array([[1.0], [1.0], [1.0]], np.float32)
    disagree = np.array([[0.0], [1.0], [2.0]], np.float32)  # same mean, larger spread
    fn = reward.ENSEMBLE_AGGREGATIONS.build("mean-minus-std")
    assert float(fn(agree)[0]) > float(fn(disagree)[0])


# ----------------------------------------------------------------------------- transforms


def test_identity_transform():
    r = np.array([1.0, -2.0], np.float32)
    np.testing.assert_array_equal(reward.REWARD_TRANSFORMS.build("identity")(r, np.zeros((2, 3))), r)


def test_log_sigmoid_with_one_reference_and_with_a_quantile():
    rng = np.random.default_rng(2)
    r = rng.normal(size=5).astype(np.float32)
    one_ref = rng.normal(size=(5, 1)).astype(np.float32)
    fn = reward.REWARD_TRANSFORMS.build("log-sigmoid")
    np.testing.assert_allclose(fn(r, one_ref), np_log_sigmoid(r - one_ref[:, 0]), rtol=1e-5)
    refs = rng.normal(size=(5, 9)).astype(np.float32)
    ref_mask = rng.uniform(size=(5, 9)) < 0.6
    ref_mask[:, 0] = True
    got = reward.REWARD_TRANSFORMS.build("log-sigmoid", quantile=0.3)(r, refs, ref_mask)
    r_ref = np.array([np.quantile(refs[b][ref_mask[b]], 0.3) for b in range(5)])
    np.testing.assert_allclose(got, np_log_sigmoid(r - r_ref), rtol=1e-5)
    assert np.all(np.asarray(got) <= 0.0)
    # at the reference the transformed reward is log(1/2); gradient of sigmoid-centred reward is 1/2
    np.testing.assert_allclose(fn(one_ref[:, 0], one_ref), np.full(5, -np.log(2.0)), rtol=1e-6)
    grad = jax.grad(lambda x: fn(x, one_ref).sum())(one_ref[:, 0])
    np.testing.assert_allclose(grad, np.full(5, 0.5), rtol=1e-6)


def test_par_matches_numpy_and_is_bounded():
    rng = np.random.default_rng(3)
    r = 5.0 * rng.normal(size=6).astype(np.float32)
    refs = rng.normal(size=(6, 4)).astype(np.float32)
    ref_mask = rng.uniform(size=(6, 4)) < 0.7
    ref_mask[:, 0] = True
    fn = reward.REWARD_TRANSFORMS.build("par")
    got = np.asarray(fn(r, refs, ref_mask))
    want = [np.mean(np_sigmoid(r[b] - refs[b][ref_mask[b]])) for b in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all((got > 0) & (got < 1))
    np.testing.assert_allclose(fn(refs[:, 0], refs[:, :1]), np.full(6, 0.5))


def test_combine_rewards_is_weighted_sum_of_transforms():
    rng = np.random.default_rng(4)
    rewards = rng.normal(size=(2, 5)).astype(np.float32)
    refs = rng.normal(size=(2, 5, 1)).astype(np.float32)
    got = reward.combine_rewards(rewards, refs, [1.0, 0.5])
    want = np_log_sigmoid(rewards[0] - refs[0, :, 0]) + 0.5 * np_log_sigmoid(rewards[1] - refs[1, :, 0])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    par = reward.combine_rewards(rewards, refs, [1.0, 0.5], transform="par")
    want_par = np_sigmoid(rewards[0] - refs[0, :, 0]) + 0.5 * np_sigmoid(rewards[1] - refs[1, :, 0])
    np.testing.assert_allclose(par, want_par, rtol=1e-5)
    with pytest.raises(ValueError, match="one weight per reward model"):
        reward.combine_rewards(rewards, refs, [1.0])
    with pytest.raises(KeyError, match="valid choices"):
        reward.combine_rewards(rewards, refs, [1.0, 1.0], transform="bogus")


def test_log_sigmoid_combination_is_a_logical_and():
    """Excelling on one reward cannot make up for failing another (arXiv:2402.00742)."""
    refs = np.zeros((2, 2, 1), np.float32)
    balanced = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)  # both responses good on both
    lopsided = np.array([[12.0, 1.0], [-8.0, 1.0]], np.float32)  # response 0: great, then terrible
    assert float(reward.combine_rewards(balanced, refs, [1.0, 1.0])[0]) > float(
        reward.combine_rewards(lopsided, refs, [1.0, 1.0])[0]
    )
    # the plain sum would prefer the lopsided response
    assert lopsided[:, 0].sum() > balanced[:, 0].sum()
