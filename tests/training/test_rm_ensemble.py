"""Separate-trunk reward-model ensembles (``loss.trunk="separate"``): one vmapped step over E stacked
trunks (full copies, or one LoRA adapter each over the shared base) trains each member exactly as
E separate single-model runs would, each with its own seed and bootstrap weights; a bad ``trunk``
fails while the config is parsed. The toy character model keeps it fast."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from align_jax.data.records import PreferenceRecord
from align_jax.data.tokenization import Tokenize
from align_jax.models.registry import load_model
from align_jax.models.toy import materialize
from align_jax.parallel.rules import member_of, stack_members
from align_jax.training import step as S
from align_jax.training.config import parse_config
from align_jax.training.lora import LoraConfig
from align_jax.training.optimizer import OptimizerConfig, make_optimizer
from align_jax.training.tasks import init_reward_head
from align_jax.training.tasks.losses import bootstrap_weights, example_digest
from align_jax.training.tasks.offline import REWARD_MODEL_LOSSES

sys.path.insert(0, str(Path(__file__).parent))
from engine_config import make_config  # noqa: E402

E, SEED, BOOTSTRAP_SEED, STEPS = 3, 7, 5, 3
PROMPTS = ["Add 2 and 3.", "Name a colour.", "Say hi.", "Count to four.", "What is up?", "Pick one.", "Yes?", "Go."]
GOOD = ["5", "blue", "hi there", "1 2 3 4", "the sky", "one", "yes", "ok"]
BAD = ["no", "I won't", "...", "x", "?", "none", "no", "stop"]
# lr 1e-3 AdamW; clipping at 0.05 engages in every step (grad norms 0.2-0.7), so one global clip
# over all members (instead of one per member) would change the updates
OPTIMIZER = OptimizerConfig(learning_rate=1e-3, schedule="constant", max_grad_norm=0.05)


@pytest.fixture(scope="module")
def toy():
    return load_model(path=materialize())


@pytest.fixture(scope="module")
def batch(toy):
    """8 pairs as 2 micro-batches of 4: [A=2, B=4, L]."""
    tok = Tokenize(toy.tokenizer, template=toy.chat_template, max_length=48)
    rows = [tok(PreferenceRecord(p, c, r)) for p, c, r in zip(PROMPTS, GOOD, BAD)]
    keys = [k for k in rows[0] if k.startswith(("chosen_", "rejected_"))]
    return {k: jnp.asarray(np.stack([r[k] for r in rows])).reshape((2, 4) + rows[0][k].shape) for k in keys}


def _train(spec, state, batch):
    step = jax.jit(lambda s, b: S.train_step(spec, s, b))
    trace = []
    for _ in range(STEPS):
        state, metrics = step(state, batch)
        trace.append(jax.device_get(metrics))
    return state, trace


@pytest.mark.parametrize("lora", [None, LoraConfig(rank=4)], ids=["full_copies", "lora_adapters"])
def test_separate_trunk_ensemble_equals_separate_single_runs(toy, batch, lora):
    graphdef, base = nnx.split(toy.model)
    optimizer = make_optimizer(OPTIMIZER)
    loss = REWARD_MODEL_LOSSES.build("bradley_terry", center_coef=0.01, ensemble_size=E, trunk="separate",
                                     bootstrap_seed=BOOTSTRAP_SEED)
    spec = S.StepSpec(graphdef, loss, optimizer, lora=lora, uses_head=True, members=E)
    ensemble, trace = _train(spec, S.init_state(spec, jax.tree.map(jnp.copy, base), reward_head=init_reward_head(64, E),
                                                lora_key=[jax.random.key(SEED + e) for e in range(E)]), batch)

    single = S.StepSpec(graphdef, REWARD_MODEL_LOSSES.build("bradley_terry", center_coef=0.01), optimizer, lora=lora,
                        uses_head=True)
    boot = jnp.stack([bootstrap_weights(example_digest(batch["chosen_tokens"][a], batch["chosen_positions"][a],
                                                       batch["chosen_segment_ids"][a]), E, BOOTSTRAP_SEED)
                      for a in range(2)])  # [A, B, E]
    members = []
    for e in range(E):  # member e = a single run with seed SEED + e on member e's bootstrap weights
        state = S.init_state(single, jax.tree.map(jnp.copy, base), lora_key=jax.random.key(SEED + e),
                             reward_head=init_reward_head(64))
        state, single_trace = _train(single, state, {**batch, "example_weight": boot[..., e]})
        for step, (got, want) in enumerate(zip(trace, single_trace)):
            np.testing.assert_allclose(got[f"member_{e}/loss"], want["loss"], rtol=1e-5, atol=1e-6,
                                       err_msg=f"member {e} step {step + 1}")
            assert want["grad_norm"] > OPTIMIZER.max_grad_norm  # clipped
        got_params = member_of(ensemble.params, e)
        assert jax.tree.structure(got_params) == jax.tree.structure(state.params)
        for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got_params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=0, err_msg=f"member {e} {jax.tree_util.keystr(path)}")
        members.append(state.params)
    np.testing.assert_allclose(trace[-1]["loss"], np.mean([trace[-1][f"member_{e}/loss"] for e in range(E)]), rtol=1e-6)
    # the members differ (seeds, resamples), so the comparison above can fail
    trunk = "lora" if lora else "model"
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(members[0][trunk]),
                                                              jax.tree.leaves(members[1][trunk]))) > 1e-4
    if lora is None:  # no frozen copy: each member's trunk is its own
        assert ensemble.frozen == {}
    else:  # one frozen base for all members, bit-identical to the loaded weights
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ensemble.frozen["model"]), jax.tree.leaves(base)))


def test_member_stacking_names_the_axis_and_round_trips(toy):
    _, base = nnx.split(toy.model)
    stacked = stack_members([base, jax.tree.map(lambda x: x + 1, base)])
    path, var = next(iter(nnx.to_flat_state(stacked)))
    original = dict(nnx.to_flat_state(base))[path]
    assert var.get_metadata()["axes"] == ("member",) + tuple(original.get_metadata()["axes"])
    assert var.get_value().shape == (2,) + original.get_value().shape
    back = dict(nnx.to_flat_state(member_of(stacked, 1)))[path]
    assert back.get_metadata()["axes"] == original.get_metadata()["axes"]  # the original is untouched too
    np.testing.assert_array_equal(back.get_value(), original.get_value() + 1)


def test_bad_trunk_values_fail_while_the_config_is_parsed(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    c = make_config(tmp_path / "no_model_here", data, train__task="reward_model", reference__mode="none")
    c.loss = dict(name="bradley_terry", ensemble_size=2, trunk="seperate")
    with pytest.raises(ValueError, match="trunk must be one of 'shared', 'separate', got 'seperate'"):
        parse_config(c)  # the model folder does not exist: nothing was loaded
    c.loss = dict(name="bradley_terry", ensemble_size=2, trunk="separate", bootstrap=False)
    with pytest.raises(ValueError, match="trains 2 identical copies"):
        parse_config(c)
    c.lora.rank = 4  # own adapters make the members differ
    assert dict(parse_config(c).loss_options)["trunk"] == "separate"
