"""The data pipeline: a source's records -> tokenized examples -> this host's slices of global batches.

    source ──> records ──> tokenized examples (+ columns) ──> host_batches: shuffle(seed), batch
    file (sources.load_records)          tokenize_all, attach          global batches, this host's slice
    tfds dataset (tfds_records, grain)
    generated set (prompt_sets, ...)

The training engine reads its data through here (``align_jax.training.data_setup`` maps a run
config's ``data`` section onto these functions). Records are tokenized once, up front, so that
reference log-probs can be computed and attached per example, and the layouts that pack pairs
can size their rows from every example.

The batch rule (:func:`host_batches`): the global batch sequence depends only on the examples and
the seed, never on the number of processes. Host ``h`` of ``H`` takes every H-th host-sized batch
starting at ``h``; concatenated in process order they are exactly the single-process batches, so
losses do not change with the number of hosts and every host runs the same number of steps. The
returned grain iterator's ``get_state()`` / ``set_state()`` resume exactly (the loop checkpoints it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # grain is imported where it runs: the config parser reads this module's names
    import grain

    from align_jax.data.tokenization import Tokenize

TFDS_PREFIX = "tfds:"
# The registered tfds builders of align_jax.data.tfds_builders and their record kinds, named here so
# that a config is checked without importing tensorflow-datasets (a test keeps the two equal).
TFDS_RECORD_KINDS = {
    "align_jax_hh_rlhf": "preference",
    "align_jax_ifeval": "prompt",
    "align_jax_truthfulqa": "preference",
    "align_jax_refusal": "prompt",
}


def tfds_name(source: str) -> str | None:
    """``"tfds:align_jax_hh_rlhf"`` -> ``"align_jax_hh_rlhf"``; None for other sources."""
    return source[len(TFDS_PREFIX):] if source.startswith(TFDS_PREFIX) else None


def tfds_records(name: str, split: str, *, data_dir: str | None = None, manual_dir: str | None = None) -> list:
    """The records of a split (any tfds split string: ``"train"``, ``"train[:90%]"``) of a registered
    tfds dataset, read through grain from its ``array_record`` data source; prepared first from the
    files in ``manual_dir`` when ``data_dir`` does not hold it yet."""
    import grain

    from align_jax.data.tfds_builders import BUILDERS, prepared_builder

    builder = prepared_builder(name, data_dir=data_dir, manual_dir=manual_dir)
    source = builder.as_data_source(split=split)
    return list(grain.MapDataset.source(source).map(BUILDERS[name].to_record))


def hold_out(records: Sequence[Any], fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): a seeded random ``fraction`` of the records (at least one) held out for eval."""
    order = np.random.RandomState(seed).permutation(len(records))
    n_eval = max(1, int(round(len(records) * fraction)))
    return [records[i] for i in order[n_eval:]], [records[i] for i in order[:n_eval]]


def tokenize_all(tokenize: Tokenize, records: Sequence[Any]) -> list[dict]:
    """Token arrays of every record the truncation policy keeps (``tokenize.stats`` counts the rest)."""
    examples = [tokenize(r) for r in records]
    return [ex for ex in examples if ex is not None]


def attach(examples: list[dict], columns: Mapping[str, np.ndarray]) -> list[dict]:
    """Adds per-example values (e.g. reference log-probs ``[N]``) to each example dict."""
    return [{**ex, **{k: np.float32(v[i]) for k, v in columns.items()}} for i, ex in enumerate(examples)]


# Batches built ahead of the step that reads them, by one thread. grain's default (16 threads, 500
# batches) builds 500 batches the moment the first is read: measured 2026-12-07, a core stays busy
# ~5 s after the first batch of a toy run (every test that starts a run paid it), competing with the
# compile and the first steps on a 2-core machine for batches a short run never reads.
PREFETCH_THREADS, PREFETCH_BATCHES = 1, 4


def host_batches(
    examples: Sequence[dict],
    batch_size: int,
    *,
    seed: int,
    train: bool,
    transform: Callable[[dict], Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle: bool = True,
) -> grain.DatasetIterator:
    """This host's ``[batch_size / process_count, ...]`` slices of the global batches (the module's rule).

    Train: forever, each epoch a fresh seeded permutation of the examples (``shuffle`` before
    ``repeat``: grain reshuffles every pass; shuffling the infinite repeated dataset instead, as the
    engine did before, drew examples twice within an epoch and skipped others). Eval: one pass in
    order, the remainder dropped. ``shuffle=False``: train epochs in the given order too (a
    curriculum, e.g. Curry-DPO's easy-to-hard pairs). ``transform`` (e.g. a pair packer) maps each host batch after
    batching.
    ``process_index`` / ``process_count`` default to this JAX process.
    """
    import grain

    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if batch_size % process_count:
        raise ValueError(f"global batch_size {batch_size} is not divisible by {process_count} processes")
    ds = grain.MapDataset.source(list(examples))
    if train:
        ds = (ds.shuffle(seed=seed) if shuffle else ds).repeat(None)
    ds = ds.batch(batch_size // process_count, drop_remainder=True)
    if not train:  # whole global batches only: every host runs the same number of steps
        ds = ds[: len(examples) // batch_size * process_count]
    ds = ds[process_index::process_count]
    if transform is not None:
        ds = ds.map(transform)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=PREFETCH_THREADS, prefetch_buffer_size=PREFETCH_BATCHES)))
