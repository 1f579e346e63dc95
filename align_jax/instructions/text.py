"""Offline word, sentence and token counting for the instruction verifiers.

The published IFEval checker uses nltk. We avoid nltk (it downloads the punkt model at run
time), so these are regex replacements:

- ``count_words`` is *exactly* nltk's ``RegexpTokenizer(r"\\w+")`` as IFEval uses it.
- ``count_sentences`` approximates nltk's punkt sentence tokenizer: a sentence ends at
  ``.``, ``!`` or ``?`` (optionally followed by closing quotes or brackets) before
  whitespace or the end of the text, except after a known abbreviation ("Dr.", "e.g.")
  or a single-letter initial ("J."). Line breaks alone do not end a
  sentence (punkt does not split on them either). Punkt learns abbreviations from data,
  so counts can differ on unusual abbreviations.

  Numbers follow punkt's orthographic rule for a period after a number: it ends a sentence
  unless the next word starts in lower case (or is punctuation). So a numbered list with
  capitalised items counts its markers as sentences, as the official checker does
  ("1. Apples are red.\\n2. Bananas are yellow." is 4: "1.", "Apples are red.", "2.",
  "Bananas are yellow."), while "1. apples are red.\\n2. bananas are yellow." is 2. (Punkt
  also keeps a break before a lower-case word its model has only seen starting sentences;
  such words are rare and not modelled here.) The official ``split_into_sentences`` regex
  splitter in IFEval's ``instructions_util.py`` is not what its sentence checker calls.
- ``word_tokens`` approximates nltk's Treebank ``word_tokenize`` for counting all-capital
  words: words (hyphenated words kept whole), clitics such as ``'S`` / ``'T`` split off
  as their own token, and each punctuation mark a token.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+")

_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")

_ABBREVIATIONS = frozenset(
    "a.m p.m mr mrs ms dr prof sr jr st vs etc e.g i.e inc ltd co corp fig approx dept est "
    "jan feb mar apr jun jul aug sep sept oct nov dec mt ave blvd gen col lt sgt u.s".split()
)

# punkt's number type (its ``##number##``): a token such as 1, 3.14, 1,000, -5 after whitespace
# or an opening bracket or quote (punkt splits those off: "(1." is "(" and the number "1.")
_NUMBER_BEFORE = re.compile(r"(?:^|(?<=[\s(\[{\"'“‘]))-?[.,]?\d[\d,.-]*$")

_TOKEN = re.compile(r"\w+(?:-\w+)*|'\w+|[^\w\s]")


def count_words(text: str) -> int:
    """Number of ``\\w+`` runs, as IFEval's nltk ``RegexpTokenizer(r"\\w+")`` counts words."""
    return len(_WORD.findall(text))


def split_sentences(text: str) -> list[str]:
    """Splits ``text`` into sentences (a punkt approximation; see the module docstring)."""
    sentences = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if _is_abbreviation(text, match) or _number_before_lowercase(text, match):
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def _is_abbreviation(text: str, match: re.Match[str]) -> bool:
    if match.group() != ".":
        return False
    before = re.search(r"[\w.]+$", text[: match.start()])
    if before is None:
        return False
    token = before.group().lower()
    return token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha())


def _number_before_lowercase(text: str, match: re.Match[str]) -> bool:
    """A period after a number ("1.", "3.14.") that a lower-case word or punctuation follows."""
    if match.group() != "." or _NUMBER_BEFORE.search(text, 0, match.start()) is None:
        return False
    rest = text[match.end() :].lstrip()
    return bool(rest) and (rest[0].islower() or rest[0] in ";:,.!?")


def word_tokens(text: str) -> list[str]:
    """Word and punctuation tokens (an approximation of nltk ``word_tokenize``)."""
    return _TOKEN.findall(text)
