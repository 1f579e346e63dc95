"""Run one side of a race alone in a fresh process: its wall time and peak resident memory.

A user runs one framework per process, and two frameworks sharing a process slow each other
unevenly (issue #28: our DPO step took 10.94 s alone and 14.97 s beside TRL, TRL's moved 2%), so
the race drivers (``dpo_race.py``, ``generation_race.py``) start every row of every side as its
own ``python -m benchmarks.<benchmark>`` process, rows alternating round by round.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def workdir(prefix: str) -> Path:
    """A folder for the children's JSON and logs: the drivers delete it after a good run and keep it
    (and say where) when a child fails, so finished rounds are not lost with it."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def schedule(rows: list, repeats: int) -> list[tuple[int, object]]:
    """(repeat, row) in running order: every row once per round, rounds in a row, so a slow spell of
    the shared machine hits every row alike."""
    return [(r, row) for r in range(repeats) for row in rows]


def run_measured(args: list[str], log_path: Path) -> dict:
    """``python <args>`` from the repository root, output to ``log_path``: ``process_s`` and
    ``peak_rss_process_mib`` (the child's maximum resident set, from ``wait4``). Raises with the log's
    path and its last lines when it fails."""
    cmd = [sys.executable, *args]
    t = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = proc.returncode = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = Path(log_path).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"exit {code} from {' '.join(cmd)}; its log ({log_path}) ends:\n{tail}")
    return dict(process_s=time.perf_counter() - t, peak_rss_process_mib=usage.ru_maxrss / 1024)
