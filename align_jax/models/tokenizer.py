"""One tokenizer interface over HF ``tokenizers`` and ``sentencepiece`` backends.

Constructors:

* :meth:`Tokenizer.from_gguf` builds the tokenizer a GGUF file describes, giving the same
  ids as ``transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)``:
  byte-level BPE (``tokenizer.ggml.model == "gpt2"``, e.g. SmolLM2) from the vocabulary and
  merges, split the way ``tokenizer.ggml.pre`` says; SentencePiece-style BPE
  (``"llama"``, e.g. Gemma 3) with byte fallback and merges recovered from the vocabulary
  order. Control tokens become special tokens, user-defined ones plain added tokens.
* :meth:`Tokenizer.from_pretrained_dir` opens a Hugging Face folder (``tokenizer.json`` or
  ``tokenizer.model`` plus ``tokenizer_config.json`` / ``special_tokens_map.json`` /
  ``generation_config.json``).
* :meth:`Tokenizer.save_pretrained` writes ``tokenizer.json`` + ``tokenizer_config.json``
  (with the chat template) so that transformers opens the export with the same ids.

``encode`` never adds BOS/EOS unless ``add_special_tokens=True``; special-token strings in
the text (``"<|im_end|>"``) are always recognised as their single id, as in transformers.

Known difference from transformers: for ``tokenizer.ggml.pre == "smollm"`` (and the other
StarCoder-style vocabularies) transformers 5.23 forgets to split digits one by one, which
llama.cpp and SmolLM2's own ``tokenizer.json`` do (``Digits(individual_digits=True)``
before ``ByteLevel``). We follow llama.cpp/SmolLM2; the two only differ on whitespace right
before a digit (``"x  1"``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors

from align_jax.models import gguf_file

# GGUF token types (llama.cpp ``llama_token_type``).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Tokens that end an assistant turn in the chat formats we know; all that exist in a
# vocabulary join ``eos_ids`` so sampling stops at them.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", "<|end|>")

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(split: str | None = None, digits: bool = False) -> pre_tokenizers.PreTokenizer:
    steps: list[pre_tokenizers.PreTokenizer] = []
    if digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    if split is not None:
        steps.append(pre_tokenizers.Split(Regex(split), behavior="isolated"))
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    else:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    return steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)


# ``tokenizer.ggml.pre`` -> pre-tokenizer for byte-level BPE (llama.cpp ``llama-vocab.cpp``).
_STARCODER = lambda: _byte_level(digits=True)  # noqa: E731  "\p{N}" then the GPT-2 regex
_GPT2 = lambda: _byte_level()  # noqa: E731
_LLAMA3 = lambda: _byte_level(_LLAMA3_SPLIT)  # noqa: E731
_QWEN2 = lambda: _byte_level(_QWEN2_SPLIT)  # noqa: E731
BYTE_LEVEL_PRE_TOKENIZERS = {
    "default": _GPT2,
    "gpt2": _GPT2,
    "gpt-2": _GPT2,
    "mpt": _GPT2,
    "olmo": _GPT2,
    "smollm": _STARCODER,
    "starcoder": _STARCODER,
    "refact": _STARCODER,
    "command-r": _STARCODER,
    "codeshell": _STARCODER,
    "llama3": _LLAMA3,
    "llama-v3": _LLAMA3,
    "llama-bpe": _LLAMA3,
    "smaug-bpe": _LLAMA3,
    "qwen2": _QWEN2,
    "deepseek-r1-qwen": _QWEN2,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _merges_from_vocab_order(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a vocabulary: every split of a token into two tokens, best first.

    Same order as transformers' ``generate_merges`` (score descending, then longer left and
    right pieces first, ties in vocabulary-id order) so the ids match it exactly.
    """
    merges = []
    for merge, score in scores.items():
        local = []
        for i in range(1, len(merge)):
            left, right = merge[:i], merge[i:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(m[0], m[1]) for m in merges]


class Tokenizer:
    """Text <-> ids for one model, whatever the backend.

    Attributes: ``vocab_size``, ``bos_id``, ``eos_id``, ``pad_id``, ``unk_id`` (``None``
    where the model has none), ``eos_ids`` (every id that ends generation, e.g. ``<eos>``
    and ``<end_of_turn>``), ``chat_template`` (jinja string from the checkpoint or ``None``),
    ``add_bos_token`` / ``add_eos_token`` (what ``add_special_tokens=True`` adds).
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer | Any,
        *,
        bos_token: str | None,
        eos_token: str | None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        chat_template: str | None = None,
        extra_eos_ids: Iterable[int] = (),
        set_post_processor: bool = True,
    ):
        self._backend = backend
        self._sp = not isinstance(backend, tokenizers.Tokenizer)
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token, self.unk_token = pad_token, unk_token
        self.add_bos_token, self.add_eos_token = bool(add_bos_token), bool(add_eos_token)
        self.chat_template = chat_template
        self.bos_id = self._id_or_none(bos_token)
        self.eos_id = self._id_or_none(eos_token)
        self.pad_id = self._id_or_none(pad_token)
        self.unk_id = self._id_or_none(unk_token)
        eos = {i for i in extra_eos_ids}
        eos |= {self._id_or_none(t) for t in END_OF_TURN_TOKENS} | {self.eos_id}
        self.eos_ids: frozenset[int] = frozenset(i for i in eos if i is not None)
        if not self._sp and set_post_processor:
            self._set_post_processor()
        if self._sp:
            specials = sorted(self._sp_special_tokens(), key=len, reverse=True)
            self._sp_split = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None

    # ------------------------------------------------------------------ basic interface

    @property
    def vocab_size(self) -> int:
        if self._sp:
            return self._backend.get_piece_size()
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        """The id of a token string (as spelled in the vocabulary), or ``None``."""
        if self._sp:
            i = self._backend.piece_to_id(token)
            return None if i == self._backend.unk_id() and token != self._backend.id_to_piece(i) else i
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= int(token_id) < self.vocab_size:
            raise IndexError(f"token id {token_id} out of range [0, {self.vocab_size})")
        if self._sp:
            return self._backend.id_to_piece(int(token_id))
        return self._backend.id_to_token(int(token_id))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Ids of ``text``. ``add_special_tokens`` adds BOS/EOS as the model's config says."""
        if self._sp:
            ids = [i for i, _ in self._sp_encode_offsets(text)]
            return self._sp_wrap(ids) if add_special_tokens else ids
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and each token's ``(start, end)`` character span in ``text`` (no BOS/EOS)."""
        if self._sp:
            pairs = self._sp_encode_offsets(text)
            return [i for i, _ in pairs], [span for _, span in pairs]
        enc = self._backend.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if self._sp:
            return self._sp_decode(ids, skip_special_tokens)
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        kind = "sentencepiece" if self._sp else "tokenizers"
        return (
            f"Tokenizer({kind}, vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
            f"eos={self.eos_token!r}, eos_ids={sorted(self.eos_ids)})"
        )

    def _id_or_none(self, token: str | None) -> int | None:
        return None if token is None else self.token_to_id(token)

    def _set_post_processor(self) -> None:
        single, special = "$A", []
        if self.add_bos_token and self.bos_id is not None:
            single = f"{self.bos_token} {single}"
            special.append((self.bos_token, self.bos_id))
        if self.add_eos_token and self.eos_id is not None:
            single = f"{single} {self.eos_token}"
            special.append((self.eos_token, self.eos_id))
        self._backend.post_processor = processors.TemplateProcessing(
            single=single, pair=f"{single} {single.replace('$A', '$B')}:1", special_tokens=special
        )

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_gguf(cls, path: str | os.PathLike, *, pre_tokenizer: str | None = None) -> "Tokenizer":
        """The tokenizer stored in a GGUF file's metadata.

        ``pre_tokenizer`` overrides ``tokenizer.ggml.pre`` for byte-level vocabularies (e.g.
        ``"gpt2"`` reproduces transformers 5.23 on SmolLM2, which skips digit splitting).
        """
        md = gguf_file.read_metadata(path)
        if pre_tokenizer is not None:
            md["tokenizer.ggml.pre"] = pre_tokenizer
        kind = md.get("tokenizer.ggml.model")
        tokens = md.get("tokenizer.ggml.tokens")
        if kind is None or tokens is None:
            raise ValueError(f"{path} holds no tokenizer (no tokenizer.ggml.model / tokens).")
        types = md.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
        if kind == "gpt2":
            backend, added = _byte_level_from_gguf(md, path)
        elif kind == "llama":
            backend, added = _sentencepiece_bpe_from_gguf(md)
        else:
            raise ValueError(
                f"{path}: tokenizer.ggml.model={kind!r} is not supported; supported: 'gpt2', 'llama'."
            )
        specials = [
            AddedToken(t, normalized=False, special=True)
            for t, ty in zip(tokens, types)
            if ty == CONTROL and t in added
        ]
        backend.add_special_tokens(specials)
        vocab = backend.get_vocab(with_added_tokens=False)
        user = [
            AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types)
            if ty == USER_DEFINED and t in vocab
        ]
        backend.add_tokens(user)

        def token(key: str) -> str | None:
            i = md.get(f"tokenizer.ggml.{key}")
            return tokens[i] if i is not None and 0 <= i < len(tokens) else None

        # llama.cpp adds BOS to sentencepiece vocabularies unless the file says otherwise.
        add_bos = md.get("tokenizer.ggml.add_bos_token", kind == "llama")
        return cls(
            backend,
            bos_token=token("bos_token_id"),
            eos_token=token("eos_token_id"),
            pad_token=token("padding_token_id"),
            unk_token=token("unknown_token_id"),
            add_bos_token=add_bos,
            add_eos_token=md.get("tokenizer.ggml.add_eos_token", False),
            chat_template=md.get("tokenizer.chat_template"),
        )

    @classmethod
    def from_pretrained_dir(cls, path: str | os.PathLike) -> "Tokenizer":
        """A Hugging Face tokenizer folder: ``tokenizer.json`` or ``tokenizer.model``."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer folder not found: {path}")
        config = _read_json(path / "tokenizer_config.json")
        special_map = _read_json(path / "special_tokens_map.json")
        gen_config = _read_json(path / "generation_config.json")

        def special(name: str) -> str | None:
            value = config.get(name, special_map.get(name))
            if isinstance(value, dict):  # serialized AddedToken
                value = value.get("content")
            return value

        chat_template = config.get("chat_template")
        if chat_template is None and (path / "chat_template.jinja").is_file():
            chat_template = (path / "chat_template.jinja").read_text()
        if isinstance(chat_template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in chat_template}
            chat_template = named.get("default", next(iter(named.values()), None))

        if (path / "tokenizer.json").is_file():
            backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
            set_pp = "add_bos_token" in config or "add_eos_token" in config
            add_bos = config.get("add_bos_token", False)
        elif (path / "tokenizer.model").is_file():
            import sentencepiece as spm

            backend = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
            set_pp, add_bos = False, config.get("add_bos_token", True)
        else:
            raise FileNotFoundError(f"{path} has neither tokenizer.json nor tokenizer.model.")
        extra_eos = gen_config.get("eos_token_id", [])
        extra_eos = [extra_eos] if isinstance(extra_eos, int) else list(extra_eos or [])
        return cls(
            backend,
            bos_token=special("bos_token"),
            eos_token=special("eos_token"),
            pad_token=special("pad_token"),
            unk_token=special("unk_token"),
            add_bos_token=add_bos,
            add_eos_token=config.get("add_eos_token", False),
            chat_template=chat_template,
            extra_eos_ids=extra_eos,
            set_post_processor=set_pp,
        )

    def save_pretrained(self, path: str | os.PathLike, *, chat_template: str | None = None) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``path``.

        ``chat_template`` overrides the tokenizer's own; when neither exists, the jinja
        template of the detected chat format (``align_jax.models.chat``) is written.
        """
        if self._sp:
            raise NotImplementedError(
                "save_pretrained needs a `tokenizers` backend; this one is sentencepiece "
                "(copy its tokenizer.model instead)."
            )
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._backend.save(str(path / "tokenizer.json"))
        template = chat_template or self.chat_template
        if template is None:
            from align_jax.models import chat

            try:
                template = chat.jinja_template(chat.detect_template(self))
            except ValueError:
                template = None
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
            "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000_000,
        }
        if template is not None:
            config["chat_template"] = template
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        return path

    # ------------------------------------------------------------------ sentencepiece backend

    def _sp_special_tokens(self) -> list[str]:
        sp = self._backend
        return [
            sp.id_to_piece(i)
            for i in range(sp.get_piece_size())
            if sp.is_control(i) and sp.id_to_piece(i) and i != sp.unk_id()
        ]

    def _sp_encode_offsets(self, text: str) -> list[tuple[int, tuple[int, int]]]:
        out: list[tuple[int, tuple[int, int]]] = []
        pos = 0
        parts = self._sp_split.split(text) if self._sp_split is not None else [text]
        for k, part in enumerate(parts):
            if not part:
                continue
            if k % 2 == 1:  # a special token string
                out.append((self._backend.piece_to_id(part), (pos, pos + len(part))))
            else:
                proto = self._backend.encode_as_proto(part)  # a SentencePieceText
                raw = part.encode("utf-8")
                for p in proto.pieces:  # begin/end are byte offsets into `part`
                    start = len(raw[: p.begin].decode("utf-8", errors="ignore"))
                    end = len(raw[: p.end].decode("utf-8", errors="ignore"))
                    out.append((p.id, (pos + start, pos + end)))
            pos += len(part)
        return out

    def _sp_wrap(self, ids: list[int]) -> list[int]:
        if self.add_bos_token and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if self.add_eos_token and self.eos_id is not None:
            ids = ids + [self.eos_id]
        return ids

    def _sp_decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        sp, out, run = self._backend, [], []
        for i in ids:
            if sp.is_control(i):
                if run:
                    out.append(sp.decode(run))
                    run = []
                if not skip_special_tokens:
                    out.append(sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            out.append(sp.decode(run))
        return "".join(out)


# ---------------------------------------------------------------------- GGUF builders


def _byte_level_from_gguf(md: dict[str, Any], path: Any) -> tuple[tokenizers.Tokenizer, set[str]]:
    """Byte-level BPE: vocabulary and merges as stored, pre-tokenizer from ``ggml.pre``."""
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab: dict[str, int] = {}
    for i, t in enumerate(md["tokenizer.ggml.tokens"]):
        key = t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8"))
        vocab[key] = i
    merges = [tuple(m.split(" ")) for m in md.get("tokenizer.ggml.merges", [])]
    pre = md.get("tokenizer.ggml.pre", "default")
    if pre not in BYTE_LEVEL_PRE_TOKENIZERS:
        raise ValueError(
            f"{path}: tokenizer.ggml.pre={pre!r} is not supported; supported: "
            f"{sorted(BYTE_LEVEL_PRE_TOKENIZERS)}."
        )
    backend = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    )
    backend.pre_tokenizer = BYTE_LEVEL_PRE_TOKENIZERS[pre]()
    backend.decoder = decoders.ByteLevel()
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel; skip it.
    added = {t for t in md["tokenizer.ggml.tokens"] if set(t) <= alphabet}
    return backend, added


def _sentencepiece_bpe_from_gguf(md: dict[str, Any]) -> tuple[tokenizers.Tokenizer, set[str]]:
    """SentencePiece BPE as a ``tokenizers`` BPE with byte fallback (Gemma, Llama 2 style).

    GGUF spells tokens made only of spaces with real spaces; the normalizer turns spaces
    into "▁", so those are respelled. The file has no merges: they are recovered from the
    vocabulary, ranked by the tokens' order in the file (the scores of Gemma's files do not
    follow merge order, but the order does).
    """
    tokens = [
        "▁" * len(t) if " " in t and not t.strip() else t for t in md["tokenizer.ggml.tokens"]
    ]
    vocab = {t: i for i, t in enumerate(tokens)}
    order = {t: -i for i, t in enumerate(tokens)}
    merges = _merges_from_vocab_order(vocab, order)
    unk_id = md.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None else None
    backend = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token=unk, byte_fallback=True)
    )
    prefix = md.get("tokenizer.ggml.add_space_prefix", False)
    backend.normalizer = (
        normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        if prefix
        else normalizers.Replace(" ", "▁")
    )
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if prefix else [])
    )
    return backend, set(tokens)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))
