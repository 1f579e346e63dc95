"""Style augmentation for the prompt classifier: the same phrasings around harmful *and* benign
training prompts, so that phrasing stops predicting the label.

Why: the training benchmarks (AdvBench, MaliciousInstruct, TDC) are short imperatives ("Write a
tutorial on how to ..."), while the benign-sensitive set and the held-out StrongREJECT prompts are
often first-person questions with context ("I have ... What's the best way to ...?"). A head
trained on that data partly learns "imperative = harmful, question = benign". Wrapping every
training prompt of either class in the same request styles (a question form for imperatives,
context sentences and closing demands for everything) removes the shortcut; the content is
left as written.

Only training prompts are augmented (never val or test), each wrapped copy keeps its
original's label, kind, source and template, and the wrapper of copy ``k`` of a text is
chosen by ``stable_hash(seed, text, k)``, so a run is reproducible and independent of order.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from align_jax.safety.refusal.datasets import Prompt, stable_hash

# "{x}" is the prompt as written; "{q}" the imperative turned into a question ("Can you write ...?").
CONTEXT_WRAPPERS: tuple[str, ...] = (
    "I need your help with something. {x}",
    "Quick question: {x}",
    "My friend and I were arguing about this last night. {x}",
    "{x} Please be specific and give me the details.",
    "{x} I want a direct answer, not a lecture.",
    "I'm new to this and not sure where to start. {x}",
    "{x} Keep it short, I'm on my phone.",
    "For something I'm working on this week: {x}",
    "Be honest with me, I'm asking for myself. {x}",
    "{x} Step by step, please.",
    "I've been thinking about this for a while and I finally want to ask. {x}",
    "Hi! {x} Thanks in advance.",
)
QUESTION_WRAPPERS: tuple[str, ...] = (
    "Can you {q}?",
    "Could you please {q}?",
    "I want you to {q}.",
    "Would you {q} for me?",
    "Is it possible for you to {q}?",
    "I'd like you to {q}. Can you do that?",
)


def _is_imperative(text: str) -> bool:
    """A one-sentence request that does not end in a question mark (``Write ...``, ``Give ...``)."""
    t = text.strip()
    return not t.endswith("?") and t[:1].isupper() and "\n" not in t and t.count(". ") == 0


def _as_question_body(text: str) -> str:
    t = text.strip().rstrip(".!")
    return t[0].lower() + t[1:]


def _sentence(text: str) -> str:
    t = text.strip()
    return t if t[-1:] in ".?!" else t + "."


def wrap(text: str, k: int, seed: int = 0) -> str:
    """Copy ``k`` of ``text``: a question wrapper for imperatives on even ``k``, else a context wrapper."""
    h = stable_hash(seed, "style", text, k)
    if _is_imperative(text) and k % 2 == 0:
        return QUESTION_WRAPPERS[h % len(QUESTION_WRAPPERS)].format(q=_as_question_body(text))
    return CONTEXT_WRAPPERS[h % len(CONTEXT_WRAPPERS)].format(x=_sentence(text))


def style_augment(prompts: Sequence[Prompt], copies: int, seed: int = 0) -> list[Prompt]:
    """``copies`` wrapped variants of every prompt (originals not included), de-duplicated
    against each other and against the originals' texts."""
    if copies < 0:
        raise ValueError(f"copies must be >= 0, got {copies}")
    seen = {p.text for p in prompts}
    out = []
    for p in prompts:
        for k in range(copies):
            text = wrap(p.text, k, seed)
            if text not in seen:
                seen.add(text)
                out.append(dataclasses.replace(p, text=text))
    return out
