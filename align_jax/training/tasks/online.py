"""The online RL task: the policy samples, its completions are scored, and it learns from them.

``grpo`` is the critic-free policy-gradient family: the advantage estimator (``rl.advantage``:
GRPO arXiv:2402.03300, Dr. GRPO arXiv:2503.20783, RLOO arXiv:2402.14740, REINFORCE++
arXiv:2501.03262) turns each group's rewards into advantages, and the policy loss (``loss.name``:
``ppo``'s clipped surrogate with DAPO's clip-higher arXiv:2503.14476, or ``gspo``'s sequence
ratio arXiv:2507.18071) is taken on every sampled token, with the KL to the reference in the
loss (k1/k2/k3) or in the reward. ``ppo`` (arXiv:1707.06347, RLHF as in arXiv:2203.02155) adds a
linear value head on the policy's hidden states: per-token rewards (the score at the last token,
``-beta KL`` at every token), GAE advantages (arXiv:1506.02438) and a clipped value loss. The loop is :mod:`align_jax.training.rl_loop`; this module
holds the pure parts: the rollout batch, the teacher-forced log-probs and the loss.

A rollout batch (``[R, ...]``, ``R = P * G`` rows, row ``p * G + g`` = sample g of prompt p):

* ``tokens``, ``positions``, ``segment_ids`` ``[R, W + M]``: the left-padded prompt (width W) and
  the completion (M columns, padding after the stop), as the sampler returns them;
* ``completion_mask`` ``[R, M]``: 1 on sampled tokens (up to and including the stop token),
  multiplied by the row's weight (0 for a dropped group or a failed reward);
* ``old_logps``, ``ref_logps`` ``[R, M]``: behaviour-policy and reference log-probs;
* ``advantages`` ``[R]`` (PPO: ``[R, M]``, with ``returns`` and ``old_values`` ``[R, M]``).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from align_jax.models.decoder import Decoder
from align_jax.objectives.kl import KL_ESTIMATORS, masked_mean
from align_jax.objectives.policy_gradient import ADVANTAGE_ESTIMATORS, POLICY_LOSSES, kl_penalty_loss, value_loss
from align_jax.training.tasks.base import TASKS, Task

Batch = Mapping[str, jax.Array]


def completion_hidden(model: Decoder, batch: Batch) -> jax.Array:  # [R, M, D]
    """Final hidden states at the M positions that predict the completion tokens."""
    m = batch["completion_mask"].shape[1]
    width = batch["tokens"].shape[1] - m
    hidden = model(batch["tokens"], batch["positions"], batch["segment_ids"], return_logits=False).final_hidden
    return hidden[:, width - 1 : width - 1 + m]


def logps_from_hidden(
    model: Decoder,
    hidden: jax.Array,  # [R, M, D]
    targets: jax.Array,  # [R, M] int
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:  # ([R, M] float32 log-probs, [R, M] entropy or None)
    """log softmax(logits / temperature) at ``targets``; only these M positions are unembedded."""
    logits = model.logits_from_hidden(hidden).astype(jnp.float32) / temperature
    logz = jax.nn.logsumexp(logits, axis=-1)
    logps = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - logz
    entropy = None
    if with_entropy:
        probs = jnp.exp(logits - logz[..., None])
        entropy = logz - jnp.sum(probs * logits, axis=-1)
    return logps, entropy


def completion_logps(
    model: Decoder,
    batch: Batch,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:  # ([R, M] float32 log pi(y_t | ...), [R, M] entropy or None)
    """Teacher-forced log-probs of the completion tokens under ``softmax(logits / temperature)``."""
    m = batch["completion_mask"].shape[1]
    targets = batch["tokens"][:, batch["tokens"].shape[1] - m :]
    return logps_from_hidden(model, completion_hidden(model, batch), targets, temperature, with_entropy=with_entropy)


def token_values(head: Mapping[str, jax.Array], hidden: jax.Array) -> jax.Array:  # [R, M] float32
    """A linear value head on the hidden state before each completion token: V(prompt + y[:t])."""
    return hidden.astype(jnp.float32) @ head["w"] + head["b"]


def policy_gradient_loss(
    model: Decoder,
    batch: Batch,
    *,
    loss_fn,
    head: Mapping[str, jax.Array] | None = None,
    temperature: float = 1.0,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "token-mean",
    value_coef: float = 0.0,
    clip_eps_value: float | None = 0.2,
) -> tuple[jax.Array, dict, jax.Array]:
    """``policy loss [+ kl_coef * KL(pi || pi_ref)] [+ value_coef * value loss]`` on a rollout
    micro-batch (see the module docstring). With a value ``head`` (PPO), ``advantages``,
    ``returns`` and ``old_values`` are per token ``[R, M]``.

    Returns ``(loss, metrics, weight)`` with ``weight`` the aggregation's denominator (tokens or
    sequences), so micro-batches add up exactly in the engine's step."""
    mask = batch["completion_mask"].astype(jnp.float32)
    m = mask.shape[1]
    hidden = completion_hidden(model, batch)
    logps, entropy = logps_from_hidden(model, hidden, batch["tokens"][:, -m:], temperature, with_entropy=True)
    loss, metrics = loss_fn(logps, batch["old_logps"], batch["advantages"], mask)
    metrics = dict(metrics)
    if kl_coef:
        kl = KL_ESTIMATORS.build(kl_estimator)(logps, batch["ref_logps"], mask)
        kl_loss, kl_metrics = kl_penalty_loss(kl, mask, beta=kl_coef, aggregation=aggregation)
        loss = loss + kl_loss
        metrics.update(kl_metrics)
        metrics["rl/kl"] = jax.lax.stop_gradient(masked_mean(kl, mask))
    if head is not None:
        values = token_values(head, hidden)
        vf_loss, vf_metrics = value_loss(values, batch["old_values"], batch["returns"], mask,
                                         clip_eps_value=clip_eps_value, aggregation=aggregation)
        loss = loss + value_coef * vf_loss
        metrics.update(vf_metrics)
    metrics["rl/entropy"] = jax.lax.stop_gradient(masked_mean(entropy, mask))
    metrics["loss"] = loss
    return loss, metrics, metrics["pg/loss_weight"]


def ppo_task_loss(model: Decoder, head: Mapping[str, jax.Array], batch: Batch, **options):
    """The engine's ``(model, head, batch)`` form of :func:`policy_gradient_loss` with a value head."""
    return policy_gradient_loss(model, batch, head=head, **options)


def _check_rl_config(cfg: Any) -> None:
    """Names and combinations of the ``rl`` section, checked before any model loads."""
    from align_jax import rewards

    rl = cfg.rl
    rewards.build(rl.reward_names)  # unknown reward names raise with the valid ones
    if len(rl.weights) != len(rl.reward_names):
        raise ValueError(f"rl.reward_weights has {len(rl.weights)} values for {len(rl.reward_names)} rewards")
    if not any(w != 0 for w in rl.weights):
        raise ValueError(f"rl.reward_weights={rl.reward_weights!r}: every weight is 0, nothing to optimise "
                         "(a weight-0 reward is only watched: scored and logged)")
    ADVANTAGE_ESTIMATORS.entry(rl.advantage)
    KL_ESTIMATORS.entry(rl.kl_estimator)
    if rl.reward_transform != "identity" and cfg.reference.mode == "none" and not cfg.lora.rank:
        raise ValueError(f"rl.reward_transform={rl.reward_transform!r} scores the reference policy's samples, so it "
                         "needs a reference: set reference.mode='frozen', or use LoRA (the frozen base is the reference)")
    if rl.kl_coef and cfg.reference.mode == "none" and not cfg.lora.rank:
        raise ValueError("rl.kl_coef > 0 needs a reference: set reference.mode='frozen', or use LoRA "
                         "(lora.rank > 0: the frozen base is the reference)")
    if cfg.task.uses_head and rl.kl_in == "loss" and rl.kl_coef:
        raise ValueError("train.task='ppo' takes the KL in the reward (rl.kl_in='reward'), as PPO-RLHF does")
    if not cfg.task.uses_head and rl.group_size < 2 and rl.advantage in ("grpo", "dr-grpo", "rloo"):
        raise ValueError(f"rl.advantage={rl.advantage!r} compares samples of one prompt: rl.group_size must be >= 2")
    rows = rl.prompts_per_step * rl.group_size // rl.minibatches
    if rows % cfg.data.micro_batches:
        raise ValueError(f"each minibatch has {rows} rows: not a multiple of data.micro_batches={cfg.data.micro_batches}")


def _online_task(name: str, summary: str, *, uses_head: bool) -> Task:
    return Task(name=name, summary=summary, record_kind="prompt", losses=POLICY_LOSSES, reference="per_token",
                uses_head=uses_head, online=True, check_config=_check_rl_config)


TASKS.register(_online_task(
    "grpo", "online RL: sample G completions per prompt, score them, group advantages, clipped policy loss",
    uses_head=False))
TASKS.register(_online_task(
    "ppo", "online RL with a value head: per-token KL-shaped rewards, GAE advantages, clipped policy + value loss",
    uses_head=True))
