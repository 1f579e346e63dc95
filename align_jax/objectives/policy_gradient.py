"""Policy-gradient objectives: loss aggregation, clipped surrogates, value loss, GAE, advantages.

Shapes: ``B`` sequences, ``T`` response tokens, ``P`` prompts with ``G`` samples each.
All math is float32; padded tokens (``mask == 0``) never change values or gradients.

Gradient accumulation: every aggregation returns an :class:`Aggregate` ``(total, weight)``
whose weight does not depend on the parameters. Losses report it as ``pg/loss_weight`` /
``vf/loss_weight``; to reproduce the full-batch gradient over micro-batches, scale each
micro-batch gradient by its weight and divide the sum by the sum of weights.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from align_jax.objectives.kl import kl_k3, masked_mean, zero_padding
from align_jax.registry import Registry

LOSS_AGGREGATIONS = Registry("loss aggregation")
POLICY_LOSSES = Registry("policy loss")
ADVANTAGE_ESTIMATORS = Registry("advantage estimator")

Metrics = dict[str, jax.Array]


# ----------------------------------------------------------------------------- aggregation


class Aggregate(NamedTuple):
    """A loss as a sum over units (tokens or sequences) and the number of units."""

    total: jax.Array  # [] float32
    weight: jax.Array  # [] float32, parameter-independent

    def mean(self) -> jax.Array:  # [] float32; 0 when there is nothing to average
        return self.total / jnp.maximum(self.weight, 1.0)


def _row_sums(
    values: jax.Array,  # [B, T]
    mask: jax.Array,  # [B, T]
) -> tuple[jax.Array, jax.Array]:  # ([B] masked sums, [B] token counts), float32
    sums = jnp.sum(zero_padding(values, mask), axis=1)
    return sums, jnp.sum(mask.astype(jnp.float32), axis=1)


def _num_sequences(mask: jax.Array) -> jax.Array:  # [B, T] -> [] float32
    """Sequences with at least one valid token (fully padded rows do not count)."""
    return jnp.sum(jnp.any(mask.astype(bool), axis=1).astype(jnp.float32))


@LOSS_AGGREGATIONS.register("token-mean", paper="2503.14476")
def token_mean(values: jax.Array, mask: jax.Array) -> Aggregate:  # values, mask: [B, T]
    """Mean over all valid tokens of the batch (DAPO token-level loss, arXiv:2503.14476)."""
    sums, counts = _row_sums(values, mask)
    return Aggregate(jnp.sum(sums), jnp.sum(counts))


@LOSS_AGGREGATIONS.register("seq-mean-token-mean", paper="2402.03300")
def seq_mean_token_mean(values: jax.Array, mask: jax.Array) -> Aggregate:  # [B, T]
    """Mean over sequences of the per-sequence token mean (original GRPO, arXiv:2402.03300)."""
    return Aggregate(jnp.sum(masked_mean(values, mask, axis=1)), _num_sequences(mask))


@LOSS_AGGREGATIONS.register("seq-mean-token-sum", paper="2503.20783")
def seq_mean_token_sum(values: jax.Array, mask: jax.Array) -> Aggregate:  # [B, T]
    """Mean over sequences of the per-sequence token sum (no length normalisation)."""
    return Aggregate(jnp.sum(_row_sums(values, mask)[0]), _num_sequences(mask))


def _validate_max_len(*, max_len: int | None) -> None:
    if max_len is not None and max_len <= 0:
        raise ValueError(f"max_len must be a positive int or None, got {max_len}")


@LOSS_AGGREGATIONS.register("seq-mean-token-sum-norm", paper="2503.20783", validate=_validate_max_len)
def seq_mean_token_sum_norm(
    values: jax.Array,  # [B, T]
    mask: jax.Array,  # [B, T]
    *,
    max_len: int | None = None,
) -> Aggregate:
    """Mean over sequences of token sum / a constant ``max_len`` (default T) (Dr. GRPO, arXiv:2503.20783).

    Unlike verl's mode of the same name this also divides by the number of sequences. Set
    ``max_len`` explicitly when micro-batches may be padded to different lengths.
    """
    length = values.shape[1] if max_len is None else max_len
    return Aggregate(jnp.sum(_row_sums(values, mask)[0]) / length, _num_sequences(mask))


def _aggregator(aggregation: str, max_len: int | None) -> Callable[[jax.Array, jax.Array], Aggregate]:
    """The named aggregation; ``max_len`` is only accepted by the aggregations that use it."""
    options = {} if max_len is None else {"max_len": max_len}
    return LOSS_AGGREGATIONS.build(aggregation, **options)


# ----------------------------------------------------------------------------- policy losses


def _broadcast_advantages(advantages: jax.Array, mask: jax.Array) -> jax.Array:  # [B, T] float32
    advantages = advantages.astype(jnp.float32)
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    return jnp.broadcast_to(advantages, mask.shape)


def _clipped_surrogate(
    log_ratio: jax.Array,  # [B, T] log(pi / pi_old), 0 at padding
    advantages: jax.Array,  # [B, T]
    clip_eps_low: float,
    clip_eps_high: float,
    clip_ratio_c: float | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # ([B, T] loss, [B, T] clipped, [B, T] dual-clipped)
    ratio = jnp.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss = jnp.maximum(unclipped, clipped)
    is_clipped = clipped > unclipped
    if clip_ratio_c is None:
        return loss, is_clipped, jnp.zeros_like(is_clipped)
    bound = -advantages * clip_ratio_c
    is_dual = (advantages < 0) & (loss > bound)
    return jnp.where(is_dual, bound, loss), is_clipped & ~is_dual, is_dual


def _policy_loss(
    log_ratio: jax.Array,  # [B, T] log(pi / pi_old) used by the surrogate, 0 at padding
    token_log_ratio: jax.Array,  # [B, T] log(pi / pi_old) per token, for diagnostics
    advantages: jax.Array,  # [B] or [B, T]
    mask: jax.Array,  # [B, T]
    *,
    clip_eps_low: float,
    clip_eps_high: float | None,  # None: same as clip_eps_low
    clip_ratio_c: float | None,
    aggregation: str,
    max_len: int | None,
) -> tuple[jax.Array, Metrics]:
    per_token, is_clipped, is_dual = _clipped_surrogate(
        log_ratio,
        zero_padding(_broadcast_advantages(advantages, mask), mask),
        clip_eps_low,
        clip_eps_low if clip_eps_high is None else clip_eps_high,
        clip_ratio_c,
    )
    agg = _aggregator(aggregation, max_len)(per_token, mask)
    ratio = jnp.exp(log_ratio)
    # k3 with log pi_old - log pi: estimates KL(pi_old || pi) from the behaviour samples.
    approx_kl = kl_k3(jnp.zeros_like(token_log_ratio), token_log_ratio, mask)
    metrics = jax.lax.stop_gradient(
        {
            "pg/loss": agg.mean(),
            "pg/loss_weight": agg.weight,
            "pg/clipfrac": masked_mean(is_clipped, mask),
            "pg/clipfrac_dual": masked_mean(is_dual, mask),
            "pg/approx_kl": masked_mean(approx_kl, mask),
            "pg/ratio_mean": masked_mean(ratio, mask),
            "pg/ratio_max": jnp.max(zero_padding(ratio, mask)),
        }
    )
    return agg.mean(), metrics


def _validate_clip(
    *,
    clip_eps_low: float,
    clip_eps_high: float | None,
    clip_ratio_c: float | None = None,
    aggregation: str = "seq-mean-token-mean",
    max_len: int | None = None,
) -> None:
    if not 0 < clip_eps_low < 1:
        raise ValueError(f"clip_eps_low must be in (0, 1), got {clip_eps_low}")
    if clip_eps_high is not None and clip_eps_high <= 0:
        raise ValueError(f"clip_eps_high must be positive, got {clip_eps_high}")
    if clip_ratio_c is not None and clip_ratio_c <= 1:
        raise ValueError(f"clip_ratio_c (dual clip) must be > 1, got {clip_ratio_c}")
    _aggregator(aggregation, max_len)


def _token_log_ratio(logp: jax.Array, old_logp: jax.Array, mask: jax.Array) -> jax.Array:  # [B, T]
    return zero_padding(logp, mask) - zero_padding(old_logp, mask)


@POLICY_LOSSES.register("ppo", paper="1707.06347", validate=_validate_clip)
def ppo_loss(
    logp: jax.Array,  # [B, T] current policy log-probs of the sampled tokens
    old_logp: jax.Array,  # [B, T] behaviour-policy log-probs (from the sampler / before the update)
    advantages: jax.Array,  # [B] per sequence or [B, T] per token
    mask: jax.Array,  # [B, T] valid response tokens
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
    clip_ratio_c: float | None = None,
    aggregation: str = "token-mean",
    max_len: int | None = None,
) -> tuple[jax.Array, Metrics]:
    """PPO clipped surrogate (arXiv:1707.06347), with DAPO clip-higher and dual clip.

    Per token: ``max(-A r, -A clip(r, 1 - clip_eps_low, 1 + clip_eps_high))``.
    ``clip_eps_high`` (defaults to ``clip_eps_low``) decoupled from ``clip_eps_low`` is DAPO's
    clip-higher (arXiv:2503.14476, 0.28 there). ``clip_ratio_c`` (> 1, e.g. 3) is the dual
    clip of arXiv:1912.09729: for ``A < 0`` the loss is at most ``-A * clip_ratio_c``.
    """
    log_ratio = _token_log_ratio(logp, old_logp, mask)
    return _policy_loss(
        log_ratio,
        log_ratio,
        advantages,
        mask,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        clip_ratio_c=clip_ratio_c,
        aggregation=aggregation,
        max_len=max_len,
    )


def gspo_log_ratio(
    logp: jax.Array,  # [B, T]
    old_logp: jax.Array,  # [B, T]
    mask: jax.Array,  # [B, T]
) -> jax.Array:  # [B, T] float32
    """GSPO-token log-ratio: ``sg[log s_i] + log pi_t - sg[log pi_t]`` (arXiv:2507.18071, eq. 13).

    ``log s_i`` is the length-normalised sequence log-ratio (mean of the token log-ratios);
    the value at each token equals ``log s_i`` while the gradient is that of ``log pi_t``.
    """
    token = _token_log_ratio(logp, old_logp, mask)
    seq = masked_mean(token, mask, axis=1)
    logp = zero_padding(logp, mask)
    per_token = jax.lax.stop_gradient(seq)[:, None] + logp - jax.lax.stop_gradient(logp)
    return zero_padding(per_token, mask)


@POLICY_LOSSES.register("gspo", paper="2507.18071", validate=_validate_clip)
def gspo_loss(
    logp: jax.Array,  # [B, T]
    old_logp: jax.Array,  # [B, T]
    advantages: jax.Array,  # [B] per sequence (or [B, T] for GSPO-token)
    mask: jax.Array,  # [B, T]
    *,
    clip_eps_low: float = 3e-4,
    clip_eps_high: float | None = 4e-4,
) -> tuple[jax.Array, Metrics]:
    """GSPO: clipped surrogate on the sequence ratio ``s_i = (pi/pi_old)^(1/|y_i|)`` (arXiv:2507.18071).

    Implemented as GSPO-token (stop-gradient trick), aggregated ``seq-mean-token-mean``, which
    equals the sequence-level objective when advantages are per sequence. The paper's clip
    range is tiny (3e-4 / 4e-4) because ``s_i`` is a geometric mean.
    """
    return _policy_loss(
        gspo_log_ratio(logp, old_logp, mask),
        _token_log_ratio(logp, old_logp, mask),
        advantages,
        mask,
        clip_eps_low=clip_eps_low,
        clip_eps_high=clip_eps_high,
        clip_ratio_c=None,
        aggregation="seq-mean-token-mean",
        max_len=None,
    )


def kl_penalty_loss(
    kl: jax.Array,  # [B, T] per-token KL estimate (e.g. KL_ESTIMATORS "k3"), differentiable
    mask: jax.Array,  # [B, T]
    *,
    beta: float = 0.04,
    aggregation: str = "token-mean",
    max_len: int | None = None,
) -> tuple[jax.Array, Metrics]:
    """``beta * KL`` added to the policy loss, aggregated like it (GRPO, arXiv:2402.03300)."""
    agg = _aggregator(aggregation, max_len)(kl, mask)
    return beta * agg.mean(), {"pg/kl_loss": jax.lax.stop_gradient(beta * agg.mean())}


# ----------------------------------------------------------------------------- value function


def value_loss(
    values: jax.Array,  # [B, T] current value predictions
    old_values: jax.Array,  # [B, T] value predictions at rollout time
    returns: jax.Array,  # [B, T] regression targets (e.g. GAE returns)
    mask: jax.Array,  # [B, T]
    *,
    clip_eps_value: float | None = 0.2,
    aggregation: str = "token-mean",
    max_len: int | None = None,
) -> tuple[jax.Array, Metrics]:
    """Clipped value loss ``0.5 max((V - R)^2, (clip(V, V_old +- eps) - R)^2)`` (PPO, arXiv:1707.06347).

    ``clip_eps_value=None`` gives the plain squared error.
    """
    values, old_values, returns = (zero_padding(x, mask) for x in (values, old_values, returns))
    unclipped = jnp.square(values - returns)
    if clip_eps_value is None:
        per_token, is_clipped = unclipped, jnp.zeros(mask.shape, bool)
    else:
        clipped_values = old_values + jnp.clip(values - old_values, -clip_eps_value, clip_eps_value)
        clipped = jnp.square(clipped_values - returns)
        per_token, is_clipped = jnp.maximum(unclipped, clipped), clipped > unclipped
    agg = _aggregator(aggregation, max_len)(0.5 * per_token, mask)
    residual_var = masked_mean(jnp.square(returns - values - masked_mean(returns - values, mask)), mask)
    returns_var = masked_mean(jnp.square(returns - masked_mean(returns, mask)), mask)
    metrics = jax.lax.stop_gradient(
        {
            "vf/loss": agg.mean(),
            "vf/loss_weight": agg.weight,
            "vf/clipfrac": masked_mean(is_clipped, mask),
            "vf/explained_variance": 1.0 - residual_var / jnp.maximum(returns_var, 1e-8),
            "vf/value_mean": masked_mean(values, mask),
        }
    )
    return agg.mean(), metrics


# ----------------------------------------------------------------------------- GAE


def gae(
    rewards: jax.Array,  # [B, T] per-token rewards
    values: jax.Array,  # [B, T] value estimates V(s_t)
    mask: jax.Array,  # [B, T] valid tokens; the episode ends after the last one
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[jax.Array, jax.Array]:  # ([B, T] advantages, [B, T] returns), float32, 0 at padding
    """Generalised advantage estimation (arXiv:1506.02438) by a reverse ``lax.scan`` over T.

    ``delta_t = r_t + gamma V_next - V_t``, ``A_t = delta_t + gamma lam A_next`` where "next"
    is the next *valid* token (padding is skipped, its rewards and values are never read) and
    ``V = A = 0`` after the last valid token. ``returns = A + V``. Advantages are constants.
    """
    valid = mask.astype(bool).T  # [T, B]
    rewards = zero_padding(rewards, mask).T
    values = zero_padding(jax.lax.stop_gradient(values), mask).T

    def step(carry, inputs):
        next_value, next_adv = carry
        reward, value, is_valid = inputs
        adv = reward + gamma * next_value - value + gamma * lam * next_adv
        carry = (jnp.where(is_valid, value, next_value), jnp.where(is_valid, adv, next_adv))
        return carry, jnp.where(is_valid, adv, 0.0)

    zeros = jnp.zeros(rewards.shape[1], jnp.float32)
    _, advantages = jax.lax.scan(step, (zeros, zeros), (rewards, values, valid), reverse=True)
    return advantages.T, zero_padding(advantages + values, valid).T


# ----------------------------------------------------------------------------- group advantages


def _group_stats(
    x: jax.Array,  # [..., G]
    valid: jax.Array,  # [..., G] bool
    axis: int | tuple[int, ...] | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:  # (count, mean, sample std (ddof=1)), keepdims
    count = jnp.sum(valid.astype(jnp.float32), axis=axis, keepdims=True)
    mean = jnp.sum(jnp.where(valid, x, 0.0), axis=axis, keepdims=True) / jnp.maximum(count, 1.0)
    sq = jnp.sum(jnp.where(valid, jnp.square(x - mean), 0.0), axis=axis, keepdims=True)
    return count, mean, jnp.sqrt(sq / jnp.maximum(count - 1.0, 1.0))


def _prepare(rewards: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    valid = jnp.ones(rewards.shape, bool) if mask is None else mask.astype(bool)
    return zero_padding(rewards, valid), valid


def _validate_eps(*, eps: float, **_: object) -> None:
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")


@ADVANTAGE_ESTIMATORS.register("grpo", paper="2402.03300", validate=_validate_eps)
def grpo_advantages(
    rewards: jax.Array,  # [P, G] one row per prompt, G samples each
    mask: jax.Array | None = None,  # [P, G] valid samples
    *,
    eps: float = 1e-6,
) -> jax.Array:  # [P, G] float32, 0 where masked
    """``(r - mean_group) / (std_group + eps)``, sample std (ddof=1) (GRPO, arXiv:2402.03300)."""
    r, valid = _prepare(rewards, mask)
    _, mean, std = _group_stats(r, valid, axis=-1)
    return jnp.where(valid, (r - mean) / (std + eps), 0.0)


@ADVANTAGE_ESTIMATORS.register("dr-grpo", paper="2503.20783")
def dr_grpo_advantages(
    rewards: jax.Array,  # [P, G]
    mask: jax.Array | None = None,  # [P, G]
) -> jax.Array:  # [P, G] float32
    """``r - mean_group``, no std scaling (Dr. GRPO, arXiv:2503.20783)."""
    r, valid = _prepare(rewards, mask)
    _, mean, _ = _group_stats(r, valid, axis=-1)
    return jnp.where(valid, r - mean, 0.0)


@ADVANTAGE_ESTIMATORS.register("rloo", paper="2402.14740")
def rloo_advantages(
    rewards: jax.Array,  # [P, G]
    mask: jax.Array | None = None,  # [P, G]
) -> jax.Array:  # [P, G] float32
    """``r_i - mean_{j != i} r_j``: leave-one-out baseline (RLOO, arXiv:2402.14740); 0 for singletons."""
    r, valid = _prepare(rewards, mask)
    count = jnp.sum(valid.astype(jnp.float32), axis=-1, keepdims=True)
    others = (jnp.sum(r, axis=-1, keepdims=True) - r) / jnp.maximum(count - 1.0, 1.0)
    return jnp.where(valid & (count > 1), r - others, 0.0)


@ADVANTAGE_ESTIMATORS.register("reinforce++", paper="2501.03262", validate=_validate_eps)
def reinforce_pp_advantages(
    rewards: jax.Array,  # [P, G]
    mask: jax.Array | None = None,  # [P, G]
    *,
    subtract_group_mean: bool = False,
    eps: float = 1e-6,
) -> jax.Array:  # [P, G] float32
    """Batch-global normalisation ``(x - mean_batch) / (std_batch + eps)`` (REINFORCE++, arXiv:2501.03262).

    ``x = r``, or ``r - mean_group`` with ``subtract_group_mean`` (REINFORCE++-baseline).
    """
    r, valid = _prepare(rewards, mask)
    if subtract_group_mean:
        _, group_mean, _ = _group_stats(r, valid, axis=-1)
        r = jnp.where(valid, r - group_mean, 0.0)
    _, mean, std = _group_stats(r, valid, axis=None)
    return jnp.where(valid, (r - mean) / (std + eps), 0.0)

