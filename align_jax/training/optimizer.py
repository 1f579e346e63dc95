"""Optax optimizer and learning-rate schedule from a flat config section."""

from __future__ import annotations

import dataclasses

import optax

SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 5e-6
    schedule: str = "cosine"  # constant | linear | cosine (all after a linear warm-up)
    warmup_steps: int = 0
    total_steps: int = 0  # 0: follow the run (train.steps optimizer updates; x epochs x minibatches for RL)
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # <= 0 disables clipping

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {SCHEDULES}")
        if self.learning_rate <= 0 or self.total_steps < 0 or self.warmup_steps < 0:
            raise ValueError("learning_rate must be > 0, total_steps >= 0 (0: the run's length) and warmup_steps >= 0")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    if cfg.total_steps == 0 and cfg.schedule != "constant":
        raise ValueError(f"schedule {cfg.schedule!r} needs total_steps (parse_config sets it from train.steps)")
    decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
    after = {
        "constant": optax.constant_schedule(cfg.learning_rate),
        "linear": optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps),
        "cosine": optax.cosine_decay_schedule(cfg.learning_rate, decay_steps),
    }[cfg.schedule]
    if cfg.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """AdamW (arXiv:1711.05101) with global-norm clipping and the configured schedule."""
    parts = []
    if cfg.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(
        optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    )
    return optax.chain(*parts)
