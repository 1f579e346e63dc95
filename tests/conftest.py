"""Test-wide set-up: 8 forced CPU devices (before JAX is imported) and shared data paths."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Files that take longest (seconds of one xdist worker, measured 2026-12-03 with --durations=0),
# collected first: with `--dist loadfile --no-loadscope-reorder` (the Makefile's test command)
# xdist hands out files in collection order, so the long ones start at once instead of last.
LONGEST_FIRST = (
    "training/test_packed_pairs.py",  # ~370 s
    "training/test_engine.py",  # ~215 s
    "models/test_decoder_parity.py",  # ~145 s
    "models/test_real_weights_gemma.py",  # ~130 s
    "training/test_train_step.py",  # ~120 s
    "sampling/test_sampler_tiny.py",  # ~75 s
    "models/test_real_weights.py",  # ~90 s (with the sampler-vs-generate test)
    "evals/test_refusal_classifiers.py",  # ~60 s
    "evals/test_refusal_finetune.py",  # ~45 s
)


def pytest_collection_modifyitems(config, items):
    """Longest files first (stable: the rest keep their order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item):
        rel = item.path.resolve().relative_to(REPO_ROOT / "tests").as_posix()
        return rank.get(rel, len(LONGEST_FIRST))

    items.sort(key=key)
