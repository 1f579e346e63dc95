"""Instruction compliance of a model: greedy generations scored by the IFEval verifiers.

``compliance_report(lm, examples)`` renders each example's prompt as one user turn with the
model's chat template (generation prompt added), decodes greedily with the KV-cache sampler
in fixed-size batches (the last batch is padded by repetition and every prompt to the
longest one's width, so one compiled program serves all), and scores the decoded text with
``instructions.evaluate_responses``.

The returned dict (JSON-able):

- ``n``: number of examples; ``strict_pass_rate`` / ``loose_pass_rate``: fraction of
  examples whose instructions all pass (prompt-level, strict / loose as in IFEval);
- ``per_instruction``: ``{id: {"n", "strict_pass_rate", "loose_pass_rate"}}``;
- ``truncated_rate``: fraction of generations that hit ``max_new_tokens`` without an end
  token (a high value means the budget, not the model, may be failing end-of-text checks);
- ``samples``: the first ``num_samples`` (prompt, response, strict pass) triples;
- ``seconds``: wall time of generation and scoring; ``max_new_tokens``, ``source``.

``format_report_markdown(before, after)`` puts two reports side by side.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from align_jax.instructions.data import InstructionExample
from align_jax.instructions.evaluation import evaluate_responses
from align_jax.models.chat import encode_chat
from align_jax.models.registry import LoadedModel
from align_jax.sampling import SamplingParams, sample


def generate_responses(
    lm: LoadedModel, prompts: Sequence[str], *, max_new_tokens: int = 48, batch_size: int = 32
) -> tuple[list[str], list[bool]]:
    """Greedy completions of single-turn chat prompts, and whether each hit the length cap."""
    if lm.chat_template is None:
        raise ValueError(f"model {lm.source!r} has no chat template; compliance needs one")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tok = lm.tokenizer
    ids = [
        encode_chat(tok, [{"role": "user", "content": p}], template=lm.chat_template,
                    add_generation_prompt=True).ids
        for p in prompts
    ]
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    # One prompt width for every batch (pad_prompts rounds up to a multiple of the bucket).
    width = -(-max(len(i) for i in ids) // 32) * 32
    eos = sorted(tok.eos_ids)
    texts, truncated = [], []
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        real = len(batch)
        batch = batch + [batch[-1]] * (batch_size - real)  # same shape for every batch
        out = sample(lm.model, batch, params, eos_ids=eos, pad_id=tok.pad_id or 0, prompt_bucket=width)
        tokens, mask = np.asarray(out.tokens), np.asarray(out.completion_mask)
        for row in range(real):
            completion = tokens[row, : int(mask[row].sum())].tolist()
            texts.append(tok.decode(completion, skip_special_tokens=True))
            truncated.append(len(completion) == max_new_tokens and completion[-1] not in tok.eos_ids)
    return texts, truncated


def compliance_report(
    lm: LoadedModel,
    examples: Sequence[InstructionExample],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    num_samples: int = 4,
) -> dict[str, Any]:
    """Generates greedily for each example and scores it; see the module docstring for keys."""
    if not examples:
        raise ValueError("no examples to evaluate")
    start = time.perf_counter()
    responses, truncated = generate_responses(
        lm, [e.prompt for e in examples], max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    report = evaluate_responses(examples, responses)
    seconds = time.perf_counter() - start
    return {
        "n": report.num_prompts,
        "strict_pass_rate": report.prompt_level_strict,
        "loose_pass_rate": report.prompt_level_loose,
        "per_instruction": {
            name: {"n": acc.count, "strict_pass_rate": acc.strict, "loose_pass_rate": acc.loose}
            for name, acc in report.per_instruction.items()
        },
        "truncated_rate": sum(truncated) / len(truncated),
        "samples": [
            {"prompt": r.prompt, "response": r.response, "strict_pass": r.follow_all_strict}
            for r in report.examples[:num_samples]
        ],
        "seconds": seconds,
        "max_new_tokens": max_new_tokens,
        "source": lm.source,
    }


def _rate(report: Mapping[str, Any] | None, name: str | None) -> tuple[str, str]:
    """(pass rate, n) cells for the overall row (name None) or one instruction id."""
    if report is None:
        return "-", "-"
    entry = report if name is None else report["per_instruction"].get(name)
    if entry is None:
        return "-", "0"
    return f"{entry['strict_pass_rate']:.3f}", str(entry["n"])


def format_report_markdown(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """A markdown table: strict pass rate before and after (overall, then per instruction id)."""
    names = sorted(set(before["per_instruction"]) | set(after["per_instruction"]))
    lines = [
        "| instruction | n | before | after | change |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, name in [("**all**", None)] + [(f"`{n}`", n) for n in names]:
        (b, nb), (a, na) = _rate(before, name), _rate(after, name)
        change = f"{float(a) - float(b):+.3f}" if "-" not in (a, b) else "-"
        n = nb if nb == na else f"{nb} / {na}"
        lines.append(f"| {label} | {n} | {b} | {a} | {change} |")
    return "\n".join(lines)
