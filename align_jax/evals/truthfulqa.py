"""TruthfulQA (Lin et al., 2021) as multiple-choice items for calibration evals.

Each CSV row becomes one item: the question, its ``Best Answer`` (the one correct choice)
and its ``Incorrect Answers`` (split on ``"; "``; empty pieces from trailing ``;`` are
dropped, exact duplicates removed), with the category. Choices start as
``[best, *incorrect]`` (correct index 0) and are then shuffled deterministically per row
from ``(seed, row number)``; ``correct_index`` records where the best answer went.
``seed=None`` keeps the unshuffled order.

The file is not part of the repository: pass its path (the project's copy lives at
``../shared/data/truthfulqa/TruthfulQA.csv``).
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

REQUIRED_COLUMNS = ("Type", "Category", "Question", "Best Answer", "Incorrect Answers")
ANSWER_SEPARATOR = "; "


class TruthfulQAFormatError(ValueError):
    """A malformed file or row; the message names the file and the row."""


@dataclasses.dataclass(frozen=True)
class MCItem:
    question: str
    choices: tuple[str, ...]
    correct_index: int
    category: str
    type: str  # "Adversarial" or "Non-Adversarial"
    row: int  # 1-based data row in the CSV (the header is row 0)

    @property
    def correct_answer(self) -> str:
        return self.choices[self.correct_index]


def split_answers(field: str) -> list[str]:
    """'a; b; c;' -> ['a', 'b', 'c'] (stripped, empties and exact duplicates dropped)."""
    out: list[str] = []
    for piece in field.split(ANSWER_SEPARATOR):
        piece = piece.strip().rstrip(";").strip()
        if piece and piece not in out:
            out.append(piece)
    return out


def _shuffle(choices: list[str], seed: int | None, row: int) -> tuple[tuple[str, ...], int]:
    """Returns (shuffled choices, index of choices[0]) — deterministic in (seed, row)."""
    if seed is None:
        return tuple(choices), 0
    order = np.random.default_rng([seed, row]).permutation(len(choices))
    return tuple(choices[i] for i in order), int(np.flatnonzero(order == 0)[0])


def load_truthfulqa(path: str | os.PathLike[str], *, seed: int | None = 0) -> list[MCItem]:
    """Loads every row of TruthfulQA.csv as an MCItem; raises TruthfulQAFormatError on bad rows."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"TruthfulQA CSV not found: {path}")
    items: list[MCItem] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TruthfulQAFormatError(
                f"{path}: header lacks column(s) {missing}; found {reader.fieldnames}"
            )
        for row_number, record in enumerate(reader, start=1):
            where = f"{path}: row {row_number} (line {reader.line_num})"
            if None in record:  # more fields than the header
                raise TruthfulQAFormatError(f"{where}: has more fields than the header")
            empty = [c for c in REQUIRED_COLUMNS if not (record.get(c) or "").strip()]
            if empty:
                raise TruthfulQAFormatError(f"{where}: missing or empty field(s) {empty}")
            best = record["Best Answer"].strip()
            incorrect = split_answers(record["Incorrect Answers"])
            if not incorrect:
                raise TruthfulQAFormatError(f"{where}: 'Incorrect Answers' has no answers")
            if best in incorrect:
                raise TruthfulQAFormatError(f"{where}: best answer {best!r} is also listed as incorrect")
            choices, correct_index = _shuffle([best, *incorrect], seed, row_number)
            items.append(MCItem(
                question=record["Question"].strip(),
                choices=choices,
                correct_index=correct_index,
                category=record["Category"].strip(),
                type=record["Type"].strip(),
                row=row_number,
            ))
    if not items:
        raise TruthfulQAFormatError(f"{path}: no data rows")
    return items


def format_mc_prompt(question: str) -> str:
    """The scoring context; each choice is scored as the continuation ``format_mc_continuation``."""
    return f"Q: {question}\nA:"


def format_mc_continuation(answer: str) -> str:
    return f" {answer}"


def mc_scoring_pairs(item: MCItem) -> list[tuple[str, str]]:
    """(prompt, continuation) per choice, in ``item.choices`` order; score log p(continuation | prompt)."""
    prompt = format_mc_prompt(item.question)
    return [(prompt, format_mc_continuation(c)) for c in item.choices]
