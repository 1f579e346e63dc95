"""Generated multi-constraint prompts for training and out-of-distribution evaluation.

A prompt is a task (``tasks.TASK_TEMPLATES`` x topic) followed by one instruction sentence
per constraint (``constraints.SPECS``). Every example has IFEval's structure (``key``,
``prompt``, ``instruction_id_list``, ``kwargs``), so ``evaluation.evaluate_responses`` and
``rewards.reward`` score it with the IFEval verifiers.

Splits (``SPLITS``):

=========================  ==============================  ================  ============
split                      constraint sets                 per prompt        topics
=========================  ==============================  ================  ============
train, in_distribution     any single type or a SEEN pair  1-2               seen
ood_unseen_combinations    an UNSEEN pair                  2                 seen
ood_more_constraints       compatible sets                 3-4               seen
ood_unseen_topics          as train                        1-2               unseen
=========================  ==============================  ================  ============

``train`` and ``in_distribution`` share one distribution and use different random streams.
Generation is deterministic given ``(split, seed)``.
"""

from __future__ import annotations

import random

from align_jax.instructions import constraints, tasks
from align_jax.instructions.data import InstructionExample

SPLITS: tuple[str, ...] = (
    "train", "in_distribution", "ood_unseen_combinations", "ood_more_constraints",
    "ood_unseen_topics",
)
_REPEAT = "combination:repeat_prompt"


def _constraint_ids(split: str, rng: random.Random) -> list[str]:
    if split == "ood_unseen_combinations":
        return list(rng.choice(constraints.UNSEEN_PAIRS))
    if split == "ood_more_constraints":
        return _compatible_set(rng, rng.choice((3, 4)))
    if rng.random() < 0.5:
        return [rng.choice(constraints.CONSTRAINT_IDS)]
    return list(rng.choice(constraints.SEEN_PAIRS))


def _compatible_set(rng: random.Random, size: int) -> list[str]:
    while True:  # a greedy pass almost always succeeds; retry the rare dead end
        chosen: list[str] = []
        for candidate in rng.sample(constraints.CONSTRAINT_IDS, len(constraints.CONSTRAINT_IDS)):
            if constraints.compatible(chosen + [candidate]):
                chosen.append(candidate)
            if len(chosen) == size:
                return chosen


def make_example(
    key: str, task: str, instruction_ids: list[str], rng: random.Random
) -> InstructionExample:
    """Appends an instruction sentence per constraint to ``task``; a repeat-the-request
    constraint goes last and repeats everything before it."""
    ids = [i for i in instruction_ids if i != _REPEAT]
    rng.shuffle(ids)
    kwargs = [constraints.SPECS[i].sample(rng) for i in ids]
    request = " ".join([task] + [constraints.SPECS[i].phrase(kw) for i, kw in zip(ids, kwargs)])
    prompt = request
    if _REPEAT in instruction_ids:
        ids.append(_REPEAT)
        kwargs.append({"prompt_to_repeat": request})
        prompt = request + " " + constraints.SPECS[_REPEAT].phrase(kwargs[-1])
    return InstructionExample(key, prompt, tuple(ids), tuple(kwargs))


def generate(split: str, num_examples: int, *, seed: int = 0) -> list[InstructionExample]:
    """``num_examples`` prompts of ``split``; the same ``(split, seed)`` gives the same list."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    rng = random.Random(f"align_jax.instructions:{split}:{seed}")
    topics = tasks.UNSEEN_TOPICS if split == "ood_unseen_topics" else tasks.SEEN_TOPICS
    examples = []
    for index in range(num_examples):
        task = tasks.render_task(rng.choice(tasks.TASK_TEMPLATES), rng.choice(topics), rng)
        ids = _constraint_ids(split, rng)
        examples.append(make_example(f"{split}-{seed}-{index}", task, ids, rng))
    return examples
