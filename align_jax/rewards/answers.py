"""Matching a short answer against reference answers (the factual QA set's checker, and the
``exact_match`` reward of online RL).

``answer_matches`` normalises both sides (Unicode accents stripped, lower case, punctuation
and the articles a/an/the removed, thousands separators dropped, decimal points kept) and
compares against the answer and its aliases; two numbers compare by value ("3000.0" ==
"3000"). ``mode="contains"`` also accepts a reference that appears as a whole-word span
inside a longer prediction ("The capital is Paris."), which is more lenient (it would also
accept "not Paris").
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal
from typing import Any, Literal, Sequence

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
# punctuation, except a decimal point and a leading minus sign
_NON_WORD = re.compile(r"(?!(?<=\d)\.(?=\d)|(?<!\w)-(?=\d))[^\w\s]")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def normalize_answer(text: str) -> str:
    """Lower case, accents stripped, punctuation/articles removed, decimal points and minus kept."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = _THOUSANDS.sub("", text)
    text = _NON_WORD.sub(" ", text).replace("_", " ")
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _same(pred: str, ref: str) -> bool:
    if pred == ref:
        return True
    if _NUMBER.fullmatch(pred) and _NUMBER.fullmatch(ref):
        return Decimal(pred) == Decimal(ref)
    return False


def _contains(pred: str, ref: str) -> bool:
    tokens, ref_tokens = pred.split(), ref.split()
    k = len(ref_tokens)
    return k > 0 and any(_same(" ".join(tokens[i:i + k]), ref) for i in range(len(tokens) - k + 1))


def answer_matches(
    prediction: str, item: Any, *, mode: Literal["exact", "contains"] = "exact"
) -> bool:
    """Whether the prediction states one of the references: ``item`` is a
    :class:`align_jax.data.factual_qa.FactItem` (its answer and aliases) or a sequence of strings."""
    references: Sequence[str] = item.references if hasattr(item, "references") else item
    pred = normalize_answer(prediction)
    refs = [normalize_answer(r) for r in references]
    if mode == "exact":
        return any(_same(pred, r) for r in refs)
    if mode == "contains":
        return any(_contains(pred, r) for r in refs)
    raise ValueError(f"unknown match mode {mode!r}; expected 'exact' or 'contains'")
