"""Constraint types for generated prompts: parameter samplers, instruction phrases, conflicts.

Each ``ConstraintSpec`` pairs an IFEval verifier id (``verifiers.VERIFIERS``) with a
sampler of its kwargs and the natural-language sentence that asks for it, so generated
prompts are scored by the very same verifiers as IFEval.

Left out on purpose: ``language:response_language`` (the offline detector is too coarse to
reward training on) and ``detectable_format:constrained_response`` (fits yes/no questions
only, not our open-ended tasks).

``CONFLICTS`` lists pairs that cannot (or cannot sensibly) be asked together, e.g. JSON
output and bullet points. ``SEEN_PAIRS`` / ``UNSEEN_PAIRS`` partition the compatible pairs
once, by a fixed hash of the ids (not by the generation seed), so that the
``ood_unseen_combinations`` split never shares a pair with training data.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import zlib
from typing import Any, Callable, Iterable, Mapping, Sequence

Kwargs = dict[str, Any]

KEYWORDS = ("lantern", "compass", "harvest", "orbit", "velvet", "thunder", "maple", "puzzle",
            "anchor", "meadow", "ribbon", "whistle", "pebble", "canyon", "feather")
FREQUENCY_WORDS = ("time", "people", "world", "simple", "story", "idea", "future", "small")
FORBIDDEN_WORDS = ("very", "really", "thing", "good", "important", "however", "also", "just",
                   "many", "great")
FIRST_WORDS = ("imagine", "today", "remember", "consider", "finally", "sometimes")
COMMON_LETTERS = ("e", "t", "a", "o", "n", "s")
RARE_LETTERS = ("q", "x", "z", "j")
END_PHRASES = ("Is there anything else I can help with?",
               "Let me know if you have additional questions.", "Thanks for reading.",
               "That is all for now.", "See you next time.")
POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")
SECTION_SPLITERS = ("SECTION", "Section", "PART", "Part")


@dataclasses.dataclass(frozen=True)
class ConstraintSpec:
    instruction_id: str
    sample: Callable[[random.Random], Kwargs]
    phrase: Callable[[Mapping[str, Any]], str]


def _relation_count(rng: random.Random, at_least: range, less_than: range) -> tuple[str, int]:
    relation = rng.choice(("at least", "less than"))
    return relation, rng.choice(at_least if relation == "at least" else less_than)


def _words(rng: random.Random) -> Kwargs:
    relation, n = _relation_count(rng, range(50, 401, 50), range(60, 301, 20))
    return {"relation": relation, "num_words": n}


def _sentences(rng: random.Random) -> Kwargs:
    relation, n = _relation_count(rng, range(2, 11), range(4, 16))
    return {"relation": relation, "num_sentences": n}


def _keyword_frequency(rng: random.Random) -> Kwargs:
    relation, n = _relation_count(rng, range(2, 6), range(2, 5))
    return {"keyword": rng.choice(FREQUENCY_WORDS), "relation": relation, "frequency": n}


def _letter_frequency(rng: random.Random) -> Kwargs:
    if rng.random() < 0.5:
        return {"letter": rng.choice(COMMON_LETTERS), "let_relation": "at least",
                "let_frequency": rng.choice(range(10, 41, 5))}
    return {"letter": rng.choice(RARE_LETTERS), "let_relation": "less than",
            "let_frequency": rng.choice(range(4, 9))}


def _capital_words(rng: random.Random) -> Kwargs:
    relation, n = _relation_count(rng, range(2, 9), range(2, 6))
    return {"capital_relation": relation, "capital_frequency": n}


def _nth_paragraph(rng: random.Random) -> Kwargs:
    n = rng.choice(range(2, 5))
    return {"num_paragraphs": n, "nth_paragraph": rng.choice(range(1, n + 1)),
            "first_word": rng.choice(FIRST_WORDS)}


def _quoted(words: Iterable[str]) -> str:
    words = [f'"{w}"' for w in words]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _spec(
    instruction_id: str,
    sample: Callable[[random.Random], Kwargs],
    phrase: str | Callable[[Mapping[str, Any]], str],
) -> ConstraintSpec:
    """``phrase`` is a ``str.format`` template over the kwargs, or a function of them."""
    if isinstance(phrase, str):
        template = phrase
        phrase = lambda kw: template.format(**kw)  # noqa: E731
    return ConstraintSpec(instruction_id, sample, phrase)


def _fixed(**kwargs: Any) -> Callable[[random.Random], Kwargs]:
    return lambda rng: dict(kwargs)


def _one_of(name: str, choices: Sequence[Any]) -> Callable[[random.Random], Kwargs]:
    return lambda rng: {name: rng.choice(choices)}


_SPECS: tuple[ConstraintSpec, ...] = (
    _spec("punctuation:no_comma", _fixed(),
          "Do not use any commas anywhere in your response."),
    _spec("length_constraints:number_words", _words,
          "Answer with {relation} {num_words} words."),
    _spec("length_constraints:number_sentences", _sentences,
          "Your response should contain {relation} {num_sentences} sentences."),
    _spec("length_constraints:number_paragraphs", _one_of("num_paragraphs", range(2, 6)),
          "Write exactly {num_paragraphs} paragraphs, separated from each other by the "
          "markdown divider ***."),
    _spec("length_constraints:nth_paragraph_first_word", _nth_paragraph,
          lambda kw: f"Write exactly {kw['num_paragraphs']} paragraphs separated by blank "
          f"lines; the {_ordinal(kw['nth_paragraph'])} paragraph must start with the word "
          f"\"{kw['first_word']}\"."),
    _spec("keywords:existence",
          lambda rng: {"keywords": rng.sample(KEYWORDS, rng.choice((1, 2, 3)))},
          lambda kw: f"Include the keywords {_quoted(kw['keywords'])} in your response."),
    _spec("keywords:forbidden_words",
          lambda rng: {"forbidden_words": rng.sample(FORBIDDEN_WORDS, rng.choice((1, 2, 3)))},
          lambda kw: f"Do not include the words {_quoted(kw['forbidden_words'])} in your response."),
    _spec("keywords:frequency", _keyword_frequency,
          'The word "{keyword}" should appear {relation} {frequency} times.'),
    _spec("keywords:letter_frequency", _letter_frequency,
          'The letter "{letter}" should appear {let_relation} {let_frequency} times in your '
          "response."),
    _spec("change_case:english_lowercase", _fixed(),
          "Your entire response must be in English and in lowercase letters only; no capital "
          "letters are allowed."),
    _spec("change_case:english_capital", _fixed(),
          "Your entire response must be in English and written in capital letters only."),
    _spec("change_case:capital_word_frequency", _capital_words,
          "Words written in all capital letters should appear {capital_relation} "
          "{capital_frequency} times."),
    _spec("detectable_format:json_format", _fixed(),
          "Wrap your entire output in JSON format; you may put it inside a markdown code block."),
    _spec("detectable_format:title", _fixed(),
          "Give your answer a title wrapped in double angular brackets, such as <<my title>>."),
    _spec("detectable_format:number_bullet_lists", _one_of("num_bullets", range(2, 7)),
          "Your answer must contain exactly {num_bullets} bullet points, written as markdown "
          'bullets such as "* This is a point."'),
    _spec("detectable_format:number_highlighted_sections", _one_of("num_highlights", range(1, 5)),
          lambda kw: f"Highlight at least {_plural(kw['num_highlights'], 'section')} of your "
          "answer with markdown, for example *highlighted section*."),
    _spec("detectable_format:multiple_sections",
          lambda rng: {"section_spliter": rng.choice(SECTION_SPLITERS),
                       "num_sections": rng.choice(range(2, 6))},
          "Your response must have {num_sections} sections. Mark the beginning of each "
          "section with {section_spliter} X, such as: {section_spliter} 1."),
    _spec("detectable_content:postscript", _one_of("postscript_marker", POSTSCRIPT_MARKERS),
          lambda kw: "At the end of your response, add a postscript starting with "
          f"{kw['postscript_marker'].rstrip('.')}."),
    _spec("detectable_content:number_placeholders", _one_of("num_placeholders", range(1, 5)),
          lambda kw: "The response must contain at least "
          f"{_plural(kw['num_placeholders'], 'placeholder')} in square brackets, such as "
          "[address]."),
    _spec("startend:end_checker", _one_of("end_phrase", END_PHRASES),
          'Finish your response with the exact phrase "{end_phrase}" and no other words '
          "after it."),
    _spec("startend:quotation", _fixed(),
          "Wrap your entire response in double quotation marks."),
    _spec("combination:two_responses", _fixed(),
          "Give two different responses, separated by six asterisks (******) and nothing "
          "else between them."),
    # prompt_to_repeat is filled in by the generator: the request before this sentence.
    _spec("combination:repeat_prompt", _fixed(prompt_to_repeat=""),
          "First repeat the request above word for word without change, then give your "
          "answer. Do not say anything before repeating the request, and do not repeat this "
          "sentence."),
)

SPECS: dict[str, ConstraintSpec] = {spec.instruction_id: spec for spec in _SPECS}
CONSTRAINT_IDS: tuple[str, ...] = tuple(sorted(SPECS))

_CONFLICTS_BY_ID: dict[str, tuple[str, ...]] = {
    "detectable_format:json_format": (
        "detectable_format:title", "detectable_format:number_bullet_lists",
        "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
        "length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word",
        "length_constraints:number_sentences", "detectable_content:postscript",
        "startend:end_checker", "startend:quotation", "combination:two_responses",
        "combination:repeat_prompt", "change_case:english_capital", "punctuation:no_comma",
    ),
    "startend:quotation": ("combination:two_responses", "combination:repeat_prompt"),
    "combination:two_responses": (
        "length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word",
        "combination:repeat_prompt", "detectable_format:number_bullet_lists",
        "detectable_format:multiple_sections",
    ),
    # The repeated request carries the other instructions' own words, capitals and length.
    "combination:repeat_prompt": (
        "punctuation:no_comma", "keywords:forbidden_words", "keywords:frequency",
        "keywords:letter_frequency", "change_case:english_lowercase",
        "change_case:english_capital", "change_case:capital_word_frequency",
        "length_constraints:nth_paragraph_first_word", "length_constraints:number_words",
        "length_constraints:number_sentences",
    ),
    "change_case:english_lowercase": (
        "change_case:english_capital", "change_case:capital_word_frequency",
        "detectable_format:multiple_sections", "startend:end_checker",
    ),
    "change_case:english_capital": (
        "change_case:capital_word_frequency", "detectable_format:multiple_sections",
        "startend:end_checker",
    ),
    "length_constraints:number_paragraphs": ("length_constraints:nth_paragraph_first_word",),
}

CONFLICTS: frozenset[frozenset[str]] = frozenset(
    frozenset((a, b)) for a, others in _CONFLICTS_BY_ID.items() for b in others
)


def compatible(instruction_ids: Iterable[str]) -> bool:
    """No repeated type and no conflicting pair among ``instruction_ids``."""
    ids = list(instruction_ids)
    if len(set(ids)) != len(ids):
        return False
    return not any(frozenset(p) in CONFLICTS for p in itertools.combinations(ids, 2))


def _is_unseen(pair: tuple[str, str]) -> bool:
    return zlib.crc32("|".join(pair).encode()) % 5 == 0


_COMPATIBLE_PAIRS = [p for p in itertools.combinations(CONSTRAINT_IDS, 2) if compatible(p)]
UNSEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in _COMPATIBLE_PAIRS if _is_unseen(p))
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in _COMPATIBLE_PAIRS if not _is_unseen(p))
