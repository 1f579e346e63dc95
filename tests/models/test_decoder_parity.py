"""Tiny random models of each family against transformers (PyTorch), fp32, within 1e-4."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from align_jax.models import KVCache, hf_layout

from hf_reference import hf_logits, hf_state_numpy, our_config, tiny_hf_model

FAMILIES = ["llama", "llama_tied", "qwen2", "gemma3"]
TOL = 1e-4


def _tiny_pair(family):
    """-> (a tiny random transformers model, our decoder with its weights)."""
    hf = tiny_hf_model(family)
    return hf, hf_layout.decoder_from_hf_tensors(our_config(hf), hf_state_numpy(hf).__getitem__, "tiny")


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request):
    return _tiny_pair(request.param)


def _tokens(b, t, seed=0):
    return np.random.RandomState(seed).randint(0, 97, (b, t))


def test_logits_match(pair):
    hf, ours = pair
    tokens = _tokens(3, 17)  # longer than Gemma's sliding window (5)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(tokens)).logits), hf_logits(hf, tokens), atol=TOL)


def test_left_padded_batch(pair):
    hf, ours = pair
    tokens = _tokens(3, 12, seed=1)
    mask = np.ones_like(tokens)
    mask[0, :4] = 0
    mask[2, :9] = 0
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    ref = hf_logits(hf, tokens, attention_mask=mask, position_ids=positions)
    out = np.asarray(ours(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask)).logits)
    valid = mask.astype(bool)
    np.testing.assert_allclose(out[valid], ref[valid], atol=TOL)
    # Each padded row equals the same row run alone without padding.
    alone = hf_logits(hf, tokens[2:3, 9:])
    np.testing.assert_allclose(out[2, 9:], alone[0], atol=TOL)


def test_position_offsets(pair):
    hf, ours = pair
    tokens = _tokens(2, 9, seed=2)
    positions = np.arange(9)[None].repeat(2, 0) + np.array([[5], [31]])
    ref = hf_logits(hf, tokens, position_ids=positions)
    out = ours(jnp.asarray(tokens), jnp.asarray(positions)).logits
    np.testing.assert_allclose(np.asarray(out), ref, atol=TOL)


def test_packed_segments_equal_separate_sequences(pair):
    hf, ours = pair
    a, b = _tokens(1, 7, seed=3)[0], _tokens(1, 6, seed=4)[0]
    tokens = np.concatenate([a, b, [0, 0]])[None]
    segments = np.array([[1] * 7 + [2] * 6 + [0, 0]])
    positions = np.array([list(range(7)) + list(range(6)) + [0, 0]])
    out = np.asarray(ours(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments)).logits)
    np.testing.assert_allclose(out[0, :7], hf_logits(hf, a[None])[0], atol=TOL)
    np.testing.assert_allclose(out[0, 7:13], hf_logits(hf, b[None])[0], atol=TOL)


def test_hidden_states_match(pair):
    import torch

    hf, ours = pair
    tokens = _tokens(2, 8, seed=5)
    with torch.no_grad():
        ref = hf(torch.tensor(tokens), output_hidden_states=True).hidden_states
    out = ours(jnp.asarray(tokens), return_hidden_states=True)
    n = ours.cfg.num_layers
    assert out.hidden_states.shape[0] == n + 1
    for i in range(n):  # HF's last entry is after the final norm; ours keeps the raw block output
        np.testing.assert_allclose(np.asarray(out.hidden_states[i]), ref[i].numpy(), atol=TOL)
    np.testing.assert_allclose(np.asarray(out.final_hidden), ref[n].numpy(), atol=TOL)


def test_scan_unrolled_and_remat_agree(pair):
    _, ours = pair
    tokens = jnp.asarray(_tokens(2, 10, seed=6))
    ref = np.asarray(ours(tokens).logits)
    for changes in ({"scan_layers": False}, {"remat": "full"}, {"remat": "dots", "scan_layers": False}):
        variant = hf_layout.decoder_from_hf_tensors(
            ours.cfg.replace(**changes), hf_layout.decoder_to_hf_tensors(ours).__getitem__, "v"
        )
        np.testing.assert_allclose(np.asarray(variant(tokens).logits), ref, atol=1e-5, err_msg=str(changes))


@pytest.mark.slow  # eight compiled gradients
@pytest.mark.parametrize("family", ["llama", "gemma3"])  # Gemma 3 adds windows, QK-norm and softcaps
def test_remat_policies_give_the_same_gradients(family):
    """Every remat policy (attention recomputed, dots saved, full) changes memory, not gradients.
    Remat wraps the shared block code, so the two other families (tied embeddings, q/k/v bias) add
    nothing here that test_logits_match does not already cover."""
    from flax import nnx

    _, ours = _tiny_pair(family)
    tokens = jnp.asarray(_tokens(2, 10, seed=8))

    def grads(cfg_changes):
        model = hf_layout.decoder_from_hf_tensors(
            ours.cfg.replace(**cfg_changes), hf_layout.decoder_to_hf_tensors(ours).__getitem__, "v"
        )
        graphdef, state = nnx.split(model)

        def loss(state):
            logits = nnx.merge(graphdef, state)(tokens).logits
            return jnp.mean(jax.nn.log_softmax(logits)[..., 3] ** 2)

        return jax.tree.leaves(jax.jit(jax.grad(loss))(state))

    ref = grads({"remat": "none"})
    for changes in ({"remat": "attention"}, {"remat": "dots"}, {"remat": "full", "scan_layers": False}):
        for got, want in zip(grads(changes), ref, strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-4, err_msg=str(changes))


def test_kv_cache_prefill_then_decode_equals_full_forward(pair):
    _, ours = pair
    tokens = jnp.asarray(_tokens(2, 11, seed=7))
    full = np.asarray(ours(tokens).logits)
    cache = KVCache.init(ours.cfg, batch=2, max_len=16)
    out = ours(tokens[:, :6], cache=cache)
    steps = [np.asarray(out.logits)]
    cache = out.cache
    for t in range(6, 11):
        out = ours(tokens[:, t : t + 1], jnp.full((2, 1), t), cache=cache)
        cache = out.cache
        steps.append(np.asarray(out.logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=TOL)
    assert int(cache.index) == 11


def test_bf16_compute_is_close(pair):
    _, ours = pair
    tokens = jnp.asarray(_tokens(2, 10, seed=8))
    ref = np.asarray(ours(tokens).logits)
    bf16 = hf_layout.decoder_from_hf_tensors(
        ours.cfg.replace(param_dtype="bfloat16", dtype="bfloat16"),
        hf_layout.decoder_to_hf_tensors(ours).__getitem__,
        "bf16",
    )
    out = bf16(tokens).logits
    assert out.dtype == jnp.float32  # the unembedding accumulates and returns float32 in every precision
    assert bf16.blocks.attn.q[...].dtype == jnp.bfloat16
    rel = np.linalg.norm(np.asarray(out, np.float32) - ref) / np.linalg.norm(ref)
    assert rel < 3e-2, rel


def test_bf16_matmuls_with_float32_activations_are_close_and_train(pair):
    """Mixed precision (``matmul_dtype="bfloat16"``): float32 weights and activations, bf16 matmul
    operands. Logits within bf16 rounding of the float32 ones, and closer than full bf16 compute;
    the weight gradients stay float32 and point the same way as the float32 ones."""
    _, ours = pair
    tokens = jnp.asarray(_tokens(2, 10, seed=8))
    ref = np.asarray(ours(tokens).logits)
    tensors = hf_layout.decoder_to_hf_tensors(ours)
    mixed = hf_layout.decoder_from_hf_tensors(ours.cfg.replace(matmul_dtype="bfloat16"), tensors.__getitem__, "mixed")
    full = hf_layout.decoder_from_hf_tensors(ours.cfg.replace(param_dtype="bfloat16", dtype="bfloat16"),
                                             tensors.__getitem__, "bf16")
    out = mixed(tokens).logits
    assert out.dtype == jnp.float32 and mixed.blocks.attn.q[...].dtype == jnp.float32
    rel = np.linalg.norm(np.asarray(out) - ref) / np.linalg.norm(ref)
    rel_full = np.linalg.norm(np.asarray(full(tokens).logits) - ref) / np.linalg.norm(ref)
    assert 1e-5 < rel < 1e-2 and rel < rel_full, (rel, rel_full)

    def grads(model):
        g = nnx.grad(lambda m: jnp.sum(jax.nn.log_softmax(m(tokens).logits)[..., 3]))(model)
        return g.blocks.mlp.down[...]

    g32, gmix = grads(ours), grads(mixed)
    assert gmix.dtype == jnp.float32
    cos = float(jnp.sum(g32 * gmix) / (jnp.linalg.norm(g32) * jnp.linalg.norm(gmix)))
    assert cos > 0.99, cos
