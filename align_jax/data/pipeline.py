"""Records -> batches: a grain pipeline with deterministic order and resumable state.

``records`` (any random-access sequence: a list from :func:`sources.load_records` or an
``ArrayRecordDataSource`` / tfds data source mapped to records) go through

    shard (per host) -> shuffle(seed) -> repeat(num_epochs) -> tokenize -> drop ``None``
    -> [SFT: pad or pack] -> batch

Sharding keeps the first ``n - n % shard_count`` records and gives host ``i`` every
``shard_count``-th of them starting at ``i``: shards are disjoint and equally long, so hosts
run the same number of steps (a host with one batch more would hang the others) unless
``policy="drop"`` or packing makes the counts differ; train for a fixed number of steps (or
``num_epochs=None``, repeating forever) in multi-host runs. The shuffle draws a new order
each epoch from ``seed``.

The returned :class:`grain.IterDataset` gives a :class:`grain.DatasetIterator` on ``iter()``;
``it.get_state()`` / ``it.set_state(state)`` (a small JSON-able dict) resume exactly: a fresh
iterator restored to a saved state yields the same following batches. Save it with the
model checkpoint (orbax has ``grain.checkpoint`` handlers for it).
"""

from __future__ import annotations

from typing import Any, Sequence

import grain

from align_jax.data import packing
from align_jax.data.records import SFTRecord
from align_jax.data.tokenization import Tokenize


def host_shard() -> tuple[int, int]:
    """``(jax.process_index(), jax.process_count())``."""
    import jax

    return jax.process_index(), jax.process_count()


def shard(ds: grain.MapDataset, shard_index: int, shard_count: int) -> grain.MapDataset:
    """Equal, disjoint, strided shards (the ``len(ds) % shard_count`` last records dropped)."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index ({shard_index}) < shard_count ({shard_count})")
    usable = len(ds) - len(ds) % shard_count
    if usable == 0:
        raise ValueError(f"{len(ds)} records cannot be split into {shard_count} non-empty shards")
    return ds[:usable][shard_index::shard_count]


def make_dataset(
    records: Sequence[Any],
    tokenize: Tokenize,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    shard_index: int | None = None,
    shard_count: int | None = None,
    pack: bool = False,
    num_packing_bins: int = 8,
    drop_remainder: bool = True,
) -> grain.IterDataset:
    """Batches of tokenized records (dicts of ``[batch_size, ...]`` numpy arrays).

    ``shard_index`` / ``shard_count`` default to this JAX process. ``pack=True`` (SFT only)
    packs conversations padding-free into rows of ``tokenize.max_length``; otherwise SFT rows
    are padded. Other kinds come out of ``tokenize`` already padded.
    """
    if len(records) == 0:
        raise ValueError("make_dataset got no records")
    if shard_index is None or shard_count is None:
        shard_index, shard_count = host_shard()
    sft = isinstance(records[0], SFTRecord)
    if pack and not sft:
        raise ValueError(f"packing is for SFT records, got {type(records[0]).__name__}")
    ds = shard(grain.MapDataset.source(records), shard_index, shard_count)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    ds = ds.map(tokenize).filter(lambda ex: ex is not None)
    length = tokenize.max_length
    if sft and not pack:
        ds = ds.map(lambda ex: packing.pad(ex, length, tokenize.pad_id))
    it = ds.to_iter_dataset()
    if pack:
        it = packing.pack(it, length, num_packing_bins=num_packing_bins, seed=seed)
    return it.batch(batch_size, drop_remainder=drop_remainder)
