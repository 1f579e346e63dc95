"""Memory regressions of the offline engine, checked cheaply (benchmarks/memory.py measures the real
peaks): the reference pass takes the weights as an argument (not compiled in as constants) and
compiles once for every pass of one shape, a checkpoint save holds no compressed copy of the state,
and a run reloads the "before" policy it dropped while training."""

import json
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from align_jax.models import ModelConfig, init_decoder, load_model
from align_jax.training import reference_cache
from align_jax.training.checkpointing import Checkpointer
from align_jax.training.config import parse_config
from align_jax.training.loop import release_free_memory, run

sys.path.insert(0, str(Path(__file__).parent))
from engine_config import make_config  # noqa: E402
from test_engine import tiny_model_dir  # noqa: E402,F401  (a fixture: the tiny model with SmolLM2's tokenizer)

TINY = ModelConfig(family="llama", vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8)


def _pairs(n: int, length: int = 12) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ex = {}
        for side in ("chosen", "rejected"):
            ex[f"{side}_tokens"] = rng.integers(1, TINY.vocab_size, length).astype(np.int32)
            ex[f"{side}_loss_mask"] = np.r_[np.zeros(length // 2), np.ones(length - length // 2)].astype(np.int32)
            ex[f"{side}_positions"] = np.arange(length, dtype=np.int32)
            ex[f"{side}_segment_ids"] = np.ones(length, np.int32)
        out.append(ex)
    return out


def test_reference_pass_takes_the_weights_as_an_argument_and_compiles_once():
    model = init_decoder(TINY, seed=0)
    graphdef, state = nnx.split(model)
    batch = {k: jnp.asarray(np.stack([ex[k] for ex in _pairs(4)])) for k in _pairs(1)[0]}
    compiled = reference_cache.reference_program.lower(state, batch, graphdef=graphdef, kind="preference").compile()
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    # weights compiled in as constants (a captured closure) would leave the arguments empty
    assert compiled.memory_analysis().argument_size_in_bytes >= param_bytes

    before = reference_cache.reference_program._cache_size()
    first = reference_cache.compute_reference_logps(model, _pairs(6), "preference", batch_size=4)
    second = reference_cache.compute_reference_logps(model, _pairs(3), "preference", batch_size=4)
    assert reference_cache.reference_program._cache_size() - before <= 1  # one program for both passes
    np.testing.assert_array_equal(first["reference_chosen_logps"][:3], second["reference_chosen_logps"])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc/self/statm (Linux)")
def test_checkpoint_save_holds_no_compressed_copy_of_the_state(tmp_path):
    keys = jax.random.split(jax.random.key(0), 4)
    state = {f"w{i}": jax.random.normal(k, (4096, 4096), jnp.float32) for i, k in enumerate(keys)}  # 256 MiB
    state_bytes = sum(x.nbytes for x in state.values())
    jax.block_until_ready(state)
    release_free_memory()
    base, peak, stop = _rss_bytes(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with Checkpointer(tmp_path / "ckpt") as ckpt:
            ckpt.save(1, state)
            ckpt.wait()
    finally:
        stop.set()
        sampler.join()
    # zstd-compressed (Orbax's default) the save buffered ~0.93x the state; uncompressed, a few MB
    assert peak[0] - base < 0.4 * state_bytes, (peak[0] - base) / 2**20


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    folder = tiny_model_dir
    data = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with data.open("w") as f:
        for i in range(24):
            f.write(json.dumps({"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.",
                                "rejected": "I don't know."}) + "\n")
    run_cfg = parse_config(make_config(folder, data, train__steps=2, train__eval_every=2, train__checkpoint_every=1,
                                       optimizer__total_steps=2))
    return folder, run(run_cfg, tmp_path_factory.mktemp("run"))


def test_run_reloads_the_before_policy_it_dropped_while_training(tiny_run):
    folder, result = tiny_run
    fresh = nnx.state(load_model(path=folder).model)
    before = nnx.state(result["loaded"].model)
    for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    trained = jax.tree.leaves(result["policy_state"])
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(fresh), trained))
