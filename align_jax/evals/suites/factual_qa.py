"""Short factual answers (the project's generated QA set) with two confidence sources.

The question is one chat user turn (``QUESTION_PROMPT``); the greedy completion's first
non-empty line is the answer, checked with ``factual_qa.answer_matches(mode=match_mode)``.
Confidence sources (each a calibration report and reliability diagram):

* ``seq_prob``: ``exp(mean log-prob)`` of the completion's tokens under the model (the
  sampler's ``model_logprobs``, stop token excluded; if the completion is only a stop token,
  that token's probability);
* ``p_true``: the model is shown question and answer (``P_TRUE_PROMPT``) and
  ``p("True") / (p("True") + p("False"))`` is read off a teacher-forced pass.

An empty answer is a failure record (``"empty generation"``) counted as wrong.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from align_jax.data.factual_qa import FactItem, split_factual_qa
from align_jax.evals import runner
from align_jax.evals.config import EvalConfig
from align_jax.evals.confidence import p_true
from align_jax.evals.factual_qa import answer_matches

QUESTION_PROMPT = "Answer the question with a short answer only, no explanation.\nQuestion: {question}"
P_TRUE_PROMPT = ("Question: {question}\nProposed answer: {answer}\n"
                 "Is the proposed answer true or false? Reply with one word: True or False.")


@dataclasses.dataclass(frozen=True)
class Config(EvalConfig):
    split: str  # train / validation / test of data.factual_qa.split_factual_qa
    split_seed: int
    max_new_tokens: int
    match_mode: str  # "exact" or "contains" (answer_matches)
    bucket: int  # P(True) scoring widths round up to a multiple of this
    n_bins: int


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def answer_record(item: FactItem, gen: runner.Generation, match_mode: str) -> dict:
    """Correctness and sequence-probability confidence of one generation (JSON-able)."""
    answer = first_line(gen.text)
    logps = gen.answer_logprobs if gen.answer_logprobs.size else gen.logprobs
    return {
        "id": item.id, "category": item.category, "prompt": QUESTION_PROMPT.format(question=item.question),
        "reference": item.answer, "response": gen.text, "answer": answer,
        "correct": bool(answer) and answer_matches(answer, item, mode=match_mode),
        "seq_prob": float(np.exp(logps.mean())) if logps.size else 0.0,
        "num_tokens": len(gen.token_ids), "truncated": not gen.stopped,
        "failure": None if answer else runner.EMPTY_GENERATION,
    }


def run(lm, cfg, *, progress: bool) -> runner.SuiteResult:
    items = runner.take(split_factual_qa(seed=int(cfg.split_seed))[cfg.split], int(cfg.limit))
    bs = int(cfg.batch_size)
    prompts = [runner.chat_prompt_ids(lm, QUESTION_PROMPT.format(question=it.question)) for it in items]
    gens = runner.generate_greedy(lm, prompts, max_new_tokens=int(cfg.max_new_tokens), batch_size=bs,
                                  progress=progress, desc="factual_qa answers")
    examples = [answer_record(it, g, cfg.match_mode) for it, g in zip(items, gens)]

    tok = lm.tokenizer
    true_ids, false_ids = tok.encode("True"), tok.encode("False")
    pairs = []
    for it, e in zip(items, examples):
        e["p_true_prompt"] = P_TRUE_PROMPT.format(question=it.question, answer=e["answer"])
        ids = runner.chat_prompt_ids(lm, e["p_true_prompt"])
        pairs += [(ids, true_ids), (ids, false_ids)]
    logps = runner.continuation_logprobs(lm, pairs, batch_size=bs, bucket=int(cfg.bucket),
                                         progress=progress, desc="factual_qa P(True)")
    for k, e in enumerate(examples):
        e["p_true"] = p_true(logps[2 * k], logps[2 * k + 1])

    correct = np.array([e["correct"] for e in examples])
    return runner.SuiteResult(
        examples=examples,
        calibration={s: (np.array([e[s] for e in examples]), correct) for s in ("seq_prob", "p_true")},
        settings={"question_prompt": QUESTION_PROMPT, "p_true_prompt": P_TRUE_PROMPT},
    )
