"""Tokenization and truncation counters on hand-computed cases; packing vs padding."""

from __future__ import annotations

import grain
import numpy as np
import pytest

from align_jax.data import packing
from align_jax.data.records import PreferenceRecord, RankedRecord, SFTRecord, UnpairedRecord
from align_jax.data.tokenization import Tokenize, completion_text, truncate_lengths

from word_tokenizer import VOCAB, word_tokenizer  # noqa: E402


def ids(*words: str) -> list[int]:
    return [VOCAB[w] for w in words]


PROMPT_HEAD = ("<|im_start|>", "user")
PROMPT_TAIL = ("<|im_end|>", "<|im_start|>", "assistant")  # + generation prompt
USER = lambda t: ({"role": "user", "content": t},)  # noqa: E731


def test_completion_text_has_end_of_turn():
    assert completion_text("a b", "chatml") == "a b<|im_end|>"
    assert completion_text(" a b ", "gemma") == "a b<end_of_turn>"


def test_truncate_lengths_arithmetic():
    assert truncate_lengths(6, [3, 2], 10, 6) == (6, [3, 2])
    assert truncate_lengths(8, [5, 2], 10, 6) == (6, [4, 2])
    assert truncate_lengths(9, [3], 10, 6) == (7, [3])
    assert truncate_lengths(6, [7], 10, 6) == (6, [4])
    assert truncate_lengths(3, [12], 10, 6) == (3, [7])


CASES = [  # prompt words, chosen, rejected -> (prompt cut, completion cut)
    ("hello", "a b", "c"),  # 6 + 3 <= 10
    ("hello world hello", "a b c d", "c"),  # 8 + 5: prompt -> 6, chosen -> 4
    ("hello world hello", "a", "b"),  # 8 + 2 = 10
    ("hello world hello world", "a b", "c"),  # 9 + 3: prompt -> 7
    ("hello", "a b c d e f", "g"),  # 6 + 7: chosen -> 4
]


def test_preference_truncation_counters():
    tok = Tokenize(word_tokenizer(), template="chatml_plain", max_length=10, max_prompt_length=6)
    outs = [tok(PreferenceRecord(USER(p), c, r)) for p, c, r in CASES]
    assert tok.stats.as_dict() == {"examples": 5, "prompt_truncated": 2, "completion_truncated": 2, "dropped": 0}
    # Case 4: the prompt keeps its last 7 tokens.
    d = outs[3]
    prompt = ids("hello", "world", "hello", "world", *PROMPT_TAIL)
    assert d["prompt_length"] == 7 and list(d["prompt_ids"]) == prompt + [0] * 3
    assert list(d["chosen_tokens"]) == prompt + ids("a", "b", "<|im_end|>")
    assert list(d["chosen_loss_mask"]) == [0] * 7 + [1] * 3
    assert list(d["rejected_tokens"]) == prompt + ids("c", "<|im_end|>") + [0]
    assert list(d["rejected_loss_mask"]) == [0] * 7 + [1, 1, 0]
    assert list(d["rejected_positions"]) == list(range(9)) + [0]
    assert list(d["rejected_segment_ids"]) == [1] * 9 + [0]
    assert list(d["rejected_ids"]) == ids("c", "<|im_end|>") + [0] * 8
    # Case 2: prompt 8 -> 6, chosen 5 -> 4 (the end-of-turn token is cut).
    d = outs[1]
    assert list(d["chosen_tokens"]) == ids("hello", "world", "hello", *PROMPT_TAIL, "a", "b", "c", "d")
    assert d["chosen_length"] == 4 and d["rejected_length"] == 2
    # Case 1: untouched, with the full chat header.
    assert list(outs[0]["chosen_tokens"][:6]) == ids(*PROMPT_HEAD, "hello", *PROMPT_TAIL)


def test_drop_policy_counts():
    tok = Tokenize(word_tokenizer(), template="chatml_plain", max_length=10, max_prompt_length=6, policy="drop")
    outs = [tok(PreferenceRecord(USER(p), c, r)) for p, c, r in CASES]
    assert [o is None for o in outs] == [False, True, False, True, True]
    assert tok.stats.as_dict() == {"examples": 5, "prompt_truncated": 0, "completion_truncated": 0, "dropped": 3}


def test_unpaired_and_ranked_shapes():
    tok = Tokenize(word_tokenizer(), template="chatml_plain", max_length=12)
    u = tok(UnpairedRecord(USER("hello"), "a b", False))
    assert u["desirable"] == 0 and list(u["completion_loss_mask"]) == [0] * 6 + [1] * 3 + [0] * 3
    r = tok(RankedRecord(USER("hello"), ("a", "b c", "d e f"), (0.5, 2.0, 1.0)))
    assert r["completion_tokens"].shape == (3, 12)
    assert list(r["completion_length"]) == [2, 3, 4]
    assert np.allclose(r["scores"], [0.5, 2.0, 1.0])


def test_sft_mask_and_truncation():
    tok = Tokenize(word_tokenizer(), template="chatml_plain", max_length=8)
    conv = SFTRecord(USER("hello") + ({"role": "assistant", "content": "a b"},))
    full = Tokenize(word_tokenizer(), template="chatml_plain", max_length=20)(conv)
    assert list(full["tokens"]) == ids(*PROMPT_HEAD, "hello", *PROMPT_TAIL, "a", "b", "<|im_end|>")
    assert list(full["loss_mask"]) == [0] * 6 + [1, 1, 1]
    cut = tok(conv)
    assert list(cut["tokens"]) == list(full["tokens"][:8]) and tok.stats.completion_truncated == 1


def _sft_examples(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(2, 12))
        out.append({"tokens": rng.integers(4, 17, size=k).astype(np.int32),
                    "loss_mask": (np.arange(k) >= k // 2).astype(np.int32)})
    return out


def _key(ex):
    return (tuple(ex["tokens"].tolist()), tuple(ex["loss_mask"].tolist()), tuple(ex["positions"].tolist()))


def test_packing_equals_padding():
    examples = _sft_examples(25)
    padded = [packing.pad(ex, 16) for ex in examples]
    for ex, row in zip(examples, padded):
        n = len(ex["tokens"])
        assert list(row["positions"][:n]) == list(range(n)) and row["segment_ids"][n:].sum() == 0
    packed = list(packing.pack(grain.MapDataset.source(examples).to_iter_dataset(), 16, num_packing_bins=3))
    assert len(packed) < len(examples) and all(r["tokens"].shape == (16,) for r in packed)
    assert max(r["segment_ids"].max() for r in packed) > 1
    from_packed = sorted(_key(e) for r in packed for e in packing.unpack(r))
    from_padded = sorted(_key(e) for r in padded for e in packing.unpack(r))
    expected = sorted((tuple(e["tokens"].tolist()), tuple(e["loss_mask"].tolist()), tuple(range(len(e["tokens"])))) for e in examples)
    assert from_packed == from_padded == expected


def test_pad_rejects_long_example():
    with pytest.raises(ValueError, match="does not fit"):
        packing.pad({"tokens": np.ones(5), "loss_mask": np.ones(5)}, 4)
