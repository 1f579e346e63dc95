"""Generated prompt sets for online RL: each prompt carries in ``info`` what its reward checks.

``toy_letters``: "Write the letter b." and the letter (the toy task of ``configs/grpo_toy.py``;
a character model learns it in a minute). ``ifeval_constraints``: the project's verifiable
multi-constraint prompts (:mod:`align_jax.instructions.generator`), train split to learn from,
the in-distribution split held out (the OOD splits are evaluated by the eval suites).
``factual_qa``: the project's factual / arithmetic questions with their accepted answers.
"""

from __future__ import annotations

from typing import Callable

from align_jax.data.records import PromptRecord

TOY_LETTERS = "a"


def toy_letters(seed: int = 0, *, num_train: int = 256, num_eval: int = 16) -> tuple[list, list]:
    """(train, eval) prompts "Write the letter x." with ``info = {"letter": x}``."""
    import random

    rng = random.Random(f"align_jax.toy_letters:{seed}")

    def make(n):
        letters = [TOY_LETTERS[i % len(TOY_LETTERS)] for i in range(n)]
        rng.shuffle(letters)
        return [PromptRecord(f"Write the letter {c}.", {"letter": c}) for c in letters]

    return make(num_train), make(num_eval)


def ifeval_constraints(seed: int = 0, *, num_train: int = 2000, num_eval: int = 100) -> tuple[list, list]:
    """(train, in-distribution) generated constraint prompts; ``info`` holds the IFEval fields."""
    from align_jax.instructions.generator import generate

    def records(split, n):
        return [PromptRecord(e.prompt, {"key": e.key, "instruction_id_list": list(e.instruction_id_list),
                                        "kwargs": [dict(k) for k in e.kwargs]}) for e in generate(split, n, seed=seed)]

    return records("train", num_train), records("in_distribution", num_eval)


def factual_qa(seed: int = 0) -> tuple[list, list]:
    """(train, validation) questions of the factual QA set (:mod:`align_jax.data.factual_qa`), with
    ``info = {"answer": [answer, *aliases]}`` for the ``exact_match`` reward (test stays unseen)."""
    from align_jax.data.factual_qa import split_factual_qa

    splits = split_factual_qa(seed=seed)

    def records(items):
        return [PromptRecord(it.question, {"answer": list(it.references), "id": it.id}) for it in items]

    return records(splits["train"]), records(splits["validation"])


GENERATED: dict[str, Callable[[int], tuple[list, list]]] = {
    "toy_letters": toy_letters,
    "ifeval_constraints": ifeval_constraints,
    "factual_qa": factual_qa,
}
