"""Prefix-shared, packed preference batches (issue #7): the tree-masked forward, per-pair log-probs,
DPO losses and gradients, and both reference modes equal the separate two-row layout; the packing
function's layout and error policy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from align_jax.data.pair_packing import (
    length_groups,
    pack_length_groups,
    count_real_tokens,
    pack_example_batch,
    pack_preference_pairs,
    rows_needed,
)
from align_jax.models import ModelConfig, init_decoder
from align_jax.objectives.preference import PREFERENCE_LOSSES
from align_jax.training import step as S
from align_jax.training.optimizer import OptimizerConfig, make_optimizer
from align_jax.training.packed_pairs import packed_sides_logps, packed_token_logps
from align_jax.training.tasks import packed_preference_loss, preference_loss, reference_logps, sides_logps
from test_engine import pairs_file, tiny_model_dir  # noqa: F401  (module-scoped fixtures: tiny model, pairs)

V = 61
LLAMA = ModelConfig(family="llama", vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, tie_embeddings=False)
# Gemma 3 with a window (3) shorter than the prompts, so windowing by position is exercised.
GEMMA = ModelConfig(family="gemma3", vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=3,
                    num_heads=4, num_kv_heads=2, head_dim=8, activation="gelu_tanh", norm_plus_one=True,
                    embed_scale=True, qk_norm=True, sandwich_norm=True, query_pre_attn_scalar=16,
                    layer_types=("sliding", "full", "sliding"), sliding_window=3, rope_theta=1e6,
                    local_rope_theta=1e4, final_logit_softcap=30.0)
MODELS = {"llama": LLAMA, "gemma3": GEMMA}
DPO = PREFERENCE_LOSSES.build("dpo", beta=0.1)


def make_pairs(n, seed=0):
    """Prompts of 3-6 tokens, completions of 1-5 tokens (different lengths per side)."""
    rng = np.random.RandomState(seed)
    return [
        (rng.randint(1, V, 3 + i % 4), rng.randint(1, V, 1 + (i * 2) % 5), rng.randint(1, V, 1 + (i + 3) % 5))
        for i in range(n)
    ]


def separate_batch(pairs, max_pairs=None):
    """The tokenization.py layout: two right-padded rows (prompt + side) per pair."""
    n = max_pairs or len(pairs)
    length = max(len(p) + max(len(c), len(r)) for p, c, r in pairs) + 1
    out = {}
    for s, side in enumerate(("chosen", "rejected")):
        f = {k: np.zeros((n, length), np.int32) for k in ("tokens", "loss_mask", "positions", "segment_ids")}
        for i, pair in enumerate(pairs):
            p, c = pair[0], pair[1 + s]
            m = len(p) + len(c)
            f["tokens"][i, :m] = np.concatenate([p, c])
            f["loss_mask"][i, len(p) : m] = 1
            f["positions"][i, :m] = np.arange(m)
            f["segment_ids"][i, :m] = 1
        out.update({f"{side}_{k}": jnp.asarray(v) for k, v in f.items()})
    out["example_weight"] = jnp.asarray(np.arange(n) < len(pairs), jnp.float32)
    return out


def packed_batch(pairs, pack=True, row_length=24, max_pairs=None):
    lengths = [len(p) + len(c) + len(r) for p, c, r in pairs]
    rows = rows_needed(lengths, row_length, pack=pack)
    out = pack_preference_pairs(pairs, row_length=row_length, num_rows=rows + 1, max_pairs=max_pairs or len(pairs),
                                pack=pack)
    return {k: jnp.asarray(v) for k, v in out.items()}


# -- the tree-masked forward ------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_branch_mask_forward_equals_separate_rows(family):
    model = init_decoder(MODELS[family], seed=1)
    pairs = make_pairs(5, seed=2)
    packed = packed_batch(pairs)
    assert packed["packed_segment_ids"].max() >= 2  # several pairs share a row
    args = (packed["packed_tokens"], packed["packed_positions"], packed["packed_segment_ids"])
    tree = model(*args, branch_ids=packed["packed_branch_ids"]).logits
    flat = model(*args).logits  # no branch mask: the rejected tokens see the chosen ones
    sep = separate_batch(pairs)
    idx, pidx = np.asarray(packed["packed_pair_index"]), np.asarray(packed["packed_branch_ids"])
    leaked = 0.0
    for s, side in enumerate(("chosen", "rejected")):
        ref = model(sep[f"{side}_tokens"], sep[f"{side}_positions"], sep[f"{side}_segment_ids"]).logits
        for i, (p, c, r) in enumerate(pairs):
            n = len((c, r)[s])
            (rows, cols) = np.nonzero((idx == i) & ((pidx == 0) | (pidx == 1 + s)))  # prompt, then this side
            assert len(cols) == len(p) + n
            np.testing.assert_allclose(tree[rows, cols], ref[i, : len(p) + n], atol=1e-5, rtol=1e-5)
            leaked = max(leaked, float(np.abs(flat[rows, cols] - ref[i, : len(p) + n]).max()))
    assert leaked > 1e-3  # the comparison can fail: without branch ids the logits differ


def test_branch_ids_none_keeps_the_plain_mask():
    from align_jax.models.attention import attention_mask

    pos = jnp.asarray([[0, 1, 2, 2, 3, 2, 0]])
    seg = jnp.asarray([[1, 1, 1, 1, 1, 1, 0]])
    br = jnp.asarray([[0, 0, 1, 1, 1, 2, 0]])
    plain = attention_mask(pos, seg, pos, seg, None)
    tree = np.asarray(attention_mask(pos, seg, pos, seg, None, br, br))[0]
    assert np.array_equal(np.asarray(plain), np.asarray(attention_mask(pos, seg, pos, seg, None, None, None)))
    assert tree[5].tolist() == [True, True, False, False, False, True, False]  # rejected: prompt + itself
    assert tree[4].tolist() == [True, True, True, True, True, False, False]  # chosen: prompt + chosen
    windowed = np.asarray(attention_mask(pos, seg, pos, seg, 2, br, br))[0]
    assert windowed[5].tolist() == [False, True, False, False, False, True, False]  # window by position
    with pytest.raises(ValueError, match="both queries and keys"):
        attention_mask(pos, seg, pos, seg, None, br, None)


# -- per-pair log-probs, losses, gradients ----------------------------------------------------
def _compare_logps(model, pairs, pack, max_pairs):
    sep = separate_batch(pairs, max_pairs)
    packed = packed_batch(pairs, pack=pack, max_pairs=max_pairs)
    a = sides_logps(model, sep, ("chosen", "rejected"))
    b = packed_sides_logps(model, packed)
    for s, side in enumerate(("chosen", "rejected")):
        np.testing.assert_allclose(b[side].sum, a[side].sum, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(b[side].length, a[side].length)
        assert b[side].token_logps.shape == (max_pairs, packed["packed_tokens"].shape[1])
        for i, pair in enumerate(pairs):
            p, n = len(pair[0]), len(pair[1 + s])
            np.testing.assert_allclose(b[side].token_logps[i, :n], a[side].token_logps[i, p - 1 : p - 1 + n], atol=1e-5)
            assert float(np.abs(b[side].token_logps[i, n:]).sum()) == 0.0
        assert float(np.abs(b[side].token_logps[len(pairs):]).sum()) == 0.0  # padding pairs


@functools.cache
def _weighted_logps_and_grad(family):
    """-> (value_and_grad of a weighted sum of packed token log-probs, jitted with the chunk size
    static; the state; the batch; its value and gradient with every position unembedded)."""
    model = init_decoder(MODELS[family], seed=4)
    batch = packed_batch(make_pairs(5, seed=6), pack=True, max_pairs=6)  # one all-padding row: skipped chunks
    graphdef, state = nnx.split(model)

    def total(state, token_chunk_size):
        out = packed_token_logps(nnx.merge(graphdef, state), batch, token_chunk_size=token_chunk_size)
        weights = jnp.arange(out.token_logps.size, dtype=jnp.float32).reshape(out.token_logps.shape) % 5 + 1
        return (out.token_logps * weights).sum(), out

    value_and_grad = jax.jit(jax.value_and_grad(total, has_aux=True), static_argnums=1)
    return value_and_grad, state, batch, value_and_grad(state, None)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
def test_scored_positions_only_equal_the_full_unembedding(family, chunk):
    """Unembedding only the scored positions (in chunks; empty chunks skipped, the last one padded)
    gives the values and the parameter gradients of unembedding every position of the rows."""
    value_and_grad, state, batch, ((la, a), ga) = _weighted_logps_and_grad(family)  # reference: computed once
    (lb, b), gb = value_and_grad(state, chunk)  # opt-in path
    np.testing.assert_allclose(b.token_logps, a.token_logps, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(b.length, a.length)
    assert float(np.abs(np.asarray(b.token_logps)[np.asarray(batch["packed_target_side"]) == 0]).max()) == 0.0
    assert float(np.abs(np.asarray(a.token_logps)).min()) == 0.0 and float(la) != 0.0
    for x, y in zip(jax.tree.leaves(gb), jax.tree.leaves(ga)):
        np.testing.assert_allclose(x, y, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("pack", [True, False])
def test_packed_logps_equal_separate(family, pack):
    model = init_decoder(MODELS[family], seed=0)
    _compare_logps(model, make_pairs(5, seed=3), pack, max_pairs=7)


def _loss_and_grads(model, batch, task):
    graphdef, state = nnx.split(model)

    def f(state):
        loss, metrics, weight = task(nnx.merge(graphdef, state), batch, loss_fn=DPO)
        return loss, (metrics, weight)

    return jax.value_and_grad(f, has_aux=True)(state)


@pytest.mark.parametrize("family,pack", [("llama", True), ("llama", False), ("gemma3", True)])
def test_dpo_loss_and_gradients_equal_separate(family, pack):
    model = init_decoder(MODELS[family], seed=0)
    ref_model = init_decoder(MODELS[family], seed=7)  # a reference that differs from the policy
    pairs = make_pairs(5, seed=4)
    sep, packed = separate_batch(pairs, 6), packed_batch(pairs, pack=pack, max_pairs=6)
    ref_sep = reference_logps(ref_model, sep, "preference")
    ref_packed = reference_logps(ref_model, packed, "preference")
    for k in ref_sep:
        np.testing.assert_allclose(ref_packed[k], ref_sep[k], atol=1e-5, rtol=1e-5)
    (la, (ma, wa)), ga = _loss_and_grads(model, {**sep, **ref_sep}, preference_loss)
    (lb, (mb, wb)), gb = _loss_and_grads(model, {**packed, **ref_packed}, packed_preference_loss)
    assert abs(float(la) - np.log(2)) > 1e-4  # not the trivial policy == reference point
    np.testing.assert_allclose(lb, la, atol=1e-6)
    assert float(wa) == float(wb) == len(pairs)
    for k in ("rewards/chosen", "rewards/margins", "logps/chosen"):
        np.testing.assert_allclose(mb[k], ma[k], atol=1e-5, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(y, x, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("family,pack", [("llama", True), ("llama", False), ("gemma3", True)])
def test_reward_model_loss_and_gradients_equal_separate(family, pack):
    """Prefix-shared rows give a reward model the same rewards (each side's last token), bootstrap
    identities, loss and gradients (trunk and head) as the two separate rows; padding pairs weigh nothing."""
    from align_jax.objectives.reward import last_token_rewards
    from align_jax.training.packed_pairs import packed_example_digest
    from align_jax.training.tasks.losses import example_digest, pair_rewards
    from align_jax.training.tasks.offline import REWARD_MODEL_LOSSES

    model = init_decoder(MODELS[family], seed=0)
    d = MODELS[family].hidden_size
    pairs = make_pairs(5, seed=4)
    sep, packed = separate_batch(pairs, 6), packed_batch(pairs, pack=pack, max_pairs=6)
    rng = np.random.RandomState(1)
    for e, options in ((1, {"center_coef": 0.01, "margin": 0.2}), (3, {"ensemble_size": 3, "center_coef": 0.01})):
        shape = (d,) if e == 1 else (e, d)
        head = {"w": jnp.asarray(rng.randn(*shape).astype(np.float32)),
                "b": jnp.asarray(np.asarray(rng.randn(*shape[:-1]), np.float32))}
        c_sep, r_sep, digest_sep, w_sep = pair_rewards(model, head, sep)
        c_pk, r_pk, digest_pk, w_pk = pair_rewards(model, head, packed)
        np.testing.assert_allclose(c_pk[:5], c_sep[:5], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(r_pk[:5], r_sep[:5], atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(digest_pk[:5], digest_sep[:5])
        np.testing.assert_array_equal(w_pk, w_sep)  # the 6th pair is padding in both
        # the separate side's reward is the head on its own row's last token (independent path)
        hidden = model(sep["chosen_tokens"], sep["chosen_positions"], sep["chosen_segment_ids"],
                       return_logits=False).final_hidden
        np.testing.assert_allclose(c_pk[:5], last_token_rewards(hidden, sep["chosen_segment_ids"], head)[:5], atol=1e-5)
        loss_fn = REWARD_MODEL_LOSSES.build("bradley_terry", **options)
        graphdef, state = nnx.split(model)

        def f(state, head, batch):
            loss, metrics, weight = loss_fn(nnx.merge(graphdef, state), head, batch)
            return loss, (metrics, weight)

        (la, (ma, wa)), ga = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(state, head, sep)
        (lb, (mb, wb)), gb = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(state, head, packed)
        assert abs(float(la) - np.log(2)) > 1e-3
        np.testing.assert_allclose(lb, la, atol=1e-6, rtol=1e-5)
        assert float(wa) == float(wb) == 5
        for k in ("rm/accuracy", "rm/margin", "rm/chosen"):
            np.testing.assert_allclose(mb[k], ma[k], atol=1e-5, rtol=1e-5)
        for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):  # float32 rounding on each tensor's scale
            np.testing.assert_allclose(y, x, atol=1e-5 * float(np.abs(x).max()), rtol=1e-4)
    assert len(set(np.asarray(packed_example_digest(packed))[:5].tolist())) == 5  # distinct pairs, distinct ids
    np.testing.assert_array_equal(example_digest(sep["chosen_tokens"], sep["chosen_positions"], sep["chosen_segment_ids"]),
                                  digest_sep)


def test_reward_model_reads_empty_sides_pad_ids_and_host_offsets_like_separate():
    """Edge cases of the prefix-shared reward-model layout: an empty chosen or rejected side (its
    reward is the prompt's last token, as in a row of its own), a nonzero pad id (padding enters
    neither hidden states nor the bootstrap identity), and two hosts' pairs concatenated into one
    global batch (``pair_offset``)."""
    from align_jax.training.tasks.losses import pair_rewards

    model = init_decoder(LLAMA, seed=0)
    rng = np.random.RandomState(2)
    head = {"w": jnp.asarray(rng.randn(32).astype(np.float32)), "b": jnp.float32(0.3)}
    pairs = make_pairs(6, seed=8)
    pairs[1] = (pairs[1][0], pairs[1][1][:0], pairs[1][2])  # empty chosen
    pairs[4] = (pairs[4][0], pairs[4][1], pairs[4][2][:0])  # empty rejected
    sep = separate_batch(pairs)
    pad = 2
    for side in ("chosen", "rejected"):  # pad with a real token id: masked, so nothing may change
        sep[f"{side}_tokens"] = jnp.where(sep[f"{side}_segment_ids"] > 0, sep[f"{side}_tokens"], pad)
    hosts = []
    for h in range(2):  # each host packs its 3 pairs, pair indices offset by 3 * h
        part = pairs[3 * h:3 * h + 3]
        rows = rows_needed([len(p) + len(c) + len(r) for p, c, r in part], 24)
        hosts.append(pack_preference_pairs(part, row_length=24, num_rows=rows + 1, max_pairs=3, pad_id=pad,
                                           pair_offset=3 * h))
    packed = {k: jnp.asarray(np.concatenate([x[k] for x in hosts])) for k in hosts[0]}
    c_sep, r_sep, d_sep, w_sep = pair_rewards(model, head, sep)
    c_pk, r_pk, d_pk, w_pk = pair_rewards(model, head, packed)
    np.testing.assert_allclose(c_pk, c_sep, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(r_pk, r_sep, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(d_pk, d_sep)
    np.testing.assert_array_equal(w_pk, w_sep)
    assert abs(float(c_sep[1]) - float(r_sep[4])) > 1e-3  # the empty sides read different prompts' last tokens


def _keep_gradient():
    """An identity optax transformation whose state is the last gradient it was given."""
    return optax.GradientTransformation(lambda params: jax.tree.map(jnp.zeros_like, params),
                                        lambda grads, state, params=None: (grads, grads))


def _spec(mode, task):
    """-> (a DPO step spec, its initial state); the optimizer state's first entry is the step's gradient."""
    graphdef, params = nnx.split(init_decoder(LLAMA, seed=0))
    optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-2, schedule="constant", total_steps=10))
    spec = S.StepSpec(
        graphdef=graphdef,
        task_loss=functools.partial(task, loss_fn=DPO),
        optimizer=optax.chain(_keep_gradient(), optimizer),
        reference_mode=mode,
        reference_fn=functools.partial(reference_logps, kind="preference") if mode == "frozen" else None,
    )
    return spec, S.init_state(spec, params)


STEP_PAIRS = make_pairs(4, seed=5)  # the batch of the three-step comparisons below


def _micro(batch):
    return jax.tree.map(lambda x: x[None], batch)


@functools.cache
def _separate_steps(mode):
    """Three steps of the separate two-row layout, the reference of the packed and length-grouped
    steps (computed once per mode) -> (per-pair reference log-probs ({} when frozen), each
    step's metrics, the first step's gradient, the final parameters)."""
    sep = separate_batch(STEP_PAIRS)
    per_pair = reference_logps(init_decoder(LLAMA, seed=9), sep, "preference") if mode == "precomputed" else {}
    spec, state = _spec(mode, preference_loss)
    step = jax.jit(functools.partial(S.train_step, spec))
    metrics = []
    for i in range(3):
        state, m = step(state, _micro({**sep, **per_pair}))
        metrics.append(m)
        if i == 0:
            grads = state.opt_state[0]
    assert float(metrics[-1]["loss"]) < np.log(2) - 1e-3  # it moved: the steps compared are not trivial
    return per_pair, metrics, grads, state.params


def _steps_like_separate(mode, task, batch, keys, params_atol):
    """Three steps of `task` on `batch` give the separate layout's metrics at every step and its
    parameters at the end; -> (the spec, the final state, the first step's metrics and gradient)."""
    _, want, _, params_a = _separate_steps(mode)
    spec, state = _spec(mode, task)
    step = jax.jit(functools.partial(S.train_step, spec))
    for i in range(3):
        state, m = step(state, batch)
        if i == 0:
            first, grads = m, state.opt_state[0]
        for k in keys:
            np.testing.assert_allclose(m[k], want[i][k], atol=1e-5, rtol=1e-5, err_msg=f"step {i} {k}")
    for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(y, x, atol=params_atol)
    return spec, state, first, grads


@pytest.mark.slow  # three Adam steps; one step's loss and gradients: test_dpo_loss_and_gradients_equal_separate
@pytest.mark.parametrize("mode", ["frozen", "precomputed"])
def test_reference_modes_train_like_separate(mode):
    packed = packed_batch(STEP_PAIRS)
    if mode == "precomputed":  # the packed layout's own reference pass (equal per pair: see above)
        packed = {**packed, **reference_logps(init_decoder(LLAMA, seed=9), packed, "preference")}
    _steps_like_separate(mode, packed_preference_loss, _micro(packed), ("loss", "rewards/margins", "weight"), 1e-5)


@pytest.mark.parametrize("mode", ["frozen", "precomputed"])
def test_length_grouped_steps_train_like_separate(mode):
    """A batch split into length groups (a tuple of differently shaped batches) gives the same
    update as the plain one-shape batch: gradients, weights, metrics and parameters after three steps."""
    per_pair, (ma, *_), grads_a, _ = _separate_steps(mode)
    groups = pack_length_groups(STEP_PAIRS, multiple=4, per_pair={k: np.asarray(v) for k, v in per_pair.items()})
    assert len({g["packed_tokens"].shape for g in groups}) >= 2  # the groups really differ in shape
    assert sum(int(g["pair_mask"].sum()) for g in groups) == len(STEP_PAIRS)
    groups = tuple({k: jnp.asarray(v) for k, v in g.items()} for g in groups)
    # Adam divides by sqrt(v): on coordinates whose gradient is ~1e-6, float rounding of the
    # gradients (checked tightly below) moves an lr=1e-2 update by ~1e-4.
    spec, state, mb, grads_b = _steps_like_separate(
        mode, packed_preference_loss, groups, ("loss", "rewards/margins", "logps/chosen", "weight", "grad_norm"), 3e-4)
    assert float(ma["weight"]) == float(mb["weight"]) == len(STEP_PAIRS)
    for x, y in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(y, x, atol=1e-6, rtol=1e-4)
    metrics = jax.jit(functools.partial(S.eval_step, spec))(state, groups)
    np.testing.assert_allclose(metrics["weight"], len(STEP_PAIRS))


def test_length_groups_round_up_and_keep_every_pair():
    assert length_groups([5, 64, 65, 1, 130], 64) == [(64, [0, 1, 3]), (128, [2]), (192, [4])]
    assert length_groups([], 8) == []
    with pytest.raises(ValueError, match="multiple"):
        length_groups([3], 0)
    pairs = make_pairs(5, seed=2)
    groups = pack_length_groups(pairs, multiple=4, per_pair={"example_weight": np.arange(5.0)})
    seen = []
    for g in groups:
        rows = g["packed_tokens"][0]
        assert rows.shape[1] % 4 == 0
        assert g["example_weight"].shape == g["pair_mask"].shape == (1, rows.shape[0])
        seen += g["example_weight"][0].tolist()
        for row, weight in zip(rows, g["example_weight"][0]):  # each row holds its own pair's tokens
            p, c, r = pairs[int(weight)]
            np.testing.assert_array_equal(row[: len(p) + len(c) + len(r)], np.concatenate([p, c, r]))
    assert sorted(seen) == list(range(5))


# -- the packing function -----------------------------------------------------------------------
def test_pack_layout_parents_and_offsets():
    pairs = [([5, 6, 7], [8, 9], [10, 11, 12]), ([1, 2], [3], [4]), ([13] * 9, [14], [15] * 2)]
    out = pack_preference_pairs(pairs, row_length=12, num_rows=3, max_pairs=4, pad_id=-7)
    for k, v in out.items():
        assert v.shape == ((4,) if k == "pair_mask" else (3, 12)), k
    # first fit: pairs 0 (8 tokens) and 1 (4 tokens) fill row 0; pair 2 (12 tokens) takes row 1
    assert out["packed_tokens"][0].tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 1, 2, 3, 4]
    assert out["packed_positions"][0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5, 0, 1, 2, 2]
    assert out["packed_segment_ids"][0].tolist() == [1] * 8 + [2] * 4
    assert out["packed_branch_ids"][0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 0, 0, 1, 2]
    assert out["packed_target_side"][0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 0, 0, 1, 2]
    side = out["packed_target_side"][0] > 0
    assert out["packed_parent"][0][side].tolist() == [2, 3, 2, 5, 6, 9, 9]
    assert out["packed_pair_index"][0].tolist() == [0] * 8 + [1] * 4
    assert out["packed_completion_offset"][0].tolist() == [-1, -1, -1, 0, 1, 0, 1, 2, -1, -1, 0, 0]
    assert out["packed_pair_index"][1].tolist() == [2] * 12
    assert (out["packed_tokens"][2] == -7).all() and (out["packed_segment_ids"][2] == 0).all()
    assert (out["packed_pair_index"][2] == -1).all()
    assert out["pair_mask"].tolist() == [1, 1, 1, 0]
    assert count_real_tokens(out) == 24
    # without packing: one pair per row, same per-pair content
    one = pack_preference_pairs(pairs, row_length=12, num_rows=3, max_pairs=3, pack=False)
    assert one["packed_tokens"][1, :4].tolist() == [1, 2, 3, 4] and (one["packed_segment_ids"][1, 4:] == 0).all()
    assert rows_needed([8, 4, 12], 12) == 2 and rows_needed([8, 4, 12], 12, pack=False) == 3


def test_pack_error_policy():
    pairs = [([1, 2], [3], [4]), ([1] * 6, [2] * 4, [3] * 3)]
    with pytest.raises(ValueError, match=r"pair 1 does not fit a row: prompt 6 \+ chosen 4 \+ rejected 3 = 13"):
        pack_preference_pairs(pairs, row_length=12, num_rows=2, max_pairs=2)
    with pytest.raises(ValueError, match="pair 0 has an empty prompt"):
        pack_preference_pairs([([], [1], [2])], row_length=12, num_rows=1, max_pairs=1)
    with pytest.raises(ValueError, match="3 pairs > max_pairs 2"):
        pack_preference_pairs(pairs[:1] * 3, row_length=12, num_rows=2, max_pairs=2)
    with pytest.raises(ValueError, match=r"pairs need 2 rows .* num_rows is 1 \(pair 1 is the first"):
        pack_preference_pairs([pairs[0], ([1] * 6, [2], [3])], row_length=8, num_rows=1, max_pairs=2)


def test_pack_example_batch_splits_micro_batches():
    pairs = make_pairs(4, seed=6)
    L = 16
    ex = {"prompt_ids": np.zeros((4, L), np.int32), "prompt_length": np.zeros(4, np.int32),
          "reference_chosen_logps": np.arange(4, dtype=np.float32), "chosen_tokens": np.zeros((4, L), np.int32)}
    for s, name in enumerate(("prompt", "chosen", "rejected")):
        ex[f"{name}_ids"] = np.zeros((4, L), np.int32)
        for i, pair in enumerate(pairs):
            ex[f"{name}_ids"][i, : len(pair[s])] = pair[s]
        ex[f"{name}_length"] = np.asarray([len(p[s]) for p in pairs], np.int32)
    out = pack_example_batch(ex, micro_batches=2, row_length=24, rows_per_micro=2, pack=True, pair_offset=10)
    assert out["packed_tokens"].shape == (4, 24) and out["pair_mask"].shape == (4,)
    assert "chosen_tokens" not in out and out["reference_chosen_logps"].tolist() == [0, 1, 2, 3]
    second = pack_preference_pairs(pairs[2:], row_length=24, num_rows=2, max_pairs=2, pair_offset=10)
    for k, v in second.items():
        np.testing.assert_array_equal(out[k][2:], v)


# -- the engine ------------------------------------------------------------------------------------
def test_config_rejects_unknown_pair_layout(tmp_path):
    from engine_config import make_config

    from align_jax.training.config import parse_config

    valid = r"\('separate', 'shared_prefix', 'packed', 'length_grouped'\)"
    with pytest.raises(ValueError, match=r"unknown data.pair_layout 'tree'; valid: " + valid):
        parse_config(make_config(tmp_path, tmp_path / "x.jsonl", data__pair_layout="tree"))
    with pytest.raises(ValueError, match="group_multiple must be >= 1"):
        parse_config(make_config(tmp_path, tmp_path / "x.jsonl", data__pair_layout="length_grouped",
                                 data__group_multiple=0))
    with pytest.raises(ValueError, match=r"data.pair_layout='packed' is not valid for train.task='unpaired'"):
        parse_config(make_config(tmp_path, tmp_path / "x.jsonl", data__pair_layout="packed", train__task="unpaired"))


ENGINE_STEPS = dict(train__steps=3, train__eval_every=3, train__checkpoint_every=3, optimizer__total_steps=3)


def _engine_run(tiny_model_dir, pairs_file, workdir, **overrides):
    """-> (the per-step train losses, the final eval loss) of a three-step DPO run of the engine."""
    from engine_config import make_config
    from test_engine import train_losses

    from align_jax.training.config import parse_config
    from align_jax.training.loop import run

    result = run(parse_config(make_config(tiny_model_dir, pairs_file, **ENGINE_STEPS, **overrides)), workdir)
    return train_losses(workdir), result["final"]["eval/loss"]


@pytest.fixture(scope="module")
def separate_engine_run(tiny_model_dir, pairs_file, tmp_path_factory):
    """The separate layout on one device with 2 micro-batches: the engine runs below must equal it."""
    train, final = _engine_run(tiny_model_dir, pairs_file, tmp_path_factory.mktemp("separate"), data__micro_batches=2)
    assert len(train) == 3 and train[-1] != train[0]
    return train, final


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["packed", "length_grouped"])
def test_engine_packed_dpo_matches_separate(tiny_model_dir, pairs_file, separate_engine_run, tmp_path, layout):
    """A few DPO steps (2 micro-batches, precomputed reference) give the same train and eval losses."""
    train, final = _engine_run(tiny_model_dir, pairs_file, tmp_path, data__pair_layout=layout, data__micro_batches=2,
                               data__group_multiple=4)
    np.testing.assert_allclose(train, separate_engine_run[0], rtol=1e-5)
    np.testing.assert_allclose(final, separate_engine_run[1], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (forced CPU) devices")
def test_engine_length_grouped_on_eight_devices_matches_one_device_separate(tiny_model_dir, pairs_file,
                                                                            separate_engine_run, tmp_path):
    """Length groups sharded over a 2x2x2 mesh (rows over the data axes where they divide, else
    replicated) train like the separate layout on one device (run with 2 micro-batches, shared with
    the test above: accumulation is exact, see test_train_step.py)."""
    train, _ = _engine_run(tiny_model_dir, pairs_file, tmp_path, data__pair_layout="length_grouped",
                           data__group_multiple=8, mesh__data=2, mesh__fsdp=2, mesh__tensor=2)
    np.testing.assert_allclose(train, separate_engine_run[0], rtol=1e-4)
