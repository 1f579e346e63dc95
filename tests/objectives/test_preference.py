"""Paired preference losses vs NumPy formulas written from the papers, closed forms,
gradient signs, padding invariance, reduction and the registry."""

import math
import pathlib
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from align_jax.objectives.preference import PREFERENCE_LOSSES, log1m_exp
from align_jax.objectives.ranking import RANKING_LOSSES
from align_jax.objectives.types import PreferenceInputs, SequenceLogps
from align_jax.objectives.unpaired import UNPAIRED_LOSSES

EXPECTED = {
    "dpo", "cdpo", "robust_dpo", "ipo", "hinge", "exo", "nca", "bco_pair", "sppo_hard",
    "aot_paired", "aot_unpaired", "apo_zero", "apo_down", "discopop", "f_dpo", "dpop", "rpo",
    "rdpo", "ld_dpo", "wpo", "simpo", "cpo", "orpo", "sft", "sigmoid_norm",
}  # fmt: skip
BATCH_COUPLED = {"bco_pair", "aot_paired", "aot_unpaired"}  # losses that look across examples

# ------------------------------------------------------------------ NumPy references


def logsig(x):
    return -np.logaddexp(0.0, -x)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def wmean(x, w):
    keep = w > 0
    return float(np.sum(w[keep] * x[keep]) / np.sum(w[keep]))


def ld_sum(tok, mask, public, alpha):
    """LD-DPO likelihood, by explicit loop over the response's scored tokens."""
    out = np.zeros(len(tok))
    for b in range(len(tok)):
        scored = tok[b][mask[b] > 0]
        n = int(public[b])
        out[b] = scored[:n].sum() + alpha * scored[n:].sum()
    return out


def f_prime(u, divergence, alpha):
    return {
        "reverse_kl": np.log(u) + 1.0,
        "forward_kl": -1.0 / u,
        "js": np.log(2.0 * u / (1.0 + u)),
        "alpha": (1.0 - u ** (-alpha)) / alpha,
    }[divergence]


def np_nll(d, w, reduction):
    """Chosen NLL per example: the per-token mean, or ("token") scaled so that the weighted mean
    over examples is the mean over every chosen token of the batch."""
    if reduction == "sequence":
        return -d.mw
    keep = w > 0
    return -d.pw * np.sum(w[keep]) / np.sum(w[keep] * d.lw[keep])


def np_loss(name, d, w, **o):
    """Scalar loss for loss ``name`` on data ``d`` with example weights ``w``; ``o`` holds
    every option of the loss."""
    beta = o.get("beta")
    a, b = d.pw - d.rw, d.pl - d.rl  # chosen / rejected log-ratios
    h = a - b
    eps = o.get("label_smoothing")
    nll = np_nll(d, w, o.get("nll_reduction"))
    if name == "dpo":
        per = -logsig(beta * h)
    elif name == "cdpo":
        per = -(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h)
    elif name == "robust_dpo":
        per = ((1 - eps) * -logsig(beta * h) - eps * -logsig(-beta * h)) / (1 - 2 * eps)
    elif name == "ipo":
        hn = a / d.lw - b / d.ll if o["normalize"] == "length" else h
        per = (hn - 1 / (2 * beta)) ** 2
    elif name == "sigmoid_norm":
        per = -logsig(beta * (a / d.lw - b / d.ll))
    elif name == "hinge":
        per = np.maximum(0.0, 1 - beta * h)
    elif name == "exo":
        p = sig(beta * h)
        per = p * np.log(p / (1 - eps)) + (1 - p) * np.log((1 - p) / eps)
    elif name == "nca":
        per = -logsig(beta * a) - 0.5 * (logsig(-beta * a) + logsig(-beta * b))
    elif name == "bco_pair":
        rewards, both = np.concatenate([beta * a, beta * b]), np.concatenate([w, w])
        delta = 0.0 if o["shift"] == "none" else wmean(rewards, both)
        per = -logsig(beta * a - delta) - logsig(-(beta * b - delta))
    elif name == "sppo_hard":
        per = (a - 1 / (2 * beta)) ** 2 + (b + 1 / (2 * beta)) ** 2
    elif name in ("aot_paired", "aot_unpaired"):
        valid = w > 0
        x, y = ((d.pw - d.pl), (d.rw - d.rl)) if name == "aot_paired" else (a, b)
        delta = np.sort(x[valid]) - np.sort(y[valid])
        eps = o["label_smoothing"]
        return float(np.mean(-(1 - eps) * logsig(beta * delta) - eps * logsig(-beta * delta)))
    elif name == "apo_zero":
        per = 1 - sig(beta * a) + sig(beta * b)
    elif name == "apo_down":
        per = sig(beta * a) + 1 - sig(beta * h)
    elif name == "discopop":
        z, m = beta * h, sig(beta * h / o["tau"])
        per = (1 - m) * -logsig(z) + m * np.exp(-z)
    elif name == "f_dpo":
        div, alpha = o["divergence"], o["alpha"]
        per = -logsig(beta * (f_prime(np.exp(a), div, alpha) - f_prime(np.exp(b), div, alpha)))
    elif name == "dpop":
        per = -logsig(beta * (h - o["dpop_lambda"] * np.maximum(0.0, d.rw - d.pw)))
    elif name == "rpo":
        per = -logsig(beta * h) + o["sft_weight"] * nll
    elif name == "rdpo":
        per = -logsig(beta * h + o["length_alpha"] * (d.lw - d.ll))
    elif name == "ld_dpo":
        alpha, public = o["ld_alpha"], np.minimum(d.lw, d.ll)
        la = ld_sum(d.tw, d.mkw, public, alpha) - ld_sum(d.tw_ref, d.mkw_ref, public, alpha)
        lb = ld_sum(d.tl, d.mkl, public, alpha) - ld_sum(d.tl_ref, d.mkl_ref, public, alpha)
        per = -logsig(beta * (la - lb))
    elif name == "wpo":
        if o["aligned"]:
            weight_w = np.exp(((d.tw - d.sqw) * d.mkw).sum(1) / d.lw)
            weight_l = np.exp(((d.tl - d.sql) * d.mkl).sum(1) / d.ll)
        else:
            weight_w, weight_l = np.exp(d.mw), np.exp(d.ml)
        cap = 1.0 if o["cap"] else np.inf
        per = np.minimum(cap, weight_w * weight_l) * -logsig(beta * h)
    elif name == "simpo":
        per = -logsig(beta * (d.mw - d.ml) - o["gamma"])
    elif name == "cpo":
        hs, hm = d.pw - d.pl, d.mw - d.ml
        pair = {
            "sigmoid": -logsig(beta * hs),
            "hinge": np.maximum(0.0, 1 - beta * hs),
            "ipo": (hm - 1 / (2 * beta)) ** 2,
        }[o["pair_loss"]]
        per = pair + o["sft_weight"] * nll
    elif name == "orpo":
        odds_w, odds_l = np.exp(d.mw) / (1 - np.exp(d.mw)), np.exp(d.ml) / (1 - np.exp(d.ml))
        per = nll - beta * logsig(np.log(odds_w / odds_l))
    elif name == "sft":
        per = nll
    else:
        raise KeyError(name)
    return wmean(per, w)


# ------------------------------------------------------------------ data


def make_pairs(seed, b=5, t=6, garbage=0.0):
    """Random pairs; returns (NumPy view, PreferenceInputs with per-token reference).

    ``garbage`` is written into every masked position of the JAX inputs."""
    rng = np.random.default_rng(seed)

    def tokens():
        tok = rng.uniform(-2.0, -0.05, (b, t))
        mask = (rng.random((b, t)) < 0.7).astype(np.float64)
        mask[:, 0] = 1.0  # at least one scored token
        return tok * mask, mask

    (tw, mkw), (tl, mkl), (tw_ref, _), (tl_ref, _) = tokens(), tokens(), tokens(), tokens()
    tw_ref, tl_ref = tw_ref * mkw, tl_ref * mkl  # the reference scores the same tokens
    sqw, sql = rng.uniform(-1.0, -0.1, (b, t)) * mkw, rng.uniform(-1.0, -0.1, (b, t)) * mkl
    d = types.SimpleNamespace(
        tw=tw, tl=tl, tw_ref=tw_ref, tl_ref=tl_ref, mkw=mkw, mkl=mkl, mkw_ref=mkw, mkl_ref=mkl,
        sqw=sqw, sql=sql, pw=tw.sum(1), pl=tl.sum(1), rw=tw_ref.sum(1), rl=tl_ref.sum(1),
        lw=mkw.sum(1), ll=mkl.sum(1),
    )  # fmt: skip
    d.mw, d.ml = d.pw / d.lw, d.pl / d.ll

    def seq(tok, mask, sq=None):
        def fill(x):
            return jnp.asarray(np.where(mask > 0, x, garbage), jnp.float32)

        return SequenceLogps(fill(tok), jnp.asarray(mask, jnp.float32), None if sq is None else fill(sq))

    inputs = PreferenceInputs(
        policy_chosen=seq(tw, mkw, sqw),
        policy_rejected=seq(tl, mkl, sql),
        reference_chosen=seq(tw_ref, mkw),
        reference_rejected=seq(tl_ref, mkl),
    )
    return d, inputs


def random_weights(seed, b):
    w = np.random.default_rng(seed + 1).choice([0.0, 0.5, 1.0, 2.0], size=b)
    w[0] = 1.0
    return w


OPTION_CASES = [(name, {}) for name in sorted(EXPECTED)] + [
    ("cdpo", {"label_smoothing": 0.3}),
    ("robust_dpo", {"label_smoothing": 0.2}),
    ("exo", {"label_smoothing": 0.2, "beta": 0.5}),
    ("aot_paired", {"label_smoothing": 0.1}),
    ("f_dpo", {"divergence": "forward_kl"}),
    ("f_dpo", {"divergence": "js"}),
    ("f_dpo", {"divergence": "alpha", "alpha": 0.3}),
    ("dpop", {"dpop_lambda": 5.0}),
    ("rdpo", {"length_alpha": 0.3}),
    ("ld_dpo", {"ld_alpha": 0.2}),
    ("wpo", {"aligned": False}),
    ("discopop", {"tau": 0.5, "beta": 1.0}),
    ("simpo", {"beta": 1.0, "gamma": 0.3}),
    ("orpo", {"beta": 0.5}),
    # the TRL conventions (tests/objectives/test_trl_agreement.py checks them against TRL itself)
    ("ipo", {"normalize": "length"}),
    ("wpo", {"cap": False}),
    ("bco_pair", {"shift": "none"}),
    ("bco_pair", {"shift": "batch"}),
    ("rpo", {"nll_reduction": "token"}),
    ("sft", {"nll_reduction": "token"}),
    ("orpo", {"nll_reduction": "token"}),
    ("cpo", {"nll_reduction": "token", "sft_weight": 0.5}),
    ("cpo", {"pair_loss": "hinge"}),
    ("cpo", {"pair_loss": "ipo", "beta": 0.5}),
]


def with_weights(inputs, w):
    return inputs.replace(example_weight=jnp.asarray(w, jnp.float32))


@pytest.mark.parametrize("name,options", OPTION_CASES, ids=lambda x: str(x))
def test_matches_numpy_reference(name, options):
    d, inputs = make_pairs(seed=7)
    w = random_weights(7, 5)
    loss, metrics = PREFERENCE_LOSSES.build(name, **options)(with_weights(inputs, w))
    assert loss.dtype == jnp.float32 and loss.shape == ()
    all_options = {**PREFERENCE_LOSSES.entry(name).options, **options}  # defaults + overrides
    np.testing.assert_allclose(float(loss), np_loss(name, d, w, **all_options), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(float(metrics["num_examples"]), w.sum())


def test_dpo_family_metrics_match_numpy():
    d, inputs = make_pairs(seed=3)
    w = random_weights(3, 5)
    _, m = PREFERENCE_LOSSES.build("dpo", beta=0.2)(with_weights(inputs, w))
    rc, rr = 0.2 * (d.pw - d.rw), 0.2 * (d.pl - d.rl)
    expected = {
        "rewards/chosen": wmean(rc, w),
        "rewards/rejected": wmean(rr, w),
        "rewards/margins": wmean(rc - rr, w),
        "rewards/accuracies": wmean((rc > rr).astype(float), w),
        "logps/chosen": wmean(d.pw, w),
        "logps/rejected": wmean(d.pl, w),
    }
    for key, value in expected.items():
        np.testing.assert_allclose(float(m[key]), value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_reference_sums_and_per_token_reference_agree():
    _, inputs = make_pairs(seed=4)
    sums = inputs.replace(
        reference_chosen=None,
        reference_rejected=None,
        reference_chosen_logps=inputs.reference_chosen.sum,
        reference_rejected_logps=inputs.reference_rejected.sum,
    )
    for name in ("dpo", "ipo", "bco_pair", "aot_paired"):
        fn = PREFERENCE_LOSSES.build(name)
        np.testing.assert_allclose(fn(sums)[0], fn(inputs)[0], rtol=1e-6)


# ------------------------------------------------------------------ closed forms


def at_reference(b=3, t=4, chosen_ratio=0.0, rejected_ratio=0.0):
    """Inputs whose summed policy-minus-reference log-ratios are exactly the given values."""
    tok = jnp.asarray(np.random.default_rng(0).uniform(-2.0, -0.1, (b, t)), jnp.float32)
    seq = SequenceLogps(tok, jnp.ones((b, t)))
    return PreferenceInputs(
        policy_chosen=seq,
        policy_rejected=seq,
        reference_chosen_logps=seq.sum - chosen_ratio,
        reference_rejected_logps=seq.sum - rejected_ratio,
    )


LN2 = math.log(2.0)
AT_REFERENCE = {  # loss when policy == reference, beta = 0.1
    "dpo": LN2, "cdpo": LN2, "robust_dpo": LN2, "f_dpo": LN2, "dpop": LN2, "rdpo": LN2,
    "aot_paired": LN2, "aot_unpaired": LN2, "ipo": 25.0, "hinge": 1.0, "nca": 2 * LN2,
    "bco_pair": 2 * LN2, "sppo_hard": 50.0, "apo_zero": 1.0, "apo_down": 1.0,
    "discopop": 0.5 * LN2 + 0.5, "exo": -LN2 - 0.5 * math.log(1e-3 * (1 - 1e-3)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(AT_REFERENCE))
def test_policy_equal_reference_closed_form(name):
    loss, metrics = PREFERENCE_LOSSES.build(name)(at_reference())
    np.testing.assert_allclose(float(loss), AT_REFERENCE[name], rtol=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert float(metrics[key]) == 0.0


def test_ipo_minimum_at_margin_one_over_two_beta():
    beta = 0.25
    inputs = at_reference(chosen_ratio=1.0 / (2 * beta))
    loss_fn = PREFERENCE_LOSSES.build("ipo", beta=beta)

    def loss_of(tokens):
        seq = inputs.policy_chosen.replace(token_logps=tokens)
        return loss_fn(inputs.replace(policy_chosen=seq))[0]

    assert float(loss_of(inputs.policy_chosen.token_logps)) == pytest.approx(0.0, abs=1e-8)
    np.testing.assert_allclose(jax.grad(loss_of)(inputs.policy_chosen.token_logps), 0.0, atol=1e-6)


# ------------------------------------------------------------------ ORPO near log p = 0


@pytest.mark.parametrize("x", [-1e-9, -1e-7, -1e-6, -1e-4, -0.3, -0.6931, -0.6932, -2.0, -30.0, -100.0])
def test_log1m_exp_value_and_gradient_are_exact(x):
    """log(1 - e^x) and its derivative -e^x / (1 - e^x), against float64 closed forms, on both
    sides of the branch at -ln 2 and close to 0 (where a clip used to freeze both)."""
    value, grad = jax.value_and_grad(log1m_exp)(jnp.float32(x))
    x64 = float(np.float32(x))  # the float32 input, exactly
    # atol: XLA's float32 log1p of -e^-30 is off by 2e-4 relative, 2e-17 absolute
    np.testing.assert_allclose(float(value), np.log(-np.expm1(x64)), rtol=2e-6, atol=1e-12)
    np.testing.assert_allclose(float(grad), -np.exp(x64) / -np.expm1(x64), rtol=2e-6, atol=1e-12)


def test_log1m_exp_stays_finite_at_zero():
    value, grad = jax.value_and_grad(log1m_exp)(jnp.float32(0.0))
    assert np.isfinite(float(value)) and np.isfinite(float(grad))


def test_orpo_gradient_near_log_p_zero_is_finite_and_exact():
    """Chosen responses the policy is nearly sure of (mean log-prob -1e-7 .. -1e-4): the gradient
    w.r.t. each chosen token equals the closed form, float64, within float32 rounding."""
    beta, length = 0.1, 4
    mw = np.array([-1e-7, -1e-6, -1e-5, -1e-4])
    ml = np.array([-0.5, -1.0, -2.0, -0.01])
    chosen = SequenceLogps(jnp.asarray(np.repeat(mw[:, None], length, 1), jnp.float32), jnp.ones((4, length)))
    rejected = SequenceLogps(jnp.asarray(np.repeat(ml[:, None], length, 1), jnp.float32), jnp.ones((4, length)))
    loss_fn = PREFERENCE_LOSSES.build("orpo", beta=beta)

    def loss_of(tokens):
        return loss_fn(PreferenceInputs(chosen.replace(token_logps=tokens), rejected))[0]

    grad = np.asarray(jax.grad(loss_of)(chosen.token_logps), np.float64)
    mw32 = np.float32(mw).astype(np.float64)
    ml32 = np.float32(ml).astype(np.float64)
    log_odds = (mw32 - ml32) - (np.log(-np.expm1(mw32)) - np.log(-np.expm1(ml32)))
    d_mean = -1.0 - beta * sig(-log_odds) / -np.expm1(mw32)  # d loss_b / d mean_w, per example
    expected = d_mean / (len(mw) * length)  # batch mean over examples, token mean within one
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, np.repeat(expected[:, None], length, 1), rtol=1e-4)


def test_sppo_minimum_at_plus_minus_one_over_two_beta():
    inputs = at_reference(chosen_ratio=5.0, rejected_ratio=-5.0)
    assert float(PREFERENCE_LOSSES.build("sppo_hard", beta=0.1)(inputs)[0]) == pytest.approx(0.0, abs=1e-8)


def test_f_dpo_identities():
    _, inputs = make_pairs(seed=11)
    def loss(name, **options):
        return PREFERENCE_LOSSES.build(name, **options)(inputs)[0]

    np.testing.assert_allclose(loss("f_dpo", divergence="reverse_kl"), loss("dpo"), rtol=1e-6)
    alpha_one = loss("f_dpo", divergence="alpha", alpha=1.0)
    np.testing.assert_allclose(alpha_one, loss("f_dpo", divergence="forward_kl"), rtol=1e-6)


def test_variants_reduce_to_dpo():
    _, inputs = make_pairs(seed=12)
    dpo = PREFERENCE_LOSSES.build("dpo")(inputs)[0]
    neutral = {"ld_dpo": {"ld_alpha": 1.0}, "rdpo": {"length_alpha": 0.0}, "rpo": {"sft_weight": 0.0},
               "cdpo": {"label_smoothing": 0.0}}  # fmt: skip
    for name, options in neutral.items():
        np.testing.assert_allclose(PREFERENCE_LOSSES.build(name, **options)(inputs)[0], dpo, rtol=1e-6)
    above = at_reference(chosen_ratio=0.5, rejected_ratio=0.1)  # chosen above reference: no penalty
    np.testing.assert_allclose(
        PREFERENCE_LOSSES.build("dpop")(above)[0], PREFERENCE_LOSSES.build("dpo")(above)[0], rtol=1e-6
    )


# ------------------------------------------------------------------ gradient signs

# apo_down lowers the chosen likelihood by design; sft ignores the rejected response.
CHOSEN_SIGN_EXCEPTIONS = {"apo_down"}
REJECTED_SIGN_EXCEPTIONS = {"sft"}


def shifted_loss(name, inputs, field):
    loss_fn = PREFERENCE_LOSSES.build(name)
    seq = getattr(inputs, field)

    def loss_of(shift):
        moved = seq.replace(token_logps=seq.token_logps + shift * seq.mask)
        return loss_fn(inputs.replace(**{field: moved}))[0]

    return loss_of


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_gradient_signs(name):
    """Near a policy that prefers the rejected response (ratios -1 / +1 per token), raising
    the chosen log-prob lowers the loss and raising the rejected one raises it.
    (IPO and SPPO reverse beyond their optima at margin 1/(2 beta); NCA beyond r_w = ln 2.)"""
    _, base = make_pairs(seed=5, b=3, t=4)
    def policy_from(reference, policy, per_token_ratio):
        tokens = reference.token_logps + per_token_ratio * reference.mask
        return policy.replace(token_logps=tokens)  # the policy's masks and squared norms are kept

    inputs = base.replace(
        policy_chosen=policy_from(base.reference_chosen, base.policy_chosen, -0.25),
        policy_rejected=policy_from(base.reference_rejected, base.policy_rejected, 0.25),
    )
    grad_chosen = float(jax.grad(shifted_loss(name, inputs, "policy_chosen"))(0.0))
    grad_rejected = float(jax.grad(shifted_loss(name, inputs, "policy_rejected"))(0.0))
    if name not in CHOSEN_SIGN_EXCEPTIONS:
        assert grad_chosen < 0.0
    if name in REJECTED_SIGN_EXCEPTIONS:
        assert grad_rejected == 0.0
    else:
        assert grad_rejected > 0.0


# ------------------------------------------------------------------ padding and reduction


def all_losses(inputs):
    """Every registered loss with default options (eager: the losses share compiled ops)."""
    return {name: PREFERENCE_LOSSES.build(name)(inputs) for name in PREFERENCE_LOSSES}


def assert_same_outputs(a, b):
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-7)
    assert a[1].keys() == b[1].keys()
    for key in a[1]:
        np.testing.assert_allclose(a[1][key], b[1][key], rtol=1e-6, atol=1e-6, err_msg=key)


@settings(max_examples=4, deadline=None)
@given(shape=st.sampled_from([(1, 1), (4, 4)]), seed=st.integers(0, 2**16))  # few shapes: each compiles
def test_property_padding_tokens_never_change_a_loss(shape, seed):
    b, t = shape
    _, clean = make_pairs(seed, b, t, garbage=0.0)
    _, dirty = make_pairs(seed, b, t, garbage=np.nan)
    expected, got = all_losses(clean), all_losses(dirty)
    for name in EXPECTED:
        assert_same_outputs(expected[name], got[name])


@settings(max_examples=3, deadline=None)
@given(sizes=st.sampled_from([(1, 3), (3, 1)]), seed=st.integers(0, 2**16))  # 4 examples once stacked
def test_property_padding_examples_never_change_a_loss(sizes, seed):
    """Examples with weight 0 (finite garbage inside) change neither loss nor metrics."""
    b, pad = sizes
    _, real = make_pairs(seed, b, 4)
    _, junk = make_pairs(seed + 1, pad, 4)
    junk = jax.tree_util.tree_map(lambda x: x * 37.0, junk)
    stacked = jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), real, junk)
    stacked = with_weights(stacked, np.r_[np.ones(b), np.zeros(pad)])
    expected, got = all_losses(real), all_losses(stacked)
    for name in EXPECTED:
        assert_same_outputs(expected[name], got[name])


@pytest.mark.parametrize("name", sorted(EXPECTED - BATCH_COUPLED))
def test_micro_batches_reduce_exactly(name):
    """loss(A + B) == (loss_A * n_A + loss_B * n_B) / (n_A + n_B) through num_examples."""
    _, inputs = make_pairs(seed=9, b=6)
    fn = PREFERENCE_LOSSES.build(name)
    first = np.r_[1.0, 2.0, 1.0, 0, 0, 0]
    second = np.r_[0, 0, 0, 1.0, 0.5, 1.0]
    loss_a, metrics_a = fn(with_weights(inputs, first))
    loss_b, metrics_b = fn(with_weights(inputs, second))
    total = fn(with_weights(inputs, first + second))[0]
    n_a, n_b = metrics_a["num_examples"], metrics_b["num_examples"]
    np.testing.assert_allclose(total, (loss_a * n_a + loss_b * n_b) / (n_a + n_b), rtol=1e-5)


def test_jit_compatible():
    _, inputs = make_pairs(seed=2)
    fn = PREFERENCE_LOSSES.build("aot_paired")
    np.testing.assert_allclose(jax.jit(fn)(inputs)[0], fn(inputs)[0], rtol=1e-6)


# ------------------------------------------------------------------ registry and errors


def test_registry_lists_every_objective():
    assert set(PREFERENCE_LOSSES.names()) == EXPECTED | {"combined"}  # combined: a weighted sum of the others
    for name in PREFERENCE_LOSSES:
        entry = PREFERENCE_LOSSES.entry(name)
        assert name == "sft" or re.fullmatch(r"\d{4}\.\d{5}", entry.paper)
        assert name == "sft" or f"arXiv:{entry.paper}" in entry.fn.__doc__
        PREFERENCE_LOSSES.build(name)  # defaults are valid


def test_unknown_name_lists_valid_choices():
    with pytest.raises(KeyError, match="valid choices: .*dpo.*ipo"):
        PREFERENCE_LOSSES.build("dpo2")


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("exo", {"label_smoothing": 0.0}, r"label_smoothing=0.0 must be in \(0.0, 1.0\)"),
        ("robust_dpo", {"label_smoothing": 0.5}, r"label_smoothing=0.5 must be in \[0.0, 0.5\)"),
        ("robust_dpo", {"label_smoothing": 0.7}, r"robust_dpo"),
        ("dpo", {"beta": 0.0}, r"beta=0.0 must be > 0"),
        ("f_dpo", {"divergence": "hell"}, r"must be one of 'reverse_kl', 'forward_kl', 'js', 'alpha'"),
        ("ipo", {"label_smoothing": 0.1}, r"valid options: beta=0.1"),
        ("ipo", {"normalize": "mean"}, r"normalize='mean' must be one of 'sum', 'length'"),
        ("rpo", {"nll_reduction": "batch"}, r"nll_reduction='batch' must be one of 'sequence', 'token'"),
        ("cpo", {"pair_loss": "simpo"}, r"pair_loss='simpo' must be one of 'sigmoid', 'hinge', 'ipo'"),
        ("bco_pair", {"shift": "mean"}, r"shift='mean' must be one of 'running', 'batch', 'none'"),
    ],
)
def test_invalid_options_fail_clearly(name, options, match):
    with pytest.raises(ValueError, match=match):
        PREFERENCE_LOSSES.build(name, **options)


def test_missing_inputs_fail_clearly():
    _, inputs = make_pairs(seed=1)
    no_reference = inputs.replace(reference_chosen=None, reference_rejected=None)
    with pytest.raises(ValueError, match="needs reference log-probs"):
        PREFERENCE_LOSSES.build("dpo")(no_reference)
    sums_only = no_reference.replace(
        reference_chosen_logps=inputs.reference_chosen.sum,
        reference_rejected_logps=inputs.reference_rejected.sum,
    )
    with pytest.raises(ValueError, match="per-token reference"):
        PREFERENCE_LOSSES.build("ld_dpo")(sums_only)
    no_sq = inputs.replace(policy_chosen=inputs.policy_chosen.replace(token_log_sq_norm=None))
    with pytest.raises(ValueError, match="with_sq_norm=True"):
        PREFERENCE_LOSSES.build("wpo")(no_sq)
    PREFERENCE_LOSSES.build("simpo")(no_reference)  # reference-free losses need none


# ------------------------------------------------------------------ documentation

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "objectives.md"


def test_docs_list_every_loss_and_every_logged_metric():
    text = DOC.read_text()
    for registry in (PREFERENCE_LOSSES, UNPAIRED_LOSSES, RANKING_LOSSES):
        assert registry.describe() in text, f"regenerate the {registry.kind} table in docs/objectives.md"
    _, inputs = make_pairs(seed=0)
    keys = set()
    for name in PREFERENCE_LOSSES:
        keys |= set(PREFERENCE_LOSSES.build(name)(inputs)[1])
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"metrics not documented in docs/objectives.md: {missing}"
