"""Unpaired preference losses: single responses labelled desirable or undesirable.

Each loss is ``fn(inputs: UnpairedInputs, *, options...) -> (loss [], metrics)``, registered
in ``UNPAIRED_LOSSES``. ``ratio = log pi(y|x) - log pi_ref(y|x)`` (summed over tokens).
Metrics: ``rewards/chosen`` and ``rewards/rejected`` are means of ``beta * ratio`` over the
desirable and undesirable examples (``count/desirable``, ``count/undesirable`` are their
weights, to re-weight across micro-batches), ``rewards/margins`` their difference,
``logps/chosen``/``logps/rejected`` likewise for the summed policy log-probs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from align_jax.objectives.preference import (
    BCO_SHIFT,
    NON_NEGATIVE,
    LossOutput,
    bco_needs,
    bco_reward_shift,
    option_rules,
)
from align_jax.objectives.types import Metrics, UnpairedInputs, declare_needs, example_weights, weighted_mean
from align_jax.registry import Registry

UNPAIRED_LOSSES = Registry("unpaired loss")


def _unpaired_metrics(inputs: UnpairedInputs, rewards: jax.Array, weight: jax.Array) -> Metrics:
    """Subset means over desirable / undesirable examples (0 when a subset is empty)."""
    desirable = inputs.desirable.astype(bool)
    w_good = jnp.where(desirable, weight, 0.0)
    w_bad = jnp.where(desirable, 0.0, weight)
    rewards = jax.lax.stop_gradient(rewards)
    chosen, rejected = weighted_mean(rewards, w_good), weighted_mean(rewards, w_bad)
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "logps/chosen": weighted_mean(inputs.policy.sum, w_good),
        "logps/rejected": weighted_mean(inputs.policy.sum, w_bad),
        "count/desirable": jnp.sum(w_good),
        "count/undesirable": jnp.sum(w_bad),
        "num_examples": jnp.sum(weight),
    }


def kl_reference_point(
    inputs: UnpairedInputs,
    ratio: jax.Array,  # [B] policy minus reference summed log-probs
    weight: jax.Array,  # [B]
) -> jax.Array:  # []
    """KTO's ``z0``: ``max(0, mean KL estimate)``, no gradient.

    From the mismatched pairs ``kl_policy_logps - kl_reference_logps`` when given (the
    paper's estimator), else from the batch's own log-ratios."""
    if inputs.kl_policy_logps is not None and inputs.kl_reference_logps is not None:
        ratio = inputs.kl_policy_logps.astype(jnp.float32) - inputs.kl_reference_logps
    return jax.lax.stop_gradient(jnp.maximum(weighted_mean(ratio, weight), 0.0))


def _weighted_by_label(
    inputs: UnpairedInputs,
    desirable_losses: jax.Array,  # [B]
    undesirable_losses: jax.Array,  # [B]
    desirable_weight: float,
    undesirable_weight: float,
) -> jax.Array:  # [B]
    """Each example's loss by its label, times lambda_D or lambda_U (KTO's class weights)."""
    return jnp.where(
        inputs.desirable.astype(bool),
        desirable_weight * desirable_losses,
        undesirable_weight * undesirable_losses,
    )


CLASS_WEIGHTS = {"desirable_weight": NON_NEGATIVE, "undesirable_weight": NON_NEGATIVE}


@UNPAIRED_LOSSES.register(
    "kto", paper="2402.01306", validate=option_rules("unpaired loss 'kto'", **CLASS_WEIGHTS)
)
def kto_loss(
    inputs: UnpairedInputs,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """KTO: prospect-theoretic value of each response against a KL reference point.

    arXiv:2402.01306. ``lambda_D (1 - sigma(beta (ratio - z0)))`` for desirable responses and
    ``lambda_U (1 - sigma(beta (z0 - ratio)))`` for undesirable ones; ``z0`` is the clamped
    KL reference point (``kl_reference_point``), logged as ``kl``.
    """
    ratio = inputs.policy.sum - inputs.reference_logps.astype(jnp.float32)
    weight = example_weights(inputs.example_weight, ratio)
    z0 = kl_reference_point(inputs, ratio, weight)
    losses = _weighted_by_label(
        inputs,
        1.0 - jax.nn.sigmoid(beta * (ratio - z0)),
        1.0 - jax.nn.sigmoid(beta * (z0 - ratio)),
        desirable_weight,
        undesirable_weight,
    )
    metrics = {**_unpaired_metrics(inputs, beta * ratio, weight), "kl": z0}
    return weighted_mean(losses, weight), metrics


@UNPAIRED_LOSSES.register(
    "apo_zero_unpaired",
    paper="2408.06266",
    validate=option_rules("unpaired loss 'apo_zero_unpaired'", **CLASS_WEIGHTS),
)
def apo_zero_unpaired_loss(
    inputs: UnpairedInputs,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> LossOutput:
    """APO-zero (unpaired): raise desirable and lower undesirable likelihoods against the reference.

    arXiv:2408.06266. ``lambda_D (1 - sigma(beta ratio))`` for desirable responses and
    ``lambda_U sigma(beta ratio)`` for undesirable ones: ``apo_zero`` without the pairing (KTO
    without the reference point). TRL: ``KTOTrainer`` with ``loss_type="apo_zero_unpaired"``.
    """
    ratio = inputs.policy.sum - inputs.reference_logps.astype(jnp.float32)
    weight = example_weights(inputs.example_weight, ratio)
    losses = _weighted_by_label(
        inputs,
        1.0 - jax.nn.sigmoid(beta * ratio),
        jax.nn.sigmoid(beta * ratio),
        desirable_weight,
        undesirable_weight,
    )
    return weighted_mean(losses, weight), _unpaired_metrics(inputs, beta * ratio, weight)


@UNPAIRED_LOSSES.register(
    "bco", paper="2404.04656", validate=option_rules("unpaired loss 'bco'", shift=BCO_SHIFT)
)
@declare_needs(bco_needs)
def bco_loss(inputs: UnpairedInputs, *, beta: float = 0.1, shift: str = "running") -> LossOutput:
    """BCO: logistic classifier of desirable vs undesirable rewards shifted by delta.

    arXiv:2404.04656. A binary classifier on the implicit reward ``r = beta * ratio``:
    ``-log sigma(r - delta)`` if desirable else ``-log sigma(-(r - delta))``; delta by ``shift``
    (``preference.bco_reward_shift``): ``"running"`` (default; the paper's running mean,
    ``inputs.reward_shift``, or the batch mean when that is None), ``"batch"`` or ``"none"``. The
    paper's optional density-ratio (UDM) reweighting is not included. TRL 1.16 has no unpaired BCO.
    """
    rewards = beta * (inputs.policy.sum - inputs.reference_logps.astype(jnp.float32))
    weight = example_weights(inputs.example_weight, rewards)
    delta, shift_metrics = bco_reward_shift(rewards, weight, inputs.reward_shift, shift)
    sign = jnp.where(inputs.desirable.astype(bool), 1.0, -1.0)
    losses = -jax.nn.log_sigmoid(sign * (rewards - delta))
    metrics = {**_unpaired_metrics(inputs, rewards, weight), **shift_metrics}
    return weighted_mean(losses, weight), metrics
