"""The offline tasks: they learn from a fixed dataset (SFT, preference pairs, unpaired examples,
a Bradley-Terry reward model, verbalized-confidence calibration)."""

from __future__ import annotations

import functools

from align_jax.data.records import pairs_to_sft, pairs_to_unpaired
from align_jax.objectives.preference import PREFERENCE_LOSSES
from align_jax.objectives.types import loss_needs
from align_jax.objectives.unpaired import UNPAIRED_LOSSES
from align_jax.registry import Registry
from align_jax.training.tasks.base import PAIR_LAYOUTS, TASKS, Task
from align_jax.training.tasks.losses import (
    calibration_log_loss,
    calibration_loss,
    packed_preference_loss,
    preference_loss,
    TRUNKS,
    reward_model_loss,
    separate_members,
    sft_loss,
    unpaired_loss,
)

SFT_LOSSES = Registry("sft loss")
SFT_LOSSES.register("sft")(sft_loss)
REWARD_MODEL_LOSSES = Registry("reward-model loss")


def _check_bradley_terry(*, center_coef: float, margin: float, ensemble_size: int, trunk: str, bootstrap: bool,
                         bootstrap_seed: int) -> None:
    if ensemble_size < 1:
        raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
    if trunk not in TRUNKS:
        raise ValueError(f"trunk must be one of {', '.join(map(repr, TRUNKS))}, got {trunk!r}")
    if center_coef < 0:
        raise ValueError(f"center_coef must be >= 0, got {center_coef}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")


REWARD_MODEL_LOSSES.register("bradley_terry", paper="2203.02155", validate=_check_bradley_terry)(reward_model_loss)


def _check_reward_model(cfg) -> None:
    """Separate trunks that would stay identical copies of each other (before any model loads)."""
    options = dict(cfg.loss_options)
    if separate_members(options) and not options.get("bootstrap", True) and not cfg.lora.rank:
        raise ValueError("loss.trunk='separate' with loss.bootstrap=False and full fine-tuning (lora.rank=0) trains "
                         f"{options['ensemble_size']} identical copies: every member starts from the same pretrained "
                         "trunk and zero head and sees the same data. Keep loss.bootstrap=True, or give each member "
                         "its own LoRA adapter (lora.rank > 0; member e's adapter is seeded with lora.seed + e)")
CALIBRATION_TASK_LOSSES = Registry("calibration task loss")
CALIBRATION_TASK_LOSSES.register("confidence_brier", paper="2508.18847")(calibration_loss)
CALIBRATION_TASK_LOSSES.register("confidence_log", paper="2406.08391")(calibration_log_loss)


def _preference_task_loss(loss_fn, pair_layout: str):
    if pair_layout == "separate":  # WPO's squared norms cost a second vocabulary pass: only when declared
        return functools.partial(preference_loss, loss_fn=loss_fn, with_sq_norm=loss_needs(loss_fn).policy_sq_norm)
    return functools.partial(packed_preference_loss, loss_fn=loss_fn)


def _check_loss_needs(cfg) -> None:
    """What the loss declares it reads must be something this config's reference and layout give
    (before any model loads)."""
    needs = cfg.task.loss_needs(cfg.loss_name, dict(cfg.loss_options))
    loss = f"loss.name={cfg.loss_name!r}"
    if needs.per_token_reference and cfg.reference.mode != "frozen":
        raise ValueError(f"{loss} needs per-token reference log-probs, which reference.mode={cfg.reference.mode!r} "
                         "does not give (the precomputed cache keeps one sum per completion): set reference.mode='frozen'")
    if needs.policy_sq_norm and cfg.data.pair_layout != "separate":
        raise ValueError(f"{loss} needs the policy's per-token log sum_v p_v^2 (WPO's aligned weights), computed for "
                         f"data.pair_layout='separate' only, not {cfg.data.pair_layout!r}: use the separate layout "
                         "or WPO's aligned=False")


def _unpaired_task_loss(loss_fn, pair_layout: str):
    return functools.partial(unpaired_loss, loss_fn=loss_fn)


def _calibration_arguments(tokenizer) -> dict:
    from align_jax.data.verbalized_confidence import CONFIDENCE_PREFIX, confidence_token_ids, confidence_values

    return dict(
        conf_token_ids=confidence_token_ids(tokenizer),
        conf_values=confidence_values(),
        confidence_prefix_len=len(tokenizer.encode(CONFIDENCE_PREFIX)),
    )


def _calibration_records(records):
    from align_jax.data.verbalized_confidence import calibration_records

    return calibration_records(records)


TASKS.register(Task(
    name="sft", summary="token NLL of the assistant turns (preference pairs train on the chosen reply)",
    record_kind="sft", losses=SFT_LOSSES, prepare_records=pairs_to_sft, pad_to_max_length=True,
))
TASKS.register(Task(
    name="preference", summary="the DPO family on (prompt, chosen, rejected) pairs",
    record_kind="preference", losses=PREFERENCE_LOSSES, reference="summed", pair_layouts=PAIR_LAYOUTS,
    wrap_loss=_preference_task_loss, check_config=_check_loss_needs,
))
TASKS.register(Task(
    name="unpaired", summary="KTO / BCO on replies labelled desirable or not (pairs are split)",
    record_kind="unpaired", losses=UNPAIRED_LOSSES, reference="summed", prepare_records=pairs_to_unpaired,
    wrap_loss=_unpaired_task_loss, check_config=_check_loss_needs,
))
TASKS.register(Task(
    name="reward_model", summary="Bradley-Terry reward model: decoder + linear head on the last token",
    record_kind="preference", losses=REWARD_MODEL_LOSSES, uses_head=True, check_config=_check_reward_model,
    pair_layouts=("separate", "shared_prefix", "packed"),  # the loss reads either layout (pair_rewards)
))
TASKS.register(Task(
    name="calibration", summary="tokenized Brier (ConfTuner) or log score on a verbalized confidence digit",
    record_kind="unpaired", losses=CALIBRATION_TASK_LOSSES, prepare_records=_calibration_records,
    loss_arguments=_calibration_arguments,
))
