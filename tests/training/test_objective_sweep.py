"""Every registered preference and unpaired objective trains through the engine: the config is
parsed, the task loss, state and compiled train step are built by ``align_jax.training.loop``, and
one step on a real (tokenized, reference-scored) batch gives a finite loss and moves the weights.
Also: what the losses declare they need (WPO's squared norms, LD-DPO's per-token reference, BCO's
running reward shift) is given, or refused while the config is parsed; ``loss.name="combined"``.

The model is the 2-layer character model ``toy-chars`` and the shapes are the smallest the data
allow (4 pairs of at most 32 tokens): one compiled step per objective is the cost."""

import functools
import itertools
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

from align_jax.data.tokenization import Tokenize
from align_jax.models import load_model
from align_jax.parallel.mesh import make_mesh
from align_jax.data import pipeline
from align_jax.training import data_setup as D
from align_jax.training import loop
from align_jax.training import step as S
from align_jax.training.checkpointing import Checkpointer
from align_jax.training.config import parse_config
from align_jax.training.reference_cache import compute_reference_logps
from align_jax.training.tasks import TASKS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "configs"))
from common import base_config  # noqa: E402

pytestmark = pytest.mark.slow  # one compiled engine step per registered objective (~60 s)

SWEEP = [("preference", name) for name in TASKS["preference"].losses.names()] + [
    ("unpaired", name) for name in TASKS["unpaired"].losses.names()
]
WORDS = ["red", "blue", "green", "gold", "pink", "gray", "teal", "plum"]
# The same program, compiled with less optimisation: compiling is this test's cost, not running.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-chars")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "pairs.jsonl"
    with path.open("w") as f:
        for i, word in enumerate(WORDS):  # rejected replies of other lengths than the chosen (LD-DPO's excess)
            f.write(json.dumps({"prompt": f"Say {word}.", "chosen": word, "rejected": "no" + "!" * (i % 3)}) + "\n")
    return path


def make_config(pairs_file, task="preference", loss="dpo", **overrides):
    c = base_config()
    c.model.name = "toy-chars"
    c.mesh = dict(data=1, fsdp=1, tensor=1)
    c.data.update(source="preference", train_path=str(pairs_file), eval_fraction=0.25, max_length=32, batch_size=4,
                  max_eval_examples=4)
    c.train.update(task=task, steps=1, eval_every=1, checkpoint_every=1, export_hf=False, report=False)
    c.optimizer.update(learning_rate=1e-2, schedule="constant", total_steps=1)
    needs = TASKS[task].loss_needs(loss, {})
    c.reference.mode = "frozen" if needs.per_token_reference else "precomputed"
    c.loss = dict(name=loss)
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


@pytest.fixture(scope="module")
def examples(toy, pairs_file):
    """(train examples without, and with, precomputed reference log-probs) per task: built once,
    by the engine's data path."""
    cache = {}

    def of(cfg):
        key = cfg.train.task
        if key not in cache:
            splits = D.load_splits(cfg.data, cfg.task)
            tokenize = Tokenize(toy.tokenizer, template=toy.chat_template, max_length=cfg.data.max_length)
            train = pipeline.tokenize_all(tokenize, splits.train)
            values = compute_reference_logps(toy.model, train, cfg.task.record_kind, batch_size=len(train))
            cache[key] = (train, pipeline.attach(train, values), tokenize.pad_id)
        plain, scored, pad_id = cache[key]
        return (scored if cfg.reference.mode == "precomputed" else plain), pad_id

    return of


def engine_step(cfg, toy, examples):
    """What ``loop.run`` builds: spec, state, its shardings, the compiled train step, the device
    batches of the train iterator, and ``compile_eval()`` for the eval step."""
    mesh = make_mesh(1, 1, 1)
    task_loss, _ = loop.build_task_loss(cfg, toy.tokenizer)
    spec, state, state_sh = loop.build_state(cfg, toy, mesh, task_loss, reference_fn=loop.frozen_reference_fn(cfg))
    train_ex, pad_id = examples(cfg)
    packer = D.pair_packer(cfg.data, train_ex, pad_id)
    batches = D.iterator(train_ex, cfg.data, train=True, transform=packer)
    first = next(batches)
    shaped = {k: np.zeros((1,) + np.shape(v), np.asarray(v).dtype) for k, v in first.items()}
    batch_sh = S.batch_shardings(shaped, mesh)
    to_device = functools.partial(D.to_global, data=cfg.data, shardings=batch_sh)
    sample = to_device(first)

    def compile_(make):
        return make(spec, state_sh, batch_sh, mesh).lower(state, sample).compile(compiler_options=FAST_COMPILE)

    return SimpleNamespace(spec=spec, state=state, state_sh=state_sh, step=compile_(S.compile_train_step),
                           batches=(to_device(b) for b in itertools.chain([first], batches)),
                           compile_eval=functools.partial(compile_, S.compile_eval_step))


def flat_params(state):
    return np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(jax.device_get(state.params))])


@pytest.mark.parametrize("task,loss", SWEEP, ids=[f"{t}-{n}" for t, n in SWEEP])
def test_every_objective_trains_one_step(task, loss, toy, pairs_file, examples):
    cfg = parse_config(make_config(pairs_file, task, loss))
    engine = engine_step(cfg, toy, examples)
    before = flat_params(engine.state)
    state, metrics = engine.step(engine.state, next(engine.batches))
    metrics = jax.device_get(metrics)
    assert np.isfinite(metrics["loss"]) and metrics["weight"] > 0, metrics
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert np.abs(flat_params(state) - before).max() > 0


def test_sweep_covers_the_objectives_the_engine_used_to_refuse():
    names = {name for _, name in SWEEP}
    assert {"wpo", "ld_dpo", "combined", "bco_pair", "bco", "kto"} <= names


# -- what the losses declare they need ----------------------------------------------------------


def test_needs_are_declared_by_the_losses():
    pref = TASKS["preference"]
    assert pref.loss_needs("wpo", {}).policy_sq_norm and not pref.loss_needs("wpo", {"aligned": False}).policy_sq_norm
    assert pref.loss_needs("ld_dpo", {}).per_token_reference
    assert pref.loss_needs("bco_pair", {}).running_means == (("reward_shift", "bco/batch_reward_mean"),)
    assert TASKS["unpaired"].loss_needs("bco", {}).running_means == (("reward_shift", "bco/batch_reward_mean"),)
    mix = {"components": {"ld_dpo": {"weight": 0.5}, "bco_pair": {}, "wpo": {"aligned": False}}}
    needs = pref.loss_needs("combined", mix)
    assert needs.per_token_reference and not needs.policy_sq_norm
    assert needs.running_means == (("reward_shift", "bco_pair/bco/batch_reward_mean"),)
    assert pref.loss_needs("dpo", {}) == type(needs)()


def test_unmet_needs_fail_while_the_config_is_parsed(pairs_file):
    with pytest.raises(ValueError, match=r"loss.name='ld_dpo' needs per-token reference log-probs.*"
                                         r"reference.mode='precomputed'.*set reference.mode='frozen'"):
        parse_config(make_config(pairs_file, loss="ld_dpo", reference__mode="precomputed"))
    mix = {"dpo": {"weight": 1.0}, "ld_dpo": {"weight": 0.5}}
    with pytest.raises(ValueError, match="loss.name='combined' needs per-token reference log-probs"):
        parse_config(make_config(pairs_file, loss="combined", loss__components=mix, reference__mode="precomputed"))
    with pytest.raises(ValueError, match=r"loss.name='wpo' needs the policy's per-token log sum_v p_v\^2.*'packed'"):
        parse_config(make_config(pairs_file, loss="wpo", data__pair_layout="packed"))
    parse_config(make_config(pairs_file, loss="wpo", loss__aligned=False, data__pair_layout="packed"))
    parse_config(make_config(pairs_file, loss="ld_dpo", reference__mode="frozen", data__pair_layout="packed"))


def test_combined_loss_is_checked_part_by_part_while_parsing(pairs_file):
    cfg = parse_config(make_config(pairs_file, loss="combined",
                                   loss__components={"dpo": {"weight": 0.8, "beta": 0.2}, "sft": {}}))
    assert dict(cfg.loss_options)["components"]["dpo"]["beta"] == 0.2
    bad = [
        ({"dpoo": {}}, r"combined.*unknown preference loss 'dpoo'.*did you mean 'dpo'"),
        ({"dpo": {"gamma": 1.0}}, r"combined.*'dpo' got unknown option.*valid options: beta"),
        ({"dpo": {"beta": -1.0}}, r"combined.*beta=-1.0 must be > 0"),
        ({"dpo": {"weight": "x"}}, r"combined.*dpo.weight='x' must be a number >= 0"),
        ({"combined": {}}, "cannot contain 'combined'"),
        ({}, "non-empty"),
    ]
    for components, message in bad:
        with pytest.raises(ValueError, match=message):
            parse_config(make_config(pairs_file, loss="combined", loss__components=components))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['dpo'\].*valid options: components"):
        parse_config(make_config(pairs_file, loss="combined", loss__dpo={"weight": 1.0}))


# -- the needs, given -------------------------------------------------------------------------------


def test_bco_reward_shift_is_the_running_mean_of_past_batches_and_is_checkpointed(toy, pairs_file, examples, tmp_path):
    """delta = mean of the previous steps' batch reward means (0 before the first: the rewards' value
    while the policy is the reference); it lives in the state and survives a checkpoint."""
    cfg = parse_config(make_config(pairs_file, "unpaired", "bco"))
    engine = engine_step(cfg, toy, examples)
    assert engine.spec.running_means == (("reward_shift", "bco/batch_reward_mean"),)
    state, batch_means, deltas = engine.state, [], []
    for _ in range(3):
        state, metrics = engine.step(state, next(engine.batches))
        metrics = jax.device_get(metrics)
        batch_means.append(float(metrics["bco/batch_reward_mean"]))
        deltas.append(float(metrics["bco/delta"]))
    assert deltas[0] == 0.0
    np.testing.assert_allclose(deltas[1:], [batch_means[0], np.mean(batch_means[:2])], rtol=1e-5, atol=1e-7)
    extra = jax.device_get(state.extra["reward_shift"])
    assert float(extra["count"]) == 3.0 and batch_means[1] != batch_means[0]
    np.testing.assert_allclose(float(extra["mean"]), np.mean(batch_means), rtol=1e-5, atol=1e-7)
    evaluated = jax.device_get(engine.compile_eval()(state, next(engine.batches)))  # reads delta, does not update it
    assert float(evaluated["bco/delta"]) == float(extra["mean"])

    with Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(3, state)
        ckpt.wait()
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, engine.state_sh)
        restored, _ = ckpt.restore(3, abstract_state=abstract)
    np.testing.assert_array_equal(jax.device_get(restored.extra["reward_shift"]["mean"]), extra["mean"])


def test_ld_dpo_per_token_reference_is_the_same_in_every_layout(toy, pairs_file, examples):
    """In reference mode "frozen" the step scores the reference per token: separate and prefix-shared
    batches give the same LD-DPO loss for a policy that differs from the reference."""
    losses = {}
    for layout in ("separate", "shared_prefix"):
        cfg = parse_config(make_config(pairs_file, loss="ld_dpo", data__pair_layout=layout))
        mesh = make_mesh(1, 1, 1)
        task_loss, _ = loop.build_task_loss(cfg, toy.tokenizer)
        spec, state, _ = loop.build_state(cfg, toy, mesh, task_loss, reference_fn=loop.frozen_reference_fn(cfg))
        train_ex, pad_id = examples(cfg)
        batch = next(D.iterator(train_ex, cfg.data, train=False, transform=D.pair_packer(cfg.data, train_ex, pad_id)))
        policy = jax.tree.map(lambda x: x * 1.05, S.policy_state(spec, state.params, state.frozen))

        @jax.jit
        def loss_of(policy, reference, batch, spec=spec):
            fields = spec.reference_fn(nnx.merge(spec.graphdef, reference), batch)  # what the step adds
            assert fields["reference_chosen"].token_logps.ndim == 2
            loss, metrics, _ = spec.task_loss(nnx.merge(spec.graphdef, policy), {**batch, **fields})
            return loss, metrics["rewards/margins"]

        losses[layout] = [float(x) for x in loss_of(policy, state.reference, batch)]
    assert losses["separate"][1] != 0.0
    np.testing.assert_allclose(losses["shared_prefix"], losses["separate"], rtol=1e-4, atol=1e-6)
