"""Interventions inside the scanned decoder: the Hugging Face model with PyTorch hooks that edit the
same sites is the reference; an empty intervention is the plain forward bit for bit; a mesh gives the
single-device result; the sampler under an intervention equals teacher forcing under it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from align_jax.models import hf_layout
from align_jax.models.config import ModelConfig
from align_jax.models.decoder import init_decoder
from align_jax.models.interventions import (
    SITES, Edit, Intervention, ablate_direction, add_vector, apply_edit, patch_positions,
)
from align_jax.parallel.mesh import make_mesh
from align_jax.parallel.rules import batch_sharding, shard_model
from align_jax.sampling import SamplingParams, sample

from hf_reference import hf_state_numpy, our_config, tiny_hf_model

TOKENS = np.random.RandomState(0).randint(0, 97, (2, 9))
OTHER = np.random.RandomState(1).randint(0, 97, (2, 9))


def _ours(family):
    hf = tiny_hf_model(family)
    return hf, hf_layout.decoder_from_hf_tensors(our_config(hf), hf_state_numpy(hf).__getitem__, "tiny")


def _unit(d, seed):
    v = np.random.RandomState(seed).randn(d).astype(np.float32)
    return v / np.linalg.norm(v)


class HFSites:
    """PyTorch hooks on a Hugging Face decoder that record and edit our three sites."""

    def __init__(self, hf, family):
        self.hf, self.family, self.handles, self.seen = hf, family, [], {s: {} for s in SITES}
        self.edits = {s: {} for s in SITES}  # site -> layer -> fn(tensor [B, T, D]) -> tensor

    def _apply(self, site, layer, h):
        fn = self.edits[site].get(layer)
        h = fn(h) if fn else h
        self.seen[site][layer] = h.detach().numpy().copy()
        return h

    def __enter__(self):
        for i, block in enumerate(self.hf.model.layers):
            def pre(mod, args, kwargs, i=i):
                if args:
                    return (self._apply("resid_pre", i, args[0]),) + tuple(args[1:]), kwargs
                return args, {**kwargs, "hidden_states": self._apply("resid_pre", i, kwargs["hidden_states"])}

            def attn(mod, args, out, i=i):
                if isinstance(out, tuple):
                    return (self._apply("attn_out", i, out[0]),) + tuple(out[1:])
                return self._apply("attn_out", i, out)

            def mlp(mod, args, out, i=i):
                return self._apply("mlp_out", i, out)

            self.handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            gemma = self.family == "gemma3"  # sandwich norms: the post-norms' outputs join the stream
            self.handles.append((block.post_attention_layernorm if gemma else block.self_attn).register_forward_hook(attn))
            self.handles.append((block.post_feedforward_layernorm if gemma else block.mlp).register_forward_hook(mlp))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def logits(self, tokens):
        with torch.no_grad():
            return self.hf(torch.tensor(tokens)).logits.numpy()

    def captured(self, site):
        return np.stack([self.seen[site][i] for i in range(len(self.hf.model.layers))])


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_edits_equal_pytorch_hooks_on_the_hf_model(family):
    hf, model = _ours(family)
    cfg = model.cfg
    L, D = cfg.num_layers, cfg.hidden_size
    # Another run's activations to patch in: captured by our forward, checked against the hooks.
    with HFSites(hf, family) as ref:
        ref.logits(OTHER)
        other = model(jnp.asarray(OTHER), capture=SITES)
        for site in SITES:
            np.testing.assert_allclose(np.asarray(other.captured[site]), ref.captured(site), atol=2e-5)
    r, v = _unit(D, 2), 3.0 * _unit(D, 3)
    scale = np.random.RandomState(4).uniform(0.5, 1.5, D).astype(np.float32)
    pmask = np.zeros((L, 2, 9), bool)
    pmask[2, :, 3:5] = True
    edit = Intervention(
        resid_pre=Edit(patch=other.captured["resid_pre"], patch_mask=jnp.asarray(pmask),
                       ablate=jnp.asarray(np.stack([r] * L)), add=jnp.zeros((L, D)).at[1].set(v)),
        attn_out=Edit(scale=jnp.ones((L, D)).at[0].set(scale)),
        mlp_out=Edit(ablate=jnp.asarray(np.stack([r] * L))),
    )
    other_pre = ref.captured("resid_pre")
    rt = torch.tensor(r)
    proj = lambda h: h - (h @ rt)[..., None] * rt
    with HFSites(hf, family) as ref:
        for i in range(L):
            def pre(h, i=i):
                if i == 2:
                    h = h.clone()
                    h[:, 3:5] = torch.tensor(other_pre[2][:, 3:5])
                h = proj(h)
                return h + torch.tensor(v) if i == 1 else h
            ref.edits["resid_pre"][i] = pre
            ref.edits["mlp_out"][i] = proj
        ref.edits["attn_out"][0] = lambda h: h * torch.tensor(scale)
        want = ref.logits(TOKENS)
        out = model(jnp.asarray(TOKENS), intervention=edit, capture=SITES)
        np.testing.assert_allclose(np.asarray(out.logits), want, atol=1e-4)
        for site in SITES:
            np.testing.assert_allclose(np.asarray(out.captured[site]), ref.captured(site), atol=1e-4)
    plain = model(jnp.asarray(TOKENS)).logits
    assert np.abs(np.asarray(plain) - want).max() > 1e-2  # the edits matter


def _neutral(L, D, rows=2, s=9):
    """Every operation at its identity value, at every site."""
    e = Edit(patch=jnp.ones((L, rows, s, D)), patch_mask=jnp.zeros((L, rows, s), bool),
             ablate=jnp.zeros((L, D)), scale=jnp.ones((L, D)), add=jnp.zeros((L, D)))
    return Intervention(resid_pre=e, attn_out=e, mlp_out=e)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_empty_and_neutral_interventions_are_bit_identical(scan_layers):
    _, model = _ours("gemma3")
    model.cfg = dataclasses.replace(model.cfg, scan_layers=scan_layers)
    L, D = model.cfg.num_layers, model.cfg.hidden_size
    tokens = jnp.asarray(TOKENS)
    plain = np.asarray(model(tokens).logits)
    for iv in (None, Intervention(), Intervention(resid_pre=Edit())):  # nothing compiled in
        assert np.array_equal(np.asarray(model(tokens, intervention=iv).logits), plain)
    # Every operation at its identity value is the identity in exact arithmetic; the compiled program
    # differs, and unrolled, XLA may pick other matmul kernels (measured: up to 2e-7 apart).
    np.testing.assert_allclose(np.asarray(model(tokens, intervention=_neutral(L, D)).logits), plain, atol=1e-6)
    hs = model(tokens, return_hidden_states=True, capture=("resid_pre",))
    np.testing.assert_array_equal(np.asarray(hs.captured["resid_pre"]), np.asarray(hs.hidden_states[:-1]))


def test_keep_norm_and_helpers():
    x = jnp.asarray(np.random.RandomState(0).randn(2, 3, 8), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(3), (2, 3))
    v = jnp.asarray(_unit(8, 1))
    y = apply_edit(Edit(add=4.0 * v, keep_norm=True), x, pos)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-6)
    want = (x + 4.0 * v) / np.linalg.norm(x + 4.0 * v, axis=-1, keepdims=True) * np.linalg.norm(x, axis=-1, keepdims=True)
    np.testing.assert_allclose(y, want, rtol=1e-5)
    iv = add_vector("resid_pre", 3, [0, 2], v, alpha=2.0)
    np.testing.assert_allclose(iv.resid_pre.add, np.stack([2 * v, 0 * v, 2 * v]))
    ab = ablate_direction(3 * v, 3)
    assert set(s for s in SITES if getattr(ab, s) is not None) == set(SITES)
    z = apply_edit(ab.at_layer(1).mlp_out, x, pos)
    np.testing.assert_allclose(np.asarray(z) @ np.asarray(v), 0, atol=1e-6)
    pp = patch_positions("attn_out", jnp.ones((3, 1, 4, 8)), jnp.zeros((3, 1, 4), bool).at[:, :, 1].set(True))
    w = apply_edit(pp.at_layer(0).attn_out, x, pos)
    np.testing.assert_array_equal(np.asarray(w[:, 1]), 1.0)
    np.testing.assert_array_equal(np.asarray(w[:, [0, 2]]), np.asarray(x[:, [0, 2]]))


def test_bad_interventions_raise():
    _, model = _ours("llama")
    tokens = jnp.asarray(TOKENS)
    with pytest.raises(ValueError, match="unknown capture sites"):
        model(tokens, capture=("resid_post",))
    with pytest.raises(ValueError, match="has 2 layers; the model has 3"):
        model(tokens, intervention=Intervention(mlp_out=Edit(add=jnp.zeros((2, 32)))))
    with pytest.raises(ValueError, match="hidden size is 32"):
        model(tokens, intervention=Intervention(mlp_out=Edit(ablate=jnp.zeros((3, 31)))))
    with pytest.raises(ValueError, match="patch and patch_mask"):
        Edit(patch=jnp.zeros((3, 1, 4, 32)))


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
def test_sharded_intervention_equals_single_device():
    _, model = _ours("gemma3")
    L, D = model.cfg.num_layers, model.cfg.hidden_size
    tokens = jnp.asarray(np.random.RandomState(5).randint(0, 97, (8, 9)))
    other = model(jnp.asarray(np.random.RandomState(6).randint(0, 97, (8, 9))), capture=("mlp_out",))
    mask = jnp.zeros((L, 8, 9), bool).at[1, :, 2:6].set(True)
    iv = Intervention(resid_pre=add_vector("resid_pre", L, 2, 2.0 * _unit(D, 7), keep_norm=True).resid_pre,
                      attn_out=ablate_direction(_unit(D, 8), L).attn_out,
                      mlp_out=patch_positions("mlp_out", other.captured["mlp_out"], mask).mlp_out)
    ref = np.asarray(model(tokens, intervention=iv, capture=("attn_out",)).captured["attn_out"])
    want = np.asarray(model(tokens, intervention=iv).logits)
    mesh = make_mesh(2, 2, 2)
    sharded = shard_model(model, mesh)
    forward = nnx.jit(lambda m, t, iv: m(t, intervention=iv, capture=("attn_out",)))
    out = forward(sharded, jax.device_put(tokens, batch_sharding(mesh, 2)), iv)
    np.testing.assert_allclose(np.asarray(out.logits), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.captured["attn_out"]), ref, atol=1e-5)


SAMPLER_CFG = ModelConfig(family="llama", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2,
                          num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=96, tie_embeddings=False)


@pytest.mark.parametrize("hoist_weights", [True, False])
def test_sampler_under_intervention_equals_teacher_forcing(hoist_weights):
    model = init_decoder(SAMPLER_CFG, seed=3)
    model.lm_head[...] = model.lm_head[...] * 25.0
    L, D = SAMPLER_CFG.num_layers, SAMPLER_CFG.hidden_size
    prompts = [[5, 9, 11], [7, 3, 2, 8, 21, 40, 13], [30]]
    other = model(jnp.asarray([[1, 2, 3, 4, 5, 6, 7]]), capture=("resid_pre",)).captured["resid_pre"]
    pmask = jnp.zeros((L, 1, 7), bool).at[1, 0, 0:2].set(True)  # prompt positions 0-1 of layer 1
    iv = Intervention(resid_pre=Edit(patch=other, patch_mask=pmask, add=jnp.zeros((L, D)).at[1].set(3 * _unit(D, 9))),
                      mlp_out=ablate_direction(_unit(D, 10), L).mlp_out)
    params = SamplingParams(temperature=1.0, n=4, max_new_tokens=10, seed=2)
    out = sample(model, prompts, params, eos_ids=[0], intervention=iv, hoist_weights=hoist_weights)
    seq = jnp.concatenate([out.prompt_tokens, out.tokens], axis=1)
    mask = jnp.concatenate([out.prompt_mask, out.completion_mask], axis=1)
    pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    p, m = out.prompt_tokens.shape[1], out.tokens.shape[1]
    logits = model(seq, pos, mask, intervention=iv).logits[:, p - 1 : p - 1 + m]
    ref = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, -1)), np.asarray(out.tokens)[..., None], -1)[..., 0]
    cmask = np.asarray(out.completion_mask).astype(bool)
    np.testing.assert_allclose(np.asarray(out.model_logprobs)[cmask], ref[cmask], atol=1e-4)
    plain = model(seq, pos, mask).logits[:, p - 1 : p - 1 + m]
    plain_ref = np.take_along_axis(np.asarray(jax.nn.log_softmax(plain, -1)), np.asarray(out.tokens)[..., None], -1)[..., 0]
    assert np.abs(plain_ref - ref)[cmask].max() > 1e-2  # the intervention changed the distribution
    with pytest.raises(ValueError, match="the sampler takes 1"):
        sample(model, prompts, params, intervention=patch_positions("resid_pre", jnp.zeros((L, 3, 7, D)),
                                                                    jnp.zeros((L, 3, 7), bool)))
