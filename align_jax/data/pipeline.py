"""Records -> batches: a grain pipeline with deterministic order and resumable state.

``records`` (any random-access sequence: a list from :func:`sources.load_records` or an
``ArrayRecordDataSource`` / tfds data source mapped to records) go through

    shuffle(seed) -> repeat(num_epochs) -> tokenize -> drop ``None`` -> [SFT: pad or pack]
    -> global batch -> this host's rows

The batch sequence depends only on the records and the seed, never on the number of
processes: every host builds the same global batches of ``batch_size`` rows and keeps its
contiguous ``batch_size / shard_count`` rows (:func:`host_rows`), so the host slices
concatenated in process order are exactly the single-process batches, and every host runs
the same number of steps. The training engine uses the same rule
(:func:`align_jax.training.data_setup.iterator`). The shuffle draws a new order each epoch.

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


def host_rows(batch_size: int, shard_index: int, shard_count: int) -> slice:
    """The rows of a global batch that host ``shard_index`` of ``shard_count`` keeps."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index ({shard_index}) < shard_count ({shard_count})")
    if batch_size % shard_count:
        raise ValueError(f"global batch_size {batch_size} is not divisible by {shard_count} processes")
    per_host = batch_size // shard_count
    return slice(shard_index * per_host, (shard_index + 1) * per_host)


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
    """This host's rows of global batches of tokenized records (``[batch_size / shard_count, ...]``).

    ``batch_size`` is the global batch; ``shard_index`` / ``shard_count`` default to this JAX
    process. ``pack=True`` (SFT only)
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
    rows = host_rows(batch_size, shard_index, shard_count)
    if shard_count > 1 and not drop_remainder:
        raise ValueError("several processes need drop_remainder=True: a short last batch would split unevenly")
    ds = grain.MapDataset.source(records)
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
    batches = it.batch(batch_size, drop_remainder=drop_remainder)
    if shard_count == 1:
        return batches
    return batches.map(lambda batch: {k: v[rows] for k, v in batch.items()})
