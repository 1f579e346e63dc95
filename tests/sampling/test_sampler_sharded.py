"""Sharded sampling (batch over data x fsdp, weights placed by ``shard_model``) equals unsharded.

Needs 8 CPU devices. tests/conftest.py forces them before JAX is imported; if this process has
fewer (JAX was set up elsewhere first), the check re-runs in a fresh subprocess with XLA_FLAGS set.
"""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np


def check_sharded_equals_unsharded():
    from align_jax.models.config import ModelConfig
    from align_jax.models.decoder import init_decoder
    from align_jax.parallel.mesh import make_mesh
    from align_jax.parallel.rules import shard_model
    from align_jax.sampling import SamplingParams, sample

    assert jax.device_count() >= 8, jax.devices()
    cfg = ModelConfig(family="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=96, tie_embeddings=False)
    model = init_decoder(cfg, seed=1)
    model.lm_head[...] = model.lm_head[...] * 25.0
    prompts = [[5, 9, 11], [7, 3, 2, 8, 21, 40, 13], [30], [1, 2, 3, 4], [9] * 12]  # 5: not a multiple of 4
    params = SamplingParams(temperature=0, max_new_tokens=8, n=2)
    ref = sample(model, prompts, params, eos_ids=[0])
    mesh = make_mesh(data=2, fsdp=2, tensor=2, devices=jax.devices()[:8])
    sharded_model = shard_model(model, mesh)
    assert not sharded_model.blocks.mlp.up[...].sharding.is_fully_replicated
    out = sample(sharded_model, prompts, params, eos_ids=[0], mesh=mesh)
    assert out.tokens.shape == ref.tokens.shape == (10, 8)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_array_equal(np.asarray(out.completion_mask), np.asarray(ref.completion_mask))
    np.testing.assert_allclose(np.asarray(out.model_logprobs), np.asarray(ref.model_logprobs), atol=1e-5)


def test_sharded_greedy_equals_unsharded(subprocess_env):
    if jax.device_count() >= 8:
        check_sharded_equals_unsharded()
        return
    here = Path(__file__).resolve()
    env = subprocess_env(8)
    code = f"import sys; sys.path.insert(0, {str(here.parent)!r}); import {here.stem} as t; t.check_sharded_equals_unsharded()"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=here.parents[2], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
