"""The pure train step: closed-form start, exact gradient accumulation, sharded == single device,
frozen vs precomputed reference, TR-DPO reference updates, learning actually happens."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from align_jax.models import ModelConfig, init_decoder
from align_jax.objectives.preference import PREFERENCE_LOSSES
from align_jax.parallel.mesh import make_mesh
from align_jax.training import step as S
from align_jax.training.optimizer import OptimizerConfig, make_optimizer
from align_jax.training.tasks import preference_loss, reference_logps, sft_loss

CFG = ModelConfig(family="llama", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8)
L = 12


def pair_batch(n, seed=0):
    """n preference examples: prompt of 4-6 tokens, completions of 2-5 tokens, right padded."""
    rng = np.random.RandomState(seed)
    out = {}
    for side in ("chosen", "rejected"):
        toks = np.zeros((n, L), np.int32)
        loss = np.zeros((n, L), np.int32)
        seg = np.zeros((n, L), np.int32)
        pos = np.zeros((n, L), np.int32)
        for i in range(n):
            p, c = 4 + i % 3, 2 + (i + (side == "rejected")) % 4
            toks[i, : p + c] = rng.randint(1, 61, p + c)
            loss[i, p : p + c] = 1
            seg[i, : p + c] = 1
            pos[i, : p + c] = np.arange(p + c)
        out.update({f"{side}_tokens": toks, f"{side}_loss_mask": loss, f"{side}_segment_ids": seg, f"{side}_positions": pos})
    if seed:  # same prompts for both sides
        out["rejected_tokens"][:, :4] = out["chosen_tokens"][:, :4]
    return {k: jnp.asarray(v) for k, v in out.items()}


def micro(batch, a):
    return jax.tree.map(lambda x: x.reshape((a, x.shape[0] // a) + x.shape[1:]), batch)


@functools.cache
def make(reference_mode="frozen", sync_every=0, alpha=1.0, sgd=False):
    """-> (spec, initial state, model, the jitted step), built once per setting: tests that share a
    setting (and batch shapes) share one compiled step. sgd: plain SGD with learning rate 1, so that
    the update is the gradient itself and two updates can be compared tightly (Adam's first step
    is ~lr * sign(gradient), which hides small gradient differences and amplifies rounding on
    coordinates whose gradient is ~0); otherwise Adam, lr 1e-2."""
    model = init_decoder(CFG, seed=0)
    graphdef, params = nnx.split(model)
    optimizer = optax.sgd(1.0) if sgd else make_optimizer(OptimizerConfig(learning_rate=1e-2, schedule="constant",
                                                                           total_steps=10))
    spec = S.StepSpec(
        graphdef=graphdef,
        task_loss=functools.partial(preference_loss, loss_fn=PREFERENCE_LOSSES.build("dpo", beta=0.1)),
        optimizer=optimizer,
        reference_mode=reference_mode,
        reference_fn=functools.partial(reference_logps, kind="preference") if reference_mode == "frozen" else None,
        reference_sync_every=sync_every,
        reference_sync_alpha=alpha,
    )
    return spec, S.init_state(spec, params), model, jax.jit(functools.partial(S.train_step, spec))


def test_first_step_dpo_loss_is_ln2_and_learns():
    _, state, _, step = make()
    batch = micro(pair_batch(4), 1)
    state, m0 = step(state, batch)
    np.testing.assert_allclose(m0["loss"], np.log(2), atol=1e-6)
    np.testing.assert_allclose(m0["rewards/margins"], 0.0, atol=1e-6)
    for _ in range(15):
        state, m = step(state, batch)
    assert m["loss"] < 0.6 and m["rewards/accuracies"] == 1.0, m


def test_gradient_accumulation_is_exact():
    _, state, _, step = make(sgd=True)  # the update is the gradient itself
    batch = pair_batch(4)
    one, m1 = step(state, micro(batch, 1))
    two, m2 = step(state, micro(batch, 2))
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(a, b, atol=2e-6)
    np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-6)
    assert float(m1["num_examples"]) == float(m2["num_examples"]) == 4.0  # a count: summed, not averaged


def test_counts_add_up_and_means_are_weighted():
    """Host-side reduction of evaluation batches (the loop's evaluate): counts sum, other metrics are
    means weighted by each batch's weight."""
    sums = None
    for metrics, weight in (({"loss": 1.0, "num_examples": 8.0}, 8.0), ({"loss": 4.0, "num_examples": 2.0}, 2.0)):
        sums = S.add_metrics(sums or dict.fromkeys(metrics, 0.0), metrics, weight)
    assert S.finish_metrics(sums, 10.0) == {"loss": 1.6, "num_examples": 10.0}


def test_precomputed_reference_equals_frozen_reference():
    _, state_f, model, step_f = make("frozen", sgd=True)  # the update is the gradient: compare it tightly
    _, state_p, _, step_p = make("precomputed", sgd=True)
    batch = pair_batch(4, seed=3)
    ref = reference_logps(model, batch, "preference")
    a, ma = step_f(state_f, micro(batch, 1))
    b, mb = step_p(state_p, micro({**batch, **ref}, 1))
    for k in ("loss", "rewards/chosen", "rewards/margins"):
        np.testing.assert_allclose(ma[k], mb[k], atol=1e-6)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_tr_dpo_hard_and_soft_reference_updates():
    _, state, _, step = make(sync_every=2, alpha=1.0)
    batch = micro(pair_batch(4), 1)
    s1, _ = step(state, batch)
    leaves = lambda t: jax.tree.leaves(t)  # noqa: E731
    assert all(np.array_equal(r, p) for r, p in zip(leaves(s1.reference), leaves(state.reference)))  # step 1: no sync
    s2, _ = step(s1, batch)
    assert all(np.array_equal(r, p) for r, p in zip(leaves(s2.reference), leaves(s2.params["model"])))  # hard sync
    _, state, _, step_soft = make(sync_every=1, alpha=0.25)
    s1, _ = step_soft(state, batch)
    for r, p, r0 in zip(leaves(s1.reference), leaves(s1.params["model"]), leaves(state.reference)):
        np.testing.assert_allclose(r, 0.25 * np.asarray(p) + 0.75 * np.asarray(r0), atol=1e-6)


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (forced CPU) devices")
def test_sharded_step_equals_single_device():
    spec, state, _, step = make(sgd=True)  # the update is the gradient: compare it tightly
    batch = micro(pair_batch(8), 2)
    ref_state, ref_m = step(state, batch)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    state_sh = S.train_state_shardings(state, mesh)
    batch_sh = S.batch_shardings(batch, mesh)
    sharded_step = S.compile_train_step(spec, state_sh, batch_sh, mesh)
    sharded = S.shard_state(state, state_sh)
    assert sharded.params["model"]["blocks"]["mlp"]["gate"][...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    new, m = sharded_step(sharded, jax.device_put(batch, batch_sh))
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (forced CPU) devices")
def test_optimizer_moments_are_sharded_like_params():
    _, state, _, _ = make()
    state_sh = S.train_state_shardings(state, make_mesh(data=1, fsdp=4, tensor=2))
    adam = state_sh.opt_state[1][0]
    for mu, p in zip(jax.tree.leaves(adam.mu), jax.tree.leaves(state_sh.params)):
        assert mu.spec == p.spec
    assert adam.count.spec == jax.sharding.PartitionSpec()


def test_sft_step_lowers_nll():
    model = init_decoder(CFG, seed=1)
    graphdef, params = nnx.split(model)
    spec = S.StepSpec(graphdef=graphdef, task_loss=sft_loss,
                      optimizer=make_optimizer(OptimizerConfig(learning_rate=1e-2, schedule="constant")))
    pb = pair_batch(4)
    batch = micro({k.replace("chosen_", ""): v for k, v in pb.items() if k.startswith("chosen_")}, 1)
    state = S.init_state(spec, params)
    step = jax.jit(functools.partial(S.train_step, spec))
    state, m0 = step(state, batch)
    np.testing.assert_allclose(m0["sft/tokens"], float(pb["chosen_loss_mask"][:, 1:].sum()))
    for _ in range(10):
        state, m = step(state, batch)
    assert m["sft/nll"] < m0["sft/nll"] - 0.5


def test_lora_step_trains_adapters_only():
    from align_jax.training.lora import LoraConfig

    model = init_decoder(CFG, seed=2)
    graphdef, params = nnx.split(model)
    spec = S.StepSpec(
        graphdef=graphdef,
        task_loss=functools.partial(preference_loss, loss_fn=PREFERENCE_LOSSES.build("dpo", beta=0.1)),
        optimizer=make_optimizer(OptimizerConfig(learning_rate=1e-2, schedule="constant")),
        reference_mode="frozen",
        reference_fn=functools.partial(reference_logps, kind="preference"),
        lora=LoraConfig(rank=4, alpha=8.0),
    )
    state = S.init_state(spec, params, lora_key=jax.random.key(0))
    assert set(state.params) == {"lora"} and set(state.frozen) == {"model"}
    base = [np.asarray(x) for x in jax.tree.leaves(state.frozen)]
    step = jax.jit(functools.partial(S.train_step, spec))
    batch = micro(pair_batch(4), 1)
    state, m0 = step(state, batch)
    np.testing.assert_allclose(m0["loss"], np.log(2), atol=1e-6)  # B = 0 at init: policy == reference
    for _ in range(10):
        state, m = step(state, batch)
    assert m["loss"] < 0.65, m
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(base, jax.tree.leaves(state.frozen)))


def test_reward_model_step_learns_to_rank_pairs():
    from align_jax.training.tasks import init_reward_head, reward_model_loss

    model = init_decoder(CFG, seed=3)
    graphdef, params = nnx.split(model)
    spec = S.StepSpec(
        graphdef=graphdef,
        task_loss=functools.partial(reward_model_loss, center_coef=0.01),
        optimizer=make_optimizer(OptimizerConfig(learning_rate=1e-2, schedule="constant")),
        uses_head=True,
    )
    state = S.init_state(spec, params, reward_head=init_reward_head(CFG.hidden_size))
    step = jax.jit(functools.partial(S.train_step, spec))
    batch = micro(pair_batch(8, seed=5), 1)
    state, m0 = step(state, batch)
    np.testing.assert_allclose(m0["loss"], np.log(2), atol=1e-6)  # zero head: equal rewards
    for _ in range(20):
        state, m = step(state, batch)
    assert m["rm/accuracy"] == 1.0 and m["loss"] < 0.3, m
