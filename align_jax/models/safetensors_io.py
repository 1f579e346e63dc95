"""Hugging Face checkpoint folders: config.json + safetensors (single file or sharded with index).

`load_hf_dir` opens a user's Llama/Qwen2/Gemma3 folder; `save_hf_dir` writes a trained policy
back so that `transformers.AutoModelForCausalLM.from_pretrained(folder)` opens it unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import jax
import numpy as np
import safetensors
import safetensors.numpy

from align_jax.models.config import ModelConfig
from align_jax.models.decoder import Decoder
from align_jax.models.hf_layout import (
    CheckpointError,
    config_from_hf,
    config_to_hf,
    decoder_from_hf_tensors,
    decoder_to_hf_tensors,
)

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


def read_hf_config(folder: str | os.PathLike) -> ModelConfig:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise CheckpointError(f"{path}: config.json not found (is {folder} a Hugging Face model folder?)")
    try:
        hf = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON: {e}") from e
    return config_from_hf(hf, str(path))


class _TensorFiles:
    """Lazy name -> tensor lookup over the safetensors files of a folder."""

    def __init__(self, folder: Path):
        index = folder / _INDEX
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: malformed index ({e})") from e
            self.file_of = {name: folder / f for name, f in weight_map.items()}
        elif (folder / _SINGLE).exists():
            self.file_of = None
            self.single = folder / _SINGLE
        else:
            raise CheckpointError(f"{folder}: neither {_SINGLE} nor {_INDEX} found")
        self._handles: dict[Path, object] = {}

    def _handle(self, path: Path):
        if path not in self._handles:
            if not path.exists():
                raise CheckpointError(f"{path}: safetensors file listed in the index is missing")
            try:
                self._handles[path] = safetensors.safe_open(str(path), framework="numpy")
            except Exception as e:  # safetensors raises SafetensorError on truncated headers
                raise CheckpointError(f"{path}: unreadable safetensors file (truncated?): {e}") from e
        return self._handles[path]

    def __call__(self, name: str) -> np.ndarray:
        path = self.single if self.file_of is None else self.file_of.get(name)
        if path is None:
            raise KeyError(name)
        handle = self._handle(path)
        if name not in handle.keys():
            raise KeyError(name)
        try:
            return handle.get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read tensor {name!r} (truncated file?): {e}") from e


def load_hf_dir(
    folder: str | os.PathLike,
    cfg: ModelConfig | None = None,
    shardings: Mapping[tuple[str, ...], jax.sharding.Sharding] | None = None,
) -> Decoder:
    """Loads a HF folder; ``cfg`` overrides runtime fields (dtypes, remat, scan) if given."""
    folder = Path(folder)
    arch = read_hf_config(folder)
    if cfg is not None:
        arch = arch.replace(
            param_dtype=cfg.param_dtype, dtype=cfg.dtype, remat=cfg.remat, scan_layers=cfg.scan_layers,
            matmul_dtype=cfg.matmul_dtype,
        )
    return decoder_from_hf_tensors(arch, _TensorFiles(folder), str(folder), shardings)


def save_hf_dir(
    model: Decoder,
    folder: str | os.PathLike,
    *,
    max_shard_bytes: int = 2 * 1024**3,
    dtype: str | None = None,
) -> Path:
    """Writes config.json and safetensors (sharded with an index above ``max_shard_bytes``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype(dtype) if dtype is not None else None
    tensors = decoder_to_hf_tensors(model)
    if np_dtype is not None:
        tensors = {k: v.astype(np_dtype) for k, v in tensors.items()}
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, value in tensors.items():
        if shards[-1] and size + value.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        safetensors.numpy.save_file(shards[0], str(folder / _SINGLE), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            safetensors.numpy.save_file(shard, str(folder / fname), metadata=meta)
            weight_map.update({name: fname for name in shard})
        index = {"metadata": {"total_size": sum(v.nbytes for v in tensors.values())}, "weight_map": weight_map}
        (folder / _INDEX).write_text(json.dumps(index, indent=2))
    hf_cfg = config_to_hf(model.cfg)
    if np_dtype is not None:
        hf_cfg["torch_dtype"] = str(np_dtype)
    (folder / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    return folder
