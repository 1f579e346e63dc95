"""Local files -> records, with every bad row reported by file and line.

Formats (picked from the suffix unless ``format=`` says): ``jsonl`` (``.jsonl``, ``.ndjson``),
gzip-ed JSONL (``.jsonl.gz``, ``.json.gz``), ``json`` (one top-level list), ``csv`` (header
row; list columns as JSON text, booleans as ``true``/``false``/``0``/``1``), ``parquet`` (needs
``pyarrow``). Rows become records through a parser: a record kind of
:mod:`align_jax.data.records` with a field mapping, or ``"hh_rlhf"`` (HH transcripts).

``on_error="raise"`` (default) stops at the first bad row with ``<path>, line <n>: <reason>: <detail>``;
``on_error="skip"`` skips it and counts it by reason in :class:`SourceStats` (logged once at
the end, with the first few locations). A file that yields no records raises :class:`DataError`
naming the file. Locations are 1-based lines for text formats (the record's last line for CSV
rows spanning lines) and 1-based rows for Parquet and JSON lists.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import gzip
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from align_jax.data import hh_rlhf
from align_jax.data.records import RECORD_KINDS, PromptRecord, RecordError, check_fields, kind_of, record_from_row, to_dict

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "jsonl.gz", "json", "csv", "parquet")
ON_ERROR = ("raise", "skip")
PARSER_NAMES = tuple(sorted(RECORD_KINDS)) + ("hh_rlhf",)


class DataError(ValueError):
    """A problem with a data file, naming the file (and line where there is one)."""


@dataclasses.dataclass
class SourceStats:
    """What reading one file did: ``rows`` read, ``records`` kept, ``skipped`` by reason."""

    path: str
    rows: int = 0
    records: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[str] = dataclasses.field(default_factory=list)  # first few skip locations

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """Flat config of one source: ``SourceConfig(path, kind, fields={...}, on_error="skip")``."""

    path: str
    kind: str
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    format: str | None = None
    on_error: str = "raise"


def detect_format(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    for suffix, fmt in ((".jsonl.gz", "jsonl.gz"), (".json.gz", "jsonl.gz"), (".ndjson.gz", "jsonl.gz"),
                        (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"),
                        (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise DataError(f"{path}: cannot tell the format from the name; pass format= one of {FORMATS}")


# Each reader yields (location, row) where row is a value or a RecordError for an unreadable row.
def _json_lines(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield f"line {n}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"line {n}", RecordError("bad_json", str(e))


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as f:
        yield from _json_lines(f)


def _read_jsonl_gz(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            yield from _json_lines(f)
    except gzip.BadGzipFile as e:
        raise DataError(f"{path}: not a gzip file ({e})") from None


def _read_json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: bad_json: {e.msg}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json source must hold a list of objects, got {type(data).__name__}")
    for n, row in enumerate(data, 1):
        yield f"row {n}", row


def _read_csv(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                yield f"line {reader.line_num}", RecordError(
                    "wrong_type", f"row has {len(row) - (None in row)} cells for {len(reader.fieldnames)} columns"
                )
                continue
            yield f"line {reader.line_num}", row


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow: install it with `pip install pyarrow`") from None
    n = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for row in batch.to_pylist():
            n += 1
            yield f"row {n}", row


_READERS: dict[str, Callable[[Path], Iterator[tuple[str, Any]]]] = {
    "jsonl": _read_jsonl,
    "jsonl.gz": _read_jsonl_gz,
    "json": _read_json,
    "csv": _read_csv,
    "parquet": _read_parquet,
}
assert set(_READERS) == set(FORMATS)


def read_rows(path: str | os.PathLike, format: str | None = None) -> Iterator[tuple[str, Any]]:
    """``(location, row)`` pairs of a file; unreadable rows come as :class:`RecordError` values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    fmt = format or detect_format(path)
    if fmt not in _READERS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {FORMATS}")
    return _READERS[fmt](path)


def row_parser(kind: str, fields: Mapping[str, str] | None = None) -> Callable[[Any], Any]:
    """``row -> record`` for a record kind (or ``"hh_rlhf"``) and a field mapping."""
    if kind == "hh_rlhf":
        return functools.partial(hh_rlhf.parse_row, fields=dict(fields or {}))
    if kind not in RECORD_KINDS:
        raise ValueError(f"unknown source kind {kind!r}; valid kinds: {PARSER_NAMES}")
    check_fields(kind, fields or {})
    return functools.partial(record_from_row, kind, fields=dict(fields or {}))


def load_records(
    path: str | os.PathLike,
    kind: str,
    fields: Mapping[str, str] | None = None,
    *,
    format: str | None = None,
    on_error: str = "raise",
    max_logged: int = 5,
    group_field: str | None = None,
    groups: Sequence[str] = (),
) -> tuple[list[Any], SourceStats]:
    """All records of one file and the counts of what was read and skipped.

    ``kind``: ``"sft"``, ``"preference"``, ``"ranked"``, ``"unpaired"``, ``"prompt"`` or
    ``"hh_rlhf"`` (preference pairs from transcripts). ``fields`` maps record fields to the
    file's columns, e.g. ``{"prompt": "question", "chosen": "answer_good"}``.

    ``group_field`` names a column holding each row's group id (MaxMin-RLHF, arXiv:2402.08925):
    every row must have it, and with ``groups`` only rows of those groups are kept (the others are
    counted as ``skipped["other_group"]``); a named group no row has is an error listing the groups present.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    parse = row_parser(kind, fields)
    stats = SourceStats(str(path))
    seen_groups: collections.Counter = collections.Counter()
    groups = tuple(str(g) for g in groups)
    if groups and not group_field:
        raise ValueError(f"groups {list(groups)} given without a group_field naming the column that holds them")
    records = []
    for where, row in read_rows(path, format):
        stats.rows += 1
        try:
            if isinstance(row, RecordError):
                raise row
            if group_field:
                if not isinstance(row, Mapping) or group_field not in row:
                    raise DataError(f"{path}, {where}: the row has no group field {group_field!r}")
                group = str(row[group_field])
                seen_groups[group] += 1
                if groups and group not in groups:
                    stats.skipped["other_group"] += 1
                    continue
            record = parse(row)
        except RecordError as e:
            if on_error == "raise":
                raise DataError(f"{path}, {where}: {e}") from None
            stats.skipped[e.reason] += 1
            if len(stats.examples) < max_logged:
                stats.examples.append(f"{path}, {where}: {e}")
            continue
        records.append(record)
    stats.records = len(records)
    absent = [g for g in groups if not seen_groups[g]]
    if group_field and absent:
        raise DataError(f"{path}: group(s) {absent} absent from field {group_field!r} "
                        f"(groups present: {dict(sorted(seen_groups.items()))})")
    if stats.num_skipped:
        log.warning(
            "%s: skipped %d of %d rows %s; first: %s",
            path, stats.num_skipped, stats.rows, dict(stats.skipped), "; ".join(stats.examples),
        )
    if not records:
        raise DataError(
            f"{path}: no {kind} records ({stats.rows} rows read, {stats.num_skipped} skipped: "
            f"{dict(stats.skipped)})"
        )
    log.info("%s: %d %s records from %d rows", path, len(records), kind, stats.rows)
    return records, stats


def load_source(config: SourceConfig) -> tuple[list[Any], SourceStats]:
    return load_records(
        config.path, config.kind, config.fields, format=config.format, on_error=config.on_error
    )


def write_records(records: Sequence[Any], path: str | os.PathLike) -> Path:
    """Records of one kind as JSONL that ``load_records(path, kind)`` reads back (``data.source=kind``
    with ``data.train_path=path``): one record's fields a line; a prompt record's ``info`` becomes
    columns of its own, which the prompt parser puts back into ``info``."""
    kinds = {kind_of(r) for r in records}
    if len(kinds) > 1:
        raise ValueError(f"write_records writes one record kind a file, got {sorted(kinds)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            row = to_dict(r)
            if isinstance(r, PromptRecord):
                clash = {"prompt", "system"} & set(r.info)
                if clash:
                    raise ValueError(f"a prompt record's info may not use the column names {sorted(clash)}")
                row = {"prompt": row["prompt"], **row["info"]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
