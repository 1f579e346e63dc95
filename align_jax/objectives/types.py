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
