"""MetricsWriter (JSONL + TensorBoard events), resume truncation, ProgressBar and Throughput."""

import io
import json
import math
import pathlib
import struct
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from align_jax.training.metrics_logging import (
    METRICS_FILE,
    TENSORBOARD_DIR,
    MetricsWriter,
    ProgressBar,
    Throughput,
    read_metrics,
)


def _crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), written out here so the check does not reuse the writer's code."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:  # TFRecord's masking
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tensorboard_scalars(logdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    """Reads event files as TensorBoard does (the `tensorboard` package is not installed).

    TFRecord framing with masked CRC32C checks, then `Event` protos. A SessionLog START at step s
    purges earlier events with step >= s (TensorBoard's `purge_orphaned_data`).
    """
    events = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            header = raw[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", raw[pos + 8 : pos + 12])[0] == masked_crc32c(header)
            data = raw[pos + 12 : pos + 12 + length]
            assert struct.unpack("<I", raw[pos + 12 + length : pos + 16 + length])[0] == masked_crc32c(data)
            pos += 16 + length
            event = event_pb2.Event()
            event.ParseFromString(data)
            events.append(event)
    scalars: dict[str, list[tuple[int, float]]] = {}
    for event in events:
        if event.HasField("session_log") and event.session_log.status == event.session_log.START:
            scalars = {tag: [(s, v) for s, v in pts if s < event.step] for tag, pts in scalars.items()}
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_jsonl_round_trip_and_value_types(tmp_path):
    with MetricsWriter(tmp_path, use_tensorboard=False) as writer:
        writer.write(1, {"loss": jnp.float32(0.5), "tokens": np.int64(4096), "acc": 1})
        writer.write(1, {"loss": 0.75}, split="eval")
        writer.write(2, {"loss": float("nan"), "grad_norm": jnp.array([2.0])})
    records = read_metrics(tmp_path)
    assert records[0] == {"step": 1, "split": "train", "loss": 0.5, "tokens": 4096, "acc": 1}
    assert isinstance(records[0]["tokens"], int) and isinstance(records[0]["loss"], float)
    assert records[1] == {"step": 1, "split": "eval", "loss": 0.75}
    assert math.isnan(records[2]["loss"]) and records[2]["grad_norm"] == 2.0
    assert read_metrics(tmp_path, split="eval") == [records[1]]
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[1])["split"] == "eval"


def test_rejects_bad_metrics(tmp_path):
    with MetricsWriter(tmp_path, use_tensorboard=False) as writer:
        with pytest.raises(ValueError, match="scalar"):
            writer.write(1, {"logits": np.zeros(3)})
        with pytest.raises(ValueError, match="reserved"):
            writer.write(1, {"step": 3})
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(2, {"loss": 1.0})


def test_tensorboard_scalars_are_readable(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        for step in range(1, 4):
            writer.write(step, {"loss": 1.0 / step, "lr": 1e-3})
        writer.write(3, {"loss": 0.25}, split="eval")
    scalars = read_tensorboard_scalars(tmp_path / TENSORBOARD_DIR)
    assert set(scalars) == {"train/loss", "train/lr", "eval/loss"}
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [1.0, 0.5, 1 / 3], rtol=1e-6)
    assert scalars["eval/loss"] == [(3, 0.25)]


def _run(workdir, steps, *, resume_step=None, crash_after=None):
    with MetricsWriter(workdir, resume_step=resume_step) as writer:
        for step in steps:
            writer.write(step, {"loss": 10.0 / step})
            if step % 4 == 0:
                writer.write(step, {"loss": 20.0 / step}, split="eval")
            if step == crash_after:
                return


def test_resume_trace_equals_uninterrupted_run(tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _run(full, range(1, 13))
    # Checkpoint at step 4, crash after logging step 7, then a cut-off line from the dying process.
    _run(resumed, range(1, 13), crash_after=7)
    with (resumed / METRICS_FILE).open("a") as f:
        f.write('{"step": 8, "split": "tr')
    assert any(r["step"] > 4 for r in read_metrics(resumed))
    _run(resumed, range(5, 13), resume_step=4)

    assert read_metrics(resumed) == read_metrics(full)
    steps = [(r["step"], r["split"]) for r in read_metrics(resumed)]
    assert len(steps) == len(set(steps))
    tb_resumed = read_tensorboard_scalars(resumed / TENSORBOARD_DIR)
    assert tb_resumed == read_tensorboard_scalars(full / TENSORBOARD_DIR)


def test_non_writer_process_writes_nothing(tmp_path):
    with MetricsWriter(tmp_path / "w", is_writer=False) as writer:
        writer.write(1, {"loss": 1.0})
    assert not (tmp_path / "w").exists()
    assert read_metrics(tmp_path / "w") == []


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_plain_lines_every_n_steps_with_eta(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    out, clock = io.StringIO(), FakeClock()  # StringIO is not a TTY -> plain lines
    bar = ProgressBar(100, initial=20, print_every=30, file=out, clock=clock)
    assert not bar.enabled
    for step in range(21, 101):
        clock.t += 0.5  # 2 steps/s
        bar.update(step, {"train/loss": 1.0 / step, "grad_norm": 3.0})
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["30/100", "60/100", "90/100", "100/100"]
    assert "train/loss=0.0333" in lines[0] and "grad_norm" not in lines[0]
    assert "2 step/s" in lines[0] and "ETA 0:00:35" in lines[0]  # 70 steps left at 2 steps/s
    assert lines[-1].endswith("ETA 0:00:00")


def test_progress_uses_tqdm_on_tty_unless_ci(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CI", raising=False)
    tty = Tty()
    with ProgressBar(10, file=tty) as bar:
        assert bar.enabled
        for step in range(1, 11):
            bar.update(step, {"loss": 0.123})
    assert "10/10" in tty.getvalue() and "loss=0.123" in tty.getvalue()

    monkeypatch.setenv("CI", "true")
    assert not ProgressBar(10, file=Tty()).enabled


def test_throughput_window_and_mfu():
    meter = Throughput(window=4, flops_per_token=6e9, peak_flops=1e15)
    assert meter.update(999, now=0.0) == {}  # starts the clock; compile step not counted
    for i in range(1, 5):
        out = meter.update(1000, now=0.5 * i)
    assert out["perf/tokens_per_sec"] == pytest.approx(2000.0)
    assert out["perf/model_tflops_per_sec"] == pytest.approx(2000 * 6e9 / 1e12)
    assert out["perf/mfu"] == pytest.approx(2000 * 6e9 / 1e15)
    for i in range(1, 5):  # four steps twice as fast: the window forgets the slow ones
        out = meter.update(1000, now=2.0 + 0.25 * i)
    assert out["perf/tokens_per_sec"] == pytest.approx(4000.0)
    assert Throughput().update(1, now=0.0) == {}
    only_rate = Throughput()
    only_rate.update(5, now=0.0)
    assert set(only_rate.update(10, now=1.0)) == {"perf/tokens_per_sec"}


def test_a_given_peak_is_the_mfu_denominator_and_a_bad_one_fails_before_the_model_loads(monkeypatch, tmp_path):
    from align_jax.training import loop

    monkeypatch.setenv(loop.PEAK_FLOPS_ENV, "2.5e12")
    loop._peak_flops.cache_clear()
    try:
        assert loop._peak_flops() == 2.5e12
    finally:
        loop._peak_flops.cache_clear()
    monkeypatch.setattr(loop, "load", lambda cfg: pytest.fail("the model loaded before the value was checked"))
    cfg = SimpleNamespace(task=SimpleNamespace(online=False))
    for bad in ("fast", "0", "-1e12", "inf", "nan"):
        monkeypatch.setenv(loop.PEAK_FLOPS_ENV, bad)
        with pytest.raises(ValueError, match=f"ALIGN_JAX_PEAK_FLOPS={bad!r} must be a positive number"):
            loop.run(cfg, tmp_path)
