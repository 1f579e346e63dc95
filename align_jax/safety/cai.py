"""Constitutional AI, supervised stage: critique -> revision (Bai et al., arXiv:2212.08073).

The model answers a prompt (the *draft*), is asked to critique its draft by one principle of a
constitution, then to rewrite it by that principle (the *revision*); the revision is the data:

1. draft = the model's greedy answer to ``[user: prompt]``;
2. a principle is drawn per prompt (uniformly, from a JAX PRNG key: the same key, the same draws);
3. critique = its answer to ``[user: prompt, assistant: draft, user: critique_request]``;
4. revision = its answer to ``[..., assistant: critique, user: revision_request]``.

Every stage is one batched greedy pass over all prompts (:func:`align_jax.sampling.greedy.generate_greedy`),
each conversation rendered with the model's own chat template. One round of revision and no
few-shot examples: the paper primes the critiques with few-shot examples and revises up to four
times, which a small model's context cannot hold.

The constitution is data (``align_jax/data/prompt_data/constitution.jsonl``): one principle a line,
``{"table": "principle", "name", "critique_request", "revision_request"}`` (``table`` is the
project's package-data convention, :mod:`align_jax.data.prompt_data`). Besides the paper's kind of
harmlessness principles, precise refusal needs principles against over-refusal (a harmless request
that only sounds sensitive is to be answered) and against unhelpful, evasive answers.

Outputs: :func:`preference_records` (chosen = revision, rejected = draft; the pairs the paper's RL
stage labels with AI feedback, taken here as revision-better) and :func:`sft_records` (prompt ->
revision, the paper's SL-CAI data), skipping results whose revision is empty or equals the draft
(and, for pairs, whose draft is empty), counted by reason. :func:`write_cai_data` writes them as JSONL
for ``data.source="preference"`` / ``"sft"``.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from align_jax.data.prompt_data import load_tables, read_tables
from align_jax.data.records import PreferenceRecord, SFTRecord
from align_jax.data.sources import write_records
from align_jax.models.registry import LoadedModel
from align_jax.sampling.greedy import chat_ids, generate_greedy

log = logging.getLogger(__name__)

CONSTITUTION_FILE = "constitution.jsonl"
_SCHEMA = {"principle": {"name": str, "critique_request": str, "revision_request": str}}


@dataclasses.dataclass(frozen=True)
class Principle:
    name: str
    critique_request: str  # asked after the draft: "Identify how the last reply is harmful ..."
    revision_request: str  # asked after the critique: "Rewrite the reply to ..."


def load_constitution(path: str | os.PathLike | None = None) -> tuple[Principle, ...]:
    """The principles of a constitution file (default: the packaged one), in file order.

    A malformed line, an empty text or a repeated name raises ``DataError`` naming the file and line.
    """
    names: set[str] = set()

    def check(table: str, row: dict[str, Any]) -> None:
        for field, text in row.items():
            if not text.strip():
                raise ValueError(f"field {field!r} is empty")
        if row["name"] in names:
            raise ValueError(f"principle {row['name']!r} appears twice")
        names.add(row["name"])

    tables = load_tables(CONSTITUTION_FILE, _SCHEMA, check) if path is None else read_tables(Path(path), _SCHEMA, check)
    principles = tuple(Principle(**row) for row in tables["principle"])
    if not principles:
        raise ValueError(f"{path or CONSTITUTION_FILE}: no principles")
    return principles


@dataclasses.dataclass(frozen=True)
class CritiqueRevision:
    prompt: str
    principle: Principle
    draft: str
    critique: str
    revision: str


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def critique_messages(prompt: str, draft: str, principle: Principle) -> list[dict[str, str]]:
    """``[user: prompt, assistant: draft, user: critique_request]``."""
    return [_user(prompt), _assistant(draft), _user(principle.critique_request)]


def revision_messages(prompt: str, draft: str, principle: Principle, critique: str) -> list[dict[str, str]]:
    """The critique conversation + ``[assistant: critique, user: revision_request]``."""
    return critique_messages(prompt, draft, principle) + [_assistant(critique), _user(principle.revision_request)]


def sample_principles(key: jax.Array, n: int, num_principles: int) -> np.ndarray:  # key: [] PRNG key
    """[n] principle indices, uniform, drawn from ``key`` (the same key gives the same indices)."""
    if num_principles < 1:
        raise ValueError("no principles to sample from")
    return np.asarray(jax.random.randint(key, (n,), 0, num_principles))


def constitutional_pairs(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    principles: Sequence[Principle],
    key: jax.Array,  # [] PRNG key: the principle drawn for each prompt
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
) -> list[CritiqueRevision]:
    """Draft, critique and revision of every prompt (see the module doc), each stage one batched
    greedy pass of ``lm`` (which needs a chat template)."""
    if not prompts:
        raise ValueError("no prompts")
    picked = [principles[i] for i in sample_principles(key, len(prompts), len(principles))]

    def generate(conversations: list[list[dict[str, str]]], stage: str) -> list[str]:
        ids = [chat_ids(lm, c) for c in conversations]
        gens = generate_greedy(lm, ids, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                               desc=f"CAI {stage}")
        return [g.text.strip() for g in gens]

    drafts = generate([[_user(p)] for p in prompts], "drafts")
    critiques = generate([critique_messages(p, d, c) for p, d, c in zip(prompts, drafts, picked)], "critiques")
    revisions = generate([revision_messages(p, d, c, k) for p, d, c, k in zip(prompts, drafts, picked, critiques)],
                         "revisions")
    return [CritiqueRevision(*row) for row in zip(prompts, picked, drafts, critiques, revisions)]


def skip_reason(result: CritiqueRevision, *, pair: bool) -> str | None:
    """Why ``result`` makes no training example (``pair``: a preference pair needs a draft too), or None."""
    if not result.revision.strip():
        return "empty_revision"
    if result.revision.strip() == result.draft.strip():
        return "unchanged"
    if pair and not result.draft.strip():
        return "empty_draft"
    return None


def preference_records(results: Sequence[CritiqueRevision]) -> tuple[list[PreferenceRecord], collections.Counter]:
    """(pairs chosen = revision, rejected = draft; skipped results counted by reason)."""
    out, skipped = [], collections.Counter()
    for r in results:
        if reason := skip_reason(r, pair=True):
            skipped[reason] += 1
        else:
            out.append(PreferenceRecord((_user(r.prompt),), r.revision, r.draft))
    return out, skipped


def sft_records(results: Sequence[CritiqueRevision]) -> tuple[list[SFTRecord], collections.Counter]:
    """(conversations prompt -> revision; skipped results counted by reason)."""
    out, skipped = [], collections.Counter()
    for r in results:
        if reason := skip_reason(r, pair=False):
            skipped[reason] += 1
        else:
            out.append(SFTRecord((_user(r.prompt), _assistant(r.revision))))
    return out, skipped


def write_cai_data(results: Sequence[CritiqueRevision], out_dir: str | os.PathLike) -> dict[str, Any]:
    """Writes ``out_dir/{pairs,sft,revisions}.jsonl`` and ``summary.json``; returns the summary.

    ``pairs.jsonl`` is ``data.source="preference"``, ``sft.jsonl`` is ``data.source="sft"``;
    ``revisions.jsonl`` keeps every result (skipped ones included) with its principle's name. Every
    file is rewritten, an empty one when nothing is usable.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs, skipped_pairs = preference_records(results)
    sft, skipped_sft = sft_records(results)
    # written even when empty: a file left by an earlier run in out_dir must not pass for this one's
    write_records(pairs, out / "pairs.jsonl")
    write_records(sft, out / "sft.jsonl")
    with open(out / "revisions.jsonl", "w", encoding="utf-8") as f:
        for r in results:
            row = dataclasses.asdict(r) | {"principle": r.principle.name}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = {
        "results": len(results), "pairs": len(pairs), "sft": len(sft),
        "skipped_pairs": dict(skipped_pairs), "skipped_sft": dict(skipped_sft),
        "principles": dict(collections.Counter(r.principle.name for r in results)),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("CAI data in %s: %d pairs, %d SFT conversations from %d results; skipped %s / %s",
             out, len(pairs), len(sft), len(results), dict(skipped_pairs), dict(skipped_sft))
    return summary
