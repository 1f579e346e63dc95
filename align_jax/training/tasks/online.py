"""The online RL task: the policy samples, its completions are scored, and it learns from them.

``grpo`` is the critic-free policy-gradient family: the advantage estimator (``rl.advantage``:
GRPO arXiv:2402.03300, Dr. GRPO arXiv:2503.20783, RLOO arXiv:2402.14740, REINFORCE++
arXiv:2501.03262) turns each group's rewards into advantages, and the policy loss (``loss.name``:
``ppo``'s clipped surrogate with DAPO's clip-higher arXiv:2503.14476, or ``gspo``'s sequence
ratio arXiv:2507.18071) is taken on every sampled token, with the KL to the reference in the
loss (k1/k2/k3) or in the reward. The loop is :mod:`align_jax.training.rl_loop`; this module
holds the pure parts: the rollout batch, the teacher-forced log-probs and the loss.

A rollout batch (``[R, ...]``, ``R = P * G`` rows, row ``p * G + g`` = sample g of prompt p):

* ``tokens``, ``positions``, ``segment_ids`` ``[R, W + M]``: the left-padded prompt (width W) and
  the completion (M columns, padding after the stop), as the sampler returns them;
* ``completion_mask`` ``[R, M]``: 1 on sampled tokens (up to and including the stop token),
  multiplied by the row's weight (0 for a dropped group or a failed reward);
* ``old_logps``, ``ref_logps`` ``[R, M]``: behaviour-policy and reference log-probs;
* ``advantages`` ``[R]``.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from align_jax.models.decoder import Decoder
from align_jax.objectives.kl import KL_ESTIMATORS, masked_mean
from align_jax.objectives.policy_gradient import ADVANTAGE_ESTIMATORS, POLICY_LOSSES, kl_penalty_loss
from align_jax.training.tasks.base import TASKS, Task

Batch = Mapping[str, jax.Array]


def completion_logps(
    model: Decoder,
    batch: Batch,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:  # ([R, M] float32 log pi(y_t | ...), [R, M] entropy or None)
    """Teacher-forced log-probs of the completion tokens under ``softmax(logits / temperature)``.

    Only the M positions that predict completion tokens are unembedded (the hidden states of
    the prompt are never turned into logits)."""
    tokens, mask = batch["tokens"], batch["completion_mask"]
    m = mask.shape[1]
    width = tokens.shape[1] - m
    hidden = model(tokens, batch["positions"], batch["segment_ids"], return_logits=False).final_hidden
    logits = model.logits_from_hidden(hidden[:, width - 1 : width - 1 + m]).astype(jnp.float32) / temperature
    logz = jax.nn.logsumexp(logits, axis=-1)
    targets = tokens[:, width:]
    logps = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - logz
    entropy = None
    if with_entropy:
        probs = jnp.exp(logits - logz[..., None])
        entropy = logz - jnp.sum(probs * logits, axis=-1)
    return logps, entropy


def policy_gradient_loss(
    model: Decoder,
    batch: Batch,
    *,
    loss_fn,
    temperature: float = 1.0,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "token-mean",
) -> tuple[jax.Array, dict, jax.Array]:
    """``policy loss + kl_coef * KL(pi || pi_ref)`` on a rollout micro-batch (see the module docstring).

    Returns ``(loss, metrics, weight)`` with ``weight`` the aggregation's denominator (tokens or
    sequences), so micro-batches add up exactly in the engine's step."""
    mask = batch["completion_mask"].astype(jnp.float32)
    logps, entropy = completion_logps(model, batch, temperature, with_entropy=True)
    loss, metrics = loss_fn(logps, batch["old_logps"], batch["advantages"], mask)
    metrics = dict(metrics)
    if kl_coef:
        kl = KL_ESTIMATORS.build(kl_estimator)(logps, batch["ref_logps"], mask)
        kl_loss, kl_metrics = kl_penalty_loss(kl, mask, beta=kl_coef, aggregation=aggregation)
        loss = loss + kl_loss
        metrics.update(kl_metrics)
        metrics["rl/kl"] = jax.lax.stop_gradient(masked_mean(kl, mask))
    metrics["rl/entropy"] = jax.lax.stop_gradient(masked_mean(entropy, mask))
    metrics["loss"] = loss
    return loss, metrics, metrics["pg/loss_weight"]


def _check_rl_config(cfg: Any) -> None:
    """Names and combinations of the ``rl`` section, checked before any model loads."""
    from align_jax import rewards

    rl = cfg.rl
    rewards.build(rl.reward_names)  # unknown reward names raise with the valid ones
    if len(rl.weights) != len(rl.reward_names):
        raise ValueError(f"rl.reward_weights has {len(rl.weights)} values for {len(rl.reward_names)} rewards")
    ADVANTAGE_ESTIMATORS.entry(rl.advantage)
    KL_ESTIMATORS.entry(rl.kl_estimator)
    if rl.kl_coef and cfg.reference.mode == "none":
        raise ValueError("rl.kl_coef > 0 needs a reference: set reference.mode='frozen' (or use LoRA)")
    if rl.group_size < 2 and rl.advantage in ("grpo", "dr-grpo", "rloo"):
        raise ValueError(f"rl.advantage={rl.advantage!r} compares samples of one prompt: rl.group_size must be >= 2")
    rows = rl.prompts_per_step * rl.group_size // rl.minibatches
    if rows % cfg.data.micro_batches:
        raise ValueError(f"each minibatch has {rows} rows: not a multiple of data.micro_batches={cfg.data.micro_batches}")


TASKS.register(Task(
    name="grpo",
    summary="online RL: sample G completions per prompt, score them, group advantages, clipped policy loss",
    record_kind="prompt",
    losses=POLICY_LOSSES,
    reference="per_token",
    online=True,
    check_config=_check_rl_config,
))
