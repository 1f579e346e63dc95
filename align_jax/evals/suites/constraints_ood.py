"""The project's generated multi-constraint prompts: in-distribution vs each OOD split.

``instructions.generate(split, limit, seed=seed)`` prompts per split (``cfg.splits``), greedy
responses, and per split ``<split>/instruction_level_strict`` and ``<split>/prompt_level_strict``
(CIs resample prompts). All splits are generated in one pass (one compiled program).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from align_jax.evals import runner
from align_jax.evals.config import EvalConfig
from align_jax.evals.suites.ifeval import respond_and_score
from align_jax.instructions import SPLITS, generate

REPORTED = ("instruction_level_strict", "prompt_level_strict")


@dataclasses.dataclass(frozen=True)
class Config(EvalConfig):  # limit: prompts per split (> 0)
    splits: tuple[str, ...]  # a non-empty subset of align_jax.instructions.SPLITS
    max_new_tokens: int


def run(lm, cfg, *, progress: bool) -> runner.SuiteResult:
    splits = list(cfg.splits)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}; got {splits}")
    if int(cfg.limit) < 1:
        raise ValueError(f"constraints_ood needs limit >= 1 prompts per split, got {cfg.limit}")
    examples, split_of = [], []
    for split in splits:
        generated = generate(split, int(cfg.limit), seed=int(cfg.seed))
        examples += generated
        split_of += [split] * len(generated)
    records, rates = respond_and_score(lm, examples, max_new_tokens=int(cfg.max_new_tokens),
                                       batch_size=int(cfg.batch_size), progress=progress,
                                       desc="constraint responses")
    split_of = np.array(split_of)
    per_split = {}
    for split in splits:
        rows = split_of == split
        for level in REPORTED:
            per_split[f"{split}/{level}"] = runner.Rate(rates[level].successes[rows], rates[level].trials[rows])
    for record, split in zip(records, split_of):
        record["split"] = str(split)
    return runner.SuiteResult(examples=records, rates=per_split,
                              settings={"prompts_per_split": int(cfg.limit)})
