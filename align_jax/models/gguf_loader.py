"""Load GGUF checkpoints (llama.cpp format): dequantize with `gguf`, convert to HF layout.

Conventions undone here, as `transformers` does when it opens a GGUF:
- Llama-architecture Q/K rows are permuted for llama.cpp's interleaved RoPE: reverse it.
- Gemma norm weights are stored with the +1 already added: subtract it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from align_jax.models.config import ModelConfig
from align_jax.models.hf_layout import CheckpointError, config_from_hf

# GGUF metadata key (after the "<arch>." prefix) -> HF config.json key.
_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.key_length": "head_dim",
    "attention.sliding_window": "sliding_window",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}
_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3_text"}

# GGUF tensor name (after "blk.{i}.") -> HF name (after "model.layers.{i}.").
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
}
_LAYER_NAMES_BY_FAMILY = {
    "llama": {"ffn_norm": "post_attention_layernorm"},
    "qwen2": {"ffn_norm": "post_attention_layernorm"},
    "gemma3": {
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
}
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _open(path: str | os.PathLike):
    import gguf

    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: GGUF file not found")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # gguf raises assorted errors on truncated or foreign files
        raise CheckpointError(f"{path}: not a readable GGUF file (truncated or corrupt?): {e}") from e


def gguf_metadata(reader) -> dict[str, Any]:
    """Every metadata field decoded to Python values (tokenizer arrays included)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def hf_config_from_gguf(meta: Mapping[str, Any], source: str) -> dict[str, Any]:
    arch = meta.get("general.architecture")
    if arch not in _MODEL_TYPES:
        raise CheckpointError(
            f"{source}: unsupported GGUF architecture {arch!r}; supported: {sorted(_MODEL_TYPES)}"
        )
    hf: dict[str, Any] = {"model_type": _MODEL_TYPES[arch]}
    for key, hf_key in _CONFIG_KEYS.items():
        if f"{arch}.{key}" in meta:
            hf[hf_key] = meta[f"{arch}.{key}"]
    if "vocab_size" not in hf:
        hf["vocab_size"] = len(meta["tokenizer.ggml.tokens"])
    for ours, theirs in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{theirs}" in meta:
            hf[ours] = int(meta[f"tokenizer.ggml.{theirs}"])
    return hf


def _reverse_rope_permutation(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's Q/K row permutation (interleaved -> rotate-half RoPE layout)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def _hf_name(gguf_name: str, family: str) -> str | None:
    base, _, kind = gguf_name.rpartition(".")
    if base.startswith("blk."):
        _, index, short = base.split(".", 2)
        names = {**_LAYER_NAMES, **_LAYER_NAMES_BY_FAMILY[family]}
        if short not in names:
            return None
        return f"model.layers.{index}.{names[short]}.{kind}"
    return f"{_GLOBAL_NAMES[base]}.{kind}" if base in _GLOBAL_NAMES else None


def load_gguf(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, Any]]:
    """Returns (config, HF-named float32 tensors, GGUF metadata) for a GGUF file."""
    import gguf

    reader = _open(path)
    source = os.fspath(path)
    meta = gguf_metadata(reader)
    cfg = config_from_hf(hf_config_from_gguf(meta, source), source)
    arch = meta["general.architecture"]
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name = _hf_name(t.name, cfg.family)
        if name is None:
            continue
        try:
            w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        except Exception as e:
            raise CheckpointError(f"{source}: cannot dequantize tensor {t.name!r} ({t.tensor_type.name}): {e}") from e
        w = w.reshape([int(d) for d in reversed(t.shape)])
        if arch == "llama" and name.endswith("q_proj.weight"):
            w = _reverse_rope_permutation(w, cfg.num_heads)
        elif arch == "llama" and name.endswith("k_proj.weight"):
            w = _reverse_rope_permutation(w, cfg.num_kv_heads)
        if cfg.norm_plus_one and name.endswith("norm.weight"):
            w = w - 1.0
        tensors[name] = w
    # A GGUF without an `output` tensor ties the unembedding to the embedding table.
    cfg = cfg.replace(tie_embeddings="lm_head.weight" not in tensors)
    return cfg, tensors, meta
