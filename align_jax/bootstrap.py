"""Percentile bootstrap confidence intervals for metrics over examples.

A metric is any ``fn(*arrays) -> float`` whose arrays share a leading example axis [N]
(e.g. ``expected_calibration_error(confidences, correct)``). Each resample draws N
example indices with replacement (the same indices for every array, so pairs stay
together); the interval is the (alpha/2, 1 - alpha/2) percentiles of the resampled metric.

``vectorized=True`` calls the metric once on arrays with an extra leading resample axis
[R, N, ...] and expects [R] back (e.g. ``lambda c, y: (c - y).__pow__(2).mean(-1)``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np


class BootstrapCI(NamedTuple):
    point: float  # the metric on the full data
    low: float
    high: float


def bootstrap_ci(
    metric_fn: Callable[..., Any],
    *arrays: Any,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
    vectorized: bool = False,
) -> BootstrapCI:
    """Returns (point, low, high) for metric_fn over the examples in ``arrays``."""
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array of examples")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = arrays[0].shape[0] if arrays[0].ndim else 0
    for a in arrays:
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(
                f"all arrays need the same leading length; got shapes {[x.shape for x in arrays]}"
            )
    if n == 0:
        raise ValueError("bootstrap_ci got empty arrays")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")

    point = float(metric_fn(*arrays))
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, size=(n_resamples, n))  # [R, N]
    if vectorized:
        stats = np.asarray(metric_fn(*(a[indices] for a in arrays)), dtype=np.float64)
        if stats.shape != (n_resamples,):
            raise ValueError(
                f"vectorized metric must return shape ({n_resamples},), got {stats.shape}"
            )
    else:
        stats = np.array([float(metric_fn(*(a[idx] for a in arrays))) for idx in indices])
    alpha = 1.0 - confidence_level
    low, high = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return BootstrapCI(point, float(low), float(high))
