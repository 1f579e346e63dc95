"""Work folders of staged experiment scripts (``experiments/*.py``): a folder named by a flag, JSONL
files between stages, stages run by name, and one setting per folder: a script whose stages skip
what already exists records the flags that decide its outputs on the first run and refuses a
different value later, so a changed flag cannot mix two settings in one report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence


def check_same_settings(path: str | Path, settings: Mapping[str, Any]) -> None:
    """Writes ``settings`` (JSON) to ``path`` on the first call; afterwards a value that differs
    from the recorded one raises ``ValueError`` naming each changed flag."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(settings), indent=1) + "\n")
        return
    before = json.loads(path.read_text())
    changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
    if changed:
        listed = ", ".join(f"--{k}: {a!r} then, {b!r} now" for k, (a, b) in changed.items())
        raise ValueError(f"{path} was written with other settings ({listed}); use a new --workdir or the same flags")


def work_folder(flag_value: str | Path, root: Path) -> Path:
    """``flag_value`` as a path, a relative one taken from ``root`` (the repository) rather than the
    current directory, so a script runs the same from anywhere."""
    path = Path(flag_value)
    return path if path.is_absolute() else root / path


def read_jsonl(path: str | Path) -> list[dict]:
    """Every non-blank line of ``path`` as JSON."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """``rows`` one JSON object a line (UTF-8 kept as is), the parent folder made if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def check_names(kind: str, chosen: Iterable[str], valid: Iterable[str]) -> None:
    """``ValueError`` naming every name in ``chosen`` that ``valid`` lacks (a flag's list, checked
    before any model loads)."""
    valid = list(valid)
    unknown = sorted(set(chosen) - set(valid))
    if unknown:
        raise ValueError(f"unknown {kind} {unknown}; valid: {valid}")


def run_stages(stages: Mapping[str, Callable[[Path], None]], chosen: Sequence[str], workdir: Path) -> None:
    """Runs ``stages[name](workdir)`` for each name in ``chosen``, in that order, after checking
    every name first."""
    check_names("stages", chosen, stages)
    for name in chosen:
        stages[name](workdir)
