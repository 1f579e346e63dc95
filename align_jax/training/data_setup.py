"""The data section of a run config, mapped onto the data pipeline (:mod:`align_jax.data.pipeline`):
records of the configured source, tokenized examples, this host's batches, and the batch layouts and
device placement that depend on the run (pair packing, micro-batches, the mesh)."""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Sequence

import jax
import numpy as np

from align_jax.data import pipeline
from align_jax.data.pair_packing import group_example_batch, pack_example_batch
from align_jax.data.prompt_sets import GENERATED as GENERATED_PROMPT_SOURCES
from align_jax.data.sources import load_records
from align_jax.data.tokenization import Tokenize
from align_jax.training.config import DataSection
from align_jax.training.tasks import Task


@dataclasses.dataclass
class Splits:
    train: list[Any]
    eval: list[Any]
    stats: dict[str, Any]


def _file_records(path: str, source: str, data: DataSection):
    records, stats = load_records(path, source, dict(data.fields) or None, format=data.format, on_error=data.on_error,
                                  group_field=data.group_field or None, groups=data.group_ids)
    return records, {"rows": stats.rows, "records": stats.records, "skipped": dict(stats.skipped)}


def load_splits(data: DataSection, task: Task) -> Splits:
    """Records for training and evaluation (eval: its own file or split, or a seeded share of the
    train records held out), turned into the task's record kind by ``task.prepare_records``."""
    stats: dict[str, Any] = {}
    tfds_name = pipeline.tfds_name(data.source)
    if tfds_name is not None:
        read = functools.partial(pipeline.tfds_records, tfds_name, data_dir=data.tfds_data_dir,
                                 manual_dir=data.manual_dir)
        train = read(data.train_split)
        if data.eval_split:
            evals = read(data.eval_split)
        else:
            train, evals = pipeline.hold_out(train, data.eval_fraction, data.seed)
        stats = {"train": {"split": data.train_split, "records": len(train)},
                 "eval": {"split": data.eval_split or f"{data.eval_fraction} of {data.train_split}",
                          "records": len(evals)}}
    elif data.source == "checkable_pairs":
        from align_jax.data.checkable_pairs import build_checkable_pairs

        train = [p.record for p in build_checkable_pairs("train", seed=data.seed)]
        evals = [p.record for p in build_checkable_pairs("validation", seed=data.seed)]
    elif data.source in GENERATED_PROMPT_SOURCES:
        train, evals = GENERATED_PROMPT_SOURCES[data.source](data.seed)
    else:
        train, stats["train"] = _file_records(data.train_path, data.source, data)
        if data.eval_path:
            evals, stats["eval"] = _file_records(data.eval_path, data.source, data)
        else:
            train, evals = pipeline.hold_out(train, data.eval_fraction, data.seed)
    if task.prepare_records is not None:
        train, evals = task.prepare_records(train), task.prepare_records(evals)
    if data.max_train_examples:
        train = train[: data.max_train_examples]
    if data.max_eval_examples:
        evals = evals[: data.max_eval_examples]
    if not train or not evals:
        raise ValueError(f"empty dataset: {len(train)} train and {len(evals)} eval records ({data})")
    return Splits(train, evals, stats)


def iterator(examples: Sequence[dict], data: DataSection, *, train: bool, transform=None):
    """This host's slices of the global batches of ``data.batch_size`` examples, shuffled by
    ``data.seed`` unless ``data.shuffle`` is off (:func:`align_jax.data.pipeline.host_batches`); ``transform`` (e.g. a
    :class:`PairPacker`) maps each host batch."""
    return pipeline.host_batches(examples, data.batch_size, seed=data.seed, train=train, transform=transform,
                                 shuffle=data.shuffle)


@dataclasses.dataclass(frozen=True)
class PairPacker:
    """Host batches of tokenized pairs -> the prefix-shared layout (a picklable grain map function)."""

    micro_batches: int
    row_length: int
    rows_per_micro: int
    pack: bool
    pad_id: int
    pair_offset: int  # this host's first pair index within a global micro-batch

    def __call__(self, batch: dict) -> dict:
        return pack_example_batch(
            batch,
            micro_batches=self.micro_batches,
            row_length=self.row_length,
            rows_per_micro=self.rows_per_micro,
            pack=self.pack,
            pad_id=self.pad_id,
            pair_offset=self.pair_offset,
        )


@dataclasses.dataclass(frozen=True)
class LengthGrouper:
    """Host batches of tokenized pairs -> a tuple of length groups (``pair_layout="length_grouped"``)."""

    micro_batches: int
    multiple: int
    pad_id: int

    def __call__(self, batch: dict) -> tuple[dict, ...]:
        return group_example_batch(batch, micro_batches=self.micro_batches, multiple=self.multiple, pad_id=self.pad_id)


def pair_packer(data: DataSection, examples: Sequence[dict], pad_id: int) -> PairPacker | LengthGrouper | None:
    """The batch transform of ``data.pair_layout`` (None for "separate"), sized from ``examples``
    (every train and eval example, so that any batch fits the same static shapes).

    Every step still takes ``batch_size`` pairs (the same pairs as the separate layout). Rows are
    as long as the longest pair (``p + c + r``, rounded up to 8). "shared_prefix": one pair per
    row. "packed": ``min(m, ceil(2 S / row_length))`` rows per micro-batch of ``m`` pairs, where
    ``S`` sums the ``m`` longest pairs of the data: first fit fills any two rows past
    ``row_length`` together, so it never needs more, whatever pairs a batch draws. On data with
    a long tail of lengths this bound leaves little to gain over "shared_prefix".
    "length_grouped": one pair per row, each row padded to a multiple of ``data.group_multiple``
    only, rows of equal length batched together (a tuple of groups per batch; one compiled step
    per group structure met, so coarser multiples compile less).
    """
    if data.pair_layout == "separate":
        return None
    if data.pair_layout == "length_grouped":
        if jax.process_count() > 1:
            raise ValueError("data.pair_layout='length_grouped' runs in a single process (each host's groups "
                             "would differ in shape); use 'shared_prefix' or 'packed' across hosts")
        logging.info("pair layout length_grouped: one pair per row, rows padded to a multiple of %d",
                     data.group_multiple)
        return LengthGrouper(data.micro_batches, data.group_multiple, pad_id)
    lengths = sorted(int(e["prompt_length"]) + int(e["chosen_length"]) + int(e["rejected_length"]) for e in examples)
    row_length = -(-lengths[-1] // 8) * 8
    hosts = jax.process_count()
    m = data.batch_size // hosts // data.micro_batches  # pairs per micro-batch on this host
    rows = m
    if data.pair_layout == "packed":
        rows = min(m, -(-2 * sum(lengths[-m:]) // row_length))
    packer = PairPacker(data.micro_batches, row_length, rows, data.pair_layout == "packed", pad_id,
                        pair_offset=jax.process_index() * m)
    logging.info("pair layout %s: %d rows of %d tokens per micro-batch of %d pairs",
                 data.pair_layout, rows, row_length, m)
    return packer


def to_global(batch: dict, data: DataSection, shardings) -> dict:
    """Host-local [b, ...] numpy batch -> global [A, B/A, ...] arrays over the mesh."""
    a = data.micro_batches
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        local = v.reshape((a, v.shape[0] // a) + v.shape[1:])
        global_shape = (a, local.shape[1] * jax.process_count()) + local.shape[2:]
        out[k] = jax.make_array_from_process_local_data(shardings[k], local, global_shape)
    return out


def log_truncation(tokenize: Tokenize, name: str) -> dict[str, int]:
    stats = tokenize.stats.as_dict()
    logging.info("%s truncation: %s", name, stats)
    return stats
