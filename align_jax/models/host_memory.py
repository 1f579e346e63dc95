"""Host (C heap) memory: hand freed pages back to the OS after a phase that allocated and dropped a lot."""

from __future__ import annotations

import ctypes
import functools


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Hands the C heap's free pages back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    glibc keeps freed memory in its arenas (e.g. ~0.4 GB of dequantised copies after loading SmolLM2-135M
    from GGUF; less after the reference pass or a checkpoint save). On CPU, where the arrays are host
    memory too, that slack adds to the next phase's peak RSS (measured: benchmarks/memory.py).
    ``registry.load_model`` calls it after every load; the training loop after each phase."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
