"""Strict and loose IFEval scoring, and the four accuracies of the paper (arXiv:2311.07911).

- **strict**: the response as written must pass each verifier.
- **loose**: an instruction passes if any of 8 variants passes: the response, with markdown
  emphasis ``*`` removed, with its first line removed, its last line removed, both, and
  the ``*``-free versions of those three (exactly the reference implementation's list).
- **prompt-level** accuracy: fraction of prompts whose instructions *all* pass.
- **instruction-level** accuracy: fraction of all instructions that pass.

Nothing is skipped silently: an empty or missing response fails every instruction of its
prompt, and an instruction id with no verifier (or options the verifier rejects) fails with
its error recorded in the example's ``errors``.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Mapping, Sequence

from align_jax.instructions.data import InstructionExample
from align_jax.instructions.verifiers import build_verifier

EMPTY_RESPONSE = "empty response"
MISSING_RESPONSE = "missing response"


def loose_variants(response: str) -> tuple[str, ...]:
    """The 8 response variants tried by loose evaluation (the first is the response itself)."""
    lines = response.split("\n")
    remove_first = "\n".join(lines[1:]).strip()
    remove_last = "\n".join(lines[:-1]).strip()
    remove_both = "\n".join(lines[1:-1]).strip()
    return (
        response,
        response.replace("*", ""),
        remove_first,
        remove_last,
        remove_both,
        remove_first.replace("*", ""),
        remove_last.replace("*", ""),
        remove_both.replace("*", ""),
    )


def passes(verifier: Callable[[str], bool], response: str, *, loose: bool) -> bool:
    """Strict: the response passes. Loose: some non-blank variant passes."""
    candidates = loose_variants(response) if loose else (response,)
    return any(c.strip() and verifier(c) for c in candidates)


@dataclasses.dataclass(frozen=True)
class ExampleResult:
    """Per-instruction outcomes for one prompt; ``errors[i]`` explains a forced failure."""

    key: int | str
    prompt: str
    response: str | None
    instruction_id_list: tuple[str, ...]
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]
    errors: tuple[str | None, ...]
    failure: str | None = None  # EMPTY_RESPONSE or MISSING_RESPONSE

    @property
    def follow_all_strict(self) -> bool:
        return all(self.strict)

    @property
    def follow_all_loose(self) -> bool:
        return all(self.loose)


@dataclasses.dataclass(frozen=True)
class TypeAccuracy:
    """Accuracy of one instruction type over the instructions of that type."""

    count: int
    strict: float
    loose: float


@dataclasses.dataclass(frozen=True)
class IFEvalReport:
    prompt_level_strict: float
    prompt_level_loose: float
    instruction_level_strict: float
    instruction_level_loose: float
    num_prompts: int
    num_instructions: int
    per_instruction: Mapping[str, TypeAccuracy]
    examples: tuple[ExampleResult, ...]

    def summary(self) -> dict[str, float]:
        """The four headline numbers, e.g. for logging."""
        return {
            "prompt_level_strict": self.prompt_level_strict,
            "prompt_level_loose": self.prompt_level_loose,
            "instruction_level_strict": self.instruction_level_strict,
            "instruction_level_loose": self.instruction_level_loose,
        }


def evaluate_example(example: InstructionExample, response: str | None) -> ExampleResult:
    """Scores one response against all instructions of its prompt, strict and loose."""
    failure = None
    if response is None:
        failure = MISSING_RESPONSE
    elif not response.strip():
        failure = EMPTY_RESPONSE
    strict, loose, errors = [], [], []
    for instruction_id, kwargs in zip(example.instruction_id_list, example.kwargs):
        try:
            verifier = build_verifier(instruction_id, kwargs)
        except (KeyError, ValueError) as e:
            strict.append(False)
            loose.append(False)
            errors.append(f"{instruction_id}: {e}")
            continue
        errors.append(failure)
        if failure is not None:
            strict.append(False)
            loose.append(False)
        else:
            strict.append(passes(verifier, response, loose=False))
            loose.append(passes(verifier, response, loose=True))
    return ExampleResult(
        key=example.key,
        prompt=example.prompt,
        response=response,
        instruction_id_list=example.instruction_id_list,
        strict=tuple(strict),
        loose=tuple(loose),
        errors=tuple(errors),
        failure=failure,
    )


def _align(
    examples: Sequence[InstructionExample],
    responses: Sequence[str | None] | Mapping[int | str, str],
) -> list[str | None]:
    if isinstance(responses, Mapping):
        return [responses.get(e.key) for e in examples]
    if len(responses) != len(examples):
        raise ValueError(f"{len(examples)} examples but {len(responses)} responses")
    return list(responses)


def evaluate_responses(
    examples: Sequence[InstructionExample],
    responses: Sequence[str | None] | Mapping[int | str, str],
) -> IFEvalReport:
    """Scores responses (aligned with ``examples``, or a mapping from example key) and
    returns the four accuracies, per-type accuracies and per-example records."""
    results = tuple(evaluate_example(e, r) for e, r in zip(examples, _align(examples, responses)))
    if not results:
        raise ValueError("no examples to evaluate")
    by_type: dict[str, list[tuple[bool, bool]]] = collections.defaultdict(list)
    for result in results:
        for instruction_id, s, l in zip(result.instruction_id_list, result.strict, result.loose):
            by_type[instruction_id].append((s, l))
    outcomes = [o for pairs in by_type.values() for o in pairs]
    return IFEvalReport(
        prompt_level_strict=_mean(r.follow_all_strict for r in results),
        prompt_level_loose=_mean(r.follow_all_loose for r in results),
        instruction_level_strict=_mean(s for s, _ in outcomes),
        instruction_level_loose=_mean(l for _, l in outcomes),
        num_prompts=len(results),
        num_instructions=len(outcomes),
        per_instruction={
            name: TypeAccuracy(len(pairs), _mean(s for s, _ in pairs), _mean(l for _, l in pairs))
            for name, pairs in sorted(by_type.items())
        },
        examples=results,
    )


def _mean(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else float("nan")
