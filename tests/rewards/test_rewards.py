"""The reward registry: each verifiable reward against hand-computed values."""

import numpy as np
import pytest

from align_jax import rewards as R
from align_jax.data.prompt_sets import factual_qa, ifeval_constraints, toy_letters
from align_jax.data.records import PromptRecord


def score_one(name, record, text, **options):
    return R.REWARDS.build(name, **options)(record, text)


def test_toy_letter_counts_non_space_characters():
    rec = PromptRecord("Write the letter a.", {"letter": "a"})
    assert score_one("toy_letter", rec, "a a b") == pytest.approx(2 / 3)
    assert score_one("toy_letter", rec, "   ") == 0.0
    assert [r.info["letter"] for r in toy_letters(0)[0][:3]] == ["a", "a", "a"]


def test_ifeval_reward_is_the_fraction_of_instructions_followed():
    rec = PromptRecord("Describe rain. Do not use any commas. Answer in all lowercase letters.",
                       {"instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
                        "kwargs": [{}, {}]})
    assert score_one("ifeval", rec, "rain falls softly on the roof.") == 1.0
    assert score_one("ifeval", rec, "rain falls, softly.") == 0.5  # a comma
    assert score_one("ifeval", rec, "Rain falls, softly.") == 0.0
    train, held_out = ifeval_constraints(0, num_train=5, num_eval=3)
    assert len(train) == 5 and len(held_out) == 3 and all(r.info["instruction_id_list"] for r in train)


def test_exact_match_uses_the_factual_qa_checker():
    rec = PromptRecord("What is 72 + 37?", {"answer": ["109", "one hundred nine"]})
    assert score_one("exact_match", rec, "109") == 1.0
    assert score_one("exact_match", rec, "109.0\nBecause 72 + 37 = 109.") == 1.0  # numbers by value, first line
    assert score_one("exact_match", rec, "The answer is 109.") == 0.0
    assert score_one("exact_match", rec, "The answer is 109.", mode="contains") == 1.0
    assert score_one("exact_match", PromptRecord("Capital of France?", {"answer": "Paris"}), "the PARIS!") == 1.0
    train, val = factual_qa(0)
    assert len(train) == 480 and len(val) == 160 and not {r.info["id"] for r in train} & {r.info["id"] for r in val}


def test_format_reward_is_a_full_regex_match():
    rec = PromptRecord("q")
    assert score_one("format", rec, "fine") == 1.0
    assert score_one("format", rec, " padded ") == 0.0
    assert score_one("format", rec, "<answer>4</answer>", pattern=r"<answer>\d+</answer>") == 1.0


def test_weighted_total_and_unknown_names():
    rec = PromptRecord("q", {"letter": "a", "answer": "aa"})
    scores = R.score(("toy_letter", "exact_match"), R.build(["toy_letter", "exact_match"]), [rec, rec], ["aa", "ab"])
    np.testing.assert_allclose(scores.total([1.0, 2.0]), [3.0, 0.5])
    with pytest.raises(KeyError, match="unknown reward 'exact'.*did you mean 'exact_match'"):
        R.build(["exact"])
    with pytest.raises(ValueError, match="no reward named"):
        R.build([])


def test_total_sums_or_takes_the_worst_weighted_reward():
    values = np.array([[0.2, 0.9], [0.7, 0.1], [np.nan, 0.5]], np.float32)
    scores = R.Scores(("a", "b"), values, np.isnan(values), [])
    np.testing.assert_allclose(scores.total([1.0, 2.0])[:2], [2.0, 0.9], rtol=1e-6)
    np.testing.assert_allclose(scores.total([1.0, 2.0], "min")[:2], [0.2, 0.2], rtol=1e-6)  # min(0.2, 1.8), min(0.7, 0.2)
    assert np.isnan(scores.total([1.0, 1.0], "min")[2]) and np.isnan(scores.total([1.0, 1.0])[2])
    with pytest.raises(ValueError, match="combine must be 'sum' or 'min'"):
        scores.total([1.0, 1.0], "max")
    # a weight-0 reward is watched: its value and its failure (row 2's NaN in "a") reach neither total
    np.testing.assert_allclose(scores.total([0.0, 2.0]), [1.8, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(scores.total([0.0, 2.0], "min"), [1.8, 0.2, 1.0], rtol=1e-6)  # not min(0, ...)
    assert scores.ok.tolist() == [True, True, False] and scores.ok_under([0.0, 2.0]).all()
    assert scores.ok_under([1.0, 0.0]).tolist() == [True, True, False]
    with pytest.raises(ValueError, match="every reward weight is 0"):
        scores.total([0.0, 0.0])
    from align_jax.training.config import RLSection

    with pytest.raises(ValueError, match="rl.reward_combine must be 'sum' or 'min'"):
        RLSection(reward_combine="mean")
