"""Losses and schedules over more than one pair: listwise ranking (PRO), curricula over
ranked pairs (Curry-DPO) and group-robust reduction (MaxMin-RLHF). Weighted mixtures of
registered losses (MPO-style, ``combine_losses``) live next to the losses they mix, in
:mod:`.preference`, where ``loss.name = "combined"`` selects one from a config.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from align_jax.objectives.preference import (  # noqa: F401  (combine_losses: re-exported)
    NON_NEGATIVE,
    LossOutput,
    combine_losses,
    option_rules,
)
from align_jax.objectives.types import (
    RankingInputs,
    example_weights,
    reduce_metrics,
    weighted_mean,
)
from align_jax.registry import Registry

RANKING_LOSSES = Registry("ranking loss")

Inputs = TypeVar("Inputs")  # any input pytree with an ``example_weight`` field


def _later(k_size: int) -> jax.Array:  # [k, i] bool: i comes after k in the ranking
    return jnp.arange(k_size)[None, :] > jnp.arange(k_size)[:, None]


def pro_logits(
    rewards: jax.Array,  # [B, K] per-response reward, best first
    scores: jax.Array | None,  # [B, K] reward-model scores (descending) or None
    list_mask: jax.Array,  # [B, K] bool
) -> jax.Array:  # [B, K(k), K(i)] logit of candidate i in the softmax of step k
    """PRO's per-step logits ``r_i / T^i_k``. Without scores T = 1; with scores
    ``1/T^i_k = s_k - s_i`` for i > k and ``1/T^k_k = max_{i>k} (s_k - s_i)``."""
    k_size = rewards.shape[-1]
    logits = jnp.broadcast_to(rewards[:, None, :], rewards.shape[:1] + (k_size, k_size))
    if scores is None:
        return logits
    later = _later(k_size)
    gap = scores[:, :, None] - scores[:, None, :]  # [B, k, i] s_k - s_i
    own = jnp.max(jnp.where(later & list_mask[:, None, :], gap, 0.0), axis=-1)  # [B, k]
    diagonal = jnp.eye(k_size, dtype=bool)
    inverse_temperature = jnp.where(later, gap, jnp.where(diagonal, own[..., None], 1.0))
    return logits * inverse_temperature


@RANKING_LOSSES.register(
    "pro",
    paper="2306.17492",
    validate=option_rules("ranking loss 'pro'", sft_weight=NON_NEGATIVE),
)
def pro_loss(
    inputs: RankingInputs, *, sft_weight: float = 0.05, score_temperature: bool = False
) -> LossOutput:
    """PRO: listwise softmax ranking loss over K responses plus an SFT term.

    arXiv:2306.17492. ``-sum_k log softmax_{i >= k}(r_i / T)[k]`` over the ranked list (best first),
    ``r`` the per-token mean log-prob, plus ``sft_weight`` times the best response's NLL.
    ``score_temperature`` uses the paper's reward-gap temperatures (needs ``scores``).
    """
    if score_temperature and inputs.scores is None:
        raise ValueError("pro with score_temperature=True needs RankingInputs.scores")
    rewards = inputs.policy.mean  # [B, K]
    valid = inputs.list_mask > 0
    k_size = rewards.shape[-1]
    logits = pro_logits(rewards, inputs.scores if score_temperature else None, valid)
    later_valid = _later(k_size) & valid[:, None, :]  # [B, k, i]
    candidates = later_valid | jnp.eye(k_size, dtype=bool)  # step k normalises over i >= k
    log_norm = jax.nn.logsumexp(jnp.where(candidates, logits, -jnp.inf), axis=-1)  # [B, k]
    step_logp = jnp.diagonal(logits, axis1=-2, axis2=-1) - log_norm  # [B, k]
    has_later = jnp.any(later_valid, axis=-1)  # steps with nothing below them contribute 0
    ranking = -jnp.sum(jnp.where(valid & has_later, step_logp, 0.0), axis=-1)  # [B]
    nll = -rewards[:, 0]
    weight = example_weights(inputs.example_weight, nll)
    losses = ranking + sft_weight * nll
    metrics = reduce_metrics({"pro/ranking_loss": ranking, "nll/chosen": nll}, weight)
    return weighted_mean(losses, weight), metrics


@dataclasses.dataclass(frozen=True)
class CurriculumPairs:
    """Pairs drawn from ranked lists, in training order (NumPy, data side)."""

    example: np.ndarray  # [N] int index of the list
    chosen: np.ndarray  # [N] int index of the better response in its list
    rejected: np.ndarray  # [N] int
    gap: np.ndarray  # [N] float score(chosen) - score(rejected) > 0
    level: np.ndarray  # [N] int rank of the pair within its list by gap, 0 = easiest


def curriculum_pairs(
    scores: np.ndarray,  # [E, K] a score per response of each list
    valid: np.ndarray | None = None,  # [E, K] bool, real responses; None: all
) -> CurriculumPairs:
    """Curry-DPO (arXiv:2403.07230): every pair of a ranked list, ordered easy to hard.

    ``scores [E, K]`` rate each list's responses (``valid [E, K]`` marks real ones). Each
    pair with distinct scores becomes (chosen = higher, rejected = lower); ties are
    dropped. Within a list, pairs are ranked by score gap, largest (easiest) first; the
    result is ordered by that level, then gap, so that training proceeds in stages (all
    lists' easiest pairs, then the next ...). The per-pair loss is any registered
    preference loss; the paper also resets the reference to the previous stage's policy.
    """
    scores = np.asarray(scores, np.float64)
    valid = np.ones(scores.shape, bool) if valid is None else np.asarray(valid, bool)
    better = (scores[:, :, None] > scores[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    example, chosen, rejected = np.nonzero(better)
    gap = scores[example, chosen] - scores[example, rejected]
    within = np.lexsort((rejected, chosen, -gap, example))  # by list, then gap descending
    example, chosen, rejected, gap = example[within], chosen[within], rejected[within], gap[within]
    level = np.arange(example.size) - np.searchsorted(example, example, side="left")
    order = np.lexsort((rejected, chosen, example, -gap, level))
    return CurriculumPairs(example[order], chosen[order], rejected[order], gap[order], level[order])


def maxmin_loss(
    loss_fn: Callable[[Inputs], LossOutput],
    inputs: Inputs,
    group_ids: jax.Array,  # [B] int in [0, num_groups)
    num_groups: int,
) -> LossOutput:
    """MaxMin-RLHF (arXiv:2402.08925): the largest of the groups' mean losses, so that
    training improves the worst-off user group. ``loss_fn`` is any built loss (e.g.
    ``PREFERENCE_LOSSES.build("dpo")``); each group's loss is ``loss_fn`` restricted to the
    group through ``example_weight``. Groups absent from the batch are ignored. Metrics:
    the whole batch's metrics, ``maxmin/group_{g}_loss`` and ``maxmin/worst_group``."""
    base = example_weights(inputs.example_weight, group_ids)
    group_losses, present = [], []
    for g in range(num_groups):
        weight = jnp.where(group_ids == g, base, 0.0)
        group_losses.append(loss_fn(inputs.replace(example_weight=weight))[0])
        present.append(jnp.sum(weight) > 0)
    group_losses, present = jnp.stack(group_losses), jnp.stack(present)
    masked = jnp.where(present, group_losses, -jnp.inf)
    loss = jnp.where(jnp.any(present), jnp.max(masked), 0.0)
    _, metrics = loss_fn(inputs)
    metrics = {**metrics, "maxmin/worst_group": jnp.argmax(masked).astype(jnp.float32)}
    metrics.update({f"maxmin/group_{g}_loss": group_losses[g] for g in range(num_groups)})
    return loss, metrics
