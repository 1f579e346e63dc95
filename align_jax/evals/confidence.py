"""Confidence sources: pure functions from log-probs (or generated text) to a probability.

* Sequence probability of a generated answer: raw ``exp(sum logp)`` (shrinks with length)
  or length-normalised ``exp(mean logp)`` (the geometric mean per-token probability).
* Multiple choice: softmax over per-option scores (summed or mean token log-probs), giving
  the chosen option and its probability.
* P(True): the model is asked whether its answer is true; the probability is
  ``p(" True") / (p(" True") + p(" False"))``, renormalised over the two answers.
* Verbalized confidence parsed from text ("Confidence: 80%"), or None with the reason.

Log-probs are natural-log, per token, as the sampler or a teacher-forced pass returns them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple, Sequence

import numpy as np


def _masked(token_logps: Any, mask: Any | None) -> tuple[np.ndarray, np.ndarray]:
    logps = np.asarray(token_logps, dtype=np.float64)
    if logps.ndim == 0:
        raise ValueError("token_logps needs a token axis, got a scalar")
    m = np.ones(logps.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != logps.shape:
        raise ValueError(f"mask shape {m.shape} != token_logps shape {logps.shape}")
    if np.any(logps[m] > 1e-6):
        raise ValueError("log-probs must be <= 0")
    return logps, m


def sequence_logprob(token_logps: Any, mask: Any | None = None) -> np.ndarray:
    """Sum of token log-probs over the last axis: [..., T] -> [...]. mask [..., T] selects tokens."""
    logps, m = _masked(token_logps, mask)
    return np.sum(np.where(m, logps, 0.0), axis=-1)


def mean_token_logprob(token_logps: Any, mask: Any | None = None) -> np.ndarray:
    """Mean token log-prob over the last axis: [..., T] -> [...]; needs >= 1 token per row."""
    logps, m = _masked(token_logps, mask)
    n = m.sum(axis=-1)
    if np.any(n == 0):
        raise ValueError("length-normalised score needs at least one (unmasked) token per sequence")
    return np.sum(np.where(m, logps, 0.0), axis=-1) / n


def sequence_probability(
    token_logps: Any, mask: Any | None = None, *, length_normalized: bool = False
) -> np.ndarray:
    """exp(sum logp) (raw) or exp(mean logp) (length_normalized): [..., T] -> [...]."""
    score = mean_token_logprob if length_normalized else sequence_logprob
    return np.exp(score(token_logps, mask))


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - np.max(scores)
    e = np.exp(z)
    return e / e.sum()


class OptionChoice(NamedTuple):
    index: int  # argmax option (first one on ties)
    probability: float  # its softmax probability
    probabilities: np.ndarray  # [K], sums to 1


def option_scores(option_token_logps: Sequence[Any], *, length_normalized: bool = False) -> np.ndarray:
    """Per-option score [K] from K ragged per-token log-prob arrays [T_k]."""
    if len(option_token_logps) == 0:
        raise ValueError("need at least one option")
    score = mean_token_logprob if length_normalized else sequence_logprob
    return np.array([float(score(np.asarray(o, dtype=np.float64).reshape(-1)))
                     for o in option_token_logps])


def choose_option(option_token_logps: Sequence[Any], *, length_normalized: bool = False) -> OptionChoice:
    """Softmax over option scores -> (chosen index, its probability, all probabilities [K])."""
    probs = _softmax(option_scores(option_token_logps, length_normalized=length_normalized))
    index = int(np.argmax(probs))
    return OptionChoice(index, float(probs[index]), probs)


def p_true(true_logps: Any, false_logps: Any) -> float:
    """p(True) renormalised over {True, False}. Each argument: a log-prob or token log-probs [T]."""
    lt = float(np.sum(np.asarray(true_logps, dtype=np.float64)))
    lf = float(np.sum(np.asarray(false_logps, dtype=np.float64)))
    # sigmoid(lt - lf), written to stay finite for large |lt - lf|.
    d = lt - lf
    return float(1.0 / (1.0 + np.exp(-d))) if d >= 0 else float(np.exp(d) / (1.0 + np.exp(d)))


# --- verbalized confidence -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ParsedConfidence:
    """value in [0, 1], or None; reason says how it was read or why it could not be."""

    value: float | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.value is not None


_NUM = r"(?P<num>-?\d+(?:\.\d+)?|-?\.\d+)"
_RATIO = r"(?:\s*(?:/|out\s+of)\s*(?P<den>\d+(?:\.\d+)?))"
_LABELLED = re.compile(
    r"\b(?:confidence|certainty)(?:\s+(?:level|score))?"
    r"\s*(?:[:=]|\bis\b|\bof\b)?\s*(?:about\s+|around\s+|~\s*)?"
    + _NUM + r"(?:(?P<pct>\s*%|\s*percent\b)|" + _RATIO + r")?",
    re.IGNORECASE,
)
_PHRASE = re.compile(
    _NUM + r"(?:\s*%|\s*percent\b)\s+(?:sure|confident|certain|likely)\b"
    r"|(?:sure|confident|certain)\s+(?:at|with)\s+(?:about\s+)?"
    r"(?P<num2>\d+(?:\.\d+)?)\s*(?:%|percent\b)",
    re.IGNORECASE,
)
_KEYWORD = re.compile(r"\b(?:confidence|certainty|confident|sure|certain)\b", re.IGNORECASE)


def _read_labelled(m: re.Match[str]) -> tuple[float | None, str]:
    num = float(m.group("num"))
    if m.group("den") is not None:
        den = float(m.group("den"))
        if den == 0:
            return None, f"ratio {m.group(0)!r} has a zero denominator"
        value, how = num / den, "ratio"
    elif m.group("pct") is not None:
        value, how = num / 100.0, "percent"
    elif 0.0 <= num <= 1.0:
        value, how = num, "fraction"
    elif 1.0 < num <= 100.0:
        value, how = num / 100.0, "bare number > 1 read as percent"
    else:
        return None, f"number {num:g} in {m.group(0)!r} is not a probability or percent"
    if not 0.0 <= value <= 1.0:
        return None, f"{m.group(0)!r} gives {value:g}, outside [0, 1]"
    return value, how


def parse_verbalized_confidence(text: str) -> ParsedConfidence:
    """Reads "Confidence: 80%", "confidence: 0.8", "I am 90% sure", "Confidence: 8/10".

    Returns ParsedConfidence(None, reason) when there is no numeric statement, when the
    number is out of range, or when the text states different values.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    found: list[tuple[float, str]] = []
    errors: list[str] = []
    for m in _LABELLED.finditer(text):
        value, how = _read_labelled(m)
        (found.append((value, how)) if value is not None else errors.append(how))
    for m in _PHRASE.finditer(text):
        raw = m.group("num") if m.group("num") is not None else m.group("num2")
        value = float(raw) / 100.0
        if 0.0 <= value <= 1.0:
            found.append((value, "percent phrase"))
        else:
            errors.append(f"{m.group(0)!r} gives {value:g}, outside [0, 1]")
    if errors:
        return ParsedConfidence(None, errors[0])
    values = sorted({round(v, 12) for v, _ in found})
    if len(values) > 1:
        return ParsedConfidence(None, f"conflicting confidence values {values}")
    if values:
        return ParsedConfidence(values[0], found[0][1])
    if _KEYWORD.search(text):
        return ParsedConfidence(None, "mentions confidence but states no numeric value")
    return ParsedConfidence(None, "no confidence statement found")
