"""The offline tasks' losses over a policy model and a batch: SFT, preference pairs, unpaired, reward model,
calibration (tokenized Brier or log score on a verbalized confidence digit).

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
from align_jax.objectives.calibration import confidence_brier_loss, confidence_log_loss, label_smoothed_cross_entropy
from align_jax.objectives.logprobs import sequence_logps
from align_jax.objectives.reward import bradley_terry_loss, last_token_rewards, linear_head
from align_jax.objectives.types import PreferenceInputs, SequenceLogps, UnpairedInputs
from align_jax.parallel.rules import MEMBER_AXIS
from align_jax.training.packed_pairs import (
    digest_terms,
    is_packed,
    packed_example_digest,
    packed_example_weight,
    packed_last_hidden,
    packed_sides_logps,
)

Batch = Mapping[str, jax.Array]
PAIR_SIDES = ("chosen", "rejected")


def token_logps(
    model: Decoder,
    tokens: jax.Array,  # [B, L] int
    loss_mask: jax.Array,  # [B, L] 1 on scored (completion) tokens
    positions: jax.Array,  # [B, L]
    segment_ids: jax.Array,  # [B, L] 0 = padding
    *,
    with_sq_norm: bool = False,  # also log sum_v p_v^2 per token (WPO)
) -> SequenceLogps:  # [B, L - 1]: log p(tokens[t + 1] | tokens[: t + 1])
    logits = model(tokens, positions, segment_ids).logits
    return sequence_logps(logits[:, :-1], tokens[:, 1:], loss_mask[:, 1:], with_sq_norm=with_sq_norm)


def sides_logps(
    model: Decoder, batch: Batch, sides: tuple[str, ...], *, with_sq_norm: bool = False
) -> dict[str, SequenceLogps]:
    """Log-probs of several completion sides in ONE forward (sides stacked on the batch axis)."""
    fields = ("tokens", "loss_mask", "positions", "segment_ids")
    stacked = [jnp.concatenate([batch[f"{s}_{f}"] for s in sides], axis=0) for f in fields]
    logps = token_logps(model, *stacked, with_sq_norm=with_sq_norm)
    n = batch[f"{sides[0]}_tokens"].shape[0]
    return {s: jax.tree.map(lambda x, i=i: x[i * n : (i + 1) * n], logps) for i, s in enumerate(sides)}


def reference_logps(model: Decoder, batch: Batch, kind: str, *, per_token: bool = False) -> dict[str, Any]:
    """Reference log-probs per side, as the batch fields the losses read: summed
    (``reference_{side}_logps``) and, with ``per_token``, per token (``reference_{side}``, a
    :class:`SequenceLogps` aligned with the policy's; LD-DPO in reference mode "frozen").

    Preference batches may be in the separate or the prefix-shared/packed layout (then ``[P]``)."""
    sides = PAIR_SIDES if kind == "preference" else ("completion",)
    logps = packed_sides_logps(model, batch) if is_packed(batch) else sides_logps(model, batch, sides)
    out = {f"reference_{s}_logps": jax.lax.stop_gradient(logps[s].sum) for s in sides}
    if per_token:
        out.update({f"reference_{s}": jax.lax.stop_gradient(logps[s]) for s in sides})
    return out


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


def _reference_inputs(batch: Batch) -> dict[str, Any]:
    """The PreferenceInputs fields that come with the batch rather than from the policy: reference
    log-probs (summed, or per token in reference mode "frozen" when the loss needs them) and the
    running reward shift (BCO), each None when absent."""
    names = ("reference_chosen_logps", "reference_rejected_logps", "reference_chosen", "reference_rejected", "reward_shift")
    return {name: batch.get(name) for name in names}


def preference_loss(
    model: Decoder, batch: Batch, loss_fn: Callable, *, with_sq_norm: bool = False
) -> tuple[jax.Array, dict, jax.Array]:
    """A preference loss on a separate-layout batch. ``with_sq_norm``: the policy's log-probs also
    carry ``log sum_v p_v^2`` (set by the task when the loss declares it needs them: WPO)."""
    logps = sides_logps(model, batch, PAIR_SIDES, with_sq_norm=with_sq_norm)
    inputs = PreferenceInputs(
        policy_chosen=logps["chosen"],
        policy_rejected=logps["rejected"],
        example_weight=_weight(batch, logps["chosen"].token_logps.shape[0]),
        **_reference_inputs(batch),
    )
    loss, metrics = loss_fn(inputs)
    return loss, {"loss": loss, **metrics}, metrics["num_examples"]


def packed_preference_loss(
    model: Decoder, batch: Batch, loss_fn: Callable, *, token_chunk_size: int | None = None
) -> tuple[jax.Array, dict, jax.Array]:
    """``preference_loss`` on a prefix-shared/packed batch (:mod:`align_jax.data.pair_packing`):
    per-pair inputs ``[P]`` (``reference_*_logps``, ``example_weight``; per-token reference values
    ``[P, T]`` from :func:`reference_logps` of the same layout), weighted by ``pair_mask``.
    With ``token_chunk_size``, only scored positions are unembedded (opt-in; see packed_pairs)."""
    logps = packed_sides_logps(model, batch, token_chunk_size=token_chunk_size)
    inputs = PreferenceInputs(
        policy_chosen=logps["chosen"],
        policy_rejected=logps["rejected"],
        example_weight=packed_example_weight(batch),
        **_reference_inputs(batch),
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
        reward_shift=batch.get("reward_shift"),  # BCO's running mean, fed by the train step
    )
    loss, metrics = loss_fn(inputs)
    return loss, {"loss": loss, **metrics}, metrics["num_examples"]


def sequence_rewards(model: Decoder, head: Mapping[str, jax.Array], batch: Batch, side: str) -> jax.Array:
    """Scalar reward per sequence ([B], or [B, E] for stacked heads): a linear head on the final
    hidden state of its last token (:func:`align_jax.objectives.reward.last_token_rewards`)."""
    hidden = model(
        batch[f"{side}_tokens"], batch[f"{side}_positions"], batch[f"{side}_segment_ids"], return_logits=False
    ).final_hidden  # [B, L, D]
    return last_token_rewards(hidden, batch[f"{side}_segment_ids"], head)


def example_digest(
    tokens: jax.Array,  # [B, L] int: the rows that identify each example (its chosen sequence)
    positions: jax.Array,  # [B, L] int
    segment_ids: jax.Array,  # [B, L] int; 0 on padding
) -> jax.Array:  # [B] uint32
    """An example's identity: ``sum_t token_t * (position_t + 1) * 2654435761 mod 2^32`` over its
    tokens (padding left out), so any layout of the same tokens gives the same number
    (:func:`align_jax.training.packed_pairs.packed_example_digest` for prefix-shared rows)."""
    terms = digest_terms(tokens, positions)
    return jnp.sum(jnp.where(segment_ids > 0, terms, jnp.uint32(0)), axis=1, dtype=jnp.uint32)


def member_bootstrap_weights(
    digest: jax.Array,  # [B] uint32: each example's identity (example_digest)
    member: jax.Array | int,  # [] the ensemble member (may be traced: a vmapped member index)
    seed: int,
) -> jax.Array:  # [B] float32 Poisson(1) counts of member ``member``, fixed per example
    """Bootstrap resampling for ensemble member ``member``: each example counts ``Poisson(1)`` times,
    drawn from a hash of its token ids, so a member sees the same resample in every epoch, on
    every host and in every pair layout (Poisson bootstrap, as online bagging: Oza and Russell 2001)."""
    key = jax.random.fold_in(jax.random.key(seed), jnp.asarray(member, jnp.uint32))
    return jax.vmap(lambda h: jax.random.poisson(jax.random.fold_in(key, h), 1.0))(digest).astype(jnp.float32)


def bootstrap_weights(
    digest: jax.Array,  # [B] uint32: each example's identity (example_digest)
    ensemble_size: int,
    seed: int,
) -> jax.Array:  # [B, E] float32 Poisson(1) counts, fixed per example and member
    """:func:`member_bootstrap_weights` of every member."""
    members = jnp.arange(ensemble_size, dtype=jnp.uint32)
    return jax.vmap(lambda e: member_bootstrap_weights(digest, e, seed), out_axes=1)(members)


def pair_rewards(
    model: Decoder, head: Mapping[str, jax.Array], batch: Batch
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``(chosen, rejected, digest, weight)`` of a preference batch in any pair layout: the rewards
    ``[B]`` (``[B, E]`` for stacked heads), each example's identity ``[B]`` uint32 and weight ``[B]``.
    The separate layout takes a forward per side; the prefix-shared/packed one (``packed_*`` keys)
    one tree-attention pass over ``[prompt | chosen | rejected]`` rows, the prompt computed once."""
    if is_packed(batch):
        last = packed_last_hidden(model, batch)
        return (linear_head(last["chosen"], head), linear_head(last["rejected"], head), packed_example_digest(batch),
                packed_example_weight(batch))
    chosen = sequence_rewards(model, head, batch, "chosen")
    digest = example_digest(batch["chosen_tokens"], batch["chosen_positions"], batch["chosen_segment_ids"])
    return chosen, sequence_rewards(model, head, batch, "rejected"), digest, _weight(batch, chosen.shape[0])


TRUNKS = ("shared", "separate")  # an ensemble's members: heads over one trunk, or a trunk (or LoRA adapter) each


def separate_members(options: Mapping[str, Any]) -> int:
    """E when reward-model loss options ask for an ensemble of E > 1 members with separate trunks
    (the train state stacks E trunks and the step is vmapped over them), else 0."""
    size = int(options.get("ensemble_size", 1))
    return size if options.get("trunk", "shared") == "separate" and size > 1 else 0


def _ensemble_metrics(
    loss: jax.Array,  # [] the members' mean loss
    mean_chosen: jax.Array,  # [B] the members' mean rewards
    mean_rejected: jax.Array,  # [B]
    std_chosen: jax.Array,  # [B] the members' disagreement on the chosen reply
    margins: jax.Array | None,  # [B]
    weight: jax.Array,  # [B] example weights (not resampled)
) -> dict[str, jax.Array]:
    """An ensemble's metrics: those of its mean reward, the loss, and ``rm/ensemble_std``."""
    _, metrics = bradley_terry_loss(mean_chosen, mean_rejected, margins, mask=weight)
    std = jnp.sum(jnp.where(weight > 0, std_chosen, 0.0) * weight) / jnp.maximum(jnp.sum(weight), 1e-9)
    return {**metrics, "loss": loss, "rm/loss": loss, "rm/ensemble_std": jax.lax.stop_gradient(std)}


def reward_model_loss(
    model: Decoder, head: Mapping[str, jax.Array], batch: Batch, *, center_coef: float = 0.0, margin: float = 0.0,
    ensemble_size: int = 1, trunk: str = "shared", bootstrap: bool = True, bootstrap_seed: int = 0,
) -> tuple[jax.Array, dict, jax.Array]:
    """Bradley-Terry loss of a reward model (decoder + linear head) on preference pairs.

    ``center_coef`` pins the reward's offset (arXiv:2312.09244); ``margin`` asks the chosen reward
    to exceed the rejected one by that much (a constant form of Llama 2's margin, arXiv:2307.09288).

    An ensemble of ``ensemble_size`` E > 1 members (Coste et al., arXiv:2310.02743): each member's loss
    weighs the examples by its own bootstrap resample (``bootstrap``: the Poisson counts of
    :func:`member_bootstrap_weights`, member e's column ``e``); the loss is the members' mean, the
    metrics are those of the members' mean reward, and ``rm/ensemble_std`` is their disagreement (the
    std of the members' rewards of the chosen reply, averaged over examples). ``trunk``:

    * ``"shared"``: E stacked heads (``w [E, D]``) over one trunk, one forward for all members;
    * ``"separate"``: each member has its own trunk (a full copy, or its own LoRA adapter over the
      frozen base). The train step is vmapped over the members (``StepSpec.members``), so this loss
      sees ONE member: its trunk, its head ``w [D]``, its index ``lax.axis_index(MEMBER_AXIS)``. It is
      then exactly the single-model loss on examples weighted by that member's resample, and returns
      that member's weight; the cross-member metrics are taken over the vmapped axis.
    """
    chosen, rejected, digest, weight = pair_rewards(model, head, batch)  # [B], or [B, E] for shared-trunk members
    margins = jnp.full(chosen.shape[:1], margin, jnp.float32) if margin else None
    if ensemble_size == 1:
        loss, metrics = bradley_terry_loss(chosen, rejected, margins, mask=weight, center_coef=center_coef)
        return loss, {"loss": loss, **metrics}, jnp.sum(weight)

    def member_loss(c, r, member):  # [B], [B], [] -> ([] loss, [] its weight)
        w = weight * member_bootstrap_weights(digest, member, bootstrap_seed) if bootstrap else weight
        return bradley_terry_loss(c, r, margins, mask=w, center_coef=center_coef)[0], jnp.sum(w)

    if trunk == "separate":
        if chosen.ndim != 1 or jax.lax.axis_size(MEMBER_AXIS) != ensemble_size:
            raise ValueError(f"trunk='separate': the loss runs per member under a vmap of {ensemble_size} members, "
                             f"got rewards {chosen.shape} over {jax.lax.axis_size(MEMBER_AXIS)} members")
        loss, member_weight = member_loss(chosen, rejected, jax.lax.axis_index(MEMBER_AXIS))
        c, r = jax.lax.stop_gradient(chosen), jax.lax.stop_gradient(rejected)
        mean_c = jax.lax.pmean(c, MEMBER_AXIS)
        std_c = jnp.sqrt(jax.lax.pmean(jnp.square(c - mean_c), MEMBER_AXIS))
        return loss, _ensemble_metrics(loss, mean_c, jax.lax.pmean(r, MEMBER_AXIS), std_c, margins, weight), member_weight
    if chosen.ndim != 2 or chosen.shape[1] != ensemble_size:
        raise ValueError(f"ensemble_size={ensemble_size} but the head scores shape {chosen.shape}")
    losses, _ = jax.vmap(member_loss, in_axes=(1, 1, 0))(chosen, rejected, jnp.arange(ensemble_size))  # [E]
    loss = jnp.mean(losses)
    metrics = _ensemble_metrics(loss, jnp.mean(chosen, 1), jnp.mean(rejected, 1), jnp.std(chosen, axis=1), margins, weight)
    return loss, metrics, jnp.sum(weight)


def init_reward_head(hidden_size: int, ensemble_size: int = 1) -> dict[str, Any]:
    """Zero head(s): ``w [D]``, ``b []``; stacked ``[E, D]`` / ``[E]`` for an ensemble."""
    if ensemble_size == 1:
        return {"w": jnp.zeros((hidden_size,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
    return {"w": jnp.zeros((ensemble_size, hidden_size), jnp.float32), "b": jnp.zeros((ensemble_size,), jnp.float32)}


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
    return _calibration_loss(model, batch, conf_token_ids, conf_values, confidence_prefix_len,
                             answer_nll_coef=answer_nll_coef, score=confidence_brier_loss)


def calibration_log_loss(
    model: Decoder,
    batch: Batch,
    conf_token_ids: jax.Array,  # [K] vocabulary ids of the confidence digits
    conf_values: jax.Array,  # [K] probability each digit states
    confidence_prefix_len: int = 0,  # tokens of "\nConfidence: " before the digit
    *,
    answer_nll_coef: float = 0.0,
) -> tuple[jax.Array, dict, jax.Array]:
    """Log score of the expected verbalized confidence (calibration tuning, arXiv:2406.08391), plus answer NLL.

    :func:`calibration_loss` with the tokenized Brier replaced by
    ``-(y log cbar + (1 - y) log(1 - cbar))``, ``cbar = sum_k p(k) c_k`` the confidence the
    evaluation reads (:func:`align_jax.objectives.calibration.confidence_log_score`).
    """
    return _calibration_loss(model, batch, conf_token_ids, conf_values, confidence_prefix_len,
                             answer_nll_coef=answer_nll_coef, score=confidence_log_loss)


def _calibration_loss(
    model: Decoder,
    batch: Batch,
    conf_token_ids: jax.Array,  # [K]
    conf_values: jax.Array,  # [K]
    confidence_prefix_len: int,
    *,
    answer_nll_coef: float,
    score: Callable,
) -> tuple[jax.Array, dict, jax.Array]:
    tokens, mask = batch["completion_tokens"], batch["completion_loss_mask"]
    logits = model(tokens, batch["completion_positions"], batch["completion_segment_ids"]).logits  # [B, L, V]
    pos, found = confidence_positions(tokens, mask, conf_token_ids)
    at = jnp.take_along_axis(logits, jnp.maximum(pos - 1, 0)[:, None, None], axis=1)[:, 0]  # [B, V]
    weight = _weight(batch, tokens.shape[0]) * found
    loss, metrics = score(at, batch["desirable"], conf_token_ids, conf_values, mask=weight)
    if answer_nll_coef:
        answer_mask = (mask > 0) & (jnp.arange(tokens.shape[1])[None, :] < (pos - confidence_prefix_len)[:, None])
        logps = sequence_logps(logits[:, :-1], tokens[:, 1:], answer_mask[:, 1:])
        nll = -logps.mean  # [B] mean token NLL per example
        nll = jnp.sum(nll * weight) / jnp.maximum(jnp.sum(weight), 1e-9)
        loss = loss + answer_nll_coef * nll
        metrics = {**metrics, "conf/answer_nll": jax.lax.stop_gradient(nll)}
    return loss, {"loss": loss, **metrics}, jnp.sum(weight)
