"""Tests for align_jax.objectives.policy_gradient against NumPy references and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from align_jax.objectives import policy_gradient as pg

SETTINGS = settings(max_examples=12, deadline=None)
AGGREGATIONS = ["seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "token-mean"]


def random_mask(rng, shape, p=0.7):
    mask = rng.uniform(size=shape) < p
    mask[:, 0] = True
    return mask


# ----------------------------------------------------------------------------- aggregation


def np_aggregate(name, values, mask, max_len=None):
    rows = [values[b][mask[b]] for b in range(values.shape[0]) if mask[b].any()]
    if name == "token-mean":
        return np.concatenate(rows).mean()
    if name == "seq-mean-token-mean":
        return np.mean([r.mean() for r in rows])
    if name == "seq-mean-token-sum":
        return np.mean([r.sum() for r in rows])
    return np.mean([r.sum() / (max_len or values.shape[1]) for r in rows])


def test_registries_list_every_piece():
    assert pg.LOSS_AGGREGATIONS.names() == AGGREGATIONS
    assert pg.POLICY_LOSSES.names() == ["gspo", "ppo"]
    assert pg.ADVANTAGE_ESTIMATORS.names() == ["dr-grpo", "grpo", "reinforce++", "rloo"]


def test_registries_reject_unknown_names_and_invalid_options():
    with pytest.raises(KeyError, match="valid choices: seq-mean-token-mean, .*token-mean"):
        pg.LOSS_AGGREGATIONS.build("sum")
    with pytest.raises(KeyError, match="valid choices: dr-grpo, grpo, reinforce\\+\\+, rloo"):
        pg.ADVANTAGE_ESTIMATORS.build("ppo")
    with pytest.raises(ValueError, match="valid options: clip_eps_low"):
        pg.POLICY_LOSSES.build("gspo", clip_ratio_c=3.0)
    for bad, match in [
        ({"clip_eps_low": 1.5}, r"clip_eps_low must be in \(0, 1\)"),
        ({"clip_ratio_c": 0.5}, r"clip_ratio_c \(dual clip\) must be > 1"),
        ({"clip_eps_high": -0.1}, "clip_eps_high must be positive"),
        ({"aggregation": "seq-mean-token-sum-norm", "max_len": 0}, "max_len must be a positive int"),
    ]:
        with pytest.raises(ValueError, match=match):
            pg.POLICY_LOSSES.build("ppo", **bad)
    with pytest.raises(KeyError, match="valid choices"):
        pg.POLICY_LOSSES.build("ppo", aggregation="bogus")
    with pytest.raises(ValueError, match="unknown option.*max_len"):  # token-mean has no max_len
        pg.POLICY_LOSSES.build("ppo", max_len=64)
    pg.POLICY_LOSSES.build("ppo", aggregation="seq-mean-token-sum-norm", max_len=64)
    with pytest.raises(ValueError, match="eps"):
        pg.ADVANTAGE_ESTIMATORS.build("reinforce++", eps=0.0)
    with pytest.raises(ValueError, match="max_len"):
        pg.LOSS_AGGREGATIONS.build("seq-mean-token-sum-norm", max_len=-3)


@pytest.mark.parametrize("name", AGGREGATIONS)
def test_aggregations_match_numpy(name):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 8)).astype(np.float32)
    mask = random_mask(rng, values.shape)
    mask[2] = False  # a fully padded row
    got = pg.LOSS_AGGREGATIONS.build(name)(values, mask).mean()
    np.testing.assert_allclose(got, np_aggregate(name, values, mask), rtol=1e-5)
    if name == "seq-mean-token-sum-norm":
        got = pg.LOSS_AGGREGATIONS.build(name, max_len=32)(values, mask).mean()
        np.testing.assert_allclose(got, np_aggregate(name, values, mask, 32), rtol=1e-5)


@SETTINGS
@given(st.integers(0, 10_000), st.sampled_from(AGGREGATIONS), st.integers(1, 5))
def test_aggregations_are_exact_under_micro_batching(seed, name, split):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(6, 5)).astype(np.float32)
    mask = random_mask(rng, values.shape)
    fn = pg.LOSS_AGGREGATIONS.build(name)
    parts = [fn(values[:split], mask[:split]), fn(values[split:], mask[split:])]
    combined = sum(p.total for p in parts) / sum(p.weight for p in parts)
    np.testing.assert_allclose(combined, fn(values, mask).mean(), rtol=1e-5, atol=1e-6)


@SETTINGS
@given(st.integers(0, 10_000), st.sampled_from(AGGREGATIONS), st.sampled_from([np.nan, np.inf, 1e6]))
def test_aggregation_padding_never_changes_results(seed, name, garbage):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(4, 6)).astype(np.float32)
    mask = random_mask(rng, values.shape)
    fn = pg.LOSS_AGGREGATIONS.build(name)
    dirty = np.where(mask, values, garbage).astype(np.float32)
    np.testing.assert_allclose(fn(dirty, mask).mean(), fn(values, mask).mean(), rtol=1e-6)
    grad = jax.grad(lambda v: fn(v, mask).mean())(dirty)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~mask] == 0.0)


# ----------------------------------------------------------------------------- PPO / GSPO


def np_ppo_tokens(logp, old_logp, adv, low, high, c=None):
    ratio = np.exp(logp - old_logp)
    loss = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - low, 1 + high))
    if c is not None:
        loss = np.where(adv < 0, np.minimum(loss, -adv * c), loss)
    return loss


def ppo_inputs(seed, shape=(4, 6)):
    rng = np.random.default_rng(seed)
    old_logp = np.log(rng.uniform(0.05, 1.0, shape)).astype(np.float32)
    logp = (old_logp + rng.normal(scale=0.4, size=shape)).astype(np.float32)
    adv = rng.normal(size=shape).astype(np.float32)
    return logp, old_logp, adv, random_mask(rng, shape)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("high,c", [(None, None), (0.28, None), (0.28, 3.0)])
def test_ppo_matches_numpy(aggregation, high, c):
    logp, old_logp, adv, mask = ppo_inputs(1)
    fn = pg.POLICY_LOSSES.build(
        "ppo", clip_eps_low=0.2, clip_eps_high=high, clip_ratio_c=c, aggregation=aggregation
    )
    loss, metrics = fn(logp, old_logp, adv, mask)
    per_token = np_ppo_tokens(logp, old_logp, adv, 0.2, high or 0.2, c)
    np.testing.assert_allclose(loss, np_aggregate(aggregation, per_token, mask), rtol=1e-5)
    ratio = np.exp(logp - old_logp)[mask]
    np.testing.assert_allclose(metrics["pg/ratio_mean"], ratio.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["pg/ratio_max"], ratio.max(), rtol=1e-5)
    np.testing.assert_allclose(metrics["pg/approx_kl"], np.mean(ratio - 1 - np.log(ratio)), rtol=1e-4)
    np.testing.assert_allclose(metrics["pg/loss"], loss)


def test_ppo_at_ratio_one_is_minus_mean_advantage():
    _, old_logp, adv, mask = ppo_inputs(2)
    loss, metrics = pg.ppo_loss(old_logp, old_logp, adv, mask)
    np.testing.assert_allclose(loss, -adv[mask].mean(), rtol=1e-5)
    assert float(metrics["pg/clipfrac"]) == 0.0 and float(metrics["pg/ratio_mean"]) == 1.0
    grad = jax.grad(lambda lp: pg.ppo_loss(lp, old_logp, adv, mask)[0])(old_logp)
    np.testing.assert_allclose(grad, np.where(mask, -adv / mask.sum(), 0.0), rtol=1e-5, atol=1e-7)


def test_sequence_level_advantages_broadcast_over_tokens():
    logp, old_logp, adv, mask = ppo_inputs(3)
    seq_adv = adv[:, 0]
    np.testing.assert_allclose(
        pg.ppo_loss(logp, old_logp, seq_adv, mask)[0],
        pg.ppo_loss(logp, old_logp, np.repeat(seq_adv[:, None], 6, axis=1), mask)[0],
    )


@pytest.mark.parametrize(
    "advantage,log_ratio,grad_is_zero",
    [
        (1.0, np.log(1.5), True),  # A > 0 above 1 + eps: clipped, no push further up
        (1.0, np.log(0.5), False),  # A > 0 below 1 - eps: still pushed up
        (-1.0, np.log(0.5), True),  # A < 0 below 1 - eps: clipped, no push further down
        (-1.0, np.log(1.5), False),  # A < 0 above 1 + eps: still pushed down
        (1.0, np.log(1.1), False),  # inside the trust region
    ],
)
def test_clipping_zeroes_the_gradient_outside_the_trust_region(advantage, log_ratio, grad_is_zero):
    old = np.zeros((1, 1), np.float32)
    mask = np.ones((1, 1), bool)
    adv = np.full((1, 1), advantage, np.float32)
    grad = float(jax.grad(lambda lp: pg.ppo_loss(lp, old, adv, mask)[0])(old + log_ratio)[0, 0])
    if grad_is_zero:
        assert grad == 0.0
    else:  # descending the loss moves log pi in the direction of the advantage
        assert np.sign(-grad) == np.sign(advantage)


def test_dual_clip_bounds_negative_advantage_loss():
    old = np.zeros((1, 1), np.float32)
    mask = np.ones((1, 1), bool)
    adv = np.full((1, 1), -2.0, np.float32)
    logp = old + np.log(10.0)
    loss_fn = lambda lp: pg.ppo_loss(lp, old, adv, mask, clip_ratio_c=3.0)  # noqa: E731
    loss, metrics = loss_fn(logp)
    assert float(loss) == pytest.approx(2.0 * 3.0)
    assert float(metrics["pg/clipfrac_dual"]) == 1.0 and float(metrics["pg/clipfrac"]) == 0.0
    assert float(jax.grad(lambda lp: loss_fn(lp)[0])(logp)[0, 0]) == 0.0
    assert float(pg.ppo_loss(logp, old, adv, mask)[0]) == pytest.approx(20.0, rel=1e-5)


def np_gspo_objective(logp, old_logp, seq_adv, mask, low, high):
    losses = []
    for b in range(logp.shape[0]):
        s = np.exp(np.mean((logp[b] - old_logp[b])[mask[b]]))
        losses.append(max(-seq_adv[b] * s, -seq_adv[b] * np.clip(s, 1 - low, 1 + high)))
    return np.mean(losses)


def test_gspo_value_and_gradient_match_sequence_level_objective():
    rng = np.random.default_rng(4)
    shape = (3, 5)
    old_logp = np.log(rng.uniform(0.1, 1.0, shape))
    logp = old_logp + rng.normal(scale=1e-3, size=shape)
    seq_adv = np.array([1.0, -0.5, 2.0])
    mask = random_mask(rng, shape)
    low, high = 0.05, 0.08  # wide enough that some sequences are inside, some outside
    loss, metrics = pg.gspo_loss(
        logp.astype(np.float32), old_logp.astype(np.float32), seq_adv, mask,
        clip_eps_low=low, clip_eps_high=high,
    )
    np.testing.assert_allclose(loss, np_gspo_objective(logp, old_logp, seq_adv, mask, low, high), rtol=1e-4)
    grad = jax.grad(
        lambda lp: pg.gspo_loss(lp, old_logp.astype(np.float32), seq_adv, mask,
                                clip_eps_low=low, clip_eps_high=high)[0]
    )(logp.astype(np.float32))
    # central finite differences of the float64 NumPy sequence-level objective
    fd = np.zeros_like(logp)
    h = 1e-5
    for idx in zip(*np.nonzero(mask)):
        up, down = logp.copy(), logp.copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (np_gspo_objective(up, old_logp, seq_adv, mask, low, high)
                   - np_gspo_objective(down, old_logp, seq_adv, mask, low, high)) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-5)
    assert float(metrics["pg/loss_weight"]) == 3.0


def test_gspo_ratio_is_per_sequence_and_clips_whole_sequences():
    old = np.zeros((2, 4), np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    logp = np.array([[0.3, -0.1, 0.1, 9.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    log_ratio = pg.gspo_log_ratio(logp, old, mask)
    np.testing.assert_allclose(log_ratio[0, :3], np.full(3, 0.1), rtol=1e-5)
    assert float(log_ratio[0, 3]) == 0.0
    _, metrics = pg.gspo_loss(logp, old, np.array([1.0, 1.0]), mask)
    np.testing.assert_allclose(metrics["pg/clipfrac"], 3 / 7, rtol=1e-6)


@SETTINGS
@given(st.integers(0, 10_000), st.sampled_from(["ppo", "gspo"]), st.sampled_from([np.nan, np.inf, -1e9]))
def test_policy_loss_padding_never_changes_results(seed, name, garbage):
    logp, old_logp, adv, mask = ppo_inputs(seed)
    fn = pg.POLICY_LOSSES.build(name)
    dirty = [np.where(mask, x, garbage).astype(np.float32) for x in (logp, old_logp, adv)]
    clean_loss, clean_metrics = fn(logp, old_logp, adv, mask)
    dirty_loss, dirty_metrics = fn(*dirty, mask)
    np.testing.assert_allclose(dirty_loss, clean_loss, rtol=1e-6)
    for key in clean_metrics:
        np.testing.assert_allclose(dirty_metrics[key], clean_metrics[key], rtol=1e-6, err_msg=key)
    grad = jax.grad(lambda lp: fn(lp, dirty[1], dirty[2], mask)[0])(dirty[0])
    clean_grad = jax.grad(lambda lp: fn(lp, old_logp, adv, mask)[0])(logp)
    np.testing.assert_allclose(grad, clean_grad, rtol=1e-5, atol=1e-8)


def test_kl_penalty_loss_aggregates_like_the_policy_loss():
    rng = np.random.default_rng(5)
    kl_values = rng.uniform(size=(3, 4)).astype(np.float32)
    mask = random_mask(rng, (3, 4))
    loss, metrics = pg.kl_penalty_loss(kl_values, mask, beta=0.5, aggregation="seq-mean-token-mean")
    np.testing.assert_allclose(loss, 0.5 * np_aggregate("seq-mean-token-mean", kl_values, mask), rtol=1e-5)
    np.testing.assert_allclose(metrics["pg/kl_loss"], loss)


# ----------------------------------------------------------------------------- value loss


def test_value_loss_matches_numpy():
    rng = np.random.default_rng(6)
    shape = (3, 5)
    values, old_values, returns = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    mask = random_mask(rng, shape)
    loss, metrics = pg.value_loss(values, old_values, returns, mask, clip_eps_value=0.2)
    clipped = old_values + np.clip(values - old_values, -0.2, 0.2)
    per_token = 0.5 * np.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    np.testing.assert_allclose(loss, per_token[mask].mean(), rtol=1e-5)
    frac = np.mean(((clipped - returns) ** 2 > (values - returns) ** 2)[mask])
    np.testing.assert_allclose(metrics["vf/clipfrac"], frac, rtol=1e-6)
    ev = 1 - np.var((returns - values)[mask]) / np.var(returns[mask])
    np.testing.assert_allclose(metrics["vf/explained_variance"], ev, rtol=1e-4)
    plain, _ = pg.value_loss(values, old_values, returns, mask, clip_eps_value=None)
    np.testing.assert_allclose(plain, 0.5 * ((values - returns) ** 2)[mask].mean(), rtol=1e-5)


def test_value_clipping_stops_the_gradient_outside_the_band():
    old = np.zeros((1, 1), np.float32)
    mask = np.ones((1, 1), bool)

    def grad(value, target):
        full = lambda x: np.full((1, 1), x, np.float32)  # noqa: E731
        return float(jax.grad(lambda v: pg.value_loss(v, old, full(target), mask)[0])(full(value))[0, 0])

    # moved past the band towards the target: the pessimistic clipped term wins, no gradient
    assert grad(1.0, 5.0) == 0.0
    assert grad(-1.0, -5.0) == 0.0
    # moved away from the target, or inside the band: plain squared-error gradient v - R
    assert grad(-1.0, 1.0) == pytest.approx(-2.0)
    assert grad(0.1, 1.0) == pytest.approx(-0.9)


# ----------------------------------------------------------------------------- GAE


def np_gae_row(rewards, values, gamma, lam):
    adv = np.zeros(len(rewards))
    next_value, next_adv = 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_value - values[t]
        next_adv = delta + gamma * lam * next_adv
        next_value = values[t]
        adv[t] = next_adv
    return adv


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    rng = np.random.default_rng(7)
    rewards, values = rng.normal(size=(2, 2, 6)).astype(np.float32)
    mask = np.ones((2, 6), bool)
    adv, returns = pg.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1]
    np.testing.assert_allclose(adv, reward_to_go - values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns, reward_to_go, rtol=1e-5, atol=1e-5)


@SETTINGS
@given(
    st.integers(0, 10_000),
    st.floats(0.5, 1.0),
    st.floats(0.0, 1.0),
    st.sampled_from([np.nan, np.inf, 1e6]),
)
def test_gae_matches_numpy_on_valid_tokens_and_ignores_padding(seed, gamma, lam, garbage):
    rng = np.random.default_rng(seed)
    rewards, values = rng.normal(size=(2, 3, 7)).astype(np.float32)
    mask = rng.uniform(size=(3, 7)) < 0.6  # arbitrary holes, left and right padding
    adv, returns = pg.gae(
        np.where(mask, rewards, garbage), np.where(mask, values, garbage), mask, gamma=gamma, lam=lam
    )
    for b in range(3):
        idx = np.flatnonzero(mask[b])
        want = np_gae_row(rewards[b, idx].astype(np.float64), values[b, idx], gamma, lam)
        np.testing.assert_allclose(np.asarray(adv)[b, idx], want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(returns)[b, idx], want + values[b, idx], rtol=1e-4, atol=1e-4)
    assert np.all(np.asarray(adv)[~mask] == 0.0) and np.all(np.asarray(returns)[~mask] == 0.0)


# ----------------------------------------------------------------------------- advantages


def np_group_advantages(name, rewards, subtract_group_mean=False, eps=1e-6):
    """rewards: list of 1-D arrays (the valid samples of each prompt)."""
    if name == "grpo":
        return [(r - r.mean()) / ((r.std(ddof=1) if len(r) > 1 else 0.0) + eps) for r in rewards]
    if name == "dr-grpo":
        return [r - r.mean() for r in rewards]
    if name == "rloo":
        return [
            np.array([r[i] - np.mean(np.delete(r, i)) for i in range(len(r))]) if len(r) > 1 else np.zeros(1)
            for r in rewards
        ]
    xs = [r - r.mean() for r in rewards] if subtract_group_mean else rewards
    flat = np.concatenate(xs)
    return [(x - flat.mean()) / (flat.std(ddof=1) + eps) for x in xs]


@SETTINGS
@given(
    st.integers(0, 10_000),
    st.sampled_from(["grpo", "dr-grpo", "rloo", "reinforce++", "reinforce++/group"]),
    st.sampled_from([np.nan, 1e6, -np.inf]),
)
def test_advantages_match_numpy_and_ignore_masked_samples(seed, name, garbage):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(4, 5)).astype(np.float32)
    mask = random_mask(rng, rewards.shape)
    registry_name, _, variant = name.partition("/")
    options = {"subtract_group_mean": True} if variant else {}
    fn = pg.ADVANTAGE_ESTIMATORS.build(registry_name, **options)
    got = np.asarray(fn(np.where(mask, rewards, garbage), mask))
    want = np_group_advantages(registry_name, [rewards[p][mask[p]] for p in range(4)], **options)
    for p in range(4):
        np.testing.assert_allclose(got[p][mask[p]], want[p], rtol=1e-4, atol=1e-5)
    assert np.all(got[~mask] == 0.0)


def test_rloo_baseline_excludes_self():
    rewards = np.array([[1.0, 2.0, 6.0]], np.float32)
    np.testing.assert_allclose(pg.rloo_advantages(rewards), [[1 - 4.0, 2 - 3.5, 6 - 1.5]])
    bumped = rewards.copy()
    bumped[0, 0] += 10.0  # sample 0's own reward must not enter its baseline
    delta = np.asarray(pg.rloo_advantages(bumped)) - np.asarray(pg.rloo_advantages(rewards))
    np.testing.assert_allclose(delta[0], [10.0, -5.0, -5.0], rtol=1e-6)


def test_advantage_closed_forms():
    rewards = np.array([[0.0, 1.0], [3.0, 3.0]], np.float32)
    np.testing.assert_allclose(pg.dr_grpo_advantages(rewards), [[-0.5, 0.5], [0.0, 0.0]])
    # std (ddof=1) of [0, 1] is 1/sqrt(2); a group with equal rewards gets zero advantage
    np.testing.assert_allclose(pg.grpo_advantages(rewards), [[-0.5**0.5, 0.5**0.5], [0.0, 0.0]], atol=1e-5)
    adv = pg.reinforce_pp_advantages(rewards)
    assert float(jnp.mean(adv)) == pytest.approx(0.0, abs=1e-6)
    assert float(jnp.std(adv, ddof=1)) == pytest.approx(1.0, rel=1e-4)
