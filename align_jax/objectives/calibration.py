"""Calibration objectives: Brier scores, focal loss, label smoothing, tokenized Brier and log score on confidences.

Each score exists twice: as a plain per-example metric on probabilities (``binary_brier``,
``multiclass_brier``, ``confidence_brier``, ``confidence_log_score``) and as a loss on logits returning
``(loss, metrics)``. ``B`` examples, ``K`` classes or confidence levels, ``V`` vocabulary.
Log-softmax is taken in float32; masked examples never change values or gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from align_jax.objectives.kl import masked_mean, zero_padding
from align_jax.registry import Registry

CALIBRATION_LOSSES = Registry("calibration loss")

Metrics = dict[str, jax.Array]


# ----------------------------------------------------------------------------- metrics


def binary_brier(
    probs: jax.Array,  # [B] predicted P(y = 1)
    labels: jax.Array,  # [B] outcomes in {0, 1} (or soft targets in [0, 1])
) -> jax.Array:  # [B] float32
    """Binary Brier score ``(p - y)^2`` (Brier 1950)."""
    return jnp.square(probs.astype(jnp.float32) - labels.astype(jnp.float32))


def multiclass_brier(
    probs: jax.Array,  # [B, K] predicted class probabilities
    labels: jax.Array,  # [B] int class ids
) -> jax.Array:  # [B] float32, in [0, 2]
    """Multiclass Brier score ``sum_k (p_k - 1[k = y])^2`` (Brier 1950)."""
    one_hot = jax.nn.one_hot(labels, probs.shape[-1], dtype=jnp.float32)
    return jnp.sum(jnp.square(probs.astype(jnp.float32) - one_hot), axis=-1)


def expected_confidence(
    conf_probs: jax.Array,  # [B, K] distribution over the K confidence tokens
    conf_values: jax.Array,  # [K] the probability each token states, e.g. 0.0, 0.1, ..., 1.0
) -> jax.Array:  # [B] float32
    """The confidence the model states on average: ``sum_k p(k) c_k``."""
    return conf_probs.astype(jnp.float32) @ conf_values.astype(jnp.float32)


def confidence_brier(
    conf_probs: jax.Array,  # [B, K] distribution over the K confidence tokens
    conf_values: jax.Array,  # [K] stated probability c_k of each token
    correct: jax.Array,  # [B] 1 if the answer was right, else 0
) -> jax.Array:  # [B] float32
    """Tokenized Brier score ``sum_k p(k) (c_k - correct)^2`` (ConfTuner, arXiv:2508.18847)."""
    gap = conf_values.astype(jnp.float32)[None, :] - correct.astype(jnp.float32)[:, None]
    return jnp.sum(conf_probs.astype(jnp.float32) * jnp.square(gap), axis=-1)


def confidence_log_score(
    conf_probs: jax.Array,  # [B, K] distribution over the K confidence tokens
    conf_values: jax.Array,  # [K] stated probability c_k of each token
    correct: jax.Array,  # [B] 1 if the answer was right, else 0
    eps: float = 1e-6,
) -> jax.Array:  # [B] float32
    """Log score of the expected stated confidence ``cbar = sum_k p(k) c_k``:
    ``-(y log cbar + (1 - y) log(1 - cbar))``, ``cbar`` clipped to ``[eps, 1 - eps]``.

    The cross-entropy objective of calibration tuning (Kapoor et al., arXiv:2406.08391, there on
    P("yes") to "is the answer correct?"), here on the confidence the evaluation reads. Strictly
    proper in ``cbar`` (its expected value is minimised at ``cbar = P(correct)``), whereas the
    tokenized Brier is linear in ``p`` and is minimised by a point mass on the grid value nearest
    ``P(correct)``.
    """
    cbar = jnp.clip(expected_confidence(conf_probs, conf_values), eps, 1.0 - eps)
    y = correct.astype(jnp.float32)
    return -(y * jnp.log(cbar) + (1.0 - y) * jnp.log1p(-cbar))


# ----------------------------------------------------------------------------- losses


def _loss_and_metrics(
    per_example: jax.Array,  # [B] loss of each example
    logp: jax.Array,  # [B, K] float32 log-probabilities
    labels: jax.Array,  # [B] int
    mask: jax.Array | None,  # [B]
) -> tuple[jax.Array, Metrics]:
    loss = masked_mean(per_example, mask)
    probs = jnp.exp(logp)
    label_logp = jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    metrics = jax.lax.stop_gradient(
        {
            "cal/loss": loss,
            "cal/nll": masked_mean(-label_logp, mask),
            "cal/brier": masked_mean(multiclass_brier(probs, labels), mask),
            "cal/accuracy": masked_mean(jnp.argmax(logp, axis=-1) == labels, mask),
            "cal/confidence": masked_mean(jnp.max(probs, axis=-1), mask),
        }
    )
    return loss, metrics


@CALIBRATION_LOSSES.register("brier")
def brier_loss(
    logits: jax.Array,  # [B, K]
    labels: jax.Array,  # [B] int
    mask: jax.Array | None = None,  # [B] valid examples
) -> tuple[jax.Array, Metrics]:
    """Multiclass Brier score of ``softmax(logits)`` as a loss (a strictly proper scoring rule)."""
    logp = jax.nn.log_softmax(zero_padding(logits, mask), axis=-1)
    return _loss_and_metrics(multiclass_brier(jnp.exp(logp), labels), logp, labels, mask)


def _validate_gamma(*, gamma: float) -> None:
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")


@CALIBRATION_LOSSES.register("focal", paper="1708.02002", validate=_validate_gamma)
def focal_loss(
    logits: jax.Array,  # [B, K]
    labels: jax.Array,  # [B] int
    mask: jax.Array | None = None,  # [B]
    *,
    gamma: float = 2.0,
) -> tuple[jax.Array, Metrics]:
    """Focal loss ``-(1 - p_y)^gamma log p_y`` (arXiv:1708.02002); gamma = 0 is cross-entropy."""
    logp = jax.nn.log_softmax(zero_padding(logits, mask), axis=-1)
    label_logp = jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    one_minus_p = jnp.maximum(-jnp.expm1(label_logp), 0.0)
    return _loss_and_metrics(-(one_minus_p**gamma) * label_logp, logp, labels, mask)


def _validate_smoothing(*, smoothing: float) -> None:
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")


@CALIBRATION_LOSSES.register("label-smoothing", paper="1512.00567", validate=_validate_smoothing)
def label_smoothed_cross_entropy(
    logits: jax.Array,  # [B, K]
    labels: jax.Array,  # [B] int
    mask: jax.Array | None = None,  # [B]
    *,
    smoothing: float = 0.1,
) -> tuple[jax.Array, Metrics]:
    """Cross-entropy against ``(1 - eps) one_hot(y) + eps / K`` (Inception v3, arXiv:1512.00567)."""
    logp = jax.nn.log_softmax(zero_padding(logits, mask), axis=-1)
    num_classes = logp.shape[-1]
    target = (1.0 - smoothing) * jax.nn.one_hot(labels, num_classes) + smoothing / num_classes
    return _loss_and_metrics(-jnp.sum(target * logp, axis=-1), logp, labels, mask)


def binary_brier_loss(
    logits: jax.Array,  # [B] logit of P(y = 1)
    labels: jax.Array,  # [B] in {0, 1}
    mask: jax.Array | None = None,  # [B]
) -> tuple[jax.Array, Metrics]:
    """Binary Brier score of ``sigmoid(logits)`` as a loss."""
    probs = jax.nn.sigmoid(zero_padding(logits, mask))
    loss = masked_mean(binary_brier(probs, labels), mask)
    metrics = jax.lax.stop_gradient(
        {
            "cal/loss": loss,
            "cal/brier": loss,
            "cal/accuracy": masked_mean((probs > 0.5) == (labels > 0.5), mask),
            "cal/confidence": masked_mean(probs, mask),
        }
    )
    return loss, metrics


def confidence_brier_loss(
    logits: jax.Array,  # [B, V] logits at the position where the confidence token is emitted
    correct: jax.Array,  # [B] 1 if the answer was right, else 0
    conf_token_ids: jax.Array,  # [K] int vocabulary ids of the confidence tokens ("0".."10")
    conf_values: jax.Array,  # [K] stated probability of each token (0.0 .. 1.0)
    mask: jax.Array | None = None,  # [B] valid examples
) -> tuple[jax.Array, Metrics]:
    """ConfTuner tokenized Brier loss ``sum_k p(k) (c_k - correct)^2`` (arXiv:2508.18847).

    ``p`` is the softmax of the logits restricted to the K confidence tokens (renormalised
    over them). ``conf/token_mass`` is the share of the full-vocabulary probability that
    falls on those tokens: if it is low, the model is not emitting a confidence there.
    """
    return _confidence_loss(logits, correct, conf_token_ids, conf_values, mask, scoring="brier")


def confidence_log_loss(
    logits: jax.Array,  # [B, V] logits at the position where the confidence token is emitted
    correct: jax.Array,  # [B] 1 if the answer was right, else 0
    conf_token_ids: jax.Array,  # [K] int vocabulary ids of the confidence tokens
    conf_values: jax.Array,  # [K] stated probability of each token (0.0 .. 1.0)
    mask: jax.Array | None = None,  # [B] valid examples
) -> tuple[jax.Array, Metrics]:
    """Log score of the expected stated confidence (calibration tuning's cross-entropy, arXiv:2406.08391).

    Same inputs and metrics as :func:`confidence_brier_loss` (``conf/brier`` is still the
    tokenized Brier, reported for comparison); the loss is :func:`confidence_log_score`.
    """
    return _confidence_loss(logits, correct, conf_token_ids, conf_values, mask, scoring="log")


def _confidence_loss(
    logits: jax.Array,  # [B, V]
    correct: jax.Array,  # [B]
    conf_token_ids: jax.Array,  # [K]
    conf_values: jax.Array,  # [K]
    mask: jax.Array | None,  # [B]
    *,
    scoring: str,
) -> tuple[jax.Array, Metrics]:
    logits = zero_padding(logits, mask)
    conf_logits = logits[:, conf_token_ids]  # [B, K]
    conf_probs = jax.nn.softmax(conf_logits, axis=-1)
    brier = masked_mean(confidence_brier(conf_probs, conf_values, correct), mask)
    log_score = masked_mean(confidence_log_score(conf_probs, conf_values, correct), mask)
    loss = {"brier": brier, "log": log_score}[scoring]
    token_mass = jnp.exp(
        jax.nn.logsumexp(conf_logits, axis=-1) - jax.nn.logsumexp(logits, axis=-1)
    )
    metrics = jax.lax.stop_gradient(
        {
            "conf/brier": brier,
            "conf/log_score": log_score,
            "conf/expected_confidence": masked_mean(expected_confidence(conf_probs, conf_values), mask),
            "conf/accuracy": masked_mean(correct, mask),
            "conf/token_mass": masked_mean(token_mass, mask),
        }
    )
    return loss, metrics
