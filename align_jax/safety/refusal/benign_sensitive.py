"""Benign requests that merely *sound* sensitive, written by the project (templates x fillers).

Each :class:`Template` has an id, a type (``BENIGN_TYPES``), a format string with one ``{x}``
slot and its own fillers. ``benign_sensitive_prompts`` expands them deterministically (no RNG);
``template_split`` assigns whole templates to train / val / test, per type, by a stable hash
of ``(seed, template id)``: of each type's eight templates six go to train, one to val and one
to test, so a test template (its wording) never appears in train, while every type appears in
every split. Fillers may repeat across templates of a type; wording may not.

The templates and their topic lists (the fillers, shared by name) are data:
``align_jax/data/prompt_data/benign_sensitive.jsonl``; the expansion and the split stay here.
"""

from __future__ import annotations

import dataclasses

from align_jax.data.prompt_data import load_tables
from align_jax.data.sources import DataError
from align_jax.safety.refusal.datasets import Prompt, SPLITS, check_prompt_text, stable_hash


@dataclasses.dataclass(frozen=True)
class Template:
    id: str
    type: str
    text: str  # contains "{x}" exactly once
    fillers: tuple[str, ...]


_DATA = load_tables(
    "benign_sensitive.jsonl",
    {"topic": {"list": str, "text": str}, "template": {"id": str, "type": str, "text": str, "topics": str}},
)
_TOPICS: dict[str, tuple[str, ...]] = {  # list name -> its topics, in file order
    name: tuple(r["text"] for r in _DATA["topic"] if r["list"] == name) for name in {r["list"] for r in _DATA["topic"]}
}
if _missing := sorted({r["topics"] for r in _DATA["template"]} - set(_TOPICS)):
    raise DataError(f"benign_sensitive.jsonl: templates name topic lists that are not there: {_missing}")
TEMPLATES: tuple[Template, ...] = tuple(
    Template(r["id"], r["type"], r["text"], _TOPICS[r["topics"]]) for r in _DATA["template"]
)
BENIGN_TYPES: tuple[str, ...] = tuple(dict.fromkeys(t.type for t in TEMPLATES))
_SPLIT_COUNTS = {"train": 4, "val": 1, "test": 1}


def _check_templates(templates: tuple[Template, ...]) -> None:
    ids = [t.id for t in templates]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate template ids")
    for t in templates:
        if t.text.count("{x}") != 1:
            raise ValueError(f"template {t.id!r} needs exactly one {{x}} slot: {t.text!r}")
        if not t.fillers:
            raise ValueError(f"template {t.id!r} has no fillers")


def template_split(templates: tuple[Template, ...] = TEMPLATES, seed: int = 0) -> dict[str, str]:
    """template id -> split; per type, templates ordered by hash(seed, id): 1/6 (at least one) val and
    test each, the rest train (8 templates: 6 / 1 / 1)."""
    _check_templates(templates)
    out: dict[str, str] = {}
    for type_ in dict.fromkeys(t.type for t in templates):
        group = sorted((t for t in templates if t.type == type_), key=lambda t: stable_hash(seed, t.id))
        if len(group) < len(SPLITS):
            raise ValueError(f"type {type_!r} has {len(group)} templates; need >= {len(SPLITS)} to split")
        n_test = max(1, round(len(group) * _SPLIT_COUNTS["test"] / 6))
        n_val = max(1, round(len(group) * _SPLIT_COUNTS["val"] / 6))
        n_train = len(group) - n_val - n_test
        for i, t in enumerate(group):
            out[t.id] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out


def benign_sensitive_prompts(
    split: str | None = None, templates: tuple[Template, ...] = TEMPLATES, seed: int = 0
) -> list[Prompt]:
    """Every (template, filler) prompt, de-duplicated, in template order; ``split`` filters."""
    assignment = template_split(templates, seed)
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    out, seen = [], set()
    for t in templates:
        s = assignment[t.id]
        if split is not None and s != split:
            continue
        for filler in t.fillers:
            text = check_prompt_text(t.text.replace("{x}", filler), f"template {t.id}")
            if text in seen:
                continue
            seen.add(text)
            out.append(Prompt(text, False, "benign_sensitive", s, t.id, benign_type=t.type, template_id=t.id))
    return out
