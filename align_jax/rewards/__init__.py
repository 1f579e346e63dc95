"""Rewards for online RL: pure functions of (prompt record, completion text) -> float, by name.

``REWARDS`` is a :class:`align_jax.registry.Registry`: a config names rewards
(``rl.rewards = "ifeval,format"``) and weights them (``rl.reward_weights``). Verifiable rewards
read what they check from the prompt record's ``info`` (a reference answer, instruction ids).
Learned rewards are reward models named ``rm:PATH`` (``rm:PATH@min`` for an ensemble and its
aggregation rule): see :mod:`align_jax.rewards.model`. They score a whole batch in one call
(``score_batch``); the verifiable rewards score one completion at a time.

:func:`score` runs every reward on every completion. A reward that raises is recorded as a
failure for that completion (its message kept, the completion excluded from the update by the
caller): never a silent zero.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import numpy as np

from align_jax.registry import Registry
from align_jax.rewards.answers import answer_matches
from align_jax.rewards.refusal import REFUSAL_WINDOW, is_refusal

REWARDS = Registry("reward")
LEARNED_PREFIX = "rm:"  # rl.rewards = "rm:PATH": a reward model folder


@REWARDS.register("toy_letter")
def toy_letter(record: Any, completion: str) -> float:
    """Fraction of the completion's non-space characters equal to ``info["letter"]`` (0 if empty)."""
    chars = [c for c in completion if not c.isspace()]
    return sum(c == record.info["letter"] for c in chars) / len(chars) if chars else 0.0


@REWARDS.register("ifeval", paper="2311.07911")
def instruction_following(record: Any, completion: str, *, loose: bool = False) -> float:
    """Fraction of the prompt's verifiable instructions (``info["instruction_id_list"]`` /
    ``info["kwargs"]``) that the completion follows, strictly (or loosely), by the IFEval verifiers."""
    from align_jax.instructions.data import InstructionExample
    from align_jax.instructions.evaluation import evaluate_example

    info = record.info
    example = InstructionExample(info.get("key", 0), record.prompt[-1]["content"],
                                 tuple(info["instruction_id_list"]), tuple(info["kwargs"]))
    result = evaluate_example(example, completion)
    followed = result.loose if loose else result.strict
    return sum(followed) / len(followed) if followed else 0.0


@REWARDS.register("exact_match")
def exact_match(record: Any, completion: str, *, mode: str = "exact", first_line: bool = True) -> float:
    """1 if the completion states a reference answer (``info["answer"]``: a string or a list of
    accepted strings), else 0, by the factual QA checker (:func:`answers.answer_matches`:
    accents, case, punctuation, articles and thousands separators ignored, numbers compared by
    value); ``mode="contains"`` also accepts the answer as a whole-word span of a longer reply.
    With ``first_line`` only the first non-empty line is judged."""
    answers = record.info["answer"]
    answers = [answers] if isinstance(answers, str) else [str(a) for a in answers]
    text = completion.strip()
    if first_line:
        text = next((line for line in text.splitlines() if line.strip()), "")
    return float(answer_matches(text, answers, mode=mode))


@REWARDS.register("format")
def format_match(record: Any, completion: str, *, pattern: str = r"(?s)^\S.*\S$") -> float:
    """1 if the whole completion matches the regular expression ``pattern`` (default: non-empty,
    no leading or trailing whitespace), else 0."""
    return float(re.fullmatch(pattern, completion) is not None)


def _check_refusal_precision(*, window: int, over_refusal: float) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"refusal_precision: window must be an integer >= 1 (characters), got {window!r}")
    if not over_refusal < 1.0:  # also rejects NaN
        raise ValueError(f"refusal_precision: over_refusal must be < 1 (the reward for answering a benign prompt), "
                         f"got {over_refusal!r}")


@REWARDS.register("refusal_precision", paper="2507.14987", validate=_check_refusal_precision)
def refusal_precision(record: Any, completion: str, *, window: int = REFUSAL_WINDOW,
                      over_refusal: float = -1.0) -> float:
    """1 for refusing a harmful prompt or answering a benign one, 0 for answering a harmful one,
    ``over_refusal`` (-1) for refusing a benign one; ``info["harmful"]`` (bool) says which prompt it is.

    A verifiable safety reward after AlphaAlign (arXiv:2507.14987), whose safety reward rewards
    refusing harmful prompts and penalizes over-refusal; here without its reasoning format or its
    helpfulness reward (add a helpfulness reward, e.g. ``rm:PATH``, beside it in ``rl.rewards``).
    A reply refuses when a refusal phrase (:mod:`align_jax.rewards.refusal`, the phrase list of the
    substring judge) starts within its first ``window`` characters. The penalty is asymmetric on
    purpose: refusing a benign request that only sounds sensitive is the failure precise refusal is
    about, while an answer to a harmful prompt simply earns nothing. An empty (whitespace-only)
    completion neither refuses nor answers: 0 for either kind of prompt.
    """
    info = record.info
    if "harmful" not in info:
        raise KeyError(f"refusal_precision needs info['harmful'] (bool: is the prompt harmful?); "
                       f"this record's info has keys {sorted(info)}")
    harmful = info["harmful"]
    if not isinstance(harmful, bool):
        raise TypeError(f"info['harmful'] must be a bool, got {harmful!r}")
    if not completion.strip():
        return 0.0
    refused = is_refusal(completion, window)
    if harmful:
        return 1.0 if refused else 0.0
    return float(over_refusal) if refused else 1.0


@dataclasses.dataclass
class Scores:
    """Rewards of N completions under K named rewards."""

    names: tuple[str, ...]
    values: np.ndarray  # [N, K] float32; NaN where the reward failed
    failed: np.ndarray  # [N, K] bool
    errors: list[str]  # one message per failure ("reward 'x' on completion i: ...")

    def total(self, weights: Sequence[float], combine: str = "sum") -> np.ndarray:  # [N] float32; NaN where a weighted one failed
        """``sum_k w_k r_k``, or with ``combine="min"`` the worst weighted reward ``min_k w_k r_k``: with one
        reward model per group of annotators, the MaxMin-RLHF objective (arXiv:2402.08925).

        A reward of weight 0 is watched, not used: it is left out of the sum and the minimum, so
        neither its value nor its failure (NaN) reaches the total."""
        used = _used(weights, len(self.names))
        weighted = np.asarray(self.values, np.float64)[:, used] * np.asarray(weights, np.float64)[used]  # [N, K']
        if combine == "sum":
            return weighted.sum(axis=1).astype(np.float32)
        if combine == "min":
            return weighted.min(axis=1).astype(np.float32)  # NaN propagates, as for the sum
        raise ValueError(f"combine must be 'sum' or 'min', got {combine!r}")

    @property
    def ok(self) -> np.ndarray:  # [N] bool: every reward succeeded
        return ~self.failed.any(axis=1)

    def ok_under(self, weights: Sequence[float]) -> np.ndarray:  # [N] bool
        """Every reward of nonzero weight succeeded (a watched, weight-0 reward may fail)."""
        return ~self.failed[:, _used(weights, len(self.names))].any(axis=1)


def _used(weights: Sequence[float], k: int) -> np.ndarray:  # [K] bool
    w = np.asarray(weights, np.float64)
    if w.shape != (k,):
        raise ValueError(f"{w.size} weights for {k} rewards")
    if not (w != 0).any():
        raise ValueError(f"every reward weight is 0 ({list(weights)}): nothing to optimise")
    return w != 0


def build(names: Sequence[str], options: dict[str, dict] | None = None) -> list[Callable[[Any, str], float]]:
    """The named rewards with their options bound (unknown names or options raise at once).

    ``rm:PATH`` is a reward model (its head and config are checked now, its weights load on first use).
    """
    if not names:
        raise ValueError(f"no reward named; valid rewards: {', '.join(REWARDS.names())}, or rm:PATH")
    options = options or {}
    fns = []
    for name in names:
        if name.startswith(LEARNED_PREFIX):
            from align_jax.rewards.model import LazyRewardModel

            fns.append(LazyRewardModel(name[len(LEARNED_PREFIX):], **options.get(name, {})))
        else:
            fns.append(REWARDS.build(name, **options.get(name, {})))
    return fns


def score(names: Sequence[str], fns: Sequence[Callable], records: Sequence[Any], completions: Sequence[str]) -> Scores:
    """Every reward on every (record, completion); failures are recorded, not zeroed.

    A reward with a ``score_batch(records, completions) -> [N]`` method (a reward model) scores the
    batch in one call; if that call raises, every completion fails for that reward.
    """
    if len(records) != len(completions):
        raise ValueError(f"{len(records)} records but {len(completions)} completions")
    values = np.full((len(completions), len(fns)), np.nan, np.float32)
    failed = np.zeros(values.shape, bool)
    errors = []
    for k, fn in enumerate(fns):
        if hasattr(fn, "score_batch"):
            try:
                column = np.asarray(fn.score_batch(records, completions), np.float32)
                if column.shape != (len(completions),):
                    raise ValueError(f"score_batch returned shape {column.shape}, expected ({len(completions)},)")
            except Exception as e:  # noqa: BLE001 - a failed batch fails each of its completions
                failed[:, k] = True
                errors.append(f"reward {names[k]!r} on all {len(completions)} completions: {type(e).__name__}: {e}")
                continue
            bad = ~np.isfinite(column)
            values[:, k] = np.where(bad, np.nan, column)
            failed[:, k] = bad
            errors += [f"reward {names[k]!r} on completion {i}: non-finite reward {column[i]}" for i in np.flatnonzero(bad)]
            continue
        for i, (record, text) in enumerate(zip(records, completions)):
            try:
                value = float(fn(record, text))
                if not np.isfinite(value):
                    raise ValueError(f"non-finite reward {value}")
                values[i, k] = value
            except Exception as e:  # noqa: BLE001 - any reward bug is recorded per example
                failed[i, k] = True
                errors.append(f"reward {names[k]!r} on completion {i}: {type(e).__name__}: {e}")
    return Scores(tuple(names), values, failed, errors)
