"""Per-task losses over a policy model and a batch: SFT, preference pairs, unpaired, reward model.

Each returns ``(loss, metrics, weight)``: ``loss`` is a weighted mean, ``weight`` its denominator
(scored tokens for SFT, examples otherwise), so micro-batches combine exactly by summing
``loss * weight`` and ``weight`` (reduction-safe under padding and gradient accumulation).

Batches are dicts of arrays as produced by :mod:`align_jax.data.tokenization`: for a completion
side ``c`` (``chosen``, ``rejected``, ``completion``): ``{c}_tokens``, ``{c}_loss_mask``,
``{c}_positions``, ``{c}_segment_ids`` [B, L]; SFT: ``tokens``, ``loss_mask``, ``positions``,
``segment_ids``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from align_jax.models.decoder import Decoder
from align_jax.objectives.logprobs import sequence_logps
from align_jax.objectives.reward import bradley_terry_loss
from align_jax.objectives.types import PreferenceInputs, SequenceLogps, UnpairedInputs

Batch = Mapping[str, jax.Array]
TASK_KINDS = ("sft", "preference", "unpaired", "reward_model")
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
    """Summed reference log-probs per side, as the batch fields the losses read."""
    sides = PAIR_SIDES if kind == "preference" else ("completion",)
    logps = sides_logps(model, batch, sides)
    return {f"reference_{s}_logps": jax.lax.stop_gradient(logps[s].sum) for s in sides}


def _weight(batch: Batch, n: int) -> jax.Array:
    return batch.get("example_weight", jnp.ones((n,), jnp.float32)).astype(jnp.float32)


def sft_loss(model: Decoder, batch: Batch) -> tuple[jax.Array, dict, jax.Array]:
    """Token-level negative log-likelihood of the assistant tokens."""
    logps = token_logps(model, batch["tokens"], batch["loss_mask"], batch["positions"], batch["segment_ids"])
    n_tokens = jnp.sum(logps.length)
    nll = -jnp.sum(logps.sum) / jnp.maximum(n_tokens, 1.0)
    return nll, {"loss": nll, "sft/nll": nll, "sft/tokens": n_tokens}, n_tokens


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
    model: Decoder, head: Mapping[str, jax.Array], batch: Batch, center_coef: float = 0.0
) -> tuple[jax.Array, dict, jax.Array]:
    """Bradley-Terry loss of a reward model (decoder + linear head) on preference pairs."""
    chosen = sequence_rewards(model, head, batch, "chosen")
    rejected = sequence_rewards(model, head, batch, "rejected")
    weight = _weight(batch, chosen.shape[0])
    loss, metrics = bradley_terry_loss(chosen, rejected, mask=weight, center_coef=center_coef)
    return loss, {"loss": loss, **metrics}, jnp.sum(weight)


def init_reward_head(hidden_size: int) -> dict[str, Any]:
    return {"w": jnp.zeros((hidden_size,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
