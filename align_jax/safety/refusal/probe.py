"""Linear / one-hidden-layer classification heads on frozen features, trained in JAX with optax,
and the validation threshold for a target false-positive rate.

``weighted_xent(params, x, y, w, l2)`` is the pure loss (mean of ``w * cross-entropy`` plus an
L2 penalty on weights); ``train_head`` standardises the features with train statistics and runs
full-batch Adam as one jitted ``lax.scan``. ``class_balanced_weights`` gives every class the same
total weight. ``threshold_for_fpr`` returns ``t`` such that predicting positive when
``score > t`` flags at most ``target_fpr`` of the given negatives (exactly ``floor(target * n)``
of them when scores are distinct); with several negative groups, ``threshold_for_groups`` takes
the largest threshold so the bound holds in every group.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Hashable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = dict[str, jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Head:
    params: Params
    mean: jax.Array  # [D] feature standardisation
    scale: jax.Array  # [D]


def init_head(key: jax.Array, in_dim: int, n_classes: int, hidden: int = 0) -> Params:
    """Linear head (``hidden=0``) or in_dim -> hidden (GELU) -> n_classes."""
    if hidden == 0:
        return {"w": jnp.zeros((in_dim, n_classes)), "b": jnp.zeros((n_classes,))}
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (in_dim, hidden)) * in_dim**-0.5,
        "b1": jnp.zeros((hidden,)),
        "w": jax.random.normal(k2, (hidden, n_classes)) * hidden**-0.5,
        "b": jnp.zeros((n_classes,)),
    }


def head_logits(params: Params, x: jax.Array) -> jax.Array:
    """x [N, D] (standardised) -> logits [N, C]."""
    if "w1" in params:
        x = jax.nn.gelu(x @ params["w1"] + params["b1"])
    return x @ params["w"] + params["b"]


def weighted_xent(params: Params, x: jax.Array, y: jax.Array, w: jax.Array, l2: float) -> jax.Array:
    """Weighted mean cross-entropy (x [N, D], y [N] int, w [N]) + l2 * sum of squared weights."""
    logp = jax.nn.log_softmax(head_logits(params, x).astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
    penalty = sum(jnp.sum(v**2) for k, v in params.items() if k.startswith("w"))
    return jnp.sum(w * nll) / jnp.sum(w) + l2 * penalty


def class_balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """[N] weights ``N / (C_present * count[y])``: each present class gets the same total weight."""
    y = np.asarray(y)
    if y.size == 0:
        raise ValueError("class_balanced_weights got no labels")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be in [0, {n_classes}), got range [{y.min()}, {y.max()}]")
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = (counts > 0).sum()
    return (len(y) / (present * counts[y])).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("steps", "lr", "l2"))
def _fit(params: Params, x, y, w, *, steps: int, lr: float, l2: float) -> tuple[Params, jax.Array]:
    opt = optax.adam(lr)

    def step(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(weighted_xent)(p, x, y, w, l2)
        updates, s = opt.update(g, s, p)
        return (optax.apply_updates(p, updates), s), loss

    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params, losses


def train_head(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    hidden: int = 0,
    steps: int = 300,
    lr: float = 1e-2,
    l2: float = 1e-3,
    weights: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[Head, np.ndarray]:
    """Fits a head on x [N, D], y [N]; weights default to class balanced. -> (head, losses [steps])."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need x [N, D] and y [N]; got {x.shape} and {y.shape}")
    w = class_balanced_weights(y, n_classes) if weights is None else np.asarray(weights, np.float32)
    mean = x.mean(0)
    scale = x.std(0) + 1e-6
    params = init_head(jax.random.key(seed), x.shape[1], n_classes, hidden)
    params, losses = _fit(
        params, jnp.asarray((x - mean) / scale), jnp.asarray(y, jnp.int32), jnp.asarray(w),
        steps=steps, lr=lr, l2=l2,
    )
    return Head(params, jnp.asarray(mean), jnp.asarray(scale)), np.asarray(losses)


@jax.jit
def predict_logits(head: Head, x: jax.Array) -> jax.Array:
    """Raw features [N, D] -> logits [N, C]."""
    return head_logits(head.params, (x - head.mean) / head.scale)


def positive_score(head: Head, x: np.ndarray) -> np.ndarray:
    """Binary heads: log p(1) - log p(0) per example, [N]."""
    logits = np.asarray(predict_logits(head, jnp.asarray(x, jnp.float32)))
    if logits.shape[1] != 2:
        raise ValueError(f"positive_score needs a 2-class head, got {logits.shape[1]} classes")
    return logits[:, 1] - logits[:, 0]


def threshold_for_fpr(negative_scores: np.ndarray, target_fpr: float) -> float:
    """Smallest observed ``t`` with ``mean(negative_scores > t) <= target_fpr``."""
    s = np.sort(np.asarray(negative_scores, np.float64))[::-1]
    if s.size == 0:
        raise ValueError("threshold_for_fpr needs at least one negative score")
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    k = int(np.floor(target_fpr * s.size + 1e-9))  # negatives allowed above the threshold
    return float(s[k])


def threshold_for_groups(groups: Mapping[str, np.ndarray] | Sequence[np.ndarray], target_fpr: float) -> float:
    """The largest per-group threshold: FPR <= target in every group of negatives."""
    values = groups.values() if isinstance(groups, Mapping) else groups
    return max(threshold_for_fpr(g, target_fpr) for g in values)


def group_weights(groups: Sequence[Hashable], shares: Mapping[Hashable, float]) -> np.ndarray:
    """[N] weights giving each group its ``share`` of the total weight (mean weight 1)."""
    groups = list(groups)
    missing = sorted({str(g) for g in groups} - {str(k) for k in shares})
    if missing:
        raise ValueError(f"groups without a share: {missing}")
    counts = {g: groups.count(g) for g in set(groups)}
    total = sum(shares[g] for g in counts)
    w = np.array([shares[g] / total / counts[g] for g in groups], np.float32)
    return w * len(groups)
