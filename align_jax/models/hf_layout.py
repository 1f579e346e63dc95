"""Hugging Face <-> align_jax parameter layout and config translation.

One table (`_tensor_table`) names every tensor in both layouts; import and export are the two
directions of the same table, so they cannot drift apart. HF linear weights are [out, in]; ours
are [in, *out] with heads split out (e.g. q: [embed, heads, head_dim]).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import nnx

from align_jax.models.config import ModelConfig, RopeScaling
from align_jax.models.decoder import Decoder, abstract_decoder


class CheckpointError(ValueError):
    """A weights file or config that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class _Tensor:
    path: tuple[str, ...]  # our parameter path
    hf_name: str  # HF name; "{i}" is the layer index for stacked block parameters
    transpose: str | None = None  # None (copy), "in" ([in, *out] <- [out, in]) or "out" ([*in, out])

    @property
    def per_layer(self) -> bool:
        return self.path[0] == "blocks"


def _tensor_table(cfg: ModelConfig) -> list[_Tensor]:
    L = "model.layers.{i}."
    t = [
        _Tensor(("embed",), "model.embed_tokens.weight"),
        _Tensor(("final_norm", "weight"), "model.norm.weight"),
        _Tensor(("blocks", "attn_norm", "weight"), L + "input_layernorm.weight"),
        _Tensor(("blocks", "attn", "q"), L + "self_attn.q_proj.weight", "in"),
        _Tensor(("blocks", "attn", "k"), L + "self_attn.k_proj.weight", "in"),
        _Tensor(("blocks", "attn", "v"), L + "self_attn.v_proj.weight", "in"),
        _Tensor(("blocks", "attn", "o"), L + "self_attn.o_proj.weight", "out"),
        _Tensor(("blocks", "mlp", "gate"), L + "mlp.gate_proj.weight", "in"),
        _Tensor(("blocks", "mlp", "up"), L + "mlp.up_proj.weight", "in"),
        _Tensor(("blocks", "mlp", "down"), L + "mlp.down_proj.weight", "out"),
    ]
    if cfg.sandwich_norm:
        t += [
            _Tensor(("blocks", "attn_post_norm", "weight"), L + "post_attention_layernorm.weight"),
            _Tensor(("blocks", "mlp_norm", "weight"), L + "pre_feedforward_layernorm.weight"),
            _Tensor(("blocks", "mlp_post_norm", "weight"), L + "post_feedforward_layernorm.weight"),
        ]
    else:
        t.append(_Tensor(("blocks", "mlp_norm", "weight"), L + "post_attention_layernorm.weight"))
    if cfg.qkv_bias:
        t += [
            _Tensor(("blocks", "attn", f"{x}_bias"), L + f"self_attn.{x}_proj.bias") for x in "qkv"
        ]
    if cfg.qk_norm:
        t += [
            _Tensor(("blocks", "attn", f"{x}_norm", "weight"), L + f"self_attn.{x}_norm.weight")
            for x in "qk"
        ]
    if not cfg.tie_embeddings:
        t.append(_Tensor(("lm_head",), "lm_head.weight", "in"))
    return t


def hf_tensor_names(cfg: ModelConfig) -> list[str]:
    """Every HF tensor name the config needs, layers expanded."""
    names = []
    for spec in _tensor_table(cfg):
        layers = range(cfg.num_layers) if spec.per_layer else [None]
        names += [spec.hf_name.format(i=i) for i in layers]
    return names


def _to_ours(w: np.ndarray, spec: _Tensor, shape: tuple[int, ...]) -> np.ndarray:
    if spec.transpose is not None:
        w = w.T
    return w.reshape(shape)


def _to_hf(p: np.ndarray, spec: _Tensor) -> np.ndarray:
    if spec.transpose == "in":  # [in, *out] -> [out, in]
        return p.reshape(p.shape[0], -1).T
    if spec.transpose == "out":  # [*in, out] -> [out, in]
        return p.reshape(-1, p.shape[-1]).T
    return p.reshape(-1) if p.ndim > 1 and spec.path[-1].endswith("_bias") else p


def decoder_from_hf_tensors(
    cfg: ModelConfig,
    get_tensor: Callable[[str], np.ndarray],
    source: str,
    shardings: Mapping[tuple[str, ...], jax.sharding.Sharding] | None = None,
) -> Decoder:
    """Builds a Decoder from HF-named tensors; ``get_tensor(name)`` raises KeyError if absent.

    Every tensor is shape-checked against the config; errors name ``source`` and the tensor.
    ``shardings`` (our path -> sharding) places each parameter as it is loaded.
    """
    graphdef, state = nnx.split(abstract_decoder(cfg))
    abstract = dict(nnx.to_flat_state(state))
    loaded = {}
    for spec in _tensor_table(cfg):
        var = abstract[spec.path]
        shape = tuple(var.get_value().shape)
        layer_shape = shape[1:] if spec.per_layer else shape
        arrays = []
        for i in range(cfg.num_layers) if spec.per_layer else [None]:
            name = spec.hf_name.format(i=i)
            try:
                w = np.asarray(get_tensor(name))
            except KeyError:
                raise CheckpointError(f"{source}: tensor {name!r} is missing (needed by this {cfg.family} config)") from None
            if int(np.prod(w.shape)) != int(np.prod(layer_shape)):
                raise CheckpointError(
                    f"{source}: tensor {name!r} has shape {tuple(w.shape)}, but the config "
                    f"(hidden_size={cfg.hidden_size}, heads={cfg.num_heads}, kv_heads={cfg.num_kv_heads}, "
                    f"head_dim={cfg.head_dim}, intermediate_size={cfg.intermediate_size}, "
                    f"vocab_size={cfg.vocab_size}) expects {_expected_hf_shape(layer_shape, spec)}"
                )
            arrays.append(_to_ours(w, spec, layer_shape))
        value = np.stack(arrays) if spec.per_layer else arrays[0]
        value = value.astype(cfg.jnp_param_dtype)
        if shardings is not None:  # per-shard callback: also valid when the mesh spans processes
            value = jax.make_array_from_callback(value.shape, shardings[spec.path], lambda i, v=value: v[i])
        else:
            value = jax.numpy.asarray(value)
        loaded[spec.path] = var.replace(value=value)
    missing = sorted(set(abstract) - set(loaded))
    if missing:
        raise CheckpointError(f"{source}: no tensor mapped to parameters {missing}")
    return nnx.merge(graphdef, nnx.from_flat_state(loaded))


def _expected_hf_shape(layer_shape: tuple[int, ...], spec: _Tensor) -> tuple[int, ...]:
    if spec.transpose == "in":
        return (int(np.prod(layer_shape[1:])), layer_shape[0])
    if spec.transpose == "out":
        return (layer_shape[-1], int(np.prod(layer_shape[:-1])))
    return (int(np.prod(layer_shape)),) if spec.path[-1].endswith("_bias") else layer_shape


def decoder_to_hf_tensors(model: Decoder) -> dict[str, np.ndarray]:
    """All parameters as HF-named numpy arrays ([out, in] linear weights)."""
    cfg = model.cfg
    flat = {path: np.asarray(jax.device_get(var.get_value())) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    out = {}
    for spec in _tensor_table(cfg):
        value = flat[spec.path]
        if spec.per_layer:
            for i in range(cfg.num_layers):
                out[spec.hf_name.format(i=i)] = np.ascontiguousarray(_to_hf(value[i], spec))
        else:
            out[spec.hf_name] = np.ascontiguousarray(_to_hf(value, spec))
    return out


# -- config.json ----------------------------------------------------------------------------
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}
_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3", "gemma3": "gemma3"}


def _rope_scaling_from_hf(params: Mapping[str, Any] | None) -> RopeScaling | None:
    if not params:
        return None
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return None
    if kind == "llama3":
        return RopeScaling(
            "llama3",
            float(params["factor"]),
            float(params.get("low_freq_factor", 1.0)),
            float(params.get("high_freq_factor", 4.0)),
            int(params.get("original_max_position_embeddings", 8192)),
        )
    if kind == "linear":
        return RopeScaling("linear", float(params["factor"]))
    raise CheckpointError(f"unsupported rope scaling type {kind!r}; supported: default, llama3, linear")


def _rope_from_hf(hf: Mapping[str, Any], layer_type: str | None, default_theta: float) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from either the transformers>=5 `rope_parameters` or legacy keys."""
    params = hf.get("rope_parameters")
    if params and layer_type is not None and layer_type in params:
        params = params[layer_type]
    if params and "rope_theta" in params:
        return float(params["rope_theta"]), _rope_scaling_from_hf(params)
    legacy_theta = hf.get("rope_local_base_freq" if layer_type == "sliding_attention" else "rope_theta")
    theta = float(legacy_theta) if legacy_theta is not None else default_theta
    scaling = None if layer_type == "sliding_attention" else _rope_scaling_from_hf(hf.get("rope_scaling"))
    return theta, scaling


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """Translates a HF config.json dict (Llama, Mistral-style Llama, Qwen2, Gemma 3)."""
    hf = dict(hf.get("text_config") or hf) if hf.get("model_type") == "gemma3" else dict(hf)
    model_type = hf.get("model_type")
    family = _MODEL_TYPES.get(model_type)
    if family is None:
        raise CheckpointError(
            f"{source}: unsupported architecture model_type={model_type!r} "
            f"(architectures={hf.get('architectures')}); supported: {sorted(_MODEL_TYPES)}"
        )
    try:
        heads = int(hf["num_attention_heads"])
        common = dict(
            family=family,
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6 if family == "gemma3" else 1e-5)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", family == "gemma3")),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=_first(hf.get("eos_token_id")),
            pad_token_id=hf.get("pad_token_id"),
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: required field {e.args[0]!r} is missing") from None
    if family == "llama" and hf.get("attention_bias"):
        raise CheckpointError(f"{source}: attention_bias=True (biases on q/k/v/o) is not supported for llama")
    if family in ("llama", "qwen2"):
        theta, scaling = _rope_from_hf(hf, None, 10_000.0 if family == "llama" else 1_000_000.0)
        return ModelConfig(
            **common,
            rope_theta=theta,
            rope_scaling=scaling,
            qkv_bias=family == "qwen2",
        )
    # Gemma 3.
    layer_types = hf.get("layer_types")
    if layer_types is None:
        pattern = int(hf.get("sliding_window_pattern", 6))
        layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(common["num_layers"])]
    theta, scaling = _rope_from_hf(hf, "full_attention", 1_000_000.0)
    local_theta, local_scaling = _rope_from_hf(hf, "sliding_attention", 10_000.0)
    return ModelConfig(
        **common,
        activation="gelu_tanh",
        norm_plus_one=True,
        embed_scale=True,
        qk_norm=True,
        sandwich_norm=True,
        rope_theta=theta,
        rope_scaling=scaling,
        local_rope_theta=local_theta,
        local_rope_scaling=local_scaling,
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
        layer_types=tuple("sliding" if t == "sliding_attention" else "full" for t in layer_types),
        sliding_window=int(hf.get("sliding_window") or 4096),
        final_logit_softcap=hf.get("final_logit_softcapping"),
        attn_logit_softcap=hf.get("attn_logit_softcapping"),
    )


def _int_if_whole(x):
    return int(x) if x is not None and float(x).is_integer() else x


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def _rope_to_hf(theta: float, scaling: RopeScaling | None) -> dict[str, Any]:
    out: dict[str, Any] = {"rope_type": "default", "rope_theta": theta}
    if scaling is not None:
        out["rope_type"] = scaling.kind
        out["factor"] = scaling.factor
        if scaling.kind == "llama3":
            out.update(
                low_freq_factor=scaling.low_freq_factor,
                high_freq_factor=scaling.high_freq_factor,
                original_max_position_embeddings=scaling.original_max_position_embeddings,
            )
    return out


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """A config.json dict that `transformers.AutoConfig` reads back to the same architecture."""
    hf: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[cfg.family]],
        "model_type": "gemma3_text" if cfg.family == "gemma3" else cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": cfg.param_dtype,
    }
    if cfg.family == "gemma3":
        hf.update(
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar),
            sliding_window=cfg.sliding_window,
            layer_types=["sliding_attention" if s else "full_attention" for s in cfg.layer_is_sliding],
            final_logit_softcapping=cfg.final_logit_softcap,
            attn_logit_softcapping=cfg.attn_logit_softcap,
            rope_parameters={
                "full_attention": _rope_to_hf(cfg.rope_theta, cfg.rope_scaling),
                "sliding_attention": _rope_to_hf(cfg.local_rope_theta or cfg.rope_theta, cfg.local_rope_scaling),
            },
        )
    else:
        hf.update(
            hidden_act="silu",
            attention_bias=cfg.qkv_bias,
            rope_parameters=_rope_to_hf(cfg.rope_theta, cfg.rope_scaling),
        )
    return hf
