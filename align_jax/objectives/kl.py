"""Per-token KL estimators between the policy and a frozen reference, and KL-shaped rewards.

The estimators of J. Schulman, "Approximating KL divergence" (http://joschu.net/blog/kl-approx.html),
of KL(pi || pi_ref) from tokens sampled from pi. With ``log_r = log pi(y_t) - log pi_ref(y_t)``:

* ``k1 = log_r``                     unbiased, high variance, can be negative (InstructGPT, arXiv:2203.02155)
* ``k2 = 0.5 * log_r**2``            biased, low variance, >= 0
* ``k3 = exp(-log_r) - 1 + log_r``   unbiased, low variance, >= 0 (GRPO, arXiv:2402.03300)

Every estimator is per token, float32, and zero at padding; padded positions never influence
values or gradients (the log-ratio is replaced by 0 there *before* the non-linearity).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from align_jax.registry import Registry

KL_ESTIMATORS = Registry("KL estimator")


def masked_mean(
    x: jax.Array,  # [...] any float or bool
    mask: jax.Array | None = None,  # same shape as x, bool or {0, 1}; None means all valid
    axis: int | None = None,
) -> jax.Array:  # float32, x's shape without `axis` ([] when axis is None)
    """Mean of ``x`` over positions where ``mask`` is set; 0 where nothing is valid.

    Values at masked-out positions are never read (they may be NaN or inf).
    """
    x = jnp.asarray(x, jnp.float32)
    if mask is None:
        return jnp.mean(x, axis=axis)
    valid = mask.astype(bool)
    total = jnp.sum(jnp.where(valid, x, 0.0), axis=axis)
    return total / jnp.maximum(jnp.sum(valid.astype(jnp.float32), axis=axis), 1.0)


def zero_padding(
    x: jax.Array,  # [B, ...] any float
    mask: jax.Array | None,  # [B] or a prefix of x's shape; None means all valid
) -> jax.Array:  # x's shape, float32
    """``x`` in float32 with padded entries set to 0, so no NaN/inf there reaches a gradient."""
    x = jnp.asarray(x, jnp.float32)
    if mask is None:
        return x
    valid = mask.astype(bool)
    return jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - valid.ndim)), x, 0.0)


def last_token_mask(mask: jax.Array) -> jax.Array:  # [B, T] bool
    """Marks the last valid position of each row of ``mask`` [B, T] (left or right padding)."""
    valid = mask.astype(bool)
    valid_from_here = jnp.cumsum(valid[:, ::-1].astype(jnp.int32), axis=1)[:, ::-1]
    return valid & (valid_from_here == 1)


def _validate_clamp(*, kl_clamp: float | None) -> None:
    if kl_clamp is not None and kl_clamp <= 0:
        raise ValueError(f"kl_clamp must be positive or None, got {kl_clamp}")


def _per_token(
    estimate: Callable[[jax.Array], jax.Array],
    logp: jax.Array,  # [B, T]
    ref_logp: jax.Array,  # [B, T]
    mask: jax.Array,  # [B, T]
    kl_clamp: float | None,
) -> jax.Array:  # [B, T] float32
    kl = estimate(zero_padding(logp, mask) - zero_padding(ref_logp, mask))
    if kl_clamp is not None:
        kl = jnp.clip(kl, -kl_clamp, kl_clamp)
    return zero_padding(kl, mask)


@KL_ESTIMATORS.register("k1", paper="2203.02155", validate=_validate_clamp)
def kl_k1(
    logp: jax.Array,  # [B, T] log pi(y_t)
    ref_logp: jax.Array,  # [B, T] log pi_ref(y_t)
    mask: jax.Array,  # [B, T] valid tokens
    *,
    kl_clamp: float | None = None,
) -> jax.Array:  # [B, T] float32
    """k1 = log pi - log pi_ref: unbiased, high variance (Schulman blog; arXiv:2203.02155)."""
    return _per_token(lambda log_r: log_r, logp, ref_logp, mask, kl_clamp)


@KL_ESTIMATORS.register("k2", validate=_validate_clamp)
def kl_k2(
    logp: jax.Array,  # [B, T]
    ref_logp: jax.Array,  # [B, T]
    mask: jax.Array,  # [B, T]
    *,
    kl_clamp: float | None = None,
) -> jax.Array:  # [B, T] float32
    """k2 = 0.5 (log pi - log pi_ref)^2: biased, low variance, >= 0 (Schulman blog)."""
    return _per_token(lambda log_r: 0.5 * jnp.square(log_r), logp, ref_logp, mask, kl_clamp)


@KL_ESTIMATORS.register("k3", paper="2402.03300", validate=_validate_clamp)
def kl_k3(
    logp: jax.Array,  # [B, T]
    ref_logp: jax.Array,  # [B, T]
    mask: jax.Array,  # [B, T]
    *,
    kl_clamp: float | None = None,
) -> jax.Array:  # [B, T] float32
    """k3 = r - 1 - log r with r = pi_ref / pi: unbiased, >= 0 (GRPO, arXiv:2402.03300)."""
    return _per_token(lambda log_r: jnp.expm1(-log_r) + log_r, logp, ref_logp, mask, kl_clamp)


def kl_metrics(
    kl: jax.Array,  # [B, T] per-token KL estimate, 0 at padding
    mask: jax.Array,  # [B, T]
) -> dict[str, jax.Array]:
    """``kl/token_mean`` (mean over valid tokens) and ``kl/seq_mean`` (mean summed KL per sequence)."""
    has_tokens = jnp.any(mask.astype(bool), axis=1)
    return {
        "kl/token_mean": masked_mean(kl, mask),
        "kl/seq_mean": masked_mean(jnp.sum(zero_padding(kl, mask), axis=1), has_tokens),
    }


def _validate_shaping(*, beta: float, estimator: str, kl_clamp: float | None) -> None:
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    KL_ESTIMATORS.build(estimator, kl_clamp=kl_clamp)


def kl_penalized_rewards(
    scores: jax.Array,  # [B] sequence-level reward (e.g. a reward-model score)
    logp: jax.Array,  # [B, T] policy log-probs of the sampled tokens
    ref_logp: jax.Array,  # [B, T] reference log-probs of the same tokens
    mask: jax.Array,  # [B, T] valid response tokens
    *,
    beta: float = 0.05,
    estimator: str = "k1",
    kl_clamp: float | None = None,
) -> tuple[jax.Array, jax.Array]:  # ([B, T] rewards, [B, T] per-token KL), float32
    """PPO-RLHF per-token rewards: ``-beta * KL_t`` everywhere, plus ``scores`` at the last token.

    The shaping of InstructGPT (arXiv:2203.02155) / Ziegler et al. (arXiv:1909.08593). The KL
    is treated as a constant reward (no gradient flows through it). Zero at padding.
    """
    _validate_shaping(beta=beta, estimator=estimator, kl_clamp=kl_clamp)
    kl = jax.lax.stop_gradient(
        KL_ESTIMATORS.build(estimator, kl_clamp=kl_clamp)(logp, ref_logp, mask)
    )
    final = jnp.where(last_token_mask(mask), scores.astype(jnp.float32)[:, None], 0.0)
    return final - beta * kl, kl
