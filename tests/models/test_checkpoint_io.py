"""Safetensors export/import round trips and clear errors on bad checkpoints (tiny models)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from align_jax.models import CheckpointError, load_hf_dir, save_hf_dir
from align_jax.models.gguf_loader import load_gguf
from align_jax.models import hf_layout

from hf_reference import hf_logits, hf_state_numpy, our_config, tiny_hf_model

TOKENS = np.random.RandomState(0).randint(0, 97, (2, 9))


@pytest.fixture(scope="module", params=["llama", "llama_tied", "qwen2", "gemma3"])
def tiny(request):
    hf = tiny_hf_model(request.param)
    return hf, hf_layout.decoder_from_hf_tensors(our_config(hf), hf_state_numpy(hf).__getitem__, "tiny")


def test_export_opens_in_transformers_with_same_logits(tiny, tmp_path):
    hf, ours = tiny
    save_hf_dir(ours, tmp_path)
    reopened = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert type(reopened) is type(hf)
    np.testing.assert_allclose(hf_logits(reopened.eval(), TOKENS), hf_logits(hf, TOKENS), atol=1e-5)


def test_sharded_export_round_trip(tiny, tmp_path):
    _, ours = tiny
    save_hf_dir(ours, tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    back = load_hf_dir(tmp_path)
    assert back.cfg == ours.cfg
    np.testing.assert_array_equal(np.asarray(back(jnp.asarray(TOKENS)).logits), np.asarray(ours(jnp.asarray(TOKENS)).logits))


def test_hf_saved_folder_loads(tiny, tmp_path):
    hf, _ = tiny
    hf.save_pretrained(str(tmp_path))  # transformers' own writer
    ours = load_hf_dir(tmp_path)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(TOKENS)).logits), hf_logits(hf, TOKENS), atol=1e-4)


@pytest.fixture
def saved_llama(tmp_path):
    hf = tiny_hf_model("llama")
    hf.save_pretrained(str(tmp_path))
    return tmp_path


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_hf_dir(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps(tiny_hf_model("llama").config.to_dict()))
    with pytest.raises(CheckpointError, match="neither model.safetensors"):
        load_hf_dir(tmp_path)


def test_truncated_safetensors_names_the_file(saved_llama):
    f = saved_llama / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_hf_dir(saved_llama)


def test_unsupported_architecture(saved_llama):
    cfg = json.loads((saved_llama / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (saved_llama / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json: unsupported architecture model_type='gpt2'"):
        load_hf_dir(saved_llama)


def test_config_that_does_not_match_weights(saved_llama):
    cfg = json.loads((saved_llama / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (saved_llama / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp.gate_proj.weight' has shape \(64, 32\).*expects \(48, 32\)"):
        load_hf_dir(saved_llama)


def test_missing_tensor_is_named(saved_llama):
    from safetensors.numpy import load_file, save_file

    f = saved_llama / "model.safetensors"
    tensors = load_file(str(f))
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, str(f))
    with pytest.raises(CheckpointError, match="model.layers.1.self_attn.k_proj.weight' is missing"):
        load_hf_dir(saved_llama)


def test_bad_gguf_files(tmp_path):
    with pytest.raises(CheckpointError, match="GGUF file not found"):
        load_gguf(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 7)
    with pytest.raises(CheckpointError, match="bad.gguf"):
        load_gguf(bad)
