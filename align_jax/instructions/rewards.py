"""Verifiable rewards and preference pairs from instruction-following checks.

``reward`` is the fraction of a prompt's instructions that a response follows *strictly*
(an empty response, an unknown id or rejected options count as not followed).
``preference_pairs`` turns several responses to one prompt into (chosen, rejected) pairs:
the response with the higher reward is chosen; equal rewards give no pair.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

from align_jax.instructions.data import InstructionExample
from align_jax.instructions.evaluation import evaluate_example


def reward(example: InstructionExample, response: str) -> float:
    """Fraction of the example's instructions that ``response`` follows strictly, in [0, 1]."""
    strict = evaluate_example(example, response).strict
    return sum(strict) / len(strict) if strict else 0.0


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float


def preference_pairs(example: InstructionExample, responses: Sequence[str]) -> list[PreferencePair]:
    """Every pair of responses with different rewards, the better one as ``chosen``
    (in the order of ``responses``; ties, including identical responses, are dropped)."""
    scored = [(r, reward(example, r)) for r in responses]
    pairs = []
    for (a, ra), (b, rb) in itertools.combinations(scored, 2):
        if ra == rb:
            continue
        (chosen, rc), (rejected, rr) = ((a, ra), (b, rb)) if ra > rb else ((b, rb), (a, ra))
        pairs.append(PreferencePair(example.prompt, chosen, rejected, rc, rr))
    return pairs
