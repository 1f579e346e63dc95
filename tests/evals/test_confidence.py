"""Confidence sources: sequence probabilities, MC options, P(True), verbalized parsing."""

import math

import numpy as np
import pytest

from align_jax.evals import confidence as conf


# --- sequence probability ----------------------------------------------------------------

def test_sequence_probability_raw_and_length_normalised():
    probs = [0.5, 0.25, 0.8]
    logps = np.log(probs)
    assert conf.sequence_probability(logps) == pytest.approx(0.5 * 0.25 * 0.8)
    assert conf.sequence_probability(logps, length_normalized=True) == pytest.approx((0.1) ** (1 / 3))


def test_sequence_probability_batched_with_mask():
    logps = np.log([[0.5, 0.5, 0.9], [0.2, 0.9, 0.9]])  # [B=2, T=3]
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    np.testing.assert_allclose(conf.sequence_probability(logps, mask), [0.25, 0.2])
    np.testing.assert_allclose(conf.sequence_probability(logps, mask, length_normalized=True), [0.5, 0.2])
    with pytest.raises(ValueError, match="at least one"):
        conf.mean_token_logprob(logps, np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="mask shape"):
        conf.sequence_logprob(logps, mask[:, :2])
    with pytest.raises(ValueError, match="<= 0"):
        conf.sequence_logprob([0.3, -1.0])


# --- multiple choice ---------------------------------------------------------------------

def test_option_probabilities_sum_to_one_and_match_hand_softmax():
    options = [np.log([0.5, 0.5]), np.log([0.1]), np.log([0.9, 0.9, 0.9])]
    choice = conf.choose_option(options)
    # summed: 0.25, 0.1, 0.729 -> normalised by their total
    expected = np.array([0.25, 0.1, 0.729]) / (0.25 + 0.1 + 0.729)
    np.testing.assert_allclose(choice.probabilities, expected)
    assert choice.index == 2 and choice.probability == pytest.approx(expected[2])
    assert choice.probabilities.sum() == pytest.approx(1.0)
    # mean log-prob: geometric means 0.5, 0.1, 0.9
    norm = conf.choose_option(options, length_normalized=True)
    np.testing.assert_allclose(norm.probabilities, np.array([0.5, 0.1, 0.9]) / 1.5)


def test_option_probabilities_are_stable_for_very_negative_scores():
    rng = np.random.default_rng(0)
    options = [rng.uniform(-400, -300, size=k) for k in (3, 5, 8, 2)]
    probs = conf.choose_option(options).probabilities
    assert np.all(np.isfinite(probs)) and probs.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one option"):
        conf.choose_option([])


# --- P(True) -----------------------------------------------------------------------------

def test_p_true_renormalises_over_true_and_false():
    assert conf.p_true(math.log(0.6), math.log(0.2)) == pytest.approx(0.75)
    assert conf.p_true(np.log([0.5, 0.4]), math.log(0.05)) == pytest.approx(0.2 / 0.25)  # multi-token
    assert conf.p_true(-1.0, -1.0) == 0.5
    assert conf.p_true(0.0, -2000.0) == 1.0 and conf.p_true(-2000.0, 0.0) == 0.0


# --- verbalized confidence ---------------------------------------------------------------

@pytest.mark.parametrize(
    "text, value",
    [
        ("Confidence: 80%", 0.8),
        ("confidence: 0.8", 0.8),
        ("I am 90% sure", 0.9),
        ("Confidence: 8/10", 0.8),
        ("Answer: Paris\nConfidence: 95 %", 0.95),
        ("CONFIDENCE=0.35", 0.35),
        ("My confidence is 0.75.", 0.75),
        ("Confidence level: 60%", 0.6),
        ("confidence: 4 out of 5", 0.8),
        ("Confidence: 75 percent", 0.75),
        ("confidence: .9", 0.9),
        ("Confidence: 70", 0.7),  # bare number > 1 is read as a percent
        ("Confidence: 1", 1.0),
        ("Confidence: 0%", 0.0),
        ("I'm 100% certain.", 1.0),
        ("I'm confident at 85%", 0.85),
        ("Certainty: 0.6", 0.6),
        ("Confidence: 80%. I am 80% sure.", 0.8),  # repeated but consistent
    ],
)
def test_verbalized_confidence_parses(text, value):
    parsed = conf.parse_verbalized_confidence(text)
    assert parsed.ok, parsed.reason
    assert parsed.value == pytest.approx(value)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Paris", "no confidence statement"),
        ("", "no confidence statement"),
        ("Confidence: high", "no numeric value"),
        ("I am fairly sure.", "no numeric value"),
        ("confidence: 120%", "outside [0, 1]"),
        ("Confidence: -5%", "outside [0, 1]"),
        ("Confidence: 11/10", "outside [0, 1]"),
        ("Confidence: 8/0", "zero denominator"),
        ("Confidence: 250", "not a probability or percent"),
        ("I am 150% sure", "outside [0, 1]"),
        ("Confidence: 80%. I am 70% sure.", "conflicting"),
    ],
)
def test_verbalized_confidence_failures_say_why(text, reason):
    parsed = conf.parse_verbalized_confidence(text)
    assert parsed.value is None and not parsed.ok
    assert reason in parsed.reason


def test_verbalized_confidence_rejects_non_strings():
    with pytest.raises(TypeError, match="expected str, got float"):
        conf.parse_verbalized_confidence(0.8)
