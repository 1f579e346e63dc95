"""One decoder configuration for every supported family (Llama, Qwen2, Gemma 3).

The architecture fields mirror Hugging Face `config.json` semantics so that import/export is a
renaming. Runtime choices (dtypes, remat, scan) live on the same frozen dataclass and are
changed with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax.numpy as jnp

FAMILIES = ("llama", "qwen2", "gemma3")
LayerType = Literal["full", "sliding"]
REMAT_POLICIES = ("none", "attention", "dots", "full")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. ``kind``: "llama3" (Llama 3.1 wavelength-dependent) or "linear"."""

    kind: Literal["llama3", "linear"]
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 8192
    tie_embeddings: bool = True
    qkv_bias: bool = False
    activation: Literal["silu", "gelu_tanh"] = "silu"
    # Gemma-style options.
    norm_plus_one: bool = False  # RMSNorm scales by (1 + w) with w stored zero-centred.
    embed_scale: bool = False  # Multiply embeddings by sqrt(hidden_size).
    qk_norm: bool = False
    sandwich_norm: bool = False  # Extra RMSNorm after attention and after the MLP.
    query_pre_attn_scalar: float | None = None  # Attention scale = this ** -0.5 when set.
    layer_types: tuple[LayerType, ...] | None = None  # None: every layer "full".
    sliding_window: int | None = None
    local_rope_theta: float | None = None  # RoPE base of "sliding" layers.
    local_rope_scaling: RopeScaling | None = None
    final_logit_softcap: float | None = None
    attn_logit_softcap: float | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Runtime.
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations and matmuls
    # Operand dtype of the weight matmuls ("" = dtype). "bfloat16" with dtype "float32" is mixed
    # precision on CPU: activations, norms, softmax and log-softmax in float32, every weight matmul
    # (and both of its backward matmuls) on bfloat16 operands accumulating in float32. XLA:CPU runs
    # those dots at up to ~1.8x its float32 rate, and bf16 activations cost more in converts than
    # they save there (issue #28; ``layers.rows_matmul``).
    matmul_dtype: str = ""
    # What the backward pass recomputes instead of storing. The attention probabilities are never
    # stored as [B, N, T, S]: FlashAttention's backward recomputes them, which on XLA:CPU is also
    # faster than storing them (issue #28); only soft-capped attention logits under "none" store
    # them. "none": nothing else; "attention": the same as "none" (soft caps recomputed too);
    # "dots": in each layer only matmul outputs are saved; "full": only each layer's input is saved.
    remat: str = "none"
    scan_layers: bool = True

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unsupported model family {self.family!r}; supported: {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers:
                raise ValueError(
                    f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers"
                )
            bad = sorted(set(self.layer_types) - {"full", "sliding"})
            if bad:
                raise ValueError(f"unknown layer types {bad}; valid: 'full', 'sliding'")
            if "sliding" in self.layer_types and not self.sliding_window:
                raise ValueError("sliding layers need a positive sliding_window")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"unknown remat policy {self.remat!r}; valid: {REMAT_POLICIES}")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"{name} must be float32, bfloat16 or float16")
        if self.matmul_dtype not in ("", "float32", "bfloat16", "float16"):
            raise ValueError(f"matmul_dtype must be '' (= dtype), float32, bfloat16 or float16, got {self.matmul_dtype!r}")

    @property
    def layer_is_sliding(self) -> tuple[bool, ...]:
        types = self.layer_types or ("full",) * self.num_layers
        return tuple(t == "sliding" for t in types)

    @property
    def jnp_param_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def jnp_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def jnp_matmul_dtype(self):
        return jnp.dtype(self.matmul_dtype or self.dtype)

    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        d, h, kv, hd, m = (
            self.hidden_size,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.intermediate_size,
        )
        attn = d * h * hd * 2 + d * kv * hd * 2
        if self.qkv_bias:
            attn += (h + 2 * kv) * hd
        norms = d * (4 if self.sandwich_norm else 2) + (2 * hd if self.qk_norm else 0)
        per_layer = attn + 3 * d * m + norms
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + embed + d

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
