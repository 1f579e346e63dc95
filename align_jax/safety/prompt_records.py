"""Prompt records for safety RL: the refusal classifier's prompt splits, labelled for a reward.

``safety_prompt_records(cfg, split)`` turns one split of :func:`align_jax.safety.refusal.run.build_source_sets`
(harmful prompts split by benchmark; benign-sensitive prompts split by template; plain benign
prompts) into :class:`~align_jax.data.records.PromptRecord` s whose ``info`` holds ``harmful``
(bool: what the ``refusal_precision`` reward reads), ``kind`` (``harmful`` / ``benign_sensitive`` /
``plain_benign``) and ``source`` (benchmark file or template id). Records come in a seeded hash
order, so any prefix (the RL loop's ``rl.eval_prompts``) mixes the kinds.

``write_safety_prompts(cfg, out_dir)`` writes ``train.jsonl`` and ``val.jsonl`` for
``data.source="prompt"`` (``configs/grpo_safety.py`` reads them); the test split stays unwritten,
for evaluation only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from align_jax.data.records import PromptRecord
from align_jax.data.sources import write_records
from align_jax.safety.refusal.datasets import KINDS, Prompt, stable_hash
from align_jax.safety.refusal.run import RefusalConfig, build_source_sets


def prompt_records(prompts: Sequence[Prompt], *, seed: int = 0, per_kind: int = 0) -> list[PromptRecord]:
    """Prompts -> records with ``info = {"harmful", "kind", "source"}``, ordered by hash(seed, text);
    ``per_kind`` > 0 keeps at most that many of each kind (the first in that order)."""
    if per_kind < 0:
        raise ValueError(f"per_kind must be >= 0 (0 = all), got {per_kind}")
    ordered = sorted(prompts, key=lambda p: stable_hash(seed, "safety_prompts", p.text))
    taken = dict.fromkeys(KINDS, 0)
    out = []
    for p in ordered:
        if per_kind and taken[p.kind] >= per_kind:
            continue
        taken[p.kind] += 1
        out.append(PromptRecord(p.text, {"harmful": bool(p.harmful), "kind": p.kind, "source": p.source}))
    return out


def safety_prompt_records(cfg: RefusalConfig, split: str = "train", *, per_kind: int = 0) -> list[PromptRecord]:
    """Records of one split of ``build_source_sets(cfg)`` (see the module doc)."""
    sets, _ = build_source_sets(cfg)
    if split not in sets:
        raise ValueError(f"unknown split {split!r}; valid splits: {sorted(sets)}")
    return prompt_records(sets[split], seed=cfg.seed, per_kind=per_kind)


def write_safety_prompts(cfg: RefusalConfig, out_dir: str | os.PathLike, *, splits: Sequence[str] = ("train", "val"),
                         per_kind: int = 0) -> dict[str, Path]:
    """``out_dir/<split>.jsonl`` for each split (``data.source="prompt"``); split -> path."""
    sets, _ = build_source_sets(cfg)
    out = {}
    for split in splits:
        records = prompt_records(sets[split], seed=cfg.seed, per_kind=per_kind)
        out[split] = write_records(records, Path(out_dir) / f"{split}.jsonl")
    return out
