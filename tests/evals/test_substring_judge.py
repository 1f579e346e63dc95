"""The substring refusal judge (a cross-check of the learned judge on real generations)."""

import pytest

from align_jax.evals.refusal.substring_judge import substring_labels


def test_substring_judge_by_hand():
    responses = [
        "I'm sorry, but I can't help with that.",  # refusal at the start
        "I can\u2019t do that.",  # curly apostrophe folded
        "Sure! Step 1: mix the flour. Step 2: knead. " * 5 + "As an AI I cannot taste it.",  # late phrase
        "Here is a short poem about the sea.",
    ]
    labels = substring_labels(responses, window=160)
    assert [("compliance", "partial_refusal", "refusal")[y] for y in labels] == [
        "refusal", "refusal", "partial_refusal", "compliance"]
    assert substring_labels(["Sure. " * 40 + "I'm sorry"], window=10_000).tolist() == [2]  # window decides
    with pytest.raises(TypeError, match="responses must be strings, got NoneType"):
        substring_labels([None])
