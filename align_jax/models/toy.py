"""A tiny character-level model made on demand: the model of ``configs/grpo_toy.py`` and of fast tests.

``toy-chars`` is a randomly initialised 2-layer Llama (hidden 64) over a character vocabulary
(ChatML markers, newline and printable ASCII, one token per character), so that a sampled
completion is a string of characters and a reward on characters starts from a non-zero chance.
It is written once as a Hugging Face folder (``materialize``) and loaded like any other folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SPECIAL = ("<pad>", "<|im_start|>", "<|im_end|>")
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
VERSION = "v1"


def char_tokenizer():
    """One token per character; ChatML markers as special tokens (eos = ``<|im_end|>``)."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers

    from align_jax.models.tokenizer import Tokenizer

    vocab = {t: i for i, t in enumerate(SPECIAL + ("<unk>",) + tuple(CHARS))}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL))
    return Tokenizer(backend, bos_token=None, eos_token="<|im_end|>", pad_token="<pad>")


def toy_config(vocab_size: int, eos_id: int):
    from align_jax.models.config import ModelConfig

    return ModelConfig(family="llama", vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=16, eos_token_id=eos_id, bos_token_id=None,
                       max_position_embeddings=512, tie_embeddings=True)


def materialize(folder: str | os.PathLike | None = None, *, seed: int = 0) -> Path:
    """Writes (once) and returns the toy model's Hugging Face folder (default: under the temp dir)."""
    from align_jax.models.chat import jinja_template
    from align_jax.models.decoder import init_decoder
    from align_jax.models.safetensors_io import save_hf_dir

    folder = Path(folder or Path(tempfile.gettempdir()) / f"align_jax_toy_chars_{VERSION}_seed{seed}")
    if (folder / "config.json").exists():
        return folder
    tok = char_tokenizer()
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
    save_hf_dir(init_decoder(toy_config(tok.vocab_size, tok.eos_id), seed=seed), tmp)
    tok.save_pretrained(tmp, chat_template=jinja_template("chatml_plain"))
    try:
        tmp.rename(folder)  # atomic: a concurrent writer's finished folder wins
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
