"""Objectives: pure loss functions and estimators, each picked by name from a registry.

`REGISTRIES` is the one table of every registry; `docs/objectives.md` holds each one's
`describe()` output (a test keeps them in sync) and what every logged metric means.
"""

from align_jax.objectives.calibration import CALIBRATION_LOSSES
from align_jax.objectives.kl import KL_ESTIMATORS
from align_jax.objectives.logprobs import sequence_logps
from align_jax.objectives.policy_gradient import ADVANTAGE_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES
from align_jax.objectives.preference import PREFERENCE_LOSSES
from align_jax.objectives.ranking import RANKING_LOSSES, combine_losses, curriculum_pairs, maxmin_loss
from align_jax.objectives.reward import ENSEMBLE_AGGREGATIONS, REWARD_TRANSFORMS, bradley_terry_loss
from align_jax.objectives.types import PreferenceInputs, RankingInputs, SequenceLogps, UnpairedInputs
from align_jax.objectives.unpaired import UNPAIRED_LOSSES

REGISTRIES = {
    "preference": PREFERENCE_LOSSES,
    "unpaired": UNPAIRED_LOSSES,
    "ranking": RANKING_LOSSES,
    "policy_loss": POLICY_LOSSES,
    "advantage": ADVANTAGE_ESTIMATORS,
    "loss_aggregation": LOSS_AGGREGATIONS,
    "kl_estimator": KL_ESTIMATORS,
    "ensemble_aggregation": ENSEMBLE_AGGREGATIONS,
    "reward_transform": REWARD_TRANSFORMS,
    "calibration_loss": CALIBRATION_LOSSES,
}


def describe_all() -> str:
    """Markdown: one `describe()` table per registry (what docs/objectives.md embeds)."""
    return "\n\n".join(f"### `{key}`: {reg.kind}\n\n{reg.describe()}" for key, reg in REGISTRIES.items())


__all__ = [
    "REGISTRIES",
    "PreferenceInputs",
    "RankingInputs",
    "SequenceLogps",
    "UnpairedInputs",
    "bradley_terry_loss",
    "combine_losses",
    "curriculum_pairs",
    "describe_all",
    "maxmin_loss",
    "sequence_logps",
]
