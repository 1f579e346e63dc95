"""Where training metrics go: a JSONL trace, TensorBoard scalars, a console progress line, throughput.

* :class:`MetricsWriter` appends one JSON object per ``write`` to ``workdir/metrics.jsonl``
  (``{"step": 12, "split": "train", "loss": 0.7, ...}``) and, optionally, writes the same values as
  TensorBoard scalars tagged ``"<split>/<name>"`` under ``workdir/tensorboard`` (tensorboardX).
  :func:`read_metrics` reads the trace back.
* **Resuming.** A run restored from the checkpoint of step ``k`` opens the writer with
  ``resume_step=k``: JSONL lines with ``step > k`` (written after that checkpoint by the run that
  died) are dropped, so after the resumed run finishes the trace equals the uninterrupted run's,
  with no duplicated steps. Lines with ``step <= k`` are kept: metrics logged at step ``k`` describe
  the update that produced the checkpointed state, so they are not re-logged. TensorBoard gets the
  same treatment through tensorboardX's ``purge_step=k + 1`` (TensorBoard hides the earlier events
  with ``step > k``). A truncated last line (a process killed mid-write) is skipped when read.
* :class:`ProgressBar`: a tqdm bar with the loss and ETA on a terminal; when its stream is not a TTY
  or ``CI`` is set it prints one plain line every ``print_seconds`` (or ``print_every`` steps) instead.
* :class:`Throughput`: tokens/s over a sliding window and MFU (model FLOP/s over peak FLOP/s).

Only process 0 writes files (``jax.process_index() == 0``) unless told otherwise. Passing JAX
arrays as metric values synchronises with the device; do it at logging steps only.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = ("step", "split")


def _to_python(name: str, value: Any) -> int | float:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"metric {name!r} must be a scalar, got shape {arr.shape}")
    arr = arr.reshape(())
    if arr.dtype.kind in "iub":
        return int(arr)
    if arr.dtype.kind == "f":
        return float(arr)
    raise TypeError(f"metric {name!r} has non-numeric dtype {arr.dtype}")


def _read_lines(path: pathlib.Path) -> list[dict]:
    records = []
    if not path.exists():
        return records
    with path.open() as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a killed process
    return records


def read_metrics(workdir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` in write order (only ``split``'s if given).

    Non-finite values are written as the JSON extensions ``NaN``/``Infinity`` and read back as floats.
    """
    records = _read_lines(pathlib.Path(workdir) / METRICS_FILE)
    return [r for r in records if split is None or r.get("split") == split]


class MetricsWriter:
    """Writes scalar metrics to ``workdir/metrics.jsonl`` and TensorBoard.

    Args:
      workdir: the run directory (created if missing).
      use_tensorboard: also write TensorBoard event files under ``workdir/tensorboard``.
      resume_step: the step of the checkpoint this run restored (see the module docstring);
        ``None`` for a fresh run, which appends to any existing trace.
      is_writer: whether this process writes (default: ``jax.process_index() == 0``).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        use_tensorboard: bool = True,
        resume_step: int | None = None,
        is_writer: bool | None = None,
    ):
        if is_writer is None:
            import jax

            is_writer = jax.process_index() == 0
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / METRICS_FILE
        self.is_writer = is_writer
        self._file: TextIO | None = None
        self._tb = None
        if not is_writer:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(int(resume_step))
        self._file = self.path.open("a", buffering=1)  # line-buffered: each record hits the OS
        if use_tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else int(resume_step) + 1
            # tensorboardX names files by the second: a restart within the same second would
            # overwrite the dead run's file. A nanosecond suffix keeps names unique and in order.
            self._tb = SummaryWriter(
                str(self.workdir / TENSORBOARD_DIR),
                purge_step=purge,
                flush_secs=30,
                filename_suffix=f".{time.time_ns()}",
            )

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [r for r in _read_lines(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)  # atomic: the old trace or the new, never half of one

    def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
        """Appends ``metrics`` (scalars: Python numbers, NumPy or JAX arrays of size 1) at ``step``."""
        if not self.is_writer:
            return
        if self._file is None:
            raise RuntimeError("MetricsWriter is closed")
        bad = [k for k in metrics if k in _RESERVED]
        if bad:
            raise ValueError(f"metric names {bad} are reserved")
        values = {name: _to_python(name, value) for name, value in metrics.items()}
        self._file.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"{split}/{name}", value, global_step=int(step))

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _console_enabled(file: TextIO) -> bool:
    if os.environ.get("CI"):
        return False
    isatty = getattr(file, "isatty", None)
    return bool(isatty and isatty())


def _format_duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


class ProgressBar:
    """Training progress on the console: ``update(step, metrics)`` after each step.

    On a terminal (and ``CI`` unset) this is a tqdm bar whose postfix shows the metrics named in
    ``show`` (a name matches ``show`` entry ``"loss"`` if it is ``loss`` or ends in ``/loss``).
    Otherwise (a log file, a pipe, a job scheduler), one line at the first step, then every
    ``print_seconds`` of wall time (or, with ``print_every``, every that many steps instead) and at
    the last step, e.g.
    ``train step 200/1000 (20%) loss=0.4123 | 1.52 step/s | 3,840 tok/s | elapsed 0:02:11 | ETA 0:08:46``
    (tokens/s when the metrics carry ``perf/tokens_per_sec``, see :class:`Throughput`).
    ``initial`` is the step training (re)starts from; rates and the ETA count only steps run here.
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        desc: str = "train",
        show: Sequence[str] = ("loss",),
        print_seconds: float = 30.0,
        print_every: int | None = None,
        enabled: bool | None = None,
        file: TextIO | None = None,
        clock=time.monotonic,
    ):
        self.total, self.initial, self.desc = int(total), int(initial), desc
        self.show, self.print_seconds = tuple(show), float(print_seconds)
        self.print_every = None if print_every is None else max(1, int(print_every))
        self.file = file if file is not None else sys.stderr
        self.enabled = _console_enabled(self.file) if enabled is None else enabled
        self._clock = clock
        self._start = clock()
        self._printed_at: float | None = None
        self._step = self.initial
        self._bar = None
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total, initial=self.initial, desc=desc, file=self.file, dynamic_ncols=True
            )

    def _shown(self, metrics: Mapping[str, Any] | None) -> dict[str, float]:
        out = {}
        for name, value in (metrics or {}).items():
            if any(name == s or name.endswith("/" + s) for s in self.show):
                out[name] = float(np.asarray(value))
        return out

    def _due(self, step: int, now: float) -> bool:
        if step >= self.total:
            return True
        if self.print_every is not None:
            return step % self.print_every == 0
        return self._printed_at is None or now - self._printed_at >= self.print_seconds

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
        step = int(step)
        shown = self._shown(metrics)
        now = self._clock()
        if self._bar is not None:
            self._bar.update(step - self._step)
            if shown:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        elif self._due(step, now):
            self._printed_at = now
            elapsed = now - self._start
            done = step - self.initial
            rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            parts = [f"{self.desc} step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%)"]
            parts += [f"{k}={v:.4f}" for k, v in shown.items()]
            line = " ".join(parts) + f" | {rate:.3g} step/s"
            tokens = [v for k, v in (metrics or {}).items() if k.endswith("tokens_per_sec")]
            if tokens:
                line += f" | {float(tokens[0]):,.0f} tok/s"
            line += f" | elapsed {_format_duration(elapsed)} | ETA {_format_duration(eta)}"
            print(line, file=self.file, flush=True)
        self._step = step

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Throughput:
    """Tokens/s over the last ``window`` steps, and MFU.

    Call ``update(tokens)`` once per step, after the step's results are on the host (e.g. after the
    metrics are fetched; JAX dispatch is asynchronous, so timing an unsynchronised call measures
    nothing). The first call only starts the clock (it usually includes compilation), so its tokens
    are not counted. ``update`` returns ``{}`` until two calls have been made, then
    ``perf/tokens_per_sec`` and, with ``flops_per_token`` (see ``align_jax.training.flops``),
    ``perf/model_tflops_per_sec``; with ``peak_flops`` too, ``perf/mfu`` = achieved model FLOP/s /
    ``peak_flops``. ``peak_flops`` is the peak of all devices the step runs on (per-device peak
    times device count), and ``tokens`` the global token count of the step.
    """

    def __init__(
        self,
        *,
        window: int = 20,
        flops_per_token: float | None = None,
        peak_flops: float | None = None,
        clock=time.perf_counter,
    ):
        if window < 1:
            raise ValueError("window must be >= 1")
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self._clock = clock
        self._marks: collections.deque[tuple[float, float]] = collections.deque(maxlen=window + 1)

    def update(self, tokens: float, now: float | None = None) -> dict[str, float]:
        self._marks.append((self._clock() if now is None else now, float(tokens)))
        if len(self._marks) < 2:
            return {}
        elapsed = self._marks[-1][0] - self._marks[0][0]
        if elapsed <= 0:
            return {}
        tokens_per_sec = sum(t for _, t in list(self._marks)[1:]) / elapsed
        out = {"perf/tokens_per_sec": tokens_per_sec}
        if self.flops_per_token is not None:
            model_flops = tokens_per_sec * self.flops_per_token
            out["perf/model_tflops_per_sec"] = model_flops / 1e12
            if self.peak_flops:
                out["perf/mfu"] = model_flops / self.peak_flops
        return out
