"""IFEval examples: the record type and the JSONL loader.

One row of ``input_data.jsonl``::

    {"key": 1000, "prompt": "...", "instruction_id_list": ["punctuation:no_comma", ...],
     "kwargs": [{}, ...]}

``kwargs[i]`` holds the options of ``instruction_id_list[i]``; None values mean absent and
are dropped on load. Generated prompts (``generator.py``) use the same record.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

from align_jax.instructions.verifiers import VERIFIERS, clean_kwargs

_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")


@dataclasses.dataclass(frozen=True)
class InstructionExample:
    """A prompt and the verifiable instructions it carries (aligned lists)."""

    key: int | str
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[Mapping[str, Any], ...]

    def __post_init__(self):
        if len(self.instruction_id_list) != len(self.kwargs):
            raise ValueError(
                f"example {self.key!r}: {len(self.instruction_id_list)} instruction ids but "
                f"{len(self.kwargs)} kwargs entries"
            )

    def to_json(self) -> dict[str, Any]:
        """The IFEval JSONL row for this example."""
        return {
            "key": self.key,
            "prompt": self.prompt,
            "instruction_id_list": list(self.instruction_id_list),
            "kwargs": [dict(k) for k in self.kwargs],
        }


def example_from_json(row: Mapping[str, Any]) -> InstructionExample:
    """Builds an example from one parsed row; ValueError naming the problem if malformed."""
    if not isinstance(row, Mapping):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    missing = [f for f in _FIELDS if f not in row]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    ids, kwargs = row["instruction_id_list"], row["kwargs"]
    if not isinstance(row["prompt"], str):
        raise ValueError("'prompt' must be a string")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("'instruction_id_list' must be a list of strings")
    if not isinstance(kwargs, list) or not all(isinstance(k, Mapping) for k in kwargs):
        raise ValueError("'kwargs' must be a list of objects")
    return InstructionExample(
        key=row["key"],
        prompt=row["prompt"],
        instruction_id_list=tuple(ids),
        kwargs=tuple(clean_kwargs(k) for k in kwargs),
    )


def unknown_instruction_ids(example: InstructionExample) -> list[str]:
    return [i for i in example.instruction_id_list if i not in VERIFIERS]


def load_ifeval(
    path: str | os.PathLike[str], *, check_ids: bool = True
) -> list[InstructionExample]:
    """Reads an IFEval-format JSONL file.

    Raises ValueError naming the file and line for malformed JSON, missing fields, wrong
    types, mismatched list lengths and (with ``check_ids``) instruction ids that have no
    verifier. Blank lines are skipped.
    """
    examples = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{os.fspath(path)}:{line_number}"
            try:
                example = example_from_json(json.loads(line))
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                raise ValueError(f"{where}: malformed IFEval row: {e}") from e
            unknown = unknown_instruction_ids(example) if check_ids else []
            if unknown:
                raise ValueError(
                    f"{where}: unknown instruction id(s) {unknown}; supported: "
                    f"{', '.join(VERIFIERS.names())}"
                )
            examples.append(example)
    return examples


def save_ifeval(examples: Sequence[InstructionExample], path: str | os.PathLike[str]) -> None:
    """Writes examples as IFEval JSONL (e.g. generated splits)."""
    with open(path, "w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
