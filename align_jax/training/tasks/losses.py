"""The offline tasks' losses over a policy model and a batch: SFT, preference pairs, unpaired, reward model,
calibration (tokenized Brier on a verbalized confidence digit).

Each returns ``(loss, metrics, weight)``: ``loss`` is a weighted mean, ``weight`` its denominator
(scored tokens for SFT, examples otherwise), so micro-batches combine exactly by summing
``loss * weight`` and ``weight`` (reduction-safe under padding and gradient accumulation).

Batches are dicts of arrays as produced by :mod:`align_jax.data.tokenization`: for a completion
side ``c`` (``chosen``, ``rejected``, ``completion``): ``{c}_tokens``, ``{c}_loss_mask``,
``{c}_positions``, ``{c}_segment_ids`` [B, L]; SFT: ``tokens``, ``loss_mask``, ``positions``,
``segment_ids``. Preference batches may instead be prefix-shared/packed (``packed_*`` keys, see
:mod:`align_jax.data.pair_packing`): :func:`packed_preference_loss` and :func:`reference_logps` read them.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from align_jax.models.decoder import Decoder
from align_jax.objectives.calibration import confidence_brier_loss, label_smoothed_cross_entropy
from align_jax.objectives.logprobs import sequence_logps
from align_jax.objectives.reward import bradley_terry_loss
from align_jax.objectives.types import PreferenceInputs, SequenceLogps, UnpairedInputs
from align_jax.training.packed_pairs import is_packed, packed_example_weight, packed_sides_logps

Batch = Mapping[str, jax.Array]
PAIR_SIDES = ("chosen", "rejected")


def token_logps(
    model: Decoder,
    tokens: jax.Array,  # [B, L] int
    loss_mask: jax.Array,  # [B, L] 1 on scored (completion) tokens
    positions: jax.Array,  # [B, L]
    segment_ids: jax.Array,  # [B, L] 0 = padding
) -> SequenceLogps:  # [B, L - 1]: log p(tokens[t + 1] | tokens[: t + 1])
    logits = model(tokens, positions, segment_ids).logits
    return sequence_logps(logits[:, :-1], tokens[:, 1:], loss_mask[:, 1:])


def sides_logps(model: Decoder, batch: Batch, sides: tuple[str, ...]) -> dict[str, SequenceLogps]:
    """Log-probs of several completion sides in ONE forward (sides stacked on the batch axis)."""
    fields = ("tokens", "loss_mask", "positions", "segment_ids")
    stacked = [jnp.concatenate([batch[f"{s}_{f}"] for s in sides], axis=0) for f in fields]
    logps = token_logps(model, *stacked)
    n = batch[f"{sides[0]}_tokens"].shape[0]
    return {s: jax.tree.map(lambda x, i=i: x[i * n : (i + 1) * n], logps) for i, s in enumerate(sides)}


def reference_logps(model: Decoder, batch: Batch, kind: str) -> dict[str, jax.Array]:
    """Summed reference log-probs per side, as the batch fields the losses read.

    Preference batches may be in the separate or the prefix-shared/packed layout (then ``[P]``)."""
    sides = PAIR_SIDES if kind == "preference" else ("completion",)
    logps = packed_sides_logps(model, batch) if is_packed(batch) else sides_logps(model, batch, sides)
    return {f"reference_{s}_logps": jax.lax.stop_gradient(logps[s].sum) for s in sides}


def _weight(batch: Batch, n: int) -> jax.Array:
    return batch.get("example_weight", jnp.ones((n,), jnp.float32)).astype(jnp.float32)


def sft_loss(model: Decoder, batch: Batch, *, label_smoothing: float = 0.0) -> tuple[jax.Array, dict, jax.Array]:
    """Token-level negative log-likelihood of the assistant tokens.

    With ``label_smoothing`` eps > 0 the loss is cross-entropy against ``(1 - eps) one_hot + eps / V``
    over the vocabulary (``label_smoothed_cross_entropy``, a full-vocabulary log-softmax per token);
    ``sft/nll`` stays the plain NLL.
    """
    if not label_smoothing:
        logps = token_logps(model, batch["tokens"], batch["loss_mask"], batch["positions"], batch["segment_ids"])
        n_tokens = jnp.sum(logps.length)
        nll = -jnp.sum(logps.sum) / jnp.maximum(n_tokens, 1.0)
        return nll, {"loss": nll, "sft/nll": nll, "sft/tokens": n_tokens}, n_tokens
    logits = model(batch["tokens"], batch["positions"], batch["segment_ids"]).logits[:, :-1]
    labels, mask = batch["tokens"][:, 1:], batch["loss_mask"][:, 1:] > 0
    loss, metrics = label_smoothed_cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), mask.reshape(-1), smoothing=label_smoothing
    )
    n_tokens = jnp.sum(mask).astype(jnp.float32)
    return loss, {"loss": loss, "sft/nll": metrics["cal/nll"], "sft/tokens": n_tokens}, n_tokens


def preference_loss(model: Decoder, batch: Batch, loss_fn: Callable) -> tuple[jax.Array, dict, jax.Array]:
    logps = sides_logps(model, batch, PAIR_SIDES)
    inputs = PreferenceInputs(
        policy_chosen=logps["chosen"],
        policy_rejected=logps["rejected"],
        reference_chosen_logps=batch.get("reference_chosen_logps"),
        reference_rejected_logps=batch.get("reference_rejected_logps"),
        example_weight=_weight(batch, logps["chosen"].token_logps.shape[0]),
    )
    loss, metrics = loss_fn(inputs)
    return loss, {"loss": loss, **metrics}, metrics["num_examples"]


def packed_preference_loss(
    model: Decoder, batch: Batch, loss_fn: Callable, *, token_chunk_size: int | None = None
) -> tuple[jax.Array, dict, jax.Array]:
    """``preference_loss`` on a prefix-shared/packed batch (:mod:`align_jax.data.pair_packing`):
    per-pair inputs ``[P]`` (``reference_*_logps``, ``example_weight``), weighted by ``pair_mask``.
    With ``token_chunk_size``, only scored positions are unembedded (opt-in; see packed_pairs)."""
    logps = packed_sides_logps(model, batch, token_chunk_size=token_chunk_size)
    inputs = PreferenceInputs(
        policy_chosen=logps["chosen"],
        policy_rejected=logps["rejected"],
        reference_chosen_logps=batch.get("reference_chosen_logps"),
        reference_rejected_logps=batch.get("reference_rejected_logps"),
        example_weight=packed_example_weight(batch),
    )
    loss, metrics = loss_fn(inputs)
    return loss, {"loss": loss, **metrics}, metrics["num_examples"]


def unpaired_loss(model: Decoder, batch: Batch, loss_fn: Callable) -> tuple[jax.Array, dict, jax.Array]:
    logps = sides_logps(model, batch, ("completion",))["completion"]
    inputs = UnpairedInputs(
        policy=logps,
        reference_logps=batch.get("reference_completion_logps"),
        desirable=batch["desirable"].astype(bool),
        example_weight=_weight(batch, logps.token_logps.shape[0]),
    )
    loss, metrics = loss_fn(inputs)
    return loss, {"loss": loss, **metrics}, metrics["num_examples"]


def sequence_rewards(model: Decoder, head: Mapping[str, jax.Array], batch: Batch, side: str) -> jax.Array:
    """Scalar reward per sequence: a linear head on the final hidden state of its last token."""
    hidden = model(
        batch[f"{side}_tokens"], batch[f"{side}_positions"], batch[f"{side}_segment_ids"], return_logits=False
    ).final_hidden  # [B, L, D]
    last = jnp.sum(batch[f"{side}_segment_ids"] > 0, axis=1) - 1  # right padding
    h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)
    return h @ head["w"] + head["b"]


def reward_model_loss(
    model: Decoder, head: Mapping[str, jax.Array], batch: Batch, *, center_coef: float = 0.0
) -> tuple[jax.Array, dict, jax.Array]:
    """Bradley-Terry loss of a reward model (decoder + linear head) on preference pairs."""
    chosen = sequence_rewards(model, head, batch, "chosen")
    rejected = sequence_rewards(model, head, batch, "rejected")
    weight = _weight(batch, chosen.shape[0])
    loss, metrics = bradley_terry_loss(chosen, rejected, mask=weight, center_coef=center_coef)
    return loss, {"loss": loss, **metrics}, jnp.sum(weight)


def init_reward_head(hidden_size: int) -> dict[str, Any]:
    return {"w": jnp.zeros((hidden_size,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def confidence_positions(
    tokens: jax.Array,  # [B, L] int
    loss_mask: jax.Array,  # [B, L] 1 on completion tokens
    conf_token_ids: jax.Array,  # [K] int
) -> tuple[jax.Array, jax.Array]:  # [B] int position of the confidence digit, [B] bool found
    """The LAST completion token that is a confidence digit (answers may hold digits too)."""
    is_conf = (loss_mask > 0) & jnp.isin(tokens, conf_token_ids)
    last = tokens.shape[1] - 1 - jnp.argmax(is_conf[:, ::-1], axis=1)
    return last, jnp.any(is_conf, axis=1)


def calibration_loss(
    model: Decoder,
    batch: Batch,
    conf_token_ids: jax.Array,  # [K] vocabulary ids of the confidence digits
    conf_values: jax.Array,  # [K] probability each digit states
    confidence_prefix_len: int = 0,  # tokens of "\nConfidence: " before the digit
    *,
    answer_nll_coef: float = 0.0,
) -> tuple[jax.Array, dict, jax.Array]:
    """ConfTuner tokenized Brier (arXiv:2508.18847) on the verbalized confidence, plus answer NLL.

    The batch is an unpaired one (``completion_*`` arrays; ``desirable`` = the answer was
    correct) whose completion is ``answer + "\nConfidence: " + digit``. The Brier score
    ``sum_k p(k) (c_k - correct)^2`` is taken on the distribution over the K digit tokens at the
    position that predicts the digit (the digit written in the data is never a target). With
    ``answer_nll_coef`` > 0, the mean token NLL of the model's own answer (the completion tokens
    before the ``confidence_prefix_len`` prefix tokens) is added, per example, to keep the answers
    unchanged. The prefix itself is never a target: training it teaches the model to write
    "Confidence:" on its own, even instead of an answer (seen on SmolLM2).
    Examples whose digit was truncated away get weight 0.
    """
    tokens, mask = batch["completion_tokens"], batch["completion_loss_mask"]
    logits = model(tokens, batch["completion_positions"], batch["completion_segment_ids"]).logits  # [B, L, V]
    pos, found = confidence_positions(tokens, mask, conf_token_ids)
    at = jnp.take_along_axis(logits, jnp.maximum(pos - 1, 0)[:, None, None], axis=1)[:, 0]  # [B, V]
    weight = _weight(batch, tokens.shape[0]) * found
    brier, metrics = confidence_brier_loss(at, batch["desirable"], conf_token_ids, conf_values, mask=weight)
    loss = brier
    if answer_nll_coef:
        answer_mask = (mask > 0) & (jnp.arange(tokens.shape[1])[None, :] < (pos - confidence_prefix_len)[:, None])
        logps = sequence_logps(logits[:, :-1], tokens[:, 1:], answer_mask[:, 1:])
        nll = -logps.mean  # [B] mean token NLL per example
        nll = jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1e-9)
        loss = loss + answer_nll_coef * nll
        metrics = {**metrics, "conf/answer_nll": jax.lax.stop_gradient(nll)}
    return loss, {"loss": loss, **metrics}, jnp.sum(weight)
