"""tensorflow-datasets builders over local files, written as ``array_record`` (no TensorFlow).

One builder, :class:`LocalRecords`, with a config per record kind (``sft``, ``preference``,
``ranked``, ``unpaired``, ``prompt``). It reads local files through
:func:`align_jax.data.sources.load_records` (any format, field mapping, ``on_error``), so the
prepared dataset holds exactly the records a direct load gives, typed as tfds features:

    builder = build("preference", {"train": "pairs.jsonl"}, data_dir, fields={...})
    records = RecordsSource(builder, "train")   # random access, yields PreferenceRecord
    ds = pipeline.make_dataset(records, tokenize, batch_size=8)

tfds writes ``array_record`` shards under ``data_dir/local_records/<kind>/1.0.0`` and reads them
back through ``array_record`` without TensorFlow (tfds 4.9 decodes with numpy; text comes back
as bytes, decoded here). Give different ``data_dir`` s for different inputs of one kind:
tfds reuses a prepared dataset it finds there.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
from etils import epath
import tensorflow_datasets as tfds

from align_jax.data import records as rec
from align_jax.data.sources import load_records

_MESSAGES = {"role": tfds.features.Text(), "content": tfds.features.Text()}


def _features(kind: str) -> dict[str, Any]:
    prompt = {"prompt": tfds.features.Sequence(_MESSAGES)}
    return {
        "sft": {"messages": tfds.features.Sequence(_MESSAGES)},
        "preference": {**prompt, "chosen": tfds.features.Text(), "rejected": tfds.features.Text()},
        "ranked": {
            **prompt,
            "responses": tfds.features.Sequence(tfds.features.Text()),
            "scores": tfds.features.Sequence(np.float32),
        },
        "unpaired": {**prompt, "response": tfds.features.Text(), "desirable": np.bool_},
        "prompt": prompt,
    }[kind]


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _messages(seq: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"role": _text(r), "content": _text(c)} for r, c in zip(seq["role"], seq["content"])]


def record_from_example(kind: str, ex: Mapping[str, Any]) -> Any:
    """The record of a decoded tfds example (numpy arrays and bytes)."""
    if kind == "sft":
        return rec.SFTRecord(_messages(ex["messages"]))
    prompt = _messages(ex["prompt"])
    if kind == "preference":
        return rec.PreferenceRecord(prompt, _text(ex["chosen"]), _text(ex["rejected"]))
    if kind == "ranked":
        return rec.RankedRecord(prompt, [_text(r) for r in ex["responses"]], [float(s) for s in ex["scores"]])
    if kind == "unpaired":
        return rec.UnpairedRecord(prompt, _text(ex["response"]), bool(ex["desirable"]))
    return rec.PromptRecord(prompt)


class LocalRecords(tfds.core.GeneratorBasedBuilder):
    """Records of one kind from local files; ``files`` maps split names to paths."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds looks for checksums next to the builder's package via importlib.resources, which
    # fails for an editable install seen as a namespace package; point it at this file.
    code_path = epath.Path(__file__)
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=k, description=f"{k} records") for k in rec.RECORD_KINDS]

    def __init__(
        self,
        *,
        files: Mapping[str, str | os.PathLike] | None = None,
        fields: Mapping[str, str] | None = None,
        source_kind: str | None = None,
        on_error: str = "raise",
        **kwargs,
    ):
        self._files = dict(files or {})
        self._fields = dict(fields or {})
        self._source_kind = source_kind
        self._on_error = on_error
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict(_features(self.builder_config.name))
        )

    def _split_generators(self, dl_manager):
        if not self._files:
            raise ValueError("LocalRecords needs files={split: path} to prepare the dataset")
        return {split: self._generate_examples(path) for split, path in self._files.items()}

    def _generate_examples(self, path):
        kind = self.builder_config.name
        records, _ = load_records(path, self._source_kind or kind, self._fields, on_error=self._on_error)
        for i, r in enumerate(records):
            d = rec.to_dict(r)
            for key in ("messages", "prompt"):
                if key in d:  # tfds sequences of dicts take a dict of lists
                    d[key] = {"role": [m["role"] for m in d[key]], "content": [m["content"] for m in d[key]]}
            yield i, d


def build(
    kind: str,
    files: Mapping[str, str | os.PathLike],
    data_dir: str | os.PathLike,
    *,
    fields: Mapping[str, str] | None = None,
    source_kind: str | None = None,
    on_error: str = "raise",
) -> LocalRecords:
    """Prepare (once) the array_record dataset of ``kind`` from ``files`` under ``data_dir``.

    ``source_kind="hh_rlhf"`` reads HH transcripts into ``preference`` records.
    """
    if kind not in rec.RECORD_KINDS:
        raise ValueError(f"unknown record kind {kind!r}; valid kinds: {sorted(rec.RECORD_KINDS)}")
    builder = LocalRecords(
        config=kind,
        data_dir=os.fspath(data_dir),
        file_format="array_record",
        files=files,
        fields=fields,
        source_kind=source_kind,
        on_error=on_error,
    )
    builder.download_and_prepare()
    return builder


class RecordsSource:
    """A grain random-access source of records over a prepared split."""

    def __init__(self, builder: LocalRecords, split: str):
        self.kind = builder.builder_config.name
        self._source = builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> Any:
        return record_from_example(self.kind, self._source[index])
