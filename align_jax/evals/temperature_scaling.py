"""Post-hoc recalibration of binary confidences: temperature scaling and Platt scaling.

Both act on the logit of the confidence, ``z = log(p / (1 - p))``, and are fitted by maximum
likelihood (log loss) on a held-out split:

* temperature scaling (Guo et al. 2017, arXiv:1706.04599): ``p' = sigmoid(z / T)``, one
  parameter; it keeps the ranking (AUROC) and can only sharpen or flatten around 0.5;
* Platt scaling: ``p' = sigmoid(a z + b)``; the bias ``b`` also moves the mean confidence.

The log loss is convex in ``(1/T)`` and in ``(a, b)`` (logistic regression on ``z``), so a
damped Newton method finds the optimum; float64 numpy, deterministic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-6


def confidence_logit(confidences: Any) -> np.ndarray:
    p = np.clip(np.asarray(confidences, np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _log_loss(w: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float) -> float:
    s = x @ w
    return float(np.mean(np.logaddexp(0.0, s) - y * s) + 0.5 * l2 * w @ w)


def fit_logistic(
    features: np.ndarray,  # [N, D]
    labels: np.ndarray,  # [N] in {0, 1}
    init: np.ndarray,  # [D]
    *,
    l2: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> np.ndarray:  # [D] weights minimising the mean log loss (+ a tiny ridge for separable data)
    x, y = np.asarray(features, np.float64), np.asarray(labels, np.float64)
    w = np.asarray(init, np.float64).copy()
    loss = _log_loss(w, x, y, l2)
    for _ in range(max_iter):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) / len(y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(y) + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:  # backtracking: never increase the loss
            new = _log_loss(w - t * step, x, y, l2)
            if new <= loss:
                break
            t *= 0.5
        w, improvement = w - t * step, loss - new
        loss = new
        if improvement < tol:
            break
    return w


def fit_temperature(confidences: Any, correct: Any) -> float:
    """The temperature T > 0 minimising the log loss of ``sigmoid(logit(p) / T)``."""
    z = confidence_logit(confidences)[:, None]
    (inv_t,) = fit_logistic(z, np.asarray(correct, np.float64), np.ones(1))
    return float(1.0 / max(inv_t, 1e-3))  # a non-positive slope (conf anti-correlated) caps at T = 1000


def apply_temperature(confidences: Any, temperature: float) -> np.ndarray:
    return _sigmoid(confidence_logit(confidences) / temperature)


def fit_platt(confidences: Any, correct: Any) -> tuple[float, float]:
    """(a, b) minimising the log loss of ``sigmoid(a logit(p) + b)``."""
    z = confidence_logit(confidences)
    x = np.stack([z, np.ones_like(z)], axis=1)
    a, b = fit_logistic(x, np.asarray(correct, np.float64), np.array([1.0, 0.0]))
    return float(a), float(b)


def apply_platt(confidences: Any, a: float, b: float) -> np.ndarray:
    return _sigmoid(a * confidence_logit(confidences) + b)
