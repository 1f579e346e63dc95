"""One setting per work folder: experiment scripts whose stages skip what already exists record the
flags that decide their outputs on the first run and refuse a different value later, so a changed
flag cannot mix two settings in one report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


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
