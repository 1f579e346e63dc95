"""Models: one decoder for Llama/Qwen2/Gemma 3, weight import/export, tokenizers, chat formats."""

from align_jax.models.config import ModelConfig, RopeScaling
from align_jax.models.decoder import Decoder, DecoderOutput, KVCache, abstract_decoder, init_decoder
from align_jax.models.hf_layout import CheckpointError, config_from_hf, config_to_hf
from align_jax.models.registry import DEFAULT_MODEL, MODELS, LoadedModel, load_model
from align_jax.models.safetensors_io import load_hf_dir, save_hf_dir

__all__ = [
    "CheckpointError",
    "DEFAULT_MODEL",
    "Decoder",
    "DecoderOutput",
    "KVCache",
    "LoadedModel",
    "MODELS",
    "ModelConfig",
    "RopeScaling",
    "abstract_decoder",
    "config_from_hf",
    "config_to_hf",
    "init_decoder",
    "load_hf_dir",
    "load_model",
    "save_hf_dir",
]
