"""Offline, verifiable preference pairs: a factual question plus one checkable instruction.

Each pair asks a question from :mod:`align_jax.data.factual_qa` and adds one IFEval-style
instruction (its wording from ``instructions.constraints.SPECS``). ``chosen`` is a short
answer sentence built from the fact's canonical answer and transformed to *satisfy* the
instruction; ``rejected`` is the same sentence *not* satisfying it. Both state the right
answer, so the only difference a preference learner can pick up is the instruction.

Every pair carries its :class:`InstructionExample` (ids + kwargs), so the verifiers that
label the pairs also score a model's generations (``evals.instruction_compliance``).

Splits (``SPLITS``):

- ``train`` / ``validation`` / ``test``: the facts of that factual-QA split (fixed by
  ``split_seed``, *not* by ``seed``, so no seed can leak test facts into train), crossed
  with every in-distribution constraint (``TRAIN_CONSTRAINTS``).
- ``test_ood``: the test facts with the held-out constraints (``OOD_CONSTRAINTS``), which
  never appear in any other split.

``seed`` picks sentence wordings and options (end phrase, postscript marker) and the order;
the same ``(split, seed)`` always gives the same pairs. Building asserts that every chosen
passes and every rejected fails its verifier, and raises with the offending pair otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from typing import Any, Callable, Mapping, Sequence

from align_jax.data.records import PreferenceRecord
from align_jax.data.factual_qa import FactItem, build_factual_qa, split_factual_qa
from align_jax.instructions.constraints import END_PHRASES, POSTSCRIPT_MARKERS, SPECS
from align_jax.instructions.data import InstructionExample
from align_jax.instructions.verifiers import check

SPLITS = ("train", "validation", "test", "test_ood")

# Base answer sentences; all start with a capital letter (so the case constraints have a
# failing ``rejected``). The comma ones serve ``punctuation:no_comma``.
_SENTENCES = ("The answer is {a}.", "It is {a}.", "That would be {a}.", "The correct answer is {a}.")
_COMMA_SENTENCES = ("Well, the answer is {a}.", "Sure, it is {a}.", "The answer, in short, is {a}.")
_POSTSCRIPTS = ("I hope this helps.", "Feel free to ask another question.", "Thanks for asking.")
_TITLES = {
    "capital": "Capital City", "capital_country": "Country Of A Capital",
    "us_state_capital": "State Capital", "element_symbol": "Chemical Symbol", "element_name": "Chemical Element",
    "atomic_number": "Atomic Number", "planet": "The Planets", "author": "Book Author",
    "arithmetic": "Arithmetic", "unit_conversion": "Unit Conversion",
}


@dataclasses.dataclass(frozen=True)
class _Context:
    fact: FactItem
    sentence: str  # the base answer sentence (may contain commas)
    rng: random.Random


# A transform returns (kwargs, chosen, rejected) for one fact.
Transform = Callable[[_Context], tuple[dict[str, Any], str, str]]


def _lowercase(c: _Context):
    return {}, c.sentence.lower(), c.sentence


def _capital(c: _Context):
    return {}, c.sentence.upper(), c.sentence


def _quotation(c: _Context):
    return {}, f'"{c.sentence}"', c.sentence


def _end_phrase(c: _Context):
    phrase = c.rng.choice(END_PHRASES)
    return {"end_phrase": phrase}, f"{c.sentence} {phrase}", c.sentence


def _postscript(c: _Context):
    marker = c.rng.choice(POSTSCRIPT_MARKERS)
    written = marker if marker.endswith(".") else marker + "."  # "P.P.S" -> "P.P.S."
    return {"postscript_marker": marker}, f"{c.sentence}\n\n{written} {c.rng.choice(_POSTSCRIPTS)}", c.sentence


def _title(c: _Context):
    return {}, f"<<{_TITLES[c.fact.category]}>>\n{c.sentence}", c.sentence


def _no_comma(c: _Context):
    sentence = c.rng.choice(_COMMA_SENTENCES).format(a=c.fact.answer)
    return {}, sentence.replace(",", ""), sentence


def _highlight(c: _Context):
    return {"num_highlights": 1}, c.sentence.replace(c.fact.answer, f"*{c.fact.answer}*", 1), c.sentence


def _json(c: _Context):
    return {}, json.dumps({"answer": c.fact.answer}, ensure_ascii=False), c.sentence


def _repeat_prompt(c: _Context):
    return {"prompt_to_repeat": c.fact.question}, f"{c.fact.question} {c.sentence}", c.sentence


def _two_responses(c: _Context):
    return {}, f"{c.fact.answer}.\n******\n{c.sentence}", c.sentence


def _bullets(c: _Context):
    chosen = f"* Question: {c.fact.question}\n* Answer: {c.fact.answer}."
    return {"num_bullets": 2}, chosen, c.sentence


TRANSFORMS: dict[str, Transform] = {
    "change_case:english_lowercase": _lowercase,
    "change_case:english_capital": _capital,
    "startend:end_checker": _end_phrase,
    "detectable_content:postscript": _postscript,
    "detectable_format:title": _title,
    "punctuation:no_comma": _no_comma,
    "detectable_format:json_format": _json,
    "combination:repeat_prompt": _repeat_prompt,
    "combination:two_responses": _two_responses,
    "detectable_format:number_bullet_lists": _bullets,
    # held out of train (OOD): "wrap the text" kinds, neighbours of title and end phrase
    "startend:quotation": _quotation,
    "detectable_format:number_highlighted_sections": _highlight,
}
OOD_CONSTRAINTS: tuple[str, ...] = ("startend:quotation", "detectable_format:number_highlighted_sections")
TRAIN_CONSTRAINTS: tuple[str, ...] = tuple(i for i in TRANSFORMS if i not in OOD_CONSTRAINTS)


class CheckablePairError(ValueError):
    """A built pair whose chosen fails or whose rejected passes its verifier."""


@dataclasses.dataclass(frozen=True)
class CheckablePair:
    """One question + instruction with a compliant (chosen) and a non-compliant (rejected) reply."""

    key: str  # "<fact id>|<instruction id>"
    fact_id: str
    split: str
    prompt: str  # the user turn: question + instruction sentence
    instruction_id: str
    kwargs: Mapping[str, Any]
    chosen: str
    rejected: str

    @property
    def record(self) -> PreferenceRecord:
        return PreferenceRecord(({"role": "user", "content": self.prompt},), self.chosen, self.rejected)

    @property
    def example(self) -> InstructionExample:
        return InstructionExample(self.key, self.prompt, (self.instruction_id,), (dict(self.kwargs),))

    def to_json(self) -> dict[str, Any]:
        """A JSONL row for the generic ``preference`` source, plus the IFEval fields."""
        return {
            "prompt": [{"role": "user", "content": self.prompt}],
            "chosen": self.chosen,
            "rejected": self.rejected,
            "instruction_id_list": [self.instruction_id],
            "kwargs": [dict(self.kwargs)],
            "key": self.key,
            "fact_id": self.fact_id,
            "split": self.split,
        }


def _rng(seed: int, *parts: str) -> random.Random:
    digest = hashlib.sha256(":".join((str(seed),) + parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_pair(fact: FactItem, instruction_id: str, *, split: str, seed: int = 0) -> CheckablePair:
    """The pair for one fact and one constraint; raises :class:`CheckablePairError` if the
    verifier does not separate chosen from rejected."""
    rng = _rng(seed, fact.id, instruction_id)
    sentence = rng.choice(_SENTENCES).format(a=fact.answer)
    kwargs, chosen, rejected = TRANSFORMS[instruction_id](_Context(fact, sentence, rng))
    pair = CheckablePair(
        key=f"{fact.id}|{instruction_id}",
        fact_id=fact.id,
        split=split,
        prompt=f"{fact.question} {SPECS[instruction_id].phrase(kwargs)}",
        instruction_id=instruction_id,
        kwargs=kwargs,
        chosen=chosen,
        rejected=rejected,
    )
    verify(pair)
    return pair


def verify(pair: CheckablePair) -> None:
    """Raises :class:`CheckablePairError` unless chosen passes and rejected fails."""
    chosen_ok = check(pair.instruction_id, pair.chosen, pair.kwargs)
    rejected_ok = check(pair.instruction_id, pair.rejected, pair.kwargs)
    if not chosen_ok or rejected_ok:
        raise CheckablePairError(
            f"pair {pair.key!r} is not separated by its verifier (chosen passes: {chosen_ok}, "
            f"rejected passes: {rejected_ok}): {pair}"
        )


def build_checkable_pairs(
    split: str = "train", seed: int = 0, max_pairs: int | None = None, *, split_seed: int = 0
) -> list[CheckablePair]:
    """Every (fact of the split) x (constraint of the split) pair, shuffled by ``seed`` and
    cut to ``max_pairs``. ``split_seed`` fixes the factual-QA split (keep it the same for
    all splits of one experiment)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {SPLITS}")
    if max_pairs is not None and max_pairs < 0:
        raise ValueError(f"max_pairs must be >= 0, got {max_pairs}")
    facts = split_factual_qa(build_factual_qa(), seed=split_seed)["test" if split == "test_ood" else split]
    constraints = OOD_CONSTRAINTS if split == "test_ood" else TRAIN_CONSTRAINTS
    pairs = [make_pair(f, c, split=split, seed=seed) for f in facts for c in constraints]
    pairs.sort(key=lambda p: hashlib.sha256(f"{seed}:{p.key}".encode()).digest())
    return pairs if max_pairs is None else pairs[:max_pairs]


def write_jsonl(pairs: Sequence[CheckablePair], path: str | os.PathLike[str]) -> None:
    """One :meth:`CheckablePair.to_json` row a line; ``SourceConfig(path, "preference")`` reads it."""
    with open(path, "w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair.to_json(), ensure_ascii=False) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[CheckablePair]:
    """Inverse of :func:`write_jsonl` (re-verifies every pair)."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            (instruction_id,), (kwargs,) = row["instruction_id_list"], row["kwargs"]
            pair = CheckablePair(
                key=row["key"], fact_id=row["fact_id"], split=row["split"],
                prompt=row["prompt"][-1]["content"], instruction_id=instruction_id,
                kwargs=kwargs, chosen=row["chosen"], rejected=row["rejected"],
            )
            verify(pair)
            pairs.append(pair)
    return pairs
