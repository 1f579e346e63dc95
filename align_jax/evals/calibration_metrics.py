"""Calibration metrics over host arrays: ECE, MCE, Brier, AUROC, reliability tables.

Inputs everywhere are ``confidences [N]`` (the model's probability that its answer is
right, in [0, 1]) and ``correct [N]`` (bool, or 0/1: whether the answer was right).

Binning schemes (``scheme=``):
  * ``"equal_width"``: bins ``[k/B, (k+1)/B)``, the last one closed at 1.0. Empty bins are
    kept in the table (count 0, NaN means) and contribute nothing to ECE/MCE.
  * ``"equal_mass"`` (adaptive): examples sorted by confidence and cut into B contiguous
    groups whose sizes differ by at most one. Needs N >= B. Bounds are the midpoints
    between neighbouring groups (first bin starts at 0.0, last ends at 1.0).

What the numbers mean: ECE is the count-weighted mean of |accuracy - mean confidence| over
bins (0 = calibrated); MCE the worst bin's gap; Brier the mean squared error of the
confidence as a probability of being right; AUROC the chance that a random correct answer
gets a higher confidence than a random wrong one (ties count 1/2), i.e. how well the
confidence *ranks* answers, independently of calibration.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

BinScheme = Literal["equal_width", "equal_mass"]
BIN_SCHEMES: tuple[str, ...] = BinScheme.__args__  # type: ignore[attr-defined]
DEFAULT_N_BINS = 15


def validate_inputs(confidences: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """Returns (confidences [N] float64, correct [N] bool) or raises ValueError."""
    conf = np.asarray(confidences, dtype=np.float64)
    corr = np.asarray(correct)
    if conf.ndim != 1 or corr.ndim != 1:
        raise ValueError(
            f"confidences and correct must be 1-D, got shapes {conf.shape} and {corr.shape}"
        )
    if conf.shape[0] != corr.shape[0]:
        raise ValueError(
            f"length mismatch: {conf.shape[0]} confidences vs {corr.shape[0]} correctness labels"
        )
    if conf.shape[0] == 0:
        raise ValueError("empty input: need at least one (confidence, correct) pair")
    if not np.all(np.isfinite(conf)):
        raise ValueError("confidences contain NaN or inf")
    bad = (conf < 0.0) | (conf > 1.0)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(
            f"confidences must lie in [0, 1]; {int(bad.sum())} do not (first: index {i}, value {conf[i]!r})"
        )
    if corr.dtype != np.bool_:
        if not np.all((corr == 0) | (corr == 1)):
            raise ValueError("correct must be bool or 0/1 values")
        corr = corr.astype(bool)
    return conf, corr


@dataclasses.dataclass(frozen=True)
class ReliabilityTable:
    """Per-bin statistics; every array is [n_bins]. Empty bins have NaN means."""

    scheme: str
    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray  # int
    mean_confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def n_bins(self) -> int:
        return int(self.count.shape[0])

    @property
    def n(self) -> int:
        return int(self.count.sum())

    @property
    def gap(self) -> np.ndarray:
        """accuracy - mean_confidence per bin (negative = overconfident); NaN when empty."""
        return self.accuracy - self.mean_confidence

    def rows(self) -> list[dict[str, float]]:
        return [
            {
                "lower": float(self.lower[k]),
                "upper": float(self.upper[k]),
                "count": int(self.count[k]),
                "mean_confidence": float(self.mean_confidence[k]),
                "accuracy": float(self.accuracy[k]),
            }
            for k in range(self.n_bins)
        ]


def _bin_assignment(
    conf: np.ndarray, n_bins: int, scheme: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (bin index [N], lower [B], upper [B])."""
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if scheme == "equal_width":
        edges = np.arange(n_bins + 1) / n_bins  # k/B correctly rounded (linspace is not)
        # Number of interior edges <= c: bins are [lo, hi), the last one closed at 1.0.
        index = np.searchsorted(edges[1:-1], conf, side="right")
        return index, edges[:-1], edges[1:]
    if scheme == "equal_mass":
        n = conf.shape[0]
        if n < n_bins:
            raise ValueError(f"equal_mass binning needs at least n_bins={n_bins} examples, got {n}")
        order = np.argsort(conf, kind="stable")
        index = np.empty(n, dtype=np.int64)
        groups = np.array_split(order, n_bins)
        for k, members in enumerate(groups):
            index[members] = k
        sorted_conf = conf[order]
        ends = np.cumsum([len(g) for g in groups])  # exclusive end positions
        cuts = 0.5 * (sorted_conf[ends[:-1] - 1] + sorted_conf[ends[:-1]])
        lower = np.concatenate([[0.0], cuts])
        upper = np.concatenate([cuts, [1.0]])
        return index, lower, upper
    raise ValueError(f"unknown bin scheme {scheme!r}; expected one of {BIN_SCHEMES}")


def reliability_table(
    confidences: Any,
    correct: Any,
    *,
    n_bins: int = DEFAULT_N_BINS,
    scheme: BinScheme = "equal_width",
) -> ReliabilityTable:
    """Bins confidences [N] and reports count, mean confidence and accuracy per bin."""
    conf, corr = validate_inputs(confidences, correct)
    index, lower, upper = _bin_assignment(conf, n_bins, scheme)
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=conf, minlength=n_bins)
    corr_sum = np.bincount(index, weights=corr.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        acc = np.where(count > 0, corr_sum / count, np.nan)
    return ReliabilityTable(scheme, lower, upper, count, mean_conf, acc)


def ece_from_table(table: ReliabilityTable) -> float:
    """Count-weighted mean |accuracy - mean confidence| over non-empty bins."""
    filled = table.count > 0
    weights = table.count[filled] / table.count.sum()
    return float(np.sum(weights * np.abs(table.gap[filled])))


def mce_from_table(table: ReliabilityTable) -> float:
    """Largest |accuracy - mean confidence| over non-empty bins."""
    return float(np.max(np.abs(table.gap[table.count > 0])))


def expected_calibration_error(
    confidences: Any,
    correct: Any,
    *,
    n_bins: int = DEFAULT_N_BINS,
    scheme: BinScheme = "equal_width",
) -> float:
    return ece_from_table(reliability_table(confidences, correct, n_bins=n_bins, scheme=scheme))


def maximum_calibration_error(
    confidences: Any,
    correct: Any,
    *,
    n_bins: int = DEFAULT_N_BINS,
    scheme: BinScheme = "equal_width",
) -> float:
    return mce_from_table(reliability_table(confidences, correct, n_bins=n_bins, scheme=scheme))


def ece_sampling_floor(
    confidences: Any,
    *,
    n_bins: int = DEFAULT_N_BINS,
    scheme: BinScheme = "equal_width",
    n_draws: int = 1000,
    seed: int = 0,
) -> float:
    """Mean ECE of a perfectly calibrated model with these confidences [N]: outcomes drawn as
    ``correct ~ Bernoulli(confidence)`` ``n_draws`` times. Binned ECE is biased upwards on finite
    samples (each bin's accuracy is a noisy mean), so this is the ECE that sampling noise alone
    gives at this N and confidence spread: measured ECEs near it cannot be told from calibrated.
    """
    conf, _ = validate_inputs(confidences, np.zeros(np.shape(confidences), bool))
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    index, _, _ = _bin_assignment(conf, n_bins, scheme)
    conf_sum = np.bincount(index, weights=conf, minlength=n_bins)
    draws = np.random.default_rng(seed).random((n_draws, conf.shape[0])) < conf  # [D, N]
    hits = np.stack([np.bincount(index, weights=d.astype(np.float64), minlength=n_bins) for d in draws])
    return float(np.mean(np.abs(hits - conf_sum).sum(axis=1) / conf.shape[0]))


def brier_score(confidences: Any, correct: Any) -> float:
    """mean((confidence - correct)^2): 0 is perfect, 0.25 is a constant 0.5."""
    conf, corr = validate_inputs(confidences, correct)
    return float(np.mean((conf - corr) ** 2))


def accuracy(correct: Any) -> float:
    corr = np.asarray(correct)
    if corr.ndim != 1 or corr.shape[0] == 0:
        raise ValueError(f"correct must be a non-empty 1-D array, got shape {corr.shape}")
    return float(np.mean(corr.astype(np.float64)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x [N]; tied values share the mean of their ranks."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # rank of each distinct value's first copy
    return (first_rank + (counts - 1) / 2.0)[inverse]


def auroc(confidences: Any, correct: Any) -> float:
    """P(conf of a random correct answer > conf of a random wrong one), ties counted 1/2.

    Computed with the Mann-Whitney rank-sum in O(N log N). Raises ValueError when all
    answers are correct or all are wrong (AUROC is undefined then).
    """
    conf, corr = validate_inputs(confidences, correct)
    n_pos = int(corr.sum())
    n_neg = corr.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"AUROC needs both correct and wrong answers; got {n_pos} correct, {n_neg} wrong"
        )
    ranks = _average_ranks(conf)
    u = ranks[corr].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclasses.dataclass(frozen=True)
class CalibrationReport:
    """Headline calibration numbers with the binning that produced them."""

    scheme: str
    n_bins: int
    n: int
    accuracy: float
    mean_confidence: float
    ece: float
    mce: float
    brier: float
    auroc: float | None  # None when every answer is correct or every answer is wrong

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def calibration_report(
    confidences: Any,
    correct: Any,
    *,
    n_bins: int = DEFAULT_N_BINS,
    scheme: BinScheme = "equal_width",
) -> CalibrationReport:
    conf, corr = validate_inputs(confidences, correct)
    table = reliability_table(conf, corr, n_bins=n_bins, scheme=scheme)
    both_classes = 0 < int(corr.sum()) < corr.shape[0]
    return CalibrationReport(
        scheme=scheme,
        n_bins=int(n_bins),
        n=int(conf.shape[0]),
        accuracy=accuracy(corr),
        mean_confidence=float(conf.mean()),
        ece=ece_from_table(table),
        mce=mce_from_table(table),
        brier=brier_score(conf, corr),
        auroc=auroc(conf, corr) if both_classes else None,
    )
