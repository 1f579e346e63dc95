"""Variable-length examples -> fixed-length rows: plain padding or padding-free packing.

Both give rows of length L with the same keys: ``tokens``, ``loss_mask``, ``positions``
(0, 1, ... within each example) and ``segment_ids`` (1, 2, ... per example in the row, 0 on
padding). A model attends only within a segment (``segment_ids[q] == segment_ids[k] != 0``)
and uses ``positions`` for RoPE, so a packed row computes exactly what the padded rows would.

* :func:`pad`: one example per row (a grain map function).
* :func:`pack`: first-fit packing of an :class:`grain.IterDataset` with grain's
  ``FirstFitPackIterDataset`` (keeps iterator state for checkpointing). Padding values are 0.
* :func:`unpack`: the examples inside a row, for tests and debugging.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

PACKED_KEYS = ("tokens", "loss_mask")


def pad(example: dict[str, Any], length: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """``tokens`` and ``loss_mask`` right-padded to ``length``, with positions and segment ids."""
    n = len(example["tokens"])
    if n > length:
        raise ValueError(f"example of {n} tokens does not fit a row of {length}; truncate it first")
    tokens = np.full((length,), pad_id, np.int32)
    tokens[:n] = example["tokens"]
    loss_mask = np.zeros((length,), np.int32)
    loss_mask[:n] = example["loss_mask"]
    positions = np.zeros((length,), np.int32)
    positions[:n] = np.arange(n)
    segment_ids = np.zeros((length,), np.int32)
    segment_ids[:n] = 1
    return {"tokens": tokens, "loss_mask": loss_mask, "positions": positions, "segment_ids": segment_ids}


def _rename(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "tokens": row["tokens"].astype(np.int32),
        "loss_mask": row["loss_mask"].astype(np.int32),
        "positions": row["tokens_positions"].astype(np.int32),
        "segment_ids": row["tokens_segment_ids"].astype(np.int32),
    }


def pack(
    ds: grain.IterDataset, length: int, *, num_packing_bins: int = 8, seed: int = 0, shuffle_bins: bool = False
) -> grain.IterDataset:
    """First-fit packing of ``{"tokens", "loss_mask"}`` examples into rows of ``length``.

    Each example longer than ``length`` must have been truncated before. ``num_packing_bins``
    rows are filled at once (more bins, less padding); ``shuffle_bins`` shuffles them by ``seed``.
    """
    ds = ds.map(lambda ex: {k: np.asarray(ex[k], np.int32) for k in PACKED_KEYS})
    packed = grain.experimental.FirstFitPackIterDataset(
        ds,
        length_struct={k: length for k in PACKED_KEYS},
        num_packing_bins=num_packing_bins,
        seed=seed,
        shuffle_bins=shuffle_bins,
    )
    return packed.map(_rename)


def unpack(row: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The ``{"tokens", "loss_mask", "positions"}`` of each segment of a row, in segment order."""
    seg = np.asarray(row["segment_ids"])
    out = []
    for s in sorted(set(seg.tolist()) - {0}):
        where = seg == s
        out.append({k: np.asarray(row[k])[where] for k in ("tokens", "loss_mask", "positions")})
    return out
