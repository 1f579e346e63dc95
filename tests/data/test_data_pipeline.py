"""The one data pipeline: the batch rule (seeded, host slices independent of the process count,
resumable), and the registered tfds builders over tiny local files as a way into it."""

from __future__ import annotations

import dataclasses
import gzip
import json

import numpy as np
import pytest

from align_jax.data import pipeline
from align_jax.data.records import PreferenceRecord, PromptRecord
from align_jax.data.sources import DataError, load_records
from align_jax.data.tokenization import Tokenize
from align_jax.training import data_setup
from align_jax.training.config import DataSection
from align_jax.training.tasks import TASKS

from word_tokenizer import word_tokenizer  # noqa: E402


def examples(n: int) -> list[dict]:
    return [{"i": np.int32(i)} for i in range(n)]


def ids(it, steps: int) -> list[list[int]]:
    return [next(it)["i"].tolist() for _ in range(steps)]


def test_every_epoch_is_a_new_seeded_permutation():
    a = ids(pipeline.host_batches(examples(8), 4, seed=1, train=True, process_index=0, process_count=1), 6)
    assert a == ids(pipeline.host_batches(examples(8), 4, seed=1, train=True, process_index=0, process_count=1), 6)
    assert a != ids(pipeline.host_batches(examples(8), 4, seed=2, train=True, process_index=0, process_count=1), 6)
    epochs = [a[0] + a[1], a[2] + a[3], a[4] + a[5]]
    assert all(sorted(e) == list(range(8)) for e in epochs)  # every epoch sees every example once
    assert epochs[0] != epochs[1] != epochs[2]  # and in a new order


@pytest.mark.parametrize("train", [True, False])
def test_host_slices_concatenate_to_the_single_process_batches(train):
    single = ids(pipeline.host_batches(examples(43), 4, seed=5, train=train, process_index=0, process_count=1), 10)
    hosts = [ids(pipeline.host_batches(examples(43), 4, seed=5, train=train, process_index=h, process_count=2), 10)
             for h in range(2)]
    for step, batch in enumerate(single):
        assert hosts[0][step] + hosts[1][step] == batch  # host 0 holds rows 0-1, host 1 rows 2-3
    if not train:  # one pass, the remainder dropped, the same number of steps on every host
        assert single == [list(range(4 * s, 4 * s + 4)) for s in range(10)]
        assert all(len(list(pipeline.host_batches(examples(43), 4, seed=5, train=False, process_index=h,
                                                  process_count=2))) == 10 for h in range(2))
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        pipeline.host_batches(examples(43), 4, seed=5, train=train, process_index=0, process_count=3)


@pytest.mark.parametrize("transform", [None, lambda b: {"i": b["i"] * 10}], ids=["plain", "transformed"])
def test_iterator_state_resumes_exactly(transform):
    def build():
        return pipeline.host_batches(examples(30), 4, seed=3, train=True, transform=transform,
                                     process_index=0, process_count=1)

    it = build()
    ids(it, 11)  # past the first epoch
    state = json.loads(json.dumps(it.get_state()))  # must survive serialisation (it is checkpointed)
    expected = ids(it, 5)
    fresh = build()
    fresh.set_state(state)
    assert ids(fresh, 5) == expected


def test_batches_are_built_only_a_few_ahead_of_the_reader():
    """grain's default read options build 500 batches as soon as the first is read (a core busy for
    seconds, for batches a short run never reads); the pipeline keeps PREFETCH_BATCHES ready."""
    import threading
    import time

    built, lock = [], threading.Lock()

    def count(batch):
        with lock:
            built.append(int(batch["i"][0]))
        return batch

    it = pipeline.host_batches(examples(40), 2, seed=0, train=True, transform=count, process_index=0, process_count=1)
    next(it)
    time.sleep(0.5)  # time for a greedy prefetcher to run far ahead
    assert 1 <= len(built) <= 2 + pipeline.PREFETCH_BATCHES, len(built)


def test_the_engine_iterator_is_the_pipeline():
    data = DataSection(batch_size=4, seed=7)
    engine = ids(data_setup.iterator(examples(20), data, train=True), 7)
    assert engine == ids(pipeline.host_batches(examples(20), 4, seed=7, train=True), 7)


def test_hold_out_is_seeded_and_disjoint():
    train, held = pipeline.hold_out(list(range(50)), 0.1, seed=0)
    assert len(held) == 5 and sorted(train + held) == list(range(50))
    assert (train, held) == pipeline.hold_out(list(range(50)), 0.1, seed=0)
    assert pipeline.hold_out(list(range(3)), 0.01, seed=0)[1] != []  # at least one held out


# -- the registered tfds builders over local files ------------------------------------------------

HH_ROWS = [
    {"chosen": "\n\nHuman: a b\n\nAssistant: c", "rejected": "\n\nHuman: a b\n\nAssistant: d"},
    {"chosen": "\n\nHuman: e\n\nAssistant: f g", "rejected": "\n\nHuman: e\n\nAssistant: h"},
    {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},  # prefix mismatch
]


def write_hh(folder, split, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"harmless-base-{split}.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def local_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    write_hh(root / "hh", "train", HH_ROWS * 4)
    write_hh(root / "hh", "test", HH_ROWS[1:2])
    (root / "ifeval").mkdir()
    (root / "ifeval" / "input_data.jsonl").write_text(json.dumps(
        {"key": 7, "prompt": "Say hi without commas.", "instruction_id_list": ["punctuation:no_comma"],
         "kwargs": [{}]}) + "\n")
    (root / "tqa").mkdir()
    (root / "tqa" / "TruthfulQA.csv").write_text(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
        'Adversarial,Misconceptions,Why are veins blue?,Light,"Light; Scattering","Blood is blue; Dye",https://x\n')
    (root / "refusal").mkdir()
    (root / "refusal" / "harmful_test.json").write_text(json.dumps([{"instruction": "Do harm", "category": "cyber"}]))
    (root / "refusal" / "harmless_test.json").write_text(json.dumps([{"instruction": "Be kind", "category": None}]))
    return root


def test_the_config_table_names_the_registered_builders():
    tfds_builders = pytest.importorskip("align_jax.data.tfds_builders")
    assert pipeline.TFDS_RECORD_KINDS == {name: b.RECORD_KIND for name, b in tfds_builders.BUILDERS.items()}


def test_builders_prepare_from_local_files_and_tfds_builder_reads_them(local_files, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from align_jax.data import tfds_builders as T

    expected = {
        "align_jax_hh_rlhf": ("hh", {"train": load_records(local_files / "hh" / "harmless-base-train.jsonl.gz",
                                                           "hh_rlhf", on_error="skip")[0],
                                     "test": [PreferenceRecord("e", "f g", "h")]}),
        "align_jax_ifeval": ("ifeval", {"test": [PromptRecord("Say hi without commas.", {
            "key": 7, "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]})]}),
        "align_jax_truthfulqa": ("tqa", {"validation": [PreferenceRecord("Why are veins blue?", "Light", "Blood is blue")]}),
        "align_jax_refusal": ("refusal", {"test": [PromptRecord("Do harm", {"harmful": True, "category": "cyber"}),
                                                   PromptRecord("Be kind", {"harmful": False, "category": ""})]}),
    }
    for name, (folder, splits) in expected.items():
        T.prepared_builder(name, data_dir=tmp_path, manual_dir=local_files / folder)
        builder = tfds.builder(name, data_dir=str(tmp_path))  # the plain tfds way in, once prepared
        assert set(builder.info.splits) == set(splits), name
        assert list((tmp_path / name).rglob("*.array_record*")), name
        for split, records in splits.items():
            source = builder.as_data_source(split=split)
            got = [T.BUILDERS[name].to_record(source[i]) for i in range(len(source))]
            assert got == records, (name, split)
            assert [r.info for r in got if isinstance(r, PromptRecord)] == \
                   [r.info for r in records if isinstance(r, PromptRecord)]  # info is not compared by ==
            assert pipeline.tfds_records(name, split, data_dir=str(tmp_path)) == records  # through grain
    features = tfds.builder("align_jax_truthfulqa", data_dir=str(tmp_path)).as_data_source(split="validation")[0]
    assert [a.decode() for a in features["correct_answers"]] == ["Light", "Scattering"]


def test_a_training_config_reads_a_tfds_source(local_files, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    data = DataSection(source="tfds:align_jax_hh_rlhf", manual_dir=str(local_files / "hh"),
                       tfds_data_dir=str(tmp_path), eval_split="test", batch_size=2)
    splits = data_setup.load_splits(data, TASKS["preference"])
    direct = load_records(local_files / "hh" / "harmless-base-train.jsonl.gz", "hh_rlhf", on_error="skip")[0]
    assert splits.train == direct and splits.eval == [PreferenceRecord("e", "f g", "h")]
    held = data_setup.load_splits(dataclasses.replace(data, eval_split="", eval_fraction=0.25), TASKS["unpaired"])
    assert len(held.train) == 2 * 6 and len(held.eval) == 2 * 2  # KTO: each pair becomes two unpaired records
    tok = Tokenize(word_tokenizer(), template="chatml_plain", max_length=24)
    batch = next(data_setup.iterator(pipeline.tokenize_all(tok, splits.train), data, train=True))
    assert batch["chosen_tokens"].shape == (2, 24)
    with pytest.raises(DataError, match="not prepared .* set data.manual_dir"):
        pipeline.tfds_records("align_jax_refusal", "test", data_dir=str(tmp_path))


def test_unknown_tfds_sources_fail_at_parse_time():
    from align_jax.training.config import parse_config

    with pytest.raises(ValueError, match="unknown data.source 'tfds:hh_rlhf'"):
        parse_config({"data": {"source": "tfds:hh_rlhf"}, "loss": {"name": "dpo"}})


def test_unshuffled_training_keeps_the_given_order_every_epoch():
    """``shuffle=False`` (``data.shuffle``, for curricula such as Curry-DPO): each epoch in order."""
    got = ids(pipeline.host_batches(examples(8), 4, seed=1, train=True, process_index=0, process_count=1,
                                    shuffle=False), 6)
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7]] * 3
    data = DataSection(batch_size=4, shuffle=False)
    assert ids(data_setup.iterator(examples(8), data, train=True), 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
