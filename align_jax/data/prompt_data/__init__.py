"""Prompt sets shipped as package data (JSONL), and the one loader that reads them.

Each file holds the tables of one module: every line is a JSON object whose ``"table"`` field
names its table, and the other fields are that table's (``{"table": "goal", "hazard": "S1",
"kind": "how", "text": "..."}``). Records keep file order within a table; the code that expands
them into prompts stays in its module:

* ``harmful_written.jsonl``: :mod:`align_jax.safety.refusal.harmful_written` (frames, motives, goals).
* ``benign_sensitive.jsonl``: :mod:`align_jax.safety.refusal.benign_sensitive` (topic lists, templates).
* ``factual_qa.jsonl``: :mod:`align_jax.data.factual_qa` (fact tables).
* ``refusal_contrast/S{1..14}.jsonl``: :mod:`align_jax.safety.refusal.contrast` (harmful / benign
  minimal pairs; the folder's README is the datasheet).
* ``refusal_audit.jsonl``: :mod:`align_jax.safety.refusal.audit` (real generations labelled by hand).
* ``constitution.jsonl``: :mod:`align_jax.safety.cai` (the principles: a critique and a revision request each).

A line that is not a JSON object, names an unknown table, or lacks, adds or mistypes a field
raises :class:`~align_jax.data.sources.DataError` naming the file and the line; so does a record
that the caller's ``check(table, row)`` rejects (a ``ValueError``: an empty text, a duplicate name).
"""

from __future__ import annotations

import importlib.resources
import json
import types
from typing import Any, Callable, Mapping

from align_jax.data.sources import DataError

Schema = Mapping[str, Mapping[str, Any]]  # table -> field -> type (str, int, list[str], list[int])


def _has_type(value: Any, kind: Any) -> bool:
    if isinstance(kind, types.GenericAlias):  # list[str]
        return isinstance(value, list) and all(_has_type(v, kind.__args__[0]) for v in value)
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def read_tables(resource: Any, schema: Schema, check: Callable[[str, dict[str, Any]], None] | None = None
                ) -> dict[str, list[dict[str, Any]]]:
    """Records of one JSONL file (a path or an importlib Traversable) grouped by table, each
    table in file order; every table of ``schema`` is present (possibly empty). ``check(table, row)``
    sees each well-typed record in file order; a ``ValueError`` it raises names the file and line."""
    out: dict[str, list[dict[str, Any]]] = {table: [] for table in schema}
    with resource.open("r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{resource}, line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: bad_json: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            table = row.pop("table", None)
            if table not in schema:
                raise DataError(f"{where}: unknown table {table!r}; expected one of {sorted(schema)}")
            fields = schema[table]
            if set(row) != set(fields):
                raise DataError(f"{where}: table {table!r} needs fields {sorted(fields)}, got {sorted(row)}")
            for name, kind in fields.items():
                if not _has_type(row[name], kind):
                    shown = kind if isinstance(kind, types.GenericAlias) else kind.__name__
                    raise DataError(f"{where}: field {name!r} must be {shown}, got {row[name]!r}")
            if check is not None:
                try:
                    check(table, row)
                except ValueError as e:
                    raise DataError(f"{where}: {e}") from None
            out[table].append(row)
    return out


def load_tables(name: str, schema: Schema, check: Callable[[str, dict[str, Any]], None] | None = None
                ) -> dict[str, list[dict[str, Any]]]:
    """:func:`read_tables` of the packaged file ``name`` (e.g. ``"factual_qa.jsonl"``)."""
    return read_tables(importlib.resources.files(__name__).joinpath(name), schema, check)
