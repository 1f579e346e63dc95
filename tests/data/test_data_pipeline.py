"""Grain pipeline: determinism by seed, host sharding, iterator-state resume; tfds round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from align_jax.data import pipeline
from align_jax.data.records import PreferenceRecord, SFTRecord
from align_jax.data.tokenization import Tokenize

from word_tokenizer import VOCAB, word_tokenizer  # noqa: E402


def pairs(n: int) -> list[PreferenceRecord]:
    # Record i is identified by its prompt length (i % 7 + 1 words) and chosen (i // 7 + 1 words).
    return [PreferenceRecord(({"role": "user", "content": "a " * (i % 7 + 1)},), "b " * (i // 7 + 1), "c") for i in range(n)]


def convs(n: int) -> list[SFTRecord]:
    return [SFTRecord(({"role": "user", "content": "a " * (i % 5 + 1)}, {"role": "assistant", "content": "d " * (i % 3 + 1)})) for i in range(n)]


def ident(batch) -> list[tuple[int, int]]:
    return list(zip(batch["prompt_length"].tolist(), batch["chosen_length"].tolist()))


def make(recs, seed=0, **kw):
    tok = Tokenize(word_tokenizer(), template="chatml_plain", max_length=24)
    kw.setdefault("shard_index", 0)
    kw.setdefault("shard_count", 1)
    return pipeline.make_dataset(recs, tok, batch_size=4, seed=seed, **kw)


def take(it, n):
    return [next(it) for _ in range(n)]


def test_seed_determinism():
    a = [ident(b) for b in make(pairs(40), seed=1)]
    assert a == [ident(b) for b in make(pairs(40), seed=1)]
    assert a != [ident(b) for b in make(pairs(40), seed=2)]
    assert len(a) == 10 and sorted(x for b in a for x in b) == sorted((i % 7 + 6, i // 7 + 2) for i in range(40))


def test_epochs_reshuffle_and_cover_all():
    batches = [ident(b) for b in make(pairs(8), num_epochs=2)]
    first, second = sum(batches[:2], []), sum(batches[2:], [])
    assert sorted(first) == sorted(second) and first != second


def test_host_rows_concatenate_to_the_single_process_batches():
    recs = pairs(43)
    single = [ident(b) for b in make(recs, seed=5)]
    hosts = [[ident(b) for b in make(recs, seed=5, shard_index=i, shard_count=2)] for i in range(2)]
    assert len(single) == 10 and all(len(h) == len(single) for h in hosts)
    for step, batch in enumerate(single):
        assert hosts[0][step] + hosts[1][step] == batch  # host 0 holds rows 0-1, host 1 rows 2-3
    with pytest.raises(ValueError, match="not divisible"):
        make(recs, shard_index=0, shard_count=3)
    with pytest.raises(ValueError, match="drop_remainder"):
        make(recs, shard_index=0, shard_count=2, drop_remainder=False)


@pytest.mark.parametrize("kind", ["preference", "sft_padded", "sft_packed"])
def test_iterator_state_resume(kind):
    def build():
        if kind == "preference":
            return make(pairs(60), seed=3, num_epochs=None)
        return make(convs(60), seed=3, num_epochs=None, pack=kind == "sft_packed", num_packing_bins=2)

    it = iter(build())
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))  # must survive serialisation
    expected = take(it, 3)
    fresh = iter(build())
    fresh.set_state(state)
    got = take(fresh, 3)
    for e, g in zip(expected, got):
        assert e.keys() == g.keys()
        for k in e:
            np.testing.assert_array_equal(e[k], g[k])


def test_sft_padded_and_packed_rows():
    padded = next(iter(make(convs(12))))
    assert padded["tokens"].shape == (4, 24) and set(np.unique(padded["segment_ids"])) <= {0, 1}
    packed = next(iter(make(convs(40), pack=True)))
    assert packed["tokens"].shape == (4, 24) and packed["segment_ids"].max() > 1


def test_pack_needs_sft():
    with pytest.raises(ValueError, match="packing is for SFT"):
        make(pairs(8), pack=True)


def test_tfds_array_record_round_trip(tmp_path):
    tfds_builders = pytest.importorskip("align_jax.data.tfds_builders")
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"q": "a b", "good": "c", "bad": "d"}\n{"q": "e", "good": "f g", "bad": "h"}\n{"q": "", "good": "x", "bad": "y"}\n'
    )
    builder = tfds_builders.build(
        "preference", {"train": path}, tmp_path / "tfds",
        fields={"prompt": "q", "chosen": "good", "rejected": "bad"}, on_error="skip",
    )
    assert list((tmp_path / "tfds").rglob("*.array_record*"))
    src = tfds_builders.RecordsSource(builder, "train")
    got = sorted((r.prompt[0]["content"], r.chosen, r.rejected) for r in (src[i] for i in range(len(src))))
    assert got == [("a b", "c", "d"), ("e", "f g", "h")]
    batch = next(iter(make(src, drop_remainder=False)))
    assert sorted(batch["prompt_length"].tolist()) == [6, 7]
