"""IFEval (Zhou et al. 2023): greedy responses to the prompts of ``input_data.jsonl``.

Reports the four numbers of the paper: prompt-level and instruction-level accuracy, strict
and loose (``instructions.evaluate_responses``). Instruction-level CIs resample prompts, so
the instructions of one prompt stay together. An empty response fails all of its
instructions and is recorded as ``"empty generation"``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from align_jax.evals import runner
from align_jax.evals.config import EvalConfig
from align_jax.instructions import InstructionExample, evaluate_responses, load_ifeval


@dataclasses.dataclass(frozen=True)
class Config(EvalConfig):
    data_path: str  # IFEval's input_data.jsonl, absolute or relative to the repository root
    max_new_tokens: int


def respond_and_score(
    lm, examples: Sequence[InstructionExample], *, max_new_tokens: int, batch_size: int, progress: bool,
    desc: str = "ifeval responses",
) -> tuple[list[dict], dict[str, runner.Rate]]:
    """Greedy responses scored by the IFEval verifiers: per-example records and the four rates."""
    prompts = [runner.chat_prompt_ids(lm, e.prompt) for e in examples]
    gens = runner.generate_greedy(lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  progress=progress, desc=desc)
    report = evaluate_responses(examples, [g.text for g in gens])
    records = [{
        "key": r.key, "prompt": r.prompt, "response": r.response,
        "instruction_id_list": list(r.instruction_id_list), "strict": list(r.strict),
        "loose": list(r.loose), "errors": list(r.errors),
        "follow_all_strict": r.follow_all_strict, "follow_all_loose": r.follow_all_loose,
        "truncated": not g.stopped,
        "failure": None if r.failure is None else runner.EMPTY_GENERATION,
    } for r, g in zip(report.examples, gens)]
    ones = np.ones(len(records))
    count = np.array([len(r.strict) for r in report.examples], np.float64)
    rates = {
        "prompt_level_strict": runner.Rate(np.array([r.follow_all_strict for r in report.examples], float), ones),
        "prompt_level_loose": runner.Rate(np.array([r.follow_all_loose for r in report.examples], float), ones),
        "instruction_level_strict": runner.Rate(np.array([sum(r.strict) for r in report.examples], float), count),
        "instruction_level_loose": runner.Rate(np.array([sum(r.loose) for r in report.examples], float), count),
    }
    return records, rates


def run(lm, cfg, *, progress: bool) -> runner.SuiteResult:
    path = runner.resolve_data_path(cfg.data_path, "IFEval input_data.jsonl")
    examples = runner.take(load_ifeval(path), int(cfg.limit))
    records, rates = respond_and_score(lm, examples, max_new_tokens=int(cfg.max_new_tokens),
                                       batch_size=int(cfg.batch_size), progress=progress)
    return runner.SuiteResult(examples=records, rates=rates, settings={"data_path": str(path)})
