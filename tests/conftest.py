"""Test-wide set-up: 8 forced CPU devices and fast-compile XLA flags (before JAX is imported), shared
data paths, and the longest files first."""

import os
import pathlib

import pytest

# Compiling, not running, is what the tiny-model tests spend their time on. XLA's CPU backend with
# LLVM at -O0 and without the MLIR fusion emitters compiles ~3-8x faster (measured 2026-12-04: a
# tiny Gemma's jitted value_and_grad 16 s -> 2 s; test_packed_pairs.py 382 -> ~100 CPU-seconds).
# Results agree to float rounding (that gradient within 2e-9, loss bit-equal). Setting XLA_FLAGS
# yourself replaces these flags and the device count; subprocess runs keep them (`subprocess_env`).
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Every training run measures the matmul peak for its MFU (~1-2 s of 1024^2 matmuls): the suite's
# ~100 runs give it instead (no test reads a real run's MFU; Throughput's formula is tested alone).
os.environ.setdefault("ALIGN_JAX_PEAK_FLOPS", "1e11")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# One persistent XLA compilation cache for the suite, shared by the xdist workers and by the
# subprocess runs they start (the environment is inherited): the same toy programs compile in many
# files, and a resume or CLI test runs the same config two or three times. The key covers the
# program, XLA_FLAGS and the jax/jaxlib versions, so an entry is never reused for another program.
# A size limit turns on JAX's file lock (filelock) for the concurrent writers. A bad entry (a
# writer killed mid-write: the SIGKILL tests) only warns and recompiles; pytest_configure removes
# such entries before any worker starts. Measured 2026-12-07 on this AMD EPYC host: test_rl.py's
# SIGKILL-resume test (three runs of one config) 102 -> 84 s with a warm cache (some AVX-512 hosts
# reject cached CPU executables, jax-ml/jax#38445: then it only recompiles).
XLA_CACHE = pathlib.Path(os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".xla_cache")))
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 1024**3))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def _drop_broken_cache_entries(cache: pathlib.Path) -> None:
    """Empty entries and entries without their access-time file (a write cut short) would warn on
    every read, or make every eviction check fail; both are removed (before any worker runs)."""
    for entry in cache.glob("*-cache") if cache.is_dir() else ():
        atime = entry.with_name(entry.name[: -len("-cache")] + "-atime")
        if entry.stat().st_size == 0 or not atime.exists():
            entry.unlink(missing_ok=True)
            atime.unlink(missing_ok=True)
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Files that take longest (seconds of one process, measured 2026-12-04 one file at a time with
# --durations=0 on the 2-core machine, others' jobs running), collected first: with
# `--dist loadfile --no-loadscope-reorder` (the Makefile's test commands) xdist hands out files in
# collection order, so the long ones start at once instead of last.
LONGEST_FIRST = (
    "training/test_engine.py",  # ~200 s (slow: subprocess runs)
    "training/test_objective_sweep.py",  # ~220 s with the suite running beside it (2026-12-07)
    "training/test_rl.py",  # ~155 s (slow)
    "experiments/test_overoptimization_hh.py",  # ~175 s (2026-12-07)
    "experiments/test_dpo_family_hh.py",  # ~95 s (2026-12-07)
    "training/test_packed_pairs.py",  # ~95 s (~45 s without the slow engine runs)
    "models/test_real_weights.py",  # ~90 s (slow)
    "models/test_real_weights_gemma.py",  # ~75 s (slow)
    "models/test_chat.py",  # ~55 s (slow)
    "models/test_decoder_parity.py",  # ~40 s
    "training/test_train_step.py",  # ~30 s
    "training/test_calibration_task.py",  # ~26 s
    "safety/test_refusal_finetune.py",  # ~25 s
    "sampling/test_sampler_tiny.py",  # ~23 s
    "cli/test_cli.py",  # ~23 s
    "safety/test_refusal_classifiers.py",  # ~23 s
)


def pytest_collection_modifyitems(config, items):
    """Longest files first (stable: the rest keep their order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item):
        rel = item.path.resolve().relative_to(REPO_ROOT / "tests").as_posix()
        return rank.get(rel, len(LONGEST_FIRST))

    items.sort(key=key)


@pytest.fixture
def subprocess_env():
    """``make(devices)``: this process's environment for a JAX subprocess on ``devices`` forced CPU
    devices, keeping every other XLA flag (the fast-compile ones above, or the user's own)."""

    def make(devices: int) -> dict[str, str]:
        count = "--xla_force_host_platform_device_count"
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(count)]
        return {**os.environ, "XLA_FLAGS": " ".join([f"{count}={devices}", *flags]), "JAX_PLATFORMS": "cpu"}

    return make


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the main process (xdist's controller), before any worker
        _drop_broken_cache_entries(XLA_CACHE)
