"""The project's datasets as registered tensorflow-datasets builders over local files.

Each builder reads files the user already has (``manual_dir``; nothing is downloaded) and writes
``array_record`` shards under ``data_dir``, which tfds reads back without TensorFlow. Once
prepared, the usual tfds calls are a way in::

    import align_jax.data.tfds_builders  # registers the builders
    builder = tfds.builder("align_jax_hh_rlhf", data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=folder))
    source = builder.as_data_source(split="train")          # random access, decoded with numpy
    record = AlignJaxHhRlhf.to_record(source[0])            # a PreferenceRecord

and a training config reads them with ``data.source="tfds:align_jax_hh_rlhf"`` (``data.manual_dir``,
``data.tfds_data_dir``, ``data.train_split`` / ``data.eval_split``; see
:func:`align_jax.data.pipeline.tfds_records`).

=====================  ===========  ========================================================
builder                record kind  manual_dir holds (split = the file name's last ``-`` part)
=====================  ===========  ========================================================
``align_jax_hh_rlhf``   preference   Anthropic HH-RLHF ``<subset>-<split>.jsonl.gz`` (or
                                     ``<split>.jsonl[.gz]``); malformed pairs skipped, counted
``align_jax_ifeval``    prompt       IFEval ``input_data.jsonl`` (split ``test``) or
                                     ``<split>.jsonl``; ``info`` = the instruction ids and kwargs
                                     (what the ``ifeval`` reward checks)
``align_jax_truthfulqa`` preference  ``TruthfulQA.csv`` (split ``validation``): best answer over
                                     the first incorrect answer; every answer kept as features
``align_jax_refusal``   prompt       refusal_direction's ``harmful_<split>.json`` and
                                     ``harmless_<split>.json``; ``info = {"harmful", "category"}``
=====================  ===========  ========================================================

Records keep the order of the files (``disable_shuffling``); the pipeline shuffles by seed. Text
comes back from tfds as bytes and is decoded by ``to_record``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from align_jax.data import records as rec
from align_jax.data.sources import DataError, load_records

_MESSAGES = {"role": tfds.features.Text(), "content": tfds.features.Text()}


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _texts(xs: Any) -> list[str]:
    return [_text(x) for x in xs]


def _messages(seq: Mapping[str, Any]) -> list[dict[str, str]]:
    return [{"role": _text(r), "content": _text(c)} for r, c in zip(seq["role"], seq["content"])]


def _message_columns(messages) -> dict[str, list[str]]:
    """tfds sequences of dicts take a dict of lists."""
    return {"role": [m["role"] for m in messages], "content": [m["content"] for m in messages]}


def split_of(path: Path) -> str:
    """``harmless-base-test.jsonl.gz`` -> ``test``; ``train.jsonl`` -> ``train``."""
    stem = path.name.split(".")[0]
    return re.split(r"[-_]", stem)[-1]


def _files_by_split(folder: Path, patterns: tuple[str, ...], split=split_of) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            found.setdefault(split(path), []).append(path)
    if not found:
        raise DataError(f"{folder}: no files matching {patterns}")
    return found


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder over files in ``manual_dir``: ``_example_files`` names them by split, ``_examples``
    reads one, ``to_record`` turns a decoded example into the record the pipeline trains on."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "first version"}
    RECORD_KIND = ""
    FILES = ""  # what manual_dir holds, for the error message of a missing folder
    # tfds looks for checksums next to the builder's package via importlib.resources, which fails
    # for an editable install seen as a namespace package; point it at this file.
    code_path = epath.Path(__file__)

    @property
    def MANUAL_DOWNLOAD_INSTRUCTIONS(self) -> str:  # noqa: N802 (the tfds attribute name)
        return f"Pass manual_dir: a folder holding {self.FILES}."

    def _split_generators(self, dl_manager):
        folder = Path(os.fspath(dl_manager.manual_dir))
        return {split: self._generate_examples(paths) for split, paths in self._example_files(folder).items()}

    def _generate_examples(self, paths: list[Path]) -> Iterator[tuple[int, dict]]:
        examples = (example for path in paths for example in self._examples(path))
        yield from enumerate(examples)  # integer keys: tfds keeps their order (no shuffling)

    def _features(self, **features) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features), disable_shuffling=True)

    def _example_files(self, folder: Path) -> dict[str, list[Path]]:
        raise NotImplementedError

    def _examples(self, path: Path) -> Iterator[dict]:
        raise NotImplementedError

    @staticmethod
    def to_record(example: Mapping[str, Any]) -> Any:
        raise NotImplementedError


class AlignJaxHhRlhf(_LocalBuilder):
    """Anthropic HH-RLHF preference pairs (shared prompt turns, chosen and rejected final replies)."""

    RECORD_KIND = "preference"
    FILES = "HH-RLHF <subset>-<split>.jsonl.gz files"

    def _info(self) -> tfds.core.DatasetInfo:
        return self._features(**{
            "prompt": tfds.features.Sequence(_MESSAGES), "chosen": tfds.features.Text(),
            "rejected": tfds.features.Text()})

    def _example_files(self, folder):
        return _files_by_split(folder, ("*.jsonl.gz", "*.jsonl"))

    def _examples(self, path):
        records, _ = load_records(path, "hh_rlhf", on_error="skip")  # skips are counted and logged
        for r in records:
            yield {"prompt": _message_columns(r.prompt), "chosen": r.chosen, "rejected": r.rejected}

    @staticmethod
    def to_record(example):
        return rec.PreferenceRecord(_messages(example["prompt"]), _text(example["chosen"]), _text(example["rejected"]))


class AlignJaxIfeval(_LocalBuilder):
    """IFEval prompts and the verifiable instructions each carries."""

    RECORD_KIND = "prompt"
    FILES = "IFEval's input_data.jsonl"

    def _info(self) -> tfds.core.DatasetInfo:
        return self._features(**{
            "key": np.int64, "prompt": tfds.features.Text(),
            "instruction_id_list": tfds.features.Sequence(tfds.features.Text()),
            "kwargs": tfds.features.Text()})  # JSON list: the options differ per instruction

    def _example_files(self, folder):
        return _files_by_split(folder, ("*.jsonl",), lambda p: "test" if p.stem == "input_data" else split_of(p))

    def _examples(self, path):
        from align_jax.instructions.data import load_ifeval

        for e in load_ifeval(path):
            yield {"key": int(e.key), "prompt": e.prompt, "instruction_id_list": list(e.instruction_id_list),
                   "kwargs": json.dumps([dict(k) for k in e.kwargs])}

    @staticmethod
    def to_record(example):
        return rec.PromptRecord(_text(example["prompt"]), {
            "key": int(example["key"]), "instruction_id_list": _texts(example["instruction_id_list"]),
            "kwargs": json.loads(_text(example["kwargs"]))})


class AlignJaxTruthfulqa(_LocalBuilder):
    """TruthfulQA questions with their correct and incorrect answers."""

    RECORD_KIND = "preference"
    FILES = "TruthfulQA.csv"
    _COLUMNS = ("Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source")

    def _info(self) -> tfds.core.DatasetInfo:
        answers = tfds.features.Sequence(tfds.features.Text())
        return self._features(**{
            "type": tfds.features.Text(), "category": tfds.features.Text(), "question": tfds.features.Text(),
            "best_answer": tfds.features.Text(), "correct_answers": answers, "incorrect_answers": answers,
            "source": tfds.features.Text()})

    def _example_files(self, folder):
        return _files_by_split(folder, ("*.csv",), lambda p: "validation")

    def _examples(self, path):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in self._COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}")
            for row in reader:
                yield {"type": row["Type"], "category": row["Category"], "question": row["Question"],
                       "best_answer": row["Best Answer"], "source": row["Source"],
                       "correct_answers": [a.strip() for a in row["Correct Answers"].split(";") if a.strip()],
                       "incorrect_answers": [a.strip() for a in row["Incorrect Answers"].split(";") if a.strip()]}

    @staticmethod
    def to_record(example):
        return rec.PreferenceRecord(_text(example["question"]), _text(example["best_answer"]),
                                    _text(example["incorrect_answers"][0]))


class AlignJaxRefusal(_LocalBuilder):
    """Harmful and harmless instructions (refusal_direction's splits)."""

    RECORD_KIND = "prompt"
    FILES = "refusal_direction's harmful_<split>.json and harmless_<split>.json"

    def _info(self) -> tfds.core.DatasetInfo:
        return self._features(**{
            "prompt": tfds.features.Text(), "harmful": np.bool_, "category": tfds.features.Text()})

    def _example_files(self, folder):
        return _files_by_split(folder, ("harmful_*.json", "harmless_*.json"))

    def _examples(self, path):
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a list of objects")
        for n, row in enumerate(rows, 1):
            if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
                raise DataError(f"{path}, row {n}: expected an object with an 'instruction' string")
            yield {"prompt": row["instruction"], "harmful": path.name.startswith("harmful_"),
                   "category": row.get("category") or ""}

    @staticmethod
    def to_record(example):
        return rec.PromptRecord(_text(example["prompt"]), {"harmful": bool(example["harmful"]),
                                                           "category": _text(example["category"])})


BUILDERS: dict[str, type[_LocalBuilder]] = {
    b.name: b for b in (AlignJaxHhRlhf, AlignJaxIfeval, AlignJaxTruthfulqa, AlignJaxRefusal)
}


def prepared_builder(name: str, *, data_dir: str | os.PathLike | None = None,
                     manual_dir: str | os.PathLike | None = None) -> _LocalBuilder:
    """The builder ``name`` under ``data_dir`` (tfds's default when None), prepared from the files in
    ``manual_dir`` if it is not prepared there yet."""
    if name not in BUILDERS:
        raise ValueError(f"unknown tfds dataset {name!r}; the project's builders: {sorted(BUILDERS)}")
    builder = tfds.builder(name, data_dir=os.fspath(data_dir) if data_dir else None, file_format="array_record")
    if not builder.is_prepared():
        if manual_dir is None:
            raise DataError(f"tfds dataset {name!r} is not prepared in {builder.data_dir}; set data.manual_dir "
                            f"({builder.MANUAL_DOWNLOAD_INSTRUCTIONS})")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder
