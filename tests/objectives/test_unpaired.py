"""KTO, unpaired APO-zero and unpaired BCO vs NumPy formulas from the papers, gradient signs,
padding, registry."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.objectives.types import SequenceLogps, UnpairedInputs
from align_jax.objectives.unpaired import UNPAIRED_LOSSES


def logsig(x):
    return -np.logaddexp(0.0, -x)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def make_batch(seed, b=6, t=5, garbage=0.0, with_kl=False):
    rng = np.random.default_rng(seed)
    tok = rng.uniform(-2.0, -0.05, (b, t))
    mask = (rng.random((b, t)) < 0.7).astype(np.float64)
    mask[:, 0] = 1.0
    tok *= mask
    ref = tok.sum(1) + rng.normal(0.0, 1.0, b)
    desirable = rng.random(b) < 0.5
    desirable[:2] = [True, False]
    kl_pol, kl_ref = rng.normal(-5.0, 1.0, b), rng.normal(-5.5, 1.0, b)
    inputs = UnpairedInputs(
        policy=SequenceLogps(
            jnp.asarray(np.where(mask > 0, tok, garbage), jnp.float32), jnp.asarray(mask, jnp.float32)
        ),
        reference_logps=jnp.asarray(ref, jnp.float32),
        desirable=jnp.asarray(desirable),
        kl_policy_logps=jnp.asarray(kl_pol, jnp.float32) if with_kl else None,
        kl_reference_logps=jnp.asarray(kl_ref, jnp.float32) if with_kl else None,
    )
    ratio = tok.sum(1) - ref
    return ratio, desirable, (kl_pol - kl_ref) if with_kl else None, inputs


def np_kto(ratio, desirable, kl_terms, w, beta, lam_d, lam_u):
    """KTO (arXiv:2402.01306): loss = lambda_y - v(x, y), z0 = max(0, mean KL estimate)."""
    keep = w > 0
    z0 = max(0.0, np.average((ratio if kl_terms is None else kl_terms)[keep], weights=w[keep]))
    value = np.where(desirable, lam_d * sig(beta * (ratio - z0)), lam_u * sig(beta * (z0 - ratio)))
    lam = np.where(desirable, lam_d, lam_u)
    return np.average((lam - value)[keep], weights=w[keep]), z0


def np_bco(ratio, desirable, w, beta, delta=None):
    keep = w > 0
    rewards = beta * ratio
    delta = np.average(rewards[keep], weights=w[keep]) if delta is None else delta
    per = np.where(desirable, -logsig(rewards - delta), -logsig(-(rewards - delta)))
    return np.average(per[keep], weights=w[keep])


@pytest.mark.parametrize("with_kl", [False, True])
@pytest.mark.parametrize(
    "options", [{}, {"beta": 0.5, "desirable_weight": 1.3, "undesirable_weight": 0.7}]
)
def test_kto_matches_numpy(with_kl, options):
    ratio, desirable, kl_terms, inputs = make_batch(1, with_kl=with_kl)
    w = np.array([1.0, 1.0, 0.0, 2.0, 0.5, 1.0])
    opts = {**UNPAIRED_LOSSES.entry("kto").options, **options}
    kto = UNPAIRED_LOSSES.build("kto", **options)
    loss, metrics = kto(inputs.replace(example_weight=jnp.asarray(w)))
    lam_d, lam_u = opts["desirable_weight"], opts["undesirable_weight"]
    expected, z0 = np_kto(ratio, desirable, kl_terms, w, opts["beta"], lam_d, lam_u)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["kl"]), z0, rtol=1e-5, atol=1e-6)
    good = (w > 0) & desirable
    np.testing.assert_allclose(
        float(metrics["rewards/chosen"]), np.average(opts["beta"] * ratio[good], weights=w[good]), rtol=1e-5
    )
    np.testing.assert_allclose(float(metrics["count/desirable"]), w[desirable].sum())


def test_kto_reference_point_is_clamped_at_zero_and_has_no_gradient():
    _, _, _, inputs = make_batch(2, with_kl=True)
    inputs = inputs.replace(kl_policy_logps=inputs.kl_reference_logps - 3.0)  # negative KL estimate
    fn = UNPAIRED_LOSSES.build("kto")
    assert float(fn(inputs)[1]["kl"]) == 0.0
    # Batch estimate: moving every log-prob moves z0 too, but only through the stopped path.
    batch = inputs.replace(kl_policy_logps=None, kl_reference_logps=None)
    grad = jax.grad(lambda r: fn(batch.replace(reference_logps=r))[0])(batch.reference_logps)
    ratio = batch.policy.sum - batch.reference_logps
    z0 = max(0.0, float(jnp.mean(ratio)))
    beta = 0.1
    desirable = np.asarray(batch.desirable)
    expected = np.where(
        desirable, beta * sig(beta * (ratio - z0)) * (1 - sig(beta * (ratio - z0))),
        -beta * sig(beta * (z0 - ratio)) * (1 - sig(beta * (z0 - ratio))),
    ) / len(ratio)  # fmt: skip
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("options", [{}, {"beta": 0.5, "desirable_weight": 1.3, "undesirable_weight": 0.7}])
def test_apo_zero_unpaired_matches_numpy(options):
    ratio, desirable, _, inputs = make_batch(7)
    w = np.array([1.0, 1.0, 0.0, 2.0, 0.5, 1.0])
    opts = {**UNPAIRED_LOSSES.entry("apo_zero_unpaired").options, **options}
    loss, _ = UNPAIRED_LOSSES.build("apo_zero_unpaired", **options)(inputs.replace(example_weight=jnp.asarray(w)))
    beta = opts["beta"]
    per = np.where(desirable, opts["desirable_weight"] * (1 - sig(beta * ratio)),
                   opts["undesirable_weight"] * sig(beta * ratio))  # fmt: skip
    np.testing.assert_allclose(float(loss), np.average(per[w > 0], weights=w[w > 0]), rtol=1e-5)


@pytest.mark.parametrize(
    "delta,shift,expected_delta",
    [(None, "running", None), (0.3, "running", 0.3), (0.3, "batch", None), (0.3, "none", 0.0)],
)
def test_bco_matches_numpy(delta, shift, expected_delta):
    """shift="running" reads the given running mean (the batch mean without one), "batch" always
    the batch mean, "none" no shift (TRL 1.16's bco_pair convention)."""
    ratio, desirable, _, inputs = make_batch(3)
    w = np.array([1.0, 2.0, 1.0, 0.0, 1.0, 0.5])
    given = None if delta is None else jnp.float32(delta)
    inputs = inputs.replace(example_weight=jnp.asarray(w), reward_shift=given)
    loss, metrics = UNPAIRED_LOSSES.build("bco", beta=0.2, shift=shift)(inputs)
    np.testing.assert_allclose(float(loss), np_bco(ratio, desirable, w, 0.2, expected_delta), rtol=1e-5)
    keep = w > 0
    batch_mean = np.average(0.2 * ratio[keep], weights=w[keep])
    np.testing.assert_allclose(float(metrics["bco/batch_reward_mean"]), batch_mean, rtol=1e-5)


@pytest.mark.parametrize("name", ["kto", "bco", "apo_zero_unpaired"])
def test_gradient_signs(name):
    """Raising a desirable response's log-prob lowers the loss; an undesirable one's raises it."""
    _, desirable, _, inputs = make_batch(4)
    fn = UNPAIRED_LOSSES.build(name)
    grad = jax.grad(lambda tok: fn(inputs.replace(policy=inputs.policy.replace(token_logps=tok)))[0])(
        inputs.policy.token_logps
    )
    per_example = np.asarray(jnp.sum(grad * inputs.policy.mask, axis=1))
    assert np.all(per_example[desirable] < 0) and np.all(per_example[~desirable] > 0)


@pytest.mark.parametrize("name", ["kto", "bco", "apo_zero_unpaired"])
def test_padding_tokens_and_examples_are_ignored(name):
    fn = UNPAIRED_LOSSES.build(name)
    *_, clean = make_batch(5)
    *_, dirty = make_batch(5, garbage=np.nan)
    *_, junk = make_batch(6, b=2)
    stacked = jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), clean, junk)
    stacked = stacked.replace(example_weight=jnp.asarray([1.0] * 6 + [0.0, 0.0]))
    reference = fn(clean)
    for other in (fn(dirty), fn(stacked)):
        np.testing.assert_allclose(other[0], reference[0], rtol=1e-6)
        for key in reference[1]:
            np.testing.assert_allclose(other[1][key], reference[1][key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_registry_and_validation():
    assert UNPAIRED_LOSSES.names() == ["apo_zero_unpaired", "bco", "kto"]
    with pytest.raises(ValueError, match="desirable_weight=-1.0 must be >= 0"):
        UNPAIRED_LOSSES.build("kto", desirable_weight=-1.0)
    with pytest.raises(ValueError, match="shift='mean' must be one of 'running', 'batch', 'none'"):
        UNPAIRED_LOSSES.build("bco", shift="mean")
    with pytest.raises(KeyError, match="valid choices: apo_zero_unpaired, bco, kto"):
        UNPAIRED_LOSSES.build("kto_pair")


def test_docs_describe_every_metric():
    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "objectives.md").read_text()
    *_, inputs = make_batch(0)
    keys = set().union(*(UNPAIRED_LOSSES.build(name)(inputs)[1] for name in UNPAIRED_LOSSES))
    assert not [k for k in keys if f"`{k}`" not in text]
