"""Reward models as parts: a reward-model run exports trunk + head, ``load_reward_model`` scores what
the training-time head scored, the RL reward registry takes one by path, and broken folders fail
with the file named. The toy character model keeps it fast."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from align_jax import rewards as R
from align_jax.data.records import PreferenceRecord, PromptRecord
from align_jax.data.tokenization import Tokenize
from align_jax.models.registry import load_model
from align_jax.models.toy import materialize
from align_jax.parallel.mesh import make_mesh
from align_jax.rewards.model import HEAD_FILE, RewardModelError, load_reward_model, save_reward_model
from align_jax.training.tasks import sequence_rewards
from align_jax.training.tasks.offline import REWARD_MODEL_LOSSES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from engine_config import make_config  # noqa: E402


def train_losses(workdir):
    from align_jax.training.metrics_logging import read_metrics

    return [r["loss"] for r in read_metrics(workdir, split="train")]

PROMPTS = ["Add 2 and 3.", "Name a colour.", "Say hi.", "Count to four.", "What is up?"]
GOOD = ["5", "blue", "hi there", "1 2 3 4", "the sky"]
BAD = ["no", "I won't", "...", "x", "?"]


def stack(rows, side):
    return {f"{side}_{k}": jnp.asarray(np.stack([r[f"{side}_{k}"] for r in rows]))
            for k in ("tokens", "positions", "segment_ids")}


@pytest.fixture(scope="module")
def toy():
    return load_model(path=materialize())


@pytest.fixture(scope="module")
def random_rm(toy, tmp_path_factory):
    """The toy trunk with a random head, saved as a reward-model folder; and the head."""
    rng = np.random.RandomState(0)
    head = {"w": jnp.asarray(rng.randn(64).astype(np.float32)), "b": jnp.float32(0.25)}
    folder = save_reward_model(tmp_path_factory.mktemp("rm") / "rm", toy.model, head, toy.tokenizer, max_length=64,
                               chat_template=toy.chat_template)
    return folder, head


def training_time_rewards(model, head, tokenizer, template, max_length, prompts, replies):
    tok = Tokenize(tokenizer, template=template, max_length=max_length)
    rows = [tok(PreferenceRecord(p, c, "-")) for p, c in zip(prompts, replies)]
    return np.asarray(sequence_rewards(model, head, stack(rows, "chosen"), "chosen"))


def test_loaded_reward_model_scores_what_the_head_scored(toy, random_rm):
    folder, head = random_rm
    want = training_time_rewards(toy.model, head, toy.tokenizer, toy.chat_template, 64, PROMPTS, GOOD)
    rm = load_reward_model(folder, batch_size=2)  # 3 batches, the last one short
    got = rm.score(PROMPTS, GOOD)
    assert got.shape == (5,) and np.ptp(got) > 1e-3  # distinct rewards: the comparison can fail
    np.testing.assert_allclose(got, want, atol=1e-5)
    # an empty reply (the policy ended its turn at once) is scored, not an error
    tok = Tokenize(toy.tokenizer, template=toy.chat_template, max_length=64)
    ids = tok.prompt_ids([{"role": "user", "content": PROMPTS[0]}]) + toy.tokenizer.encode("<|im_end|>")
    n = len(ids)
    hidden = toy.model(jnp.asarray([ids]), jnp.arange(n)[None], jnp.ones((1, n), jnp.int32),
                       return_logits=False).final_hidden[0, -1]
    np.testing.assert_allclose(rm.score(PROMPTS[:1], [""]), [float(hidden @ head["w"] + head["b"])], atol=1e-5)
    # chat messages are prompts too
    np.testing.assert_allclose(rm.score([[{"role": "user", "content": PROMPTS[0]}]], GOOD[:1]), want[:1], atol=1e-5)


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (forced CPU) devices")
def test_sharded_scores_equal_one_device(random_rm):
    folder, _ = random_rm
    one = load_reward_model(folder, batch_size=4).score(PROMPTS, GOOD)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    many = load_reward_model(folder, batch_size=4, mesh=mesh)
    assert max(len(x.sharding.device_set) for x in jax.tree.leaves(nnx.state(many.lm.model))) == 8
    np.testing.assert_allclose(many.score(PROMPTS, GOOD), one, atol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of the mesh's 4 batch shards"):
        load_reward_model(folder, batch_size=3, mesh=mesh)


def test_rl_registry_takes_a_reward_model_by_path(random_rm):
    folder, _ = random_rm
    records = [PromptRecord(p) for p in PROMPTS]
    names = ("format", f"rm:{folder}")
    scores = R.score(names, R.build(names), records, GOOD)
    assert not scores.failed.any()
    np.testing.assert_allclose(scores.values[:, 1], load_reward_model(folder).score(PROMPTS, GOOD), atol=1e-6)


def test_ensemble_heads_need_a_rule_and_aggregate_like_numpy(toy, tmp_path):
    rng = np.random.RandomState(1)
    w, b = rng.randn(3, 64).astype(np.float32), rng.randn(3).astype(np.float32)
    folder = save_reward_model(tmp_path / "ens", toy.model, {"w": w, "b": b}, toy.tokenizer, max_length=64)
    members = load_reward_model(folder).score(PROMPTS, GOOD)  # [N, E] un-aggregated
    assert members.shape == (5, 3)
    for e in range(3):  # each member is its own head
        one = training_time_rewards(toy.model, {"w": jnp.asarray(w[e]), "b": jnp.asarray(b[e])}, toy.tokenizer,
                                    toy.chat_template, 64, PROMPTS, GOOD)
        np.testing.assert_allclose(members[:, e], one, atol=1e-5)
    with pytest.raises(RewardModelError, match="ensemble of 3 heads; name an aggregation rule"):
        R.build([f"rm:{folder}"])
    records = [PromptRecord(p) for p in PROMPTS]
    for rule, want in (("min", members.min(1)), ("mean", members.mean(1)),
                       ("mean-minus-std", members.mean(1) - members.std(1))):
        got = R.score([rule], R.build([f"rm:{folder}@{rule}"]), records, GOOD).values[:, 0]
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_broken_reward_model_folders_name_the_file(toy, random_rm, tmp_path):
    folder, head = random_rm
    with pytest.raises(RewardModelError, match="no such reward-model folder"):
        load_reward_model(tmp_path / "nowhere")
    policy_only = tmp_path / "policy"
    save_reward_model(policy_only, toy.model, head, toy.tokenizer, max_length=64)
    (policy_only / HEAD_FILE).unlink()
    with pytest.raises(RewardModelError, match=rf"{policy_only / HEAD_FILE}: missing reward head file"):
        R.build([f"rm:{policy_only}"])  # checked when named, before any weights load
    wrong = tmp_path / "wrong"
    save_reward_model(wrong, toy.model, {"w": np.zeros(32, np.float32), "b": np.float32(0)}, toy.tokenizer,
                      max_length=64)
    with pytest.raises(RewardModelError, match=r"head w has shape \[32\] but the trunk's hidden size is 64"):
        load_reward_model(wrong)
    safetensors.numpy.save_file({"w": np.zeros(64, np.float32)}, str(wrong / HEAD_FILE))
    with pytest.raises(RewardModelError, match=r"lacks tensor\(s\) \['b'\]"):
        load_reward_model(wrong)


def test_margin_option_shifts_the_bradley_terry_logit(toy):
    tok = Tokenize(toy.tokenizer, template=toy.chat_template, max_length=64)
    rows = [tok(PreferenceRecord(p, c, r)) for p, c, r in zip(PROMPTS, GOOD, BAD)]
    batch = {**stack(rows, "chosen"), **stack(rows, "rejected")}
    head = {"w": jnp.asarray(np.random.RandomState(2).randn(64).astype(np.float32)), "b": jnp.float32(0)}
    diff = np.asarray(sequence_rewards(toy.model, head, batch, "chosen") - sequence_rewards(toy.model, head, batch, "rejected"))
    loss, _, _ = REWARD_MODEL_LOSSES.build("bradley_terry", margin=0.5)(toy.model, head, batch)
    np.testing.assert_allclose(loss, np.mean(np.log1p(np.exp(-(diff - 0.5)))), rtol=1e-5)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        REWARD_MODEL_LOSSES.build("bradley_terry", margin=-1.0)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rm_data") / "pairs.jsonl"
    with path.open("w") as f:
        for i in range(24):
            f.write(json.dumps({"prompt": PROMPTS[i % 5] + f" #{i}", "chosen": GOOD[i % 5], "rejected": BAD[i % 5]}) + "\n")
    return path


def test_reward_model_run_exports_a_folder_that_scores_like_training(pairs_file, tmp_path):
    from align_jax.training.config import parse_config
    from align_jax.training.loop import run

    c = make_config(materialize(), pairs_file, train__task="reward_model", reference__mode="none",
                    train__export_hf=True, train__steps=3, optimizer__total_steps=3, data__max_length=64)
    c.loss = dict(name="bradley_terry", center_coef=0.01, margin=0.1)
    result = run(parse_config(c), tmp_path / "run")
    head = result["reward_head"]
    assert float(jnp.abs(head["w"]).sum()) > 0  # trained away from the zero init
    model = nnx.merge(result["graphdef"], result["policy_state"])
    lm = result["loaded"]
    prompts = [p + " #0" for p in PROMPTS]
    want = training_time_rewards(model, head, lm.tokenizer, lm.chat_template, 64, prompts, GOOD + BAD[:0])
    rm = load_reward_model(result["export"])
    assert rm.meta["loss_options"] == {"center_coef": 0.01, "margin": 0.1} and rm.tokenize.max_length == 64
    np.testing.assert_allclose(rm.score(prompts, GOOD), want, atol=1e-5)


def test_bootstrap_weights_are_poisson_counts_fixed_per_example():
    from align_jax.training.tasks.losses import bootstrap_weights, example_digest

    tokens = jnp.asarray(np.random.RandomState(3).randint(0, 1000, (4000, 12)), jnp.int32)
    positions, segments = jnp.broadcast_to(jnp.arange(12), tokens.shape), jnp.ones_like(tokens)
    digest = example_digest(tokens, positions, segments)
    w = np.asarray(bootstrap_weights(digest, 3, seed=0))
    assert w.shape == (4000, 3) and np.all(w == np.round(w)) and w.min() >= 0
    assert abs(w.mean() - 1) < 0.05 and abs(w.var() - 1) < 0.1  # Poisson(1)
    assert np.corrcoef(w[:, 0], w[:, 1])[0, 1] < 0.05  # members resample independently
    perm = np.random.RandomState(4).permutation(4000)
    np.testing.assert_array_equal(np.asarray(bootstrap_weights(digest[perm], 3, seed=0)), w[perm])  # per example
    assert not np.array_equal(np.asarray(bootstrap_weights(digest, 3, seed=1)), w)
    # the digest is a hash of the real tokens at their positions: padding does not enter it
    want = (np.asarray(tokens[:3], np.uint64) * ((np.arange(12) + 1) * 2654435761)).sum(1) % 2**32
    np.testing.assert_array_equal(np.asarray(digest[:3]), want)
    padded = jnp.concatenate([tokens[:3], jnp.full((3, 4), 7, jnp.int32)], axis=1)
    mask = jnp.concatenate([segments[:3], jnp.zeros((3, 4), jnp.int32)], axis=1)
    np.testing.assert_array_equal(np.asarray(example_digest(padded, jnp.broadcast_to(jnp.arange(16), (3, 16)), mask)), want)


def test_ensemble_loss_is_the_mean_of_member_losses_on_their_resamples(toy):
    from align_jax.training.tasks.losses import bootstrap_weights, example_digest

    tok = Tokenize(toy.tokenizer, template=toy.chat_template, max_length=64)
    rows = [tok(PreferenceRecord(p, c, r)) for p, c, r in zip(PROMPTS, GOOD, BAD)]
    batch = {**stack(rows, "chosen"), **stack(rows, "rejected")}
    rng = np.random.RandomState(5)
    head = {"w": jnp.asarray(rng.randn(3, 64).astype(np.float32)), "b": jnp.asarray(rng.randn(3).astype(np.float32))}
    loss, metrics, _ = REWARD_MODEL_LOSSES.build("bradley_terry", ensemble_size=3, center_coef=0.01, margin=0.2)(
        toy.model, head, batch)
    boot = np.asarray(bootstrap_weights(example_digest(batch["chosen_tokens"], batch["chosen_positions"],
                                                       batch["chosen_segment_ids"]), 3, 0))
    want = []
    for e in range(3):
        member = {"w": head["w"][e], "b": head["b"][e]}
        c = np.asarray(sequence_rewards(toy.model, member, batch, "chosen"), np.float64)
        r = np.asarray(sequence_rewards(toy.model, member, batch, "rejected"), np.float64)
        per = np.log1p(np.exp(-(c - r - 0.2))) + 0.01 * (c + r) ** 2
        want.append(np.sum(per * boot[:, e]) / max(boot[:, e].sum(), 1e-9))
    np.testing.assert_allclose(loss, np.mean(want), rtol=1e-5)
    assert float(metrics["rm/ensemble_std"]) > 0


def test_ensemble_run_exports_stacked_heads(pairs_file, tmp_path):
    from align_jax.training.config import parse_config
    from align_jax.training.loop import run

    c = make_config(materialize(), pairs_file, train__task="reward_model", reference__mode="none",
                    train__export_hf=True, train__steps=4, optimizer__total_steps=4, data__max_length=64)
    c.loss = dict(name="bradley_terry", ensemble_size=2)
    result = run(parse_config(c), tmp_path / "ens")
    w = np.asarray(result["reward_head"]["w"])
    assert w.shape == (2, 64) and not np.allclose(w[0], w[1])  # the resamples made the members differ
    rm = load_reward_model(result["export"])
    assert rm.ensemble_size == 2 and rm.score(PROMPTS, GOOD).shape == (5, 2)
    records = [PromptRecord(p) for p in PROMPTS]
    got = R.score(["m"], R.build([f"rm:{result['export']}@min"]), records, GOOD).values[:, 0]
    np.testing.assert_allclose(got, rm.score(PROMPTS, GOOD).min(1), atol=1e-6)

    # the packed layout (each prompt once, both replies in its row, several pairs a row) trains the
    # same ensemble: same bootstrap resamples, losses (step 1 is ln 2 with zero heads: 2-4 differ)
    # and heads
    c.data.pair_layout = "packed"
    c.train.export_hf = False
    packed = run(parse_config(c), tmp_path / "packed")
    losses = train_losses(tmp_path / "ens")
    assert len(set(np.round(losses, 6))) == 4
    np.testing.assert_allclose(train_losses(tmp_path / "packed"), losses, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(packed["reward_head"]["w"]), w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full_copies", "lora_adapters"])
def test_separate_trunk_run_exports_members_that_score_like_training(pairs_file, tmp_path, lora_rank):
    from align_jax.parallel.rules import member_of
    from align_jax.training.config import parse_config
    from align_jax.training.loop import run

    c = make_config(materialize(), pairs_file, train__task="reward_model", reference__mode="none",
                    train__export_hf=True, train__steps=3, optimizer__total_steps=3, data__max_length=64,
                    lora__rank=lora_rank)
    c.loss = dict(name="bradley_terry", ensemble_size=2, trunk="separate")
    result = run(parse_config(c), tmp_path / "sep")
    assert np.asarray(result["reward_head"]["w"]).shape == (2, 64)
    rm = load_reward_model(result["export"], batch_size=2)
    assert rm.ensemble_size == 2 and rm.meta["trunk"] == "separate"
    prompts = [p + " #0" for p in PROMPTS]
    got = rm.score(prompts, GOOD)  # [N, E]: one vmapped forward over the stacked member trunks
    lm = result["loaded"]
    for e in range(2):  # member e: its own trunk (LoRA merged) and its own head, as trained
        model = nnx.merge(result["graphdef"], member_of(result["policy_state"], e))
        want = training_time_rewards(model, member_of(result["reward_head"], e), lm.tokenizer, lm.chat_template, 64,
                                     prompts, GOOD)
        np.testing.assert_allclose(got[:, e], want, atol=1e-5)
        alone = load_reward_model(Path(result["export"]) / f"member_{e}")  # each member folder is a reward model
        np.testing.assert_allclose(alone.score(prompts, GOOD), want, atol=1e-5)
    assert np.abs(got[:, 0] - got[:, 1]).max() > 1e-4  # the trunks differ, so the columns could be swapped
    if len(jax.devices()) >= 8:  # the stacked trunks sharded by the rules (member axis replicated)
        sharded = load_reward_model(result["export"], batch_size=4, mesh=make_mesh(data=2, fsdp=2, tensor=2))
        assert max(len(x.sharding.device_set) for x in jax.tree.leaves(sharded.trunks)) == 8
        np.testing.assert_allclose(sharded.score(prompts, GOOD), got, atol=1e-5)
    records = [PromptRecord(p) for p in prompts]
    with pytest.raises(RewardModelError, match="ensemble of 2 heads; name an aggregation rule"):
        R.build([f"rm:{result['export']}"])
    for rule, want in (("min", got.min(1)), ("mean", got.mean(1)), ("mean-minus-std", got.mean(1) - got.std(1))):
        values = R.score([rule], R.build([f"rm:{result['export']}@{rule}"]), records, GOOD).values[:, 0]
        np.testing.assert_allclose(values, want, atol=1e-5)
    config = Path(result["export"]) / "member_1" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "num_hidden_layers": 3}))
    with pytest.raises(RewardModelError, match=rf"{config}: another architecture"):
        R.build([f"rm:{result['export']}@min"])  # checked when named, before any weights load
    (Path(result["export"]) / "member_1" / HEAD_FILE).unlink()
    with pytest.raises(RewardModelError, match=rf"{Path(result['export']) / 'member_1' / HEAD_FILE}: missing reward head"):
        R.build([f"rm:{result['export']}@min"])
