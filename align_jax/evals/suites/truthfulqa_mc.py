"""TruthfulQA multiple choice (one correct answer per question) scored by option log-probs.

Each option is the continuation ``" <answer>"`` of ``"Q: <question>\\nA:"`` (plain text, no
chat template; ``truthfulqa.mc_scoring_pairs``). Its score is the summed (``sum``) or mean
(``mean``, length-normalised) token log-prob from one teacher-forced pass; the prediction is
the argmax and the confidence its softmax probability over the options. Both scorings are
reported as calibration sources (accuracy, ECE, MCE, Brier, AUROC, reliability diagram).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from align_jax.evals import runner
from align_jax.evals.config import EvalConfig
from align_jax.evals.confidence import choose_option
from align_jax.evals.truthfulqa import format_mc_prompt, load_truthfulqa, mc_scoring_pairs

SCORINGS = {"sum": False, "mean": True}  # source name -> length_normalized


@dataclasses.dataclass(frozen=True)
class Config(EvalConfig):  # seed: choice shuffling and bootstrap
    data_path: str  # TruthfulQA.csv, absolute or relative to the repository root
    bucket: int  # scoring widths are rounded up to a multiple of this (fewer compiles)
    n_bins: int  # equal-width ECE/MCE bins; equal-mass uses min(n_bins, n)


def option_logprobs(lm, items, *, batch_size: int, bucket: int = 64, progress: bool = False,
                    intervention=None) -> list[list[np.ndarray]]:
    """Per item, each option's per-token log-probs [T_k] (``intervention``: steer the scoring)."""
    tok = lm.tokenizer
    pairs, owner = [], []
    for k, item in enumerate(items):
        for prompt, continuation in mc_scoring_pairs(item):
            pairs.append((tok.encode(prompt, add_special_tokens=True), tok.encode(continuation)))
            owner.append(k)
    logps = runner.continuation_logprobs(lm, pairs, batch_size=batch_size, bucket=bucket, progress=progress,
                                         desc="truthfulqa options", intervention=intervention)
    per_item: list[list[np.ndarray]] = [[] for _ in items]
    for k, lp in zip(owner, logps):
        per_item[k].append(lp)
    return per_item


def run(lm, cfg, *, progress: bool) -> runner.SuiteResult:
    path = runner.resolve_data_path(cfg.data_path, "TruthfulQA CSV")
    items = runner.take(load_truthfulqa(path, seed=int(cfg.seed)), int(cfg.limit))
    per_item = option_logprobs(lm, items, batch_size=int(cfg.batch_size), bucket=int(cfg.bucket), progress=progress)
    num_options = sum(len(p) for p in per_item)

    examples, conf = [], {s: [] for s in SCORINGS}
    correct = {s: [] for s in SCORINGS}
    for item, option_logps in zip(items, per_item):
        record = {"row": item.row, "question": item.question, "prompt": format_mc_prompt(item.question),
                  "choices": list(item.choices),
                  "correct_index": item.correct_index, "category": item.category,
                  "sum_logprobs": [float(lp.sum()) for lp in option_logps],
                  "mean_logprobs": [float(lp.mean()) for lp in option_logps],
                  "num_tokens": [int(lp.size) for lp in option_logps]}
        for source, normalized in SCORINGS.items():
            choice = choose_option(option_logps, length_normalized=normalized)
            record[f"{source}_chosen"] = choice.index
            record[f"{source}_confidence"] = choice.probability
            record[f"{source}_correct"] = choice.index == item.correct_index
            conf[source].append(choice.probability)
            correct[source].append(choice.index == item.correct_index)
        record["failure"] = None
        examples.append(record)
    return runner.SuiteResult(
        examples=examples,
        calibration={s: (np.asarray(conf[s]), np.asarray(correct[s])) for s in SCORINGS},
        settings={"data_path": str(path), "num_options": num_options},
    )
