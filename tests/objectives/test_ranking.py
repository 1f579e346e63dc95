"""PRO, Curry-DPO pair curricula, MaxMin over groups and combined losses."""

import itertools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.objectives.preference import PREFERENCE_LOSSES
from align_jax.objectives.ranking import (
    RANKING_LOSSES,
    combine_losses,
    curriculum_pairs,
    maxmin_loss,
)
from align_jax.objectives.types import PreferenceInputs, RankingInputs, SequenceLogps


def logsumexp(x):
    x = np.asarray(x, np.float64)
    return x.max() + np.log(np.exp(x - x.max()).sum())


def np_pro(r, valid, scores, sft_weight, w):
    """PRO (arXiv:2306.17492) by explicit loops over ranking steps."""
    per = []
    for b in range(r.shape[0]):
        idx = [k for k in range(r.shape[1]) if valid[b, k]]
        loss = 0.0
        for pos, k in enumerate(idx[:-1]):
            rest = idx[pos + 1 :]
            if scores is None:
                logits = [r[b, k]] + [r[b, i] for i in rest]
            else:  # 1/T^i_k = s_k - s_i ; 1/T^k_k = max_i (s_k - s_i)
                gaps = [scores[b, k] - scores[b, i] for i in rest]
                logits = [r[b, k] * max(gaps)] + [r[b, i] * g for i, g in zip(rest, gaps)]
            loss -= logits[0] - logsumexp(logits)
        per.append(loss - sft_weight * r[b, 0])
    per = np.array(per)
    return np.sum(w * per) / np.sum(w)


def make_lists(seed, b=4, k=4, t=5):  # k >= 4
    rng = np.random.default_rng(seed)
    tok = rng.uniform(-1.5, -0.05, (b, k, t))
    mask = (rng.random((b, k, t)) < 0.8).astype(np.float64)
    mask[..., 0] = 1.0
    tok *= mask
    valid = np.ones((b, k), bool)
    valid[1, 3] = valid[2, 2:] = False  # shorter lists
    valid[3, 1:] = False  # a single response: nothing to rank
    scores = -np.sort(-rng.normal(size=(b, k)), axis=1)
    scores[0, 2] = scores[0, 1]  # a tie
    inputs = RankingInputs(
        policy=SequenceLogps(jnp.asarray(tok, jnp.float32), jnp.asarray(mask, jnp.float32)),
        list_mask=jnp.asarray(valid),
        scores=jnp.asarray(scores, jnp.float32),
    )
    return tok.sum(-1) / mask.sum(-1), valid, scores, inputs


@pytest.mark.parametrize("score_temperature", [False, True])
def test_pro_matches_numpy(score_temperature):
    r, valid, scores, inputs = make_lists(0)
    w = np.array([1.0, 0.5, 2.0, 1.0])
    pro = RANKING_LOSSES.build("pro", sft_weight=0.3, score_temperature=score_temperature)
    loss, metrics = jax.jit(pro)(inputs.replace(example_weight=jnp.asarray(w)))
    expected = np_pro(r, valid, scores if score_temperature else None, 0.3, w)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["nll/chosen"]), np.sum(w * -r[:, 0]) / w.sum(), rtol=1e-5)


def test_pro_two_responses_is_bradley_terry():
    r, _, _, full = make_lists(1)
    first_two = jax.tree_util.tree_map(lambda x: x[:, :2], full.policy)
    inputs = RankingInputs(policy=first_two, list_mask=jnp.ones((4, 2), bool))
    loss, _ = jax.jit(RANKING_LOSSES.build("pro", sft_weight=0.0))(inputs)
    expected = np.mean(np.logaddexp(0.0, -(r[:, 0] - r[:, 1])))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_pro_ignores_padded_list_entries_and_needs_scores_for_temperature():
    _, _, _, inputs = make_lists(2)
    fn = jax.jit(RANKING_LOSSES.build("pro"))
    garbage = inputs.policy.token_logps.at[1, 3].set(123.0).at[2, 2:].set(jnp.nan)
    dirty = inputs.replace(policy=inputs.policy.replace(token_logps=garbage))
    np.testing.assert_allclose(fn(dirty)[0], fn(inputs)[0])
    with pytest.raises(ValueError, match="needs RankingInputs.scores"):
        RANKING_LOSSES.build("pro", score_temperature=True)(inputs.replace(scores=None))


def test_pro_gradient_prefers_the_top_response():
    _, _, _, inputs = make_lists(3)
    pro = RANKING_LOSSES.build("pro")

    def loss_of(tok):
        return pro(inputs.replace(policy=inputs.policy.replace(token_logps=tok)))[0]

    grad = jax.jit(jax.grad(loss_of))(inputs.policy.token_logps)
    per_response = np.asarray(jnp.sum(grad * inputs.policy.mask, -1))
    assert np.all(per_response[:3, 0] < 0)  # raising the best lowers the loss
    assert per_response[0, 3] > 0  # raising the worst raises it


def test_curriculum_pairs_order_easy_to_hard():
    scores = np.array([[4.0, 3.0, 1.0, 2.0], [1.0, 1.0, 0.0, 5.0]])
    valid = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    pairs = curriculum_pairs(scores, valid)
    expected = []
    for e in range(2):
        cands = [
            (scores[e, i] - scores[e, j], i, j)
            for i, j in itertools.permutations(range(4), 2)
            if valid[e, i] and valid[e, j] and scores[e, i] > scores[e, j]
        ]
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        expected += [(level, -gap, e, i, j) for level, (gap, i, j) in enumerate(cands)]
    expected.sort()
    got = list(zip(pairs.level, -pairs.gap, pairs.example, pairs.chosen, pairs.rejected))
    assert got == expected
    assert len(got) == 6 + 2  # list 0: all 6 pairs; list 1: tie dropped, index 3 invalid
    assert np.all(pairs.gap > 0)
    assert (pairs.example[0], pairs.chosen[0], pairs.rejected[0]) == (0, 0, 2)  # largest gap first


def dpo_pairs(seed, b=6, t=4):
    rng = np.random.default_rng(seed)

    def seq():
        return SequenceLogps(jnp.asarray(rng.uniform(-2, -0.1, (b, t)), jnp.float32), jnp.ones((b, t)))

    def sums():
        return jnp.asarray(rng.normal(-4, 1, b), jnp.float32)

    return PreferenceInputs(seq(), seq(), sums(), sums())


def test_maxmin_is_the_worst_group_mean():
    inputs = dpo_pairs(0)
    groups = jnp.asarray([0, 0, 1, 1, 1, 3])  # group 2 absent
    dpo = PREFERENCE_LOSSES.build("dpo")
    loss, metrics = jax.jit(lambda x: maxmin_loss(dpo, x, groups, num_groups=4))(inputs)
    chosen = np.asarray(inputs.policy_chosen.sum - inputs.reference_chosen_logps, np.float64)
    a = chosen - np.asarray(inputs.policy_rejected.sum - inputs.reference_rejected_logps)
    per = np.logaddexp(0.0, -0.1 * a)
    means = {g: per[np.asarray(groups) == g].mean() for g in (0, 1, 3)}
    worst = max(means, key=means.get)
    np.testing.assert_allclose(float(loss), means[worst], rtol=1e-5)
    assert int(metrics["maxmin/worst_group"]) == worst
    np.testing.assert_allclose(float(metrics["rewards/margins"]), np.mean(0.1 * a), rtol=1e-5)
    def loss_of(tok):
        moved = inputs.replace(policy_chosen=inputs.policy_chosen.replace(token_logps=tok))
        return maxmin_loss(dpo, moved, groups, 4)[0]

    grad = jax.jit(jax.grad(loss_of))(inputs.policy_chosen.token_logps)
    touched = np.asarray(jnp.any(grad != 0, axis=1))
    np.testing.assert_array_equal(touched, np.asarray(groups) == worst)


def test_combine_losses_weights_and_prefixes():
    inputs = dpo_pairs(1)
    mix = {"dpo": {"weight": 0.8, "beta": 0.2}, "bco_pair": {"weight": 0.2}, "sft": {}}
    combined = combine_losses(mix)
    loss, metrics = combined(inputs)
    parts = {
        "dpo": PREFERENCE_LOSSES.build("dpo", beta=0.2)(inputs)[0],
        "bco_pair": PREFERENCE_LOSSES.build("bco_pair")(inputs)[0],
        "sft": PREFERENCE_LOSSES.build("sft")(inputs)[0],
    }
    expected = 0.8 * parts["dpo"] + 0.2 * parts["bco_pair"] + parts["sft"]
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    prefixed = {"dpo/loss", "dpo/rewards/margins", "bco_pair/bco/delta", "sft/nll/chosen"}
    assert prefixed | {"num_examples"} <= set(metrics)
    with pytest.raises(ValueError, match="label_smoothing=0.0 must be in"):
        combine_losses({"exo": {"label_smoothing": 0.0}})
    with pytest.raises(KeyError, match="valid choices"):
        combine_losses({"mpo": {}})


def test_ranking_registry():
    assert RANKING_LOSSES.names() == ["pro"]
    assert math.isclose(RANKING_LOSSES.entry("pro").options["sft_weight"], 0.05)
    with pytest.raises(ValueError, match="sft_weight=-1 must be >= 0"):
        RANKING_LOSSES.build("pro", sft_weight=-1)


def test_docs_describe_every_metric():
    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "objectives.md").read_text()
    *_, inputs = make_lists(0)
    keys = set(jax.jit(RANKING_LOSSES.build("pro"))(inputs)[1])
    keys |= {"maxmin/worst_group", "maxmin/group_{g}_loss"}
    assert not [k for k in keys if f"`{k}`" not in text]
