"""A tiny word-level tokenizer for data tests: one id per whitespace-separated word, ChatML
markers as special tokens."""

import tokenizers
from tokenizers import models, pre_tokenizers

from align_jax.models.tokenizer import Tokenizer

SPECIAL = ["<pad>", "<|im_start|>", "<|im_end|>"]
WORDS = "user assistant system hello world a b c d e f g h".split()
VOCAB = {t: i for i, t in enumerate(SPECIAL + ["<unk>"] + WORDS)}


def word_tokenizer() -> Tokenizer:
    backend = tokenizers.Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(SPECIAL)
    return Tokenizer(backend, bos_token=None, eos_token="<|im_end|>", pad_token="<pad>")
