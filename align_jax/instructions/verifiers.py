"""The 25 IFEval verifiable instructions (Zhou et al. 2023, arXiv:2311.07911).

Each verifier is ``check(response, **kwargs) -> bool`` with the keyword options of the
IFEval data file (``num_words``, ``relation``, ...). ``VERIFIERS`` is the single list of
supported instruction ids; a verifier's options come from its signature (see
``align_jax.registry``): all are required, and a ``validate`` hook derived from the
annotations rejects missing options, wrong types and unknown relations.

The checks follow the published reference implementation (google-research
``instruction_following_eval``), with these documented offline replacements:
- word, sentence and capital-word counts use ``text.py`` (regexes, no nltk);
- language detection uses ``language.py`` (scripts and stop words, no langdetect); a
  response with no letters is *not* in the requested language (langdetect's error path
  counted it as passing);
- keywords are matched literally (``re.escape``) instead of as raw regex patterns.
"""

from __future__ import annotations

import collections
import inspect
import json
import re
from typing import Any, Callable, Mapping

from align_jax.instructions import text
from align_jax.instructions.language import detect_language
from align_jax.registry import Registry

PAPER = "2311.07911"
RELATIONS = ("less than", "at least")

VERIFIERS = Registry("instruction")


_OPTION_TYPES = {"int | None": int, "str | None": str, "list[str] | None": list}


def _verifier(
    instruction_id: str, *, relation: str | None = None
) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    """Registers a verifier. Every keyword-only option is required (None means absent) and
    must have the type its annotation names; ``relation`` names an option in ``RELATIONS``."""

    def decorator(fn: Callable[..., bool]) -> Callable[..., bool]:
        types = {
            p.name: _OPTION_TYPES[p.annotation]
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

        def validate(**options: Any) -> None:
            missing = [name for name in types if options.get(name) is None]
            if missing:
                raise ValueError(f"instruction {instruction_id!r} needs option(s) {missing}")
            for name, expected in types.items():
                value = options[name]
                if not isinstance(value, expected) or isinstance(value, bool) or (
                    expected is list and not all(isinstance(v, str) for v in value)
                ):
                    raise ValueError(
                        f"instruction {instruction_id!r}: option {name}={value!r} must be "
                        f"{'a list of str' if expected is list else expected.__name__}"
                    )
            if relation is not None and options[relation] not in RELATIONS:
                raise ValueError(
                    f"instruction {instruction_id!r}: {relation}={options[relation]!r} "
                    f"must be one of {RELATIONS}"
                )

        return VERIFIERS.register(instruction_id, paper=PAPER, validate=validate)(fn)

    return decorator


def _compare(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == "less than" else count >= threshold


# --- keywords ----------------------------------------------------------------------------


@_verifier("keywords:existence")
def keywords_existence(response: str, *, keywords: list[str] | None = None) -> bool:
    """Every keyword occurs (case-insensitive substring)."""
    return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in keywords)


@_verifier("keywords:frequency", relation="relation")
def keywords_frequency(
    response: str, *, keyword: str | None = None, frequency: int | None = None,
    relation: str | None = None,
) -> bool:
    """The keyword occurs ``relation`` ``frequency`` times (case-insensitive substring count)."""
    count = len(re.findall(re.escape(keyword), response, flags=re.IGNORECASE))
    return _compare(count, relation, frequency)


@_verifier("keywords:forbidden_words")
def keywords_forbidden_words(response: str, *, forbidden_words: list[str] | None = None) -> bool:
    """None of the words occurs as a whole word (case-insensitive)."""
    return not any(
        re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE)
        for w in forbidden_words
    )


@_verifier("keywords:letter_frequency", relation="let_relation")
def keywords_letter_frequency(
    response: str, *, letter: str | None = None, let_frequency: int | None = None,
    let_relation: str | None = None,
) -> bool:
    """The letter (any character, case-insensitive) occurs ``let_relation`` ``let_frequency`` times."""
    count = collections.Counter(response.lower())[letter.strip().lower()]
    return _compare(count, let_relation, let_frequency)


# --- language and case -------------------------------------------------------------------


@_verifier("language:response_language")
def response_language(response: str, *, language: str | None = None) -> bool:
    """The whole response is in ``language`` (ISO 639-1 code), by the offline detector."""
    return detect_language(response) == language


@_verifier("change_case:english_capital")
def english_capital(response: str) -> bool:
    """The response is in English and all its cased letters are capitals."""
    return response.isupper() and detect_language(response) == "en"


@_verifier("change_case:english_lowercase")
def english_lowercase(response: str) -> bool:
    """The response is in English and all its cased letters are lowercase."""
    return response.islower() and detect_language(response) == "en"


@_verifier("change_case:capital_word_frequency", relation="capital_relation")
def capital_word_frequency(
    response: str, *, capital_frequency: int | None = None, capital_relation: str | None = None
) -> bool:
    """All-capital words occur ``capital_relation`` ``capital_frequency`` times."""
    count = sum(token.isupper() for token in text.word_tokens(response))
    return _compare(count, capital_relation, capital_frequency)


# --- punctuation, start and end ----------------------------------------------------------


@_verifier("punctuation:no_comma")
def no_comma(response: str) -> bool:
    """The response contains no ASCII comma."""
    return "," not in response


@_verifier("startend:quotation")
def quotation(response: str) -> bool:
    """The (stripped) response starts and ends with a double quotation mark."""
    value = response.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


@_verifier("startend:end_checker")
def end_checker(response: str, *, end_phrase: str | None = None) -> bool:
    """The response ends with ``end_phrase`` (case-insensitive; outer quotes ignored)."""
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


@_verifier("combination:repeat_prompt")
def repeat_prompt(response: str, *, prompt_to_repeat: str | None = None) -> bool:
    """The response starts with the request, repeated word for word (case-insensitive)."""
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


@_verifier("combination:two_responses")
def two_responses(response: str) -> bool:
    """Exactly two different non-empty responses separated by ``******``."""
    parts = response.split("******")
    kept = []
    for index, part in enumerate(parts):
        if part.strip():
            kept.append(part.strip())
        elif 0 < index < len(parts) - 1:
            return False
    return len(kept) == 2 and kept[0] != kept[1]


# --- content and format ------------------------------------------------------------------


@_verifier("detectable_content:number_placeholders")
def number_placeholders(response: str, *, num_placeholders: int | None = None) -> bool:
    """At least ``num_placeholders`` square-bracket placeholders such as ``[name]``."""
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


@_verifier("detectable_content:postscript")
def postscript(response: str, *, postscript_marker: str | None = None) -> bool:
    """A line contains the postscript marker (``P.S.``, ``P.P.S`` or a custom one) and text."""
    if postscript_marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(postscript_marker.lower()) + r".*$"
    return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


@_verifier("detectable_format:title")
def title(response: str) -> bool:
    """A non-empty title wrapped in double angular brackets, ``<<title>>``, on one line."""
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


@_verifier("detectable_format:json_format")
def json_format(response: str) -> bool:
    """The whole response is JSON, optionally inside a ```json markdown fence."""
    value = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(fence)
    value = value.removesuffix("```").strip()
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


@_verifier("detectable_format:number_bullet_lists")
def number_bullet_lists(response: str, *, num_bullets: int | None = None) -> bool:
    """Exactly ``num_bullets`` markdown bullet lines (``* item`` or ``- item``)."""
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


@_verifier("detectable_format:number_highlighted_sections")
def number_highlighted_sections(response: str, *, num_highlights: int | None = None) -> bool:
    """At least ``num_highlights`` non-empty ``*highlighted*`` (or ``**bold**``) spans."""
    singles = re.findall(r"\*[^\n\*]*\*", response)
    doubles = re.findall(r"\*\*[^\n\*]*\*\*", response)
    count = sum(1 for h in singles if h.strip("*").strip())
    count += sum(1 for h in doubles if h.removeprefix("**").removesuffix("**").strip())
    return count >= num_highlights


@_verifier("detectable_format:multiple_sections")
def multiple_sections(
    response: str, *, section_spliter: str | None = None, num_sections: int | None = None
) -> bool:
    """At least ``num_sections`` sections, each started by ``{section_spliter} {number}``."""
    pattern = r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= num_sections


@_verifier("detectable_format:constrained_response")
def constrained_response(response: str) -> bool:
    """Contains one of "My answer is yes.", "My answer is no.", "My answer is maybe."."""
    value = response.strip()
    return any(
        option in value
        for option in ("My answer is yes.", "My answer is no.", "My answer is maybe.")
    )


# --- length ------------------------------------------------------------------------------


@_verifier("length_constraints:number_words", relation="relation")
def number_words(
    response: str, *, num_words: int | None = None, relation: str | None = None
) -> bool:
    """Word count (``\\w+`` runs) is ``relation`` ``num_words``."""
    return _compare(text.count_words(response), relation, num_words)


@_verifier("length_constraints:number_sentences", relation="relation")
def number_sentences(
    response: str, *, num_sentences: int | None = None, relation: str | None = None
) -> bool:
    """Sentence count (regex approximation of punkt) is ``relation`` ``num_sentences``."""
    return _compare(text.count_sentences(response), relation, num_sentences)


@_verifier("length_constraints:number_paragraphs")
def number_paragraphs(response: str, *, num_paragraphs: int | None = None) -> bool:
    """Exactly ``num_paragraphs`` paragraphs separated by the markdown divider ``***``."""
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for index, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if 0 < index < len(paragraphs) - 1:
                return False  # an empty paragraph between two dividers
            count -= 1
    return count == num_paragraphs


@_verifier("length_constraints:nth_paragraph_first_word")
def nth_paragraph_first_word(
    response: str, *, num_paragraphs: int | None = None, nth_paragraph: int | None = None,
    first_word: str | None = None,
) -> bool:
    """Exactly ``num_paragraphs`` paragraphs (split on blank lines) and paragraph
    ``nth_paragraph`` (1-based) starts with ``first_word`` (case-insensitive, punctuation cut)."""
    paragraphs = re.split(r"\n\n", response)
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    found = re.match(r"[^.,?!'\"]*", word).group().lower()
    return count == num_paragraphs and found == first_word.lower()


INSTRUCTION_IDS: tuple[str, ...] = tuple(VERIFIERS.names())


def clean_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drops None values (the data file's way of saying "absent")."""
    return {k: v for k, v in (kwargs or {}).items() if v is not None}


def build_verifier(instruction_id: str, kwargs: Mapping[str, Any] | None = None) -> Callable[[str], bool]:
    """``response -> bool`` for one instruction; KeyError for an unknown id, ValueError for
    unknown, missing or malformed options."""
    return VERIFIERS.build(instruction_id, **clean_kwargs(kwargs))


def check(instruction_id: str, response: str, kwargs: Mapping[str, Any] | None = None) -> bool:
    """Whether ``response`` follows one instruction (strictly, as written)."""
    return build_verifier(instruction_id, kwargs)(response)
