"""LoRA adapters: exact identity at init, independent NumPy/PyTorch references, gradients, export."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax.sharding import PartitionSpec as P

from align_jax.models import save_hf_dir
from align_jax.models.config import ModelConfig
from align_jax.models.decoder import abstract_decoder
from align_jax.models.rope import inverse_frequencies
from align_jax.parallel.mesh import make_mesh
from align_jax.parallel.rules import state_shardings
from align_jax.training.lora import LoraConfig, count_params, init_lora, merge, target_paths

CFG = ModelConfig(family="llama", vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, tie_embeddings=False)
TOKENS = jnp.asarray(np.random.RandomState(0).randint(0, 97, (2, 9)))
LORA = LoraConfig(rank=4, alpha=8.0)
HF_LINEAR = {("attn", "q"): "self_attn.q_proj", ("attn", "k"): "self_attn.k_proj", ("attn", "v"): "self_attn.v_proj",
             ("attn", "o"): "self_attn.o_proj", ("mlp", "gate"): "mlp.gate_proj", ("mlp", "up"): "mlp.up_proj",
             ("mlp", "down"): "mlp.down_proj"}


@functools.cache
def split(cfg=CFG):
    """(graphdef, params) of a random model, filled with NumPy (no XLA compiles); cached, never mutated."""
    graphdef, abstract = nnx.split(abstract_decoder(cfg), nnx.Param)
    rng = np.random.RandomState(0)
    filled = []
    for path, var in nnx.to_flat_state(abstract):
        shape = var.get_value().shape
        value = 1.0 + 0.1 * rng.randn(*shape) if "norm" in "/".join(path) else 0.1 * rng.randn(*shape)
        filled.append((path, var.replace(value=jnp.asarray(value, jnp.float32))))
    return graphdef, nnx.from_flat_state(filled)


def abstract_params(cfg):
    """Shapes and axes only: enough for target selection and its errors."""
    return nnx.state(abstract_decoder(cfg), nnx.Param)


@functools.cache
def fresh_adapters():
    return init_lora(split()[1], LORA, jax.random.key(0))


def flat(state):
    return {path: np.asarray(var.get_value()) for path, var in nnx.to_flat_state(state)}


def randomize_b(adapters, seed=1, std=0.3):
    """Adapters with every B drawn at random (A unchanged), so that A @ B != 0."""
    rng = np.random.RandomState(seed)
    out = []
    for path, var in nnx.to_flat_state(adapters):
        if path[-1] == "lora_b":
            var = var.replace(value=jnp.asarray(std * rng.randn(*var.get_value().shape), jnp.float32))
        out.append((path, var))
    return nnx.from_flat_state(out)


def logits(graphdef, params):
    return np.asarray(nnx.merge(graphdef, params)(TOKENS).logits)


def test_initial_merge_is_the_base_exactly():
    graphdef, base = split()
    merged = merge(base, fresh_adapters(), LORA)
    before, after = flat(base), flat(merged)
    assert before.keys() == after.keys()
    for path in before:
        assert after[path].dtype == before[path].dtype
        assert after[path].tobytes() == before[path].tobytes(), path
    np.testing.assert_array_equal(logits(graphdef, merged), logits(graphdef, base))


def test_jitted_merge_keeps_low_precision_dtype():
    _, base = split()
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), base)
    jit_merge = jax.jit(merge, static_argnums=2)
    adapters = fresh_adapters()
    merged = flat(jit_merge(bf16, adapters, LORA))
    assert merged.keys() == flat(bf16).keys()
    for path, w in merged.items():
        assert w.dtype == jnp.bfloat16 and w.tobytes() == flat(bf16)[path].tobytes(), path
    trained, q = flat(jit_merge(bf16, randomize_b(adapters), LORA)), ("blocks", "attn", "q")
    assert trained[q].dtype == jnp.bfloat16 and not np.array_equal(trained[q], flat(bf16)[q])


def test_adapter_shapes_axes_and_count():
    _, base = split()
    adapters = fresh_adapters()
    a = dict(nnx.to_flat_state(adapters))
    L, D, N, K, H, M, r = 2, 32, 4, 2, 8, 64, 4
    expected = {  # shapes of (A, B): the weight's input dims + (r,), (r,) + its output dims
        ("attn", "q"): ((L, D, r), (L, r, N, H)), ("attn", "k"): ((L, D, r), (L, r, K, H)),
        ("attn", "v"): ((L, D, r), (L, r, K, H)), ("attn", "o"): ((L, N, H, r), (L, r, D)),
        ("mlp", "gate"): ((L, D, r), (L, r, M)), ("mlp", "up"): ((L, D, r), (L, r, M)),
        ("mlp", "down"): ((L, M, r), (L, r, D)),
    }
    assert set(a) == {("blocks",) + k + (ab,) for k in expected for ab in ("lora_a", "lora_b")}
    for k, (a_shape, b_shape) in expected.items():
        A, B = a[("blocks",) + k + ("lora_a",)], a[("blocks",) + k + ("lora_b",)]
        assert A.get_value().shape == a_shape and B.get_value().shape == b_shape
        assert not np.any(np.asarray(B.get_value()))
        bound = 1 / np.sqrt(np.prod(a_shape[1:-1]))
        assert 0.5 * bound < np.abs(np.asarray(A.get_value())).max() <= bound
    axes = lambda *p: a[("blocks",) + p].get_metadata()["axes"]
    assert axes("attn", "q", "lora_a") == ("layers", "embed", None)
    assert axes("attn", "q", "lora_b") == ("layers", None, "heads", "head_dim")
    assert axes("attn", "o", "lora_a") == ("layers", "heads", "head_dim", None)
    assert axes("mlp", "down", "lora_b") == ("layers", None, "embed")
    assert count_params(adapters) == sum(np.prod(sa) + np.prod(sb) for sa, sb in expected.values())
    # Different keys give different A; same key is deterministic.
    again = flat(init_lora(base, LORA, jax.random.key(0)))
    other = flat(init_lora(base, LORA, jax.random.key(1)))
    path = ("blocks", "attn", "q", "lora_a")
    assert np.array_equal(again[path], flat(adapters)[path]) and not np.array_equal(other[path], again[path])


def test_merged_q_projection_matches_numpy():
    graphdef, base = split()
    adapters = randomize_b(fresh_adapters())
    model = nnx.merge(graphdef, merge(base, adapters, LORA))
    block_graph, block_state = nnx.split(model.blocks)
    layer = 1
    block = nnx.merge(block_graph, jax.tree.map(lambda x: x[layer], block_state))
    x = np.random.RandomState(2).randn(1, 3, 32).astype(np.float32)
    inv_freq = jnp.asarray(inverse_frequencies(CFG.head_dim, CFG.rope_theta, None))
    q, _, _ = block.attn.project_qkv(jnp.asarray(x), jnp.zeros((1, 3), jnp.int32), inv_freq)  # position 0: no rotation
    b, a = flat(base), flat(adapters)
    W = b[("blocks", "attn", "q")][layer].reshape(32, -1)
    A, B = a[("blocks", "attn", "q", "lora_a")][layer], a[("blocks", "attn", "q", "lora_b")][layer].reshape(4, -1)
    expected = x @ W + (8.0 / 4) * (x @ A) @ B
    assert np.abs(expected - x @ W).max() > 1e-2  # the adapter changes the projection
    np.testing.assert_allclose(np.asarray(q).reshape(1, 3, -1), expected, rtol=1e-5, atol=1e-5)


def hf_with_lora_hooks(folder, adapters, scale):
    """The saved base model in transformers, each targeted nn.Linear adding scale * (x @ A) @ B."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    for path, pair in _pairs(adapters).items():
        _, *name = path
        for i in range(pair["lora_a"].shape[0]):
            r = pair["lora_a"].shape[-1]
            A = torch.tensor(pair["lora_a"][i].reshape(-1, r))  # [in, r], in = HF's input order
            B = torch.tensor(pair["lora_b"][i].reshape(r, -1))  # [r, out], out = HF's output order
            linear = hf.get_submodule(f"model.layers.{i}.{HF_LINEAR[tuple(name)]}")
            linear.register_forward_hook(lambda m, inp, out, A=A, B=B: out + scale * (inp[0] @ A) @ B)
    return hf


def _pairs(adapters):
    pairs = {}
    for path, value in flat(adapters).items():
        pairs.setdefault(path[:-1], {})[path[-1]] = value
    return pairs


def test_export_equals_lora_forward_in_transformers(tmp_path):
    graphdef, base = split()
    adapters = randomize_b(fresh_adapters())
    merged = nnx.merge(graphdef, merge(base, adapters, LORA))
    ours = np.asarray(merged(TOKENS).logits)
    save_hf_dir(nnx.merge(graphdef, base), tmp_path / "base")
    save_hf_dir(merged, tmp_path / "merged")
    with torch.no_grad():
        hooked = hf_with_lora_hooks(tmp_path / "base", adapters, LORA.alpha / LORA.rank)(torch.tensor(np.asarray(TOKENS))).logits.numpy()
        exported = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32).eval()
        plain = exported(torch.tensor(np.asarray(TOKENS))).logits.numpy()
    assert np.abs(ours - logits(graphdef, base)).max() > 1e-3  # the adapters matter
    np.testing.assert_allclose(ours, hooked, atol=1e-4)  # merged weights == unmerged LoRA forward
    np.testing.assert_allclose(plain, ours, atol=1e-4)  # the export is a plain HF model


def next_token_loss(graphdef, base, adapters, cfg):
    logits = nnx.merge(graphdef, merge(base, adapters, cfg))(TOKENS[:, :-1]).logits
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, TOKENS[:, 1:, None], axis=-1))


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg"))
def sgd_step(base, adapters, lr, *, graphdef, cfg):
    """One SGD step on the adapters only -> (adapters, loss, grads); the base is an input, never updated."""
    loss, grads = jax.value_and_grad(lambda ad: next_token_loss(graphdef, base, ad, cfg))(adapters)
    return jax.tree.map(lambda p, g: p - lr * g, adapters, grads), loss, grads


def test_gradients_flow_to_b_first_then_a():
    graphdef, base = split()
    grad = lambda ad: flat(sgd_step(base, ad, 0.0, graphdef=graphdef, cfg=LORA)[2])
    at_init = grad(fresh_adapters())
    assert len(at_init) == 14
    for path, g in at_init.items():
        if path[-1] == "lora_a":
            assert not np.any(g), path  # dL/dA = s * dL/dW' @ B^T = 0 while B = 0
        else:
            assert np.abs(g).max() > 0, path
    later = grad(randomize_b(fresh_adapters()))
    assert all(np.abs(g).max() > 0 for g in later.values())


def test_jitted_sgd_trains_adapters_and_leaves_base_bit_identical():
    graphdef, base = split()
    adapters = fresh_adapters()
    base_before = {k: v.tobytes() for k, v in flat(base).items()}
    losses = []
    for _ in range(8):
        adapters, loss, _ = sgd_step(base, adapters, 0.5, graphdef=graphdef, cfg=LORA)
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.05, losses
    assert {k: v.tobytes() for k, v in flat(base).items()} == base_before


def test_target_regex_selection():
    base = abstract_params(dataclasses.replace(CFG, family="qwen2", qkv_bias=True, qk_norm=True))
    names = lambda lc: sorted("/".join(p) for p in target_paths(base, lc))
    # Default: whole path components only, so q_bias and q_norm/weight are not selected.
    assert names(LoraConfig()) == ["blocks/attn/k", "blocks/attn/o", "blocks/attn/q", "blocks/attn/v",
                                   "blocks/mlp/down", "blocks/mlp/gate", "blocks/mlp/up"]
    assert names(LoraConfig(targets=r"attn/(q|v)")) == ["blocks/attn/q", "blocks/attn/v"]
    assert names(LoraConfig(targets=r"mlp/.*")) == ["blocks/mlp/down", "blocks/mlp/gate", "blocks/mlp/up"]
    lm = LoraConfig(rank=2, targets="lm_head")
    ad = flat(init_lora(base, lm, jax.random.key(0)))
    assert ad.keys() == {("lm_head", "lora_a"), ("lm_head", "lora_b")}
    assert ad[("lm_head", "lora_a")].shape == (32, 2) and ad[("lm_head", "lora_b")].shape == (2, 97)


def test_bad_configs_raise_clear_errors():
    for rank in (0, -1, 2.5):
        with pytest.raises(ValueError, match="rank must be an integer >= 1"):
            LoraConfig(rank=rank)
    with pytest.raises(ValueError, match="not a valid regex"):
        LoraConfig(targets="attn/(q")
    with pytest.raises(ValueError, match="alpha must be a finite"):
        LoraConfig(alpha=float("nan"))
    base = abstract_params(dataclasses.replace(CFG, tie_embeddings=True))
    with pytest.raises(ValueError, match=r"match no parameter; available: .*blocks/attn/q"):
        init_lora(base, LoraConfig(targets="lm_head"), jax.random.key(0))
    with pytest.raises(ValueError, match=r"'final_norm/weight' has logical axes \('embed',\)"):
        init_lora(base, LoraConfig(targets="final_norm/weight"), jax.random.key(0))
    adapters = init_lora(abstract_params(CFG), LoraConfig(targets="lm_head"), jax.random.key(0))
    with pytest.raises(ValueError, match="adapters for parameters that do not exist"):
        merge(base, adapters, LORA)


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (forced CPU) devices")
def test_adapters_shard_and_sharded_merge_matches():
    _, base = split()
    adapters = randomize_b(fresh_adapters())
    mesh = make_mesh(1, 4, 2)
    place = lambda s: jax.tree.map(lambda v, sh: v.replace(value=jax.device_put(v.get_value(), sh.get_value())),
                                   s, state_shardings(s, mesh), is_leaf=lambda x: isinstance(x, nnx.Variable))
    sharded = dict(nnx.to_flat_state(place(adapters)))
    spec = lambda path: sharded[path].get_value().sharding.spec
    assert spec(("blocks", "attn", "q", "lora_a")) == P(None, "fsdp", None)
    assert spec(("blocks", "attn", "q", "lora_b")) == P(None, None, "tensor", None)
    assert spec(("blocks", "attn", "o", "lora_a")) == P(None, "tensor", None, None)
    assert spec(("blocks", "mlp", "down", "lora_b")) == P(None, None, "fsdp")
    merged = jax.jit(merge, static_argnums=2)(place(base), place(adapters), LORA)
    reference = flat(merge(base, adapters, LORA))
    for path, w in flat(merged).items():
        np.testing.assert_allclose(w, reference[path], rtol=1e-6, atol=1e-6, err_msg=str(path))
