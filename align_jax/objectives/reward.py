"""Reward models: the Bradley-Terry loss, ensemble aggregation, reward transforms and combination.

Shapes: ``B`` pairs or responses, ``E`` ensemble members, ``R`` reference rewards per prompt,
``K`` reward models to combine. All math is float32.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from align_jax.objectives.kl import masked_mean, zero_padding
from align_jax.objectives.types import weighted_mean
from align_jax.registry import Registry

ENSEMBLE_AGGREGATIONS = Registry("ensemble aggregation")
REWARD_TRANSFORMS = Registry("reward transform")

Metrics = dict[str, jax.Array]


def bradley_terry_loss(
    chosen_rewards: jax.Array,  # [B] r(x, y_chosen)
    rejected_rewards: jax.Array,  # [B] r(x, y_rejected)
    margin: jax.Array | None = None,  # [B] per-pair margin m(r) >= 0 (Llama 2), or None
    mask: jax.Array | None = None,  # [B] pair weights (bool or 0 = padding; a count n = drawn n times), or None for all
    *,
    center_coef: float = 0.0,
) -> tuple[jax.Array, Metrics]:
    """Bradley-Terry reward-model loss ``-log sigmoid(r_c - r_r - m)`` (InstructGPT, arXiv:2203.02155).

    ``margin`` is Llama 2's preference-strength margin (arXiv:2307.09288). ``center_coef``
    adds ``center_coef * (r_c + r_r)^2``, which pins the reward's free offset near zero
    (Eisenstein et al., arXiv:2312.09244, who use 0.01). Loss and metrics are means weighted by
    ``mask`` (a 0/1 mask averages the valid pairs; bootstrap counts weigh each pair by its draws).
    """
    if center_coef < 0:
        raise ValueError(f"center_coef must be >= 0, got {center_coef}")
    chosen = zero_padding(chosen_rewards, mask)
    rejected = zero_padding(rejected_rewards, mask)
    diff = chosen - rejected
    shifted = diff if margin is None else diff - zero_padding(margin, mask)
    per_pair = -jax.nn.log_sigmoid(shifted) + center_coef * jnp.square(chosen + rejected)

    def mean(x):
        return masked_mean(x) if mask is None else weighted_mean(x, jnp.asarray(mask, jnp.float32))

    loss = mean(per_pair)
    metrics = jax.lax.stop_gradient(
        {
            "rm/loss": loss,
            "rm/accuracy": mean(diff > 0),
            "rm/margin": mean(diff),
            "rm/chosen": mean(chosen),
            "rm/rejected": mean(rejected),
        }
    )
    return loss, metrics


def last_token_rewards(
    hidden: jax.Array,  # [B, L, D] final hidden states, right-padded
    segment_ids: jax.Array,  # [B, L] > 0 on tokens, 0 on padding
    head: dict[str, jax.Array],  # {"w": [D] or [E, D], "b": [] or [E]}
) -> jax.Array:  # [B] (or [B, E] for an ensemble of E heads) float32
    """A reward model's scalar per sequence: a linear head on the hidden state of its last token
    (InstructGPT, arXiv:2203.02155). Stacked heads ``w [E, D]`` score E ensemble members at once."""
    last = jnp.sum(segment_ids > 0, axis=1) - 1  # right padding
    return linear_head(jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0], head)


def linear_head(
    h: jax.Array,  # [B, D] a hidden state per sequence
    head: dict[str, jax.Array],  # {"w": [D] or [E, D], "b": [] or [E]}
) -> jax.Array:  # [B] (or [B, E]) float32
    """``h . w + b`` in float32 (E stacked heads at once)."""
    h = h.astype(jnp.float32)
    return jnp.einsum("bd,...d->b...", h, head["w"].astype(jnp.float32)) + head["b"].astype(jnp.float32)


# ----------------------------------------------------------------------------- ensembles


@ENSEMBLE_AGGREGATIONS.register("mean", paper="2310.02743")
def ensemble_mean(rewards: jax.Array) -> jax.Array:  # [E, B] -> [B] float32
    """Mean over ensemble members (Coste et al., arXiv:2310.02743)."""
    return jnp.mean(rewards.astype(jnp.float32), axis=0)


@ENSEMBLE_AGGREGATIONS.register("min", paper="2310.02743")
def ensemble_min(rewards: jax.Array) -> jax.Array:  # [E, B] -> [B] float32
    """Worst case over members (WCO of Coste et al., arXiv:2310.02743)."""
    return jnp.min(rewards.astype(jnp.float32), axis=0)


def _validate_lam(*, lam: float) -> None:
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")


@ENSEMBLE_AGGREGATIONS.register("mean-minus-std", paper="2312.09244", validate=_validate_lam)
def ensemble_mean_minus_std(
    rewards: jax.Array,  # [E, B]
    *,
    lam: float = 1.0,
) -> jax.Array:  # [B] float32
    """Uncertainty-penalised ``mean - lam * std`` over members (population std; arXiv:2312.09244)."""
    rewards = rewards.astype(jnp.float32)
    return jnp.mean(rewards, axis=0) - lam * jnp.std(rewards, axis=0)


# ----------------------------------------------------------------------------- transforms


def _per_reference(
    fn: Callable[[jax.Array], jax.Array],  # elementwise, applied to reward - reference reward
    rewards: jax.Array,  # [B]
    ref_rewards: jax.Array,  # [B, R]
    ref_mask: jax.Array | None,  # [B, R]
) -> jax.Array:  # [B] float32: mean over valid references of fn(r - r_ref)
    values = fn(rewards.astype(jnp.float32)[:, None] - ref_rewards.astype(jnp.float32))
    return masked_mean(values, ref_mask, axis=-1)


@REWARD_TRANSFORMS.register("identity")
def identity_transform(
    rewards: jax.Array,  # [B]
    ref_rewards: jax.Array | None = None,  # [B, R], ignored
    ref_mask: jax.Array | None = None,  # [B, R], ignored
) -> jax.Array:  # [B] float32
    """The raw reward."""
    del ref_rewards, ref_mask
    return rewards.astype(jnp.float32)


def _validate_quantile(*, quantile: float) -> None:
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")


@REWARD_TRANSFORMS.register("log-sigmoid", paper="2402.00742", validate=_validate_quantile)
def log_sigmoid_transform(
    rewards: jax.Array,  # [B]
    ref_rewards: jax.Array,  # [B, R] rewards of reference responses for the same prompt
    ref_mask: jax.Array | None = None,  # [B, R] valid references
    *,
    quantile: float = 0.85,
) -> jax.Array:  # [B] float32, <= 0
    """``log sigmoid(r - r_ref)``, ``r_ref`` a quantile of the reference rewards (arXiv:2402.00742).

    The reference is treated as a constant. With one reference (R = 1) ``r_ref`` is that reward.
    """
    refs = ref_rewards.astype(jnp.float32)
    if ref_mask is not None:
        refs = jnp.where(ref_mask.astype(bool), refs, jnp.nan)
    r_ref = jax.lax.stop_gradient(jnp.nanquantile(refs, quantile, axis=-1))
    return jax.nn.log_sigmoid(rewards.astype(jnp.float32) - r_ref)


@REWARD_TRANSFORMS.register("par", paper="2502.18770")
def par_transform(
    rewards: jax.Array,  # [B]
    ref_rewards: jax.Array,  # [B, R] rewards of reference responses for the same prompt
    ref_mask: jax.Array | None = None,  # [B, R] valid references
) -> jax.Array:  # [B] float32, in (0, 1)
    """Preference as reward: ``mean_m sigmoid(r - r_ref_m)`` over references (PAR, arXiv:2502.18770).

    The model's own preference probability of the response over each reference response.
    """
    return _per_reference(jax.nn.sigmoid, rewards, ref_rewards, ref_mask)


def combine_rewards(
    rewards: jax.Array,  # [K, B] one row per reward model
    ref_rewards: jax.Array,  # [K, B, R] reference rewards for each reward model
    weights: Sequence[float] | jax.Array,  # [K]
    ref_mask: jax.Array | None = None,  # [B, R] valid references, shared by the K models
    *,
    transform: str = "log-sigmoid",
    **options,
) -> jax.Array:  # [B] float32
    """``sum_k w_k T(r_k)`` for a transform ``T`` of REWARD_TRANSFORMS (arXiv:2402.00742).

    With the default log-sigmoid transform the sum is the log-probability that the response
    beats the reference on *every* property ("logical AND"), so no single reward dominates.
    ``options`` are the transform's options (e.g. ``quantile``).
    """
    fn = REWARD_TRANSFORMS.build(transform, **options)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != rewards.shape[:1]:
        raise ValueError(f"need one weight per reward model: {weights.shape} vs {rewards.shape[:1]}")
    transformed = jax.vmap(lambda r, ref: fn(r, ref, ref_mask))(rewards, ref_rewards)  # [K, B]
    return jnp.einsum("k,kb->b", weights, transformed)
