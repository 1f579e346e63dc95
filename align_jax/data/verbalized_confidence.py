"""The verbalized-confidence format shared by calibration training and its evaluation.

After its answer the assistant writes ``"\\nConfidence: "`` and ONE digit ``d`` in 0..9, read
as the probability ``d / 9`` that the answer is right (0 = surely wrong, 9 = surely right).
Digits are single tokens in the SmolLM2 (and Llama/Qwen-style) tokenizers, so the model's
confidence is the distribution over these 10 tokens at one position: training puts a loss on
it (ConfTuner's tokenized Brier, arXiv:2508.18847) and evaluation reads its expectation from
the logits instead of parsing free text.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CONFIDENCE_DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
CONFIDENCE_PREFIX = "\nConfidence: "
PLACEHOLDER_DIGIT = "0"  # the digit written into training text; its logits, not its identity, are trained

CONFIDENCE_PROMPT = (
    "Answer the question with a short answer only, no explanation. Then, on a new line, write "
    '"Confidence: " and one digit from 0 to 9 saying how likely your answer is correct '
    "(0 = surely wrong, 9 = surely right).\nQuestion: {question}"
)


def confidence_values() -> np.ndarray:  # [10] float32: 0, 1/9, ..., 1
    """The probability each confidence digit states."""
    return np.arange(len(CONFIDENCE_DIGITS), dtype=np.float32) / (len(CONFIDENCE_DIGITS) - 1)


def confidence_token_ids(tokenizer: Any) -> np.ndarray:  # [10] int32
    """Vocabulary ids of the digits, checked to be single tokens also right after the prefix."""
    prefix = tokenizer.encode(CONFIDENCE_PREFIX)
    ids = []
    for digit in CONFIDENCE_DIGITS:
        alone = tokenizer.encode(digit)
        joined = tokenizer.encode(CONFIDENCE_PREFIX + digit)
        if len(alone) != 1 or joined != prefix + alone:
            raise ValueError(
                f"confidence digit {digit!r} is not one token after {CONFIDENCE_PREFIX!r} "
                f"(alone {alone}, with prefix {joined} vs {prefix}); this tokenizer needs another format"
            )
        ids.append(alone[0])
    return np.asarray(ids, np.int32)


def with_confidence(answer: str, digit: str = PLACEHOLDER_DIGIT) -> str:
    """The assistant text: the answer, then the confidence line."""
    if digit not in CONFIDENCE_DIGITS:
        raise ValueError(f"confidence digit must be one of {CONFIDENCE_DIGITS}, got {digit!r}")
    return answer.rstrip() + CONFIDENCE_PREFIX + digit


def answer_prefix(answer: str) -> str:
    """The assistant text up to (not including) the confidence digit."""
    return answer.rstrip() + CONFIDENCE_PREFIX


def calibration_records(records) -> list:
    """Unpaired records (response = the model's answer, desirable = it was correct) -> the same
    records with the confidence line appended to the response (what the calibration task trains on)."""
    from align_jax.data.records import UnpairedRecord

    out = []
    for r in records:
        if not isinstance(r, UnpairedRecord):
            raise TypeError(f"the calibration task reads unpaired records (answer, correct), got {type(r).__name__}")
        out.append(UnpairedRecord(r.prompt, with_confidence(r.response), r.desirable))
    return out
