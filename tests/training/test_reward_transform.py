"""Rewards taken relative to the reference policy's samples (rl.reward_transform): the host-side
combination against NumPy, and the config checks that run before any model loads."""

import runpy
from pathlib import Path

import numpy as np
import pytest

from align_jax import rewards as R
from align_jax.training.config import parse_config
from align_jax.training.rl_loop import reference_relative_total

REPO = Path(__file__).resolve().parents[2]
grpo_toy_config = runpy.run_path(str(REPO / "configs" / "grpo_toy.py"))["get_config"]


def _scores(values, failed=None):
    values = np.asarray(values, np.float32)
    failed = np.zeros(values.shape, bool) if failed is None else np.asarray(failed)
    return R.Scores(("a", "b"), np.where(failed, np.nan, values).astype(np.float32), failed, [])


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    p, g, r = 3, 4, 5
    pol = _scores(rng.normal(size=(p * g, 2)))
    ref_failed = np.zeros((p * r, 2), bool)
    ref_failed[0, 0] = ref_failed[3, 1] = True  # two failed reference rewards, masked out
    ref_failed[2 * r:3 * r, 1] = True  # every reference of prompt 2 failed on reward b
    ref = _scores(rng.normal(size=(p * r, 2)), ref_failed)
    return pol, ref, p, g, r


def test_par_and_log_sigmoid_match_numpy(batch):
    pol, ref, p, g, r = batch
    weights = (1.0, 0.5)
    refs = ref.values.reshape(p, r, 2)
    want_par = np.zeros((p * g, 2))
    want_ls = np.zeros((p * g, 2))
    for i in range(p * g):
        for k in range(2):
            valid = refs[i // g, :, k][~np.isnan(refs[i // g, :, k])]
            if valid.size == 0:
                want_par[i, k] = want_ls[i, k] = np.nan
                continue
            want_par[i, k] = _sigmoid(pol.values[i, k] - valid).mean()
            want_ls[i, k] = np.log(_sigmoid(pol.values[i, k] - np.quantile(valid, 0.85)))
    got = reference_relative_total(pol, ref, g, weights, "sum", "par")
    np.testing.assert_allclose(got, want_par @ np.array(weights), rtol=1e-5)
    assert np.isnan(got[2 * g:]).all() and np.isfinite(got[:2 * g]).all()  # prompt 2 has no reference for b
    got = reference_relative_total(pol, ref, g, weights, "min", "log-sigmoid", quantile=0.85)
    np.testing.assert_allclose(got, (want_ls * np.array(weights)).min(1), rtol=1e-5)


def test_a_failed_policy_reward_stays_nan(batch):
    pol, ref, p, g, r = batch
    failed = np.zeros(pol.values.shape, bool)
    failed[1, 0] = True
    pol = _scores(np.nan_to_num(pol.values), failed)
    got = reference_relative_total(pol, ref, g, (1.0, 1.0), "sum", "par")
    assert np.isnan(got[1]) and np.isfinite(got[0])


def test_a_watched_reward_changes_nothing_even_where_it_fails(batch):
    pol, ref, p, g, r = batch  # reward b has no reference on prompt 2: NaN there once transformed
    got = reference_relative_total(pol, ref, g, (1.0, 0.0), "sum", "par")
    alone = reference_relative_total(R.Scores(("a",), pol.values[:, :1], pol.failed[:, :1], []),
                                     R.Scores(("a",), ref.values[:, :1], ref.failed[:, :1], []), g, (1.0,), "sum", "par")
    np.testing.assert_allclose(got, alone, rtol=1e-6)
    assert np.isfinite(got).all()


def _toy(**rl):
    c = grpo_toy_config()
    c.rl.update(**rl)
    return c


def test_config_checks_before_the_model_loads():
    with pytest.raises(ValueError, match="reward_transform='parr' is unknown; valid: .*par"):
        parse_config(_toy(reward_transform="parr"))
    with pytest.raises(ValueError, match="needs a reference"):
        parse_config(_toy(reward_transform="par"))  # full fine-tuning with reference.mode='none'
    with pytest.raises(ValueError, match="every weight is 0, nothing to optimise"):
        parse_config(_toy(reward_weights="0"))
    with pytest.raises(ValueError, match="reference_samples must be >= 1"):
        parse_config(_toy(reference_samples=0))
    with pytest.raises(ValueError, match="transform_quantile"):
        parse_config(_toy(transform_quantile=1.5))
    c = _toy(reward_transform="par")
    c.reference.mode = "frozen"
    assert parse_config(c).rl.reward_transform == "par"
