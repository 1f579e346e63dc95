"""Tiny random Hugging Face (PyTorch) models of each family, the reference for parity tests."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from align_jax.models import hf_layout

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)


def tiny_hf_config(family: str) -> transformers.PretrainedConfig:
    if family == "llama":
        return transformers.LlamaConfig(**TINY, tie_word_embeddings=False, rope_theta=10_000.0,
                                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    if family == "llama_tied":
        return transformers.LlamaConfig(**TINY, tie_word_embeddings=True, rope_theta=100_000.0)
    if family == "qwen2":
        return transformers.Qwen2Config(**TINY, tie_word_embeddings=False, rope_theta=1_000_000.0)
    if family == "gemma3":
        return transformers.Gemma3TextConfig(**{**TINY, "num_hidden_layers": 4}, sliding_window=5,
                                             layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
                                             query_pre_attn_scalar=16, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0)
    raise ValueError(family)


def tiny_hf_model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = tiny_hf_config(family)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    with torch.no_grad():  # non-trivial norms and biases so that their conventions are tested
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_state_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def hf_logits(model, tokens: np.ndarray, attention_mask: np.ndarray | None = None,
              position_ids: np.ndarray | None = None) -> np.ndarray:
    kwargs = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.tensor(attention_mask)
    if position_ids is not None:
        kwargs["position_ids"] = torch.tensor(position_ids)
    with torch.no_grad():
        return model(torch.tensor(tokens), **kwargs).logits.float().numpy()


def our_config(model) -> "hf_layout.ModelConfig":
    return hf_layout.config_from_hf(model.config.to_dict())
