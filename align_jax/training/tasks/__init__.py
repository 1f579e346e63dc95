"""Training tasks: one registered :class:`Task` each (``TASKS``), and the offline tasks' losses.

``TASKS["preference"]`` says everything the engine needs about a task; see :mod:`.base`.
Importing this package registers every task (offline here, online RL in :mod:`.online`).
"""

from align_jax.training.tasks import offline, online  # noqa: F401  (registers the tasks)
from align_jax.training.tasks.base import PAIR_LAYOUTS, REFERENCE_NEEDS, TASKS, Task, did_you_mean
from align_jax.training.tasks.losses import (
    PAIR_SIDES,
    TRUNKS,
    calibration_log_loss,
    calibration_loss,
    confidence_positions,
    init_reward_head,
    packed_preference_loss,
    preference_loss,
    reference_logps,
    reward_model_loss,
    separate_members,
    sequence_rewards,
    sft_loss,
    sides_logps,
    token_logps,
    unpaired_loss,
)

__all__ = [
    "PAIR_LAYOUTS", "PAIR_SIDES", "REFERENCE_NEEDS", "TASKS", "TRUNKS", "Task", "calibration_log_loss",
    "calibration_loss", "confidence_positions", "did_you_mean", "init_reward_head", "packed_preference_loss", "preference_loss", "reference_logps",
    "reward_model_loss", "separate_members", "sequence_rewards", "sft_loss", "sides_logps", "token_logps", "unpaired_loss",
]
