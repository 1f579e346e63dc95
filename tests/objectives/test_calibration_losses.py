"""Tests for align_jax.objectives.calibration against NumPy references and closed forms."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from align_jax.objectives import calibration as cal

SETTINGS = settings(max_examples=6, deadline=None)
CONF_VALUES = np.linspace(0.0, 1.0, 11).astype(np.float32)  # "0".."10" -> 0.0 .. 1.0


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def classification_inputs(seed, batch=6, classes=4):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=(batch, classes))).astype(np.float32)
    labels = rng.integers(0, classes, size=batch)
    mask = rng.uniform(size=batch) < 0.7
    mask[0] = True
    return logits, labels, mask


def test_registry_lists_every_loss_and_rejects_bad_options():
    assert cal.CALIBRATION_LOSSES.names() == ["brier", "focal", "label-smoothing"]
    with pytest.raises(KeyError, match="valid choices: brier, focal, label-smoothing"):
        cal.CALIBRATION_LOSSES.build("ece")
    with pytest.raises(ValueError, match="gamma"):
        cal.CALIBRATION_LOSSES.build("focal", gamma=-1.0)
    with pytest.raises(ValueError, match="smoothing"):
        cal.CALIBRATION_LOSSES.build("label-smoothing", smoothing=1.0)
    with pytest.raises(ValueError, match="valid options: gamma=2.0"):
        cal.CALIBRATION_LOSSES.build("focal", alpha=0.25)


def test_brier_closed_forms():
    binary = cal.binary_brier(np.array([0.5, 1.0, 0.2]), np.array([1, 1, 0]))
    np.testing.assert_allclose(binary, [0.25, 0.0, 0.04], rtol=1e-6)
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], np.float32)
    np.testing.assert_allclose(cal.multiclass_brier(probs, np.array([0, 0, 2])), [0.0, 2.0, 2 / 3], rtol=1e-6)


def test_classification_losses_match_numpy():
    logits, labels, mask = classification_inputs(0)
    logp = np_log_softmax(logits.astype(np.float64))
    probs = np.exp(logp)
    one_hot = np.eye(4)[labels]
    p_y = probs[np.arange(6), labels]
    want = {
        "brier": ((probs - one_hot) ** 2).sum(-1),
        "focal": -((1 - p_y) ** 2.0) * np.log(p_y),
        "label-smoothing": -(((1 - 0.1) * one_hot + 0.1 / 4) * logp).sum(-1),
    }
    for name, per_example in want.items():
        loss, metrics = cal.CALIBRATION_LOSSES.build(name)(logits, labels, mask)
        np.testing.assert_allclose(loss, per_example[mask].mean(), rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(metrics["cal/nll"], -np.log(p_y)[mask].mean(), rtol=1e-5)
        np.testing.assert_allclose(metrics["cal/brier"], want["brier"][mask].mean(), rtol=1e-5)
        np.testing.assert_allclose(metrics["cal/accuracy"], (probs.argmax(-1) == labels)[mask].mean())
        np.testing.assert_allclose(metrics["cal/confidence"], probs.max(-1)[mask].mean(), rtol=1e-5)


def test_focal_and_label_smoothing_reduce_to_cross_entropy():
    logits, labels, mask = classification_inputs(1)
    ce = -np_log_softmax(logits.astype(np.float64))[np.arange(6), labels][mask].mean()
    np.testing.assert_allclose(cal.focal_loss(logits, labels, mask, gamma=0.0)[0], ce, rtol=1e-5)
    smoothed = cal.label_smoothed_cross_entropy(logits, labels, mask, smoothing=0.0)[0]
    np.testing.assert_allclose(smoothed, ce, rtol=1e-5)
    # the focal factor only down-weights: focal <= CE, with equality only at gamma = 0
    assert float(cal.focal_loss(logits, labels, mask, gamma=2.0)[0]) < ce


def test_binary_brier_loss_matches_numpy_and_gradient_sign():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=5).astype(np.float32)
    labels = np.array([1, 0, 1, 1, 0])
    loss, metrics = cal.binary_brier_loss(logits, labels)
    p = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(loss, np.mean((p - labels) ** 2), rtol=1e-5)
    np.testing.assert_allclose(metrics["cal/accuracy"], np.mean((p > 0.5) == labels))
    grad = np.asarray(jax.grad(lambda x: cal.binary_brier_loss(x, labels)[0])(logits))
    assert np.all(np.sign(-grad) == np.where(labels == 1, 1, -1))  # descent raises p for positives


# ----------------------------------------------------------------------------- ConfTuner


def conf_inputs(seed, batch=5, vocab=30):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, vocab)).astype(np.float32)
    ids = rng.permutation(vocab)[:11]
    correct = rng.integers(0, 2, size=batch)
    return logits, ids, correct


def test_confidence_brier_loss_matches_numpy():
    logits, ids, correct = conf_inputs(3)
    mask = np.array([1, 1, 0, 1, 1], bool)
    loss, metrics = cal.confidence_brier_loss(logits, correct, ids, CONF_VALUES, mask)
    restricted = logits.astype(np.float64)[:, ids]
    p = np.exp(np_log_softmax(restricted))
    per_example = (p * (CONF_VALUES[None] - correct[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(loss, per_example[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["conf/brier"], loss)
    np.testing.assert_allclose(metrics["conf/expected_confidence"], (p @ CONF_VALUES)[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["conf/accuracy"], correct[mask].mean())
    mass = np.exp(restricted).sum(-1) / np.exp(logits.astype(np.float64)).sum(-1)
    np.testing.assert_allclose(metrics["conf/token_mass"], mass[mask].mean(), rtol=1e-5)


def test_confidence_brier_closed_forms_and_properness():
    point_mass = np.eye(11, dtype=np.float32)  # row k: all mass on confidence c_k
    np.testing.assert_allclose(cal.confidence_brier(point_mass[10:], CONF_VALUES, np.array([1])), [0.0])
    np.testing.assert_allclose(cal.confidence_brier(point_mass[10:], CONF_VALUES, np.array([0])), [1.0])
    # properness: with P(correct) = q, the expected loss of stating c_k is minimised at c_k closest to q
    for q in (0.0, 0.3, 0.72, 1.0):
        if_right = np.asarray(cal.confidence_brier(point_mass, CONF_VALUES, np.ones(11)))
        if_wrong = np.asarray(cal.confidence_brier(point_mass, CONF_VALUES, np.zeros(11)))
        expected = q * if_right + (1 - q) * if_wrong
        assert int(np.argmin(expected)) == int(np.argmin(np.abs(CONF_VALUES - q)))


def test_confidence_gradient_moves_mass_toward_the_outcome():
    logits, ids, _ = conf_inputs(4, batch=1)
    for correct, expected_sign in ((np.array([1]), 1.0), (np.array([0]), -1.0)):
        grad = jax.grad(lambda x: cal.confidence_brier_loss(x, correct, ids, CONF_VALUES)[0])(logits)
        new = logits - 0.5 * np.asarray(grad)
        before = cal.expected_confidence(jax.nn.softmax(logits[:, ids]), CONF_VALUES)
        after = cal.expected_confidence(jax.nn.softmax(new[:, ids]), CONF_VALUES)
        assert np.sign(float(after[0] - before[0])) == expected_sign
        assert np.all(np.delete(np.asarray(grad), ids, axis=1) == 0.0)  # other tokens untouched


@SETTINGS
@given(st.integers(0, 10_000), st.sampled_from([np.nan, np.inf, -1e30]))
def test_masked_examples_never_change_results(seed, garbage):
    logits, labels, mask = classification_inputs(seed)
    dirty = np.where(mask[:, None], logits, garbage).astype(np.float32)
    for name in cal.CALIBRATION_LOSSES.names():
        fn = cal.CALIBRATION_LOSSES.build(name)
        clean_loss, clean_metrics = fn(logits, labels, mask)
        dirty_loss, dirty_metrics = fn(dirty, labels, mask)
        np.testing.assert_allclose(dirty_loss, clean_loss, rtol=1e-6, err_msg=name)
        for key in clean_metrics:
            np.testing.assert_allclose(dirty_metrics[key], clean_metrics[key], rtol=1e-6, err_msg=key)
        grad = np.asarray(jax.grad(lambda x: fn(x, labels, mask)[0])(dirty))
        assert np.all(np.isfinite(grad)) and np.all(grad[~mask] == 0.0), name
    conf_logits, ids, correct = conf_inputs(seed, batch=6)
    conf_dirty = np.where(mask[:, None], conf_logits, garbage).astype(np.float32)
    for conf_loss in (cal.confidence_brier_loss, cal.confidence_log_loss):
        np.testing.assert_allclose(
            conf_loss(conf_dirty, correct, ids, CONF_VALUES, mask)[0],
            conf_loss(conf_logits, correct, ids, CONF_VALUES, mask)[0],
            rtol=1e-6,
        )


def test_confidence_log_loss_matches_numpy_and_finite_differences():
    logits, ids, correct = conf_inputs(5)
    mask = np.array([1, 0, 1, 1, 1], bool)
    loss, metrics = cal.confidence_log_loss(logits, correct, ids, CONF_VALUES, mask)
    p = np.exp(np_log_softmax(logits.astype(np.float64)[:, ids]))
    cbar = p @ CONF_VALUES
    per_example = -(correct * np.log(cbar) + (1 - correct) * np.log(1 - cbar))
    np.testing.assert_allclose(loss, per_example[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["conf/log_score"], loss)
    brier = (p * (CONF_VALUES[None] - correct[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(metrics["conf/brier"], brier[mask].mean(), rtol=1e-5)  # reported, not trained

    def np_loss(x):  # float64 reference of the same loss
        q = np.exp(np_log_softmax(x[:, ids])) @ CONF_VALUES
        return -(correct * np.log(q) + (1 - correct) * np.log(1 - q))[mask].mean()

    grad = np.asarray(jax.grad(lambda x: cal.confidence_log_loss(x, correct, ids, CONF_VALUES, mask)[0])(logits))
    x64, h = logits.astype(np.float64), 1e-5
    for b, v in [(0, ids[0]), (2, ids[5]), (4, ids[10]), (3, ids[3])]:
        up, down = x64.copy(), x64.copy()
        up[b, v] += h
        down[b, v] -= h
        np.testing.assert_allclose(grad[b, v], (np_loss(up) - np_loss(down)) / (2 * h), rtol=1e-3, atol=1e-6)
    assert np.all(grad[1] == 0.0) and np.all(np.delete(grad, ids, axis=1) == 0.0)


def test_confidence_log_score_is_minimised_at_the_true_probability():
    # with P(correct) = q the expected log score of stating cbar is smallest at cbar = q (strictly proper)
    grid = np.linspace(0.01, 0.99, 99)
    two_point = np.stack([1 - grid, grid], axis=1).astype(np.float32)  # mass on c = 0 and c = 1: cbar = grid
    values = np.array([0.0, 1.0], np.float32)
    if_right = np.asarray(cal.confidence_log_score(two_point, values, np.ones(99)))
    if_wrong = np.asarray(cal.confidence_log_score(two_point, values, np.zeros(99)))
    for q in (0.05, 0.3, 0.72, 0.9):
        assert abs(grid[int(np.argmin(q * if_right + (1 - q) * if_wrong))] - q) < 0.006
    # a point mass on c = 0 for a right answer is clipped, not infinite
    assert np.isfinite(cal.confidence_log_score(np.array([[1.0, 0.0]], np.float32), values, np.array([1]))).all()
