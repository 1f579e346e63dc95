"""Is the machine quiet? Load averages and the CPU that *other* processes used during a timed run.

A race between two frameworks is only fair on a quiet machine: under contention PyTorch's
threads lose far more than XLA, so a busy-machine ratio flatters us. The 1-minute load average
lags and counts our own work, so ``Contention`` also measures the CPU time every other process
used while the block ran (``/proc/stat`` busy time minus this process's and its children's), in
cores: a row with ``other_cores`` above ``BUSY_CORES`` is marked ``busy_machine``.
"""

from __future__ import annotations

import os
import time

BUSY_CORES = 0.2  # other processes' average CPU use (cores) above which a timing is "busy"


def _busy_seconds() -> float | None:
    """Seconds of non-idle CPU time summed over all cores since boot (Linux), else None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Contention:
    """``with Contention() as c: ...`` then ``c.record()``: load before / after, other processes'
    CPU (cores) during the block and the busy flag."""

    def __enter__(self) -> "Contention":
        self.load_before = os.getloadavg()
        self._t, self._busy, self._own = time.perf_counter(), _busy_seconds(), _own_seconds()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t
        busy = _busy_seconds()
        own = _own_seconds() - self._own
        self.load_after = os.getloadavg()
        self.other_cores = None if busy is None or self._busy is None else max(0.0, (busy - self._busy - own) / wall)

    def record(self) -> dict:
        busy = self.other_cores > BUSY_CORES if self.other_cores is not None else self.load_before[0] > 1.0
        return {"load_before": [round(x, 2) for x in self.load_before],
                "load_after": [round(x, 2) for x in self.load_after],
                "other_cores": None if self.other_cores is None else round(self.other_cores, 3),
                "busy_machine": bool(busy)}
