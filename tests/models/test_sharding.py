"""The forward under an 8-device CPU mesh (fsdp x tensor splits) equals the single-device forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from align_jax.models import hf_layout
from align_jax.parallel.mesh import make_mesh, resolve_axis_sizes
from align_jax.parallel.rules import DEFAULT_RULES, batch_sharding, logical_to_spec, rules_from_config, shard_model

from hf_reference import hf_state_numpy, our_config, tiny_hf_model

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("axes", [(1, 8, 1), (1, 4, 2), (2, 2, 2), (2, 1, 4)])
def test_sharded_forward_equals_single_device(family, axes):
    hf = tiny_hf_model(family)
    model = hf_layout.decoder_from_hf_tensors(our_config(hf), hf_state_numpy(hf).__getitem__, "tiny")
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 97, (8, 12)))
    ref = np.asarray(model(tokens).logits)
    mesh = make_mesh(*axes)
    sharded = shard_model(model, mesh)
    q_spec = sharded.blocks.attn.q[...].sharding.spec
    assert q_spec == logical_to_spec(("layers", "embed", "heads", "head_dim"), mesh, DEFAULT_RULES, (3, 32, 4, 8))
    forward = nnx.jit(lambda m, t: m(t).logits)
    out = forward(sharded, jax.device_put(tokens, batch_sharding(mesh, 2)))
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_rules_replicate_indivisible_dims():
    mesh = make_mesh(1, 4, 2)
    # SmolLM2: 9 heads on a 2-way tensor axis stay replicated; 576 = embed splits over fsdp.
    assert logical_to_spec(("embed", "heads", "head_dim"), mesh, DEFAULT_RULES, (576, 9, 64)) == P("fsdp", None, None)
    assert logical_to_spec(("embed", "mlp"), mesh, DEFAULT_RULES, (576, 1536)) == P("fsdp", "tensor")
    assert logical_to_spec(("batch", None), mesh, DEFAULT_RULES) == P("fsdp", None)  # data axis has size 1


def test_mesh_sizes_and_errors():
    assert resolve_axis_sizes((-1, 2, 1), 8) == (4, 2, 1)
    with pytest.raises(ValueError, match="at most one mesh axis"):
        resolve_axis_sizes((-1, -1, 1), 8)
    with pytest.raises(ValueError, match="needs 6 devices"):
        resolve_axis_sizes((3, 2, 1), 8)
    assert make_mesh(1, 1, 1).devices.size == 1
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh(2, 4, 2)
    with pytest.raises(KeyError, match="unknown logical axes"):
        rules_from_config({"embd": "fsdp"})
    assert dict(rules_from_config({"embed": None}))["embed"] is None
