"""Answers to factual questions and the confidence a model states for them, read from logits.

* ``answer_items``: greedy answers under ``CONFIDENCE_PROMPT`` (first non-empty line), graded with
  ``factual_qa.answer_matches``, with the sequence-probability confidence ``exp(mean log-prob)``.
* ``read_confidence``: a teacher-forced pass over ``prompt + answer + "\\nConfidence: "``; the
  distribution over the 10 digit tokens at the next position (renormalised over them) gives the
  expected confidence ``sum_d p(d) d / 9``. ``token_mass`` is the share of the full-vocabulary
  probability on the digits (low: the model would not write a digit there). The token ids are
  those the calibration task trains on (same text, same tokenization, cut before the digit).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.data.factual_qa import FactItem
from align_jax.data.tokenization import completion_text
from align_jax.data.verbalized_confidence import (
    CONFIDENCE_PROMPT,
    confidence_token_ids,
    confidence_values,
    with_confidence,
)
from align_jax.evals import runner
from align_jax.evals.factual_qa import answer_matches
from align_jax.evals.suites.factual_qa import first_line
from align_jax.models.registry import LoadedModel

NO_ANSWER = "(no answer)"  # stands in for an empty generation (graded wrong)


def answer_items(
    lm: LoadedModel,
    items: Sequence[FactItem],
    *,
    max_new_tokens: int,
    batch_size: int,
    match_mode: str = "contains",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One JSON-able record per item: prompt, answer, correct (0/1), seq_prob and the raw response."""
    prompts = [CONFIDENCE_PROMPT.format(question=it.question) for it in items]
    gens = runner.generate_greedy(lm, [runner.chat_prompt_ids(lm, p) for p in prompts],
                                  max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                                  desc="answers")
    out = []
    for it, prompt, gen in zip(items, prompts, gens):
        answer = first_line(gen.text)
        logps = gen.answer_logprobs if gen.answer_logprobs.size else gen.logprobs
        out.append({
            "id": it.id, "category": it.category, "prompt": prompt, "reference": it.answer,
            "response": gen.text, "answer": answer or NO_ANSWER,
            "correct": int(bool(answer) and answer_matches(answer, it, mode=match_mode)),
            "seq_prob": float(np.exp(logps.mean())) if logps.size else 0.0,
            "truncated": not gen.stopped,
        })
    return out


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _last_logits(state, tokens, mask, *, graphdef):  # left-padded [B, W] -> [B, V] float32
    model = nnx.merge(graphdef, state)
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)
    return model(tokens, positions, mask).logits[:, -1].astype(jnp.float32)


def confidence_context_ids(lm: LoadedModel, prompt: str, answer: str, conf_ids: np.ndarray) -> list[int]:
    """Token ids of the chat prompt plus the assistant text up to (not including) the digit."""
    completion = lm.tokenizer.encode(completion_text(with_confidence(answer), lm.chat_template))
    digit_at = max(i for i, t in enumerate(completion) if t in set(conf_ids.tolist()))
    return runner.chat_prompt_ids(lm, prompt) + completion[:digit_at]


def bucket_confidence(
    digit_logits: np.ndarray,  # [N, K] logits of the K confidence tokens
    values: np.ndarray,  # [K] probability each token states
) -> tuple[np.ndarray, np.ndarray]:  # expected confidence [N], probabilities [N, K]
    z = np.asarray(digit_logits, np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p @ np.asarray(values, np.float64), p


def read_confidence(
    lm: LoadedModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int,
    bucket: int = 32,
) -> dict[str, np.ndarray]:
    """``expected`` [N], ``probs`` [N, 10] and ``token_mass`` [N] of the stated confidence."""
    conf_ids = confidence_token_ids(lm.tokenizer)
    rows = [confidence_context_ids(lm, p, a, conf_ids) for p, a in zip(prompts, answers)]
    pad_id = lm.tokenizer.pad_id or 0
    graphdef, state = nnx.split(lm.model)
    width = -(-max(len(r) for r in rows) // bucket) * bucket
    digit_logits, mass = np.zeros((len(rows), len(conf_ids))), np.zeros(len(rows))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        tokens = np.full((batch_size, width), pad_id, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        for j in range(batch_size):
            r = chunk[min(j, len(chunk) - 1)]
            tokens[j, width - len(r):], mask[j, width - len(r):] = r, 1
        logits = np.asarray(_last_logits(state, tokens, mask, graphdef=graphdef), np.float64)[: len(chunk)]
        full = logits.max(-1) + np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
        sub = logits[:, conf_ids]
        part = sub.max(-1) + np.log(np.exp(sub - sub.max(-1, keepdims=True)).sum(-1))
        digit_logits[start:start + len(chunk)] = sub
        mass[start:start + len(chunk)] = np.exp(part - full)
    expected, probs = bucket_confidence(digit_logits, confidence_values())
    return {"expected": expected, "probs": probs, "token_mass": mass}
