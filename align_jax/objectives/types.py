"""Input pytrees for the preference objectives, and the one reduction they all share.

Every loss reads log-probabilities through these types, so that padding is handled in one
place: a position with ``mask == 0`` never contributes, whatever value sits there.

Reduction (gradient accumulation, padded batches): each example may carry a weight
(``example_weight [B]``, 0 for padding examples, default 1). A loss returns the *weighted
mean* over examples and logs the denominator as ``metrics["num_examples"]``. To combine
micro-batches exactly, accumulate ``loss * num_examples`` and ``num_examples`` and divide at
the end (the gradient of ``loss * num_examples`` is the gradient of the weighted sum).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import struct

Metrics = dict[str, jax.Array]  # name -> float32 scalar


@struct.dataclass
class SequenceLogps:
    """Per-token log-probabilities of sequences under one model.

    Leading dimensions are free (``[B]``, or ``[B, K]`` for ranked lists); the last is time.
    ``token_log_sq_norm`` (optional) holds ``log sum_v p_v^2`` per position, which WPO's
    aligned weighting needs; ``sequence_logps(..., with_sq_norm=True)`` fills it.
    """

    token_logps: jax.Array  # [..., T] float32
    mask: jax.Array  # [..., T] 1 = scored token, 0 = prompt/padding
    token_log_sq_norm: jax.Array | None = None  # [..., T] float32

    @property
    def valid(self) -> jax.Array:  # [..., T] bool
        return self.mask > 0

    def masked(self, values: jax.Array) -> jax.Array:  # [..., T] -> [..., T]
        """``values`` with every padding position set to 0 (also NaN/inf garbage)."""
        return jnp.where(self.valid, values.astype(jnp.float32), 0.0)

    @property
    def length(self) -> jax.Array:  # [...] float32
        return jnp.sum(self.valid, axis=-1, dtype=jnp.float32)

    @property
    def sum(self) -> jax.Array:  # [...] float32
        return jnp.sum(self.masked(self.token_logps), axis=-1)

    @property
    def mean(self) -> jax.Array:  # [...] float32; 0 for an empty sequence
        return self.sum / jnp.maximum(self.length, 1.0)


@struct.dataclass
class PreferenceInputs:
    """A batch of pairs (prompt, chosen, rejected) scored by the policy and the reference.

    Reference log-probs are summed per sequence (precomputed once, so the reference model
    need not be in memory); losses that need them per token (LD-DPO) read
    ``reference_chosen``/``reference_rejected`` instead, and either form may be given.
    Reference-free losses (SimPO, CPO, ORPO) need no reference at all.
    """

    policy_chosen: SequenceLogps  # [B, T]
    policy_rejected: SequenceLogps  # [B, T]
    reference_chosen_logps: jax.Array | None = None  # [B] summed
    reference_rejected_logps: jax.Array | None = None  # [B] summed
    reference_chosen: SequenceLogps | None = None  # [B, T] per token
    reference_rejected: SequenceLogps | None = None  # [B, T] per token
    example_weight: jax.Array | None = None  # [B]; 0 = padding example; None = all 1
    reward_shift: jax.Array | None = None  # [] BCO's delta (running reward mean); None = batch mean


@struct.dataclass
class UnpairedInputs:
    """A batch of single responses, each labelled desirable or not (KTO, unpaired BCO).

    ``kl_policy_logps``/``kl_reference_logps`` score *mismatched* pairs (prompt i with
    completion j != i), KTO's estimate of the KL reference point; when absent, KTO
    estimates it from the batch itself.
    """

    policy: SequenceLogps  # [B, T]
    reference_logps: jax.Array  # [B] summed
    desirable: jax.Array  # [B] bool
    kl_policy_logps: jax.Array | None = None  # [B] summed
    kl_reference_logps: jax.Array | None = None  # [B] summed
    example_weight: jax.Array | None = None  # [B]
    reward_shift: jax.Array | None = None  # [] BCO's delta; None = batch mean


@struct.dataclass
class RankingInputs:
    """A batch of lists of K responses per prompt, ranked best first (index 0 is the best).

    Lists shorter than K are padded; ``list_mask`` marks the real entries. ``scores`` are
    the reward-model scores behind the ranking (descending), used by PRO's temperature.
    """

    policy: SequenceLogps  # [B, K, T]
    list_mask: jax.Array  # [B, K] 1 = real response
    scores: jax.Array | None = None  # [B, K] float
    example_weight: jax.Array | None = None  # [B]


def example_weights(weight: jax.Array | None, like: jax.Array) -> jax.Array:  # [B] float32
    """``weight`` as float32, or all ones shaped like ``like`` when absent."""
    if weight is None:
        return jnp.ones(like.shape, jnp.float32)
    return weight.astype(jnp.float32)


def weighted_mean(values: jax.Array, weight: jax.Array) -> jax.Array:  # [B], [B] -> []
    """Weighted mean of per-example values; entries with weight 0 are ignored even if NaN."""
    total = jnp.sum(jnp.where(weight > 0, weight * values.astype(jnp.float32), 0.0))
    return total / jnp.maximum(jnp.sum(weight), 1e-8)


def reduce_metrics(
    per_example: Metrics,  # name -> [B] values
    weight: jax.Array,  # [B]
    extra: Metrics | None = None,  # name -> already-reduced scalar
) -> Metrics:
    """Weighted batch means of per-example metrics, plus ``num_examples`` (the denominator,
    for exact reduction across micro-batches)."""
    metrics = {name: weighted_mean(v, weight) for name, v in per_example.items()}
    metrics.update(extra or {})
    metrics["num_examples"] = jnp.sum(weight)
    return metrics


@dataclasses.dataclass(frozen=True)
class LossNeeds:
    """What a loss reads beyond the policy's per-token log-probs and summed reference log-probs,
    declared next to the loss (:func:`declare_needs`) so that the engine computes and checks it:

    * ``policy_sq_norm``: ``SequenceLogps.token_log_sq_norm`` of the policy (WPO's aligned weights),
      a second chunked pass over the vocabulary, computed only for the losses that read it;
    * ``per_token_reference``: ``reference_chosen`` / ``reference_rejected`` (LD-DPO), which only a
      reference model held in the state gives (precomputed caches keep one sum per completion);
    * ``reward_shift``: the name of a metric whose running mean over past steps the engine feeds
      back as ``inputs.reward_shift`` (BCO's delta); None: the loss reads no shift.
    """

    policy_sq_norm: bool = False
    per_token_reference: bool = False
    reward_shift: str | None = None

    def __or__(self, other: LossNeeds) -> LossNeeds:
        """Everything either loss needs (a weighted sum of losses needs the union)."""
        shifts = {s for s in (self.reward_shift, other.reward_shift) if s is not None}
        if len(shifts) > 1:
            raise ValueError(f"at most one part may read the reward shift, got {sorted(shifts)}")
        return LossNeeds(
            self.policy_sq_norm or other.policy_sq_norm,
            self.per_token_reference or other.per_token_reference,
            shifts.pop() if shifts else None,
        )

    def prefixed(self, prefix: str) -> LossNeeds:
        """The same needs for a loss whose metrics are logged as ``{prefix}/{name}``."""
        shift = None if self.reward_shift is None else f"{prefix}/{self.reward_shift}"
        return dataclasses.replace(self, reward_shift=shift)

    @property
    def running_means(self) -> tuple[tuple[str, str], ...]:  # (batch field, metric) for the train step
        return () if self.reward_shift is None else (("reward_shift", self.reward_shift),)


def declare_needs(needs: LossNeeds | Callable[..., LossNeeds]):
    """Declares a loss's :class:`LossNeeds`: a constant, or a function of some of the loss's
    options (by name, e.g. ``lambda aligned: LossNeeds(policy_sq_norm=aligned)``)."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.loss_needs = needs
        return fn

    return decorator


def loss_needs(fn: Callable[..., Any], options: Mapping[str, Any] | None = None) -> LossNeeds:
    """The needs that ``fn`` (a loss, or a built loss: a ``functools.partial`` of one) declares
    with ``options`` (the function's defaults for the options not given); none declared: none."""
    bound: dict[str, Any] = {}
    while isinstance(fn, functools.partial):
        bound = {**fn.keywords, **bound}
        fn = fn.func
    declared = getattr(fn, "loss_needs", None)
    if declared is None:
        return LossNeeds()
    if isinstance(declared, LossNeeds):
        return declared
    defaults = {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }
    values = {**defaults, **bound, **dict(options or {})}
    return declared(**{name: values[name] for name in inspect.signature(declared).parameters})
