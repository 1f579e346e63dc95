"""Harmful *requests* written by the project, per hazard category (S1-S14), for training the
prompt classifier.

Why: the packaged harmful sets are AdvBench-style imperatives ("Write a tutorial on how to ...")
and leave whole hazards thin (sexual content, elections, privacy, self-harm, code-interpreter
abuse), while held-out benchmarks ask in many voices: first-person questions with a motive,
requests for a written artefact, "without getting caught". These prompts are requests only (no
harmful content is written here), labelled with their hazard code, and phrased through the same
kinds of frames the benign-sensitive set uses ("How do I ...?"), so that the frame cannot predict
the label and the content has to.

Each :class:`Goal` is a verb phrase ("how" goals: "How do I {g}?") or a noun phrase naming an
artefact ("write" goals: "Write {g}."). ``written_harmful_prompts`` expands every goal through
``frames_per_goal`` of its kind's frames, picked by a stable hash of ``(seed, goal)``, and an
optional motive prefix, also hash-picked. No RNG, no test-benchmark text: the goals were written
from the hazard definitions in ``taxonomy``, not from any benchmark's prompts, and
``sources.source_split`` still drops any whose normalised text equals a test prompt.

The frames, motives and goals are data: ``align_jax/data/prompt_data/harmful_written.jsonl``.
"""

from __future__ import annotations

import dataclasses

from align_jax.data.prompt_data import load_tables
from align_jax.data.sources import DataError
from align_jax.safety.refusal.datasets import Prompt, check_prompt_text, stable_hash
from align_jax.safety.refusal.taxonomy import HAZARD_BY_CODE

SOURCE = "project_written"


@dataclasses.dataclass(frozen=True)
class Goal:
    hazard: str  # "S1".."S14"
    kind: str  # "how" (verb phrase) or "write" (artefact noun phrase)
    text: str


_DATA = load_tables(
    "harmful_written.jsonl",
    {"frame": {"kind": str, "text": str}, "motive": {"text": str}, "goal": {"hazard": str, "kind": str, "text": str}},
)
HOW_FRAMES: tuple[str, ...] = tuple(r["text"] for r in _DATA["frame"] if r["kind"] == "how")
WRITE_FRAMES: tuple[str, ...] = tuple(r["text"] for r in _DATA["frame"] if r["kind"] == "write")
MOTIVES: tuple[str, ...] = tuple(r["text"] for r in _DATA["motive"])
GOALS: tuple[Goal, ...] = tuple(Goal(r["hazard"], r["kind"], r["text"]) for r in _DATA["goal"])
if _bad := [g for g in GOALS if g.hazard not in HAZARD_BY_CODE or g.kind not in ("how", "write")]:
    raise DataError(f"harmful_written.jsonl: goals with an unknown hazard or kind: {_bad}")


def written_harmful_prompts(frames_per_goal: int = 4, motive_share: float = 0.3, seed: int = 0) -> list[Prompt]:
    """Every goal through ``frames_per_goal`` distinct frames of its kind (hash-picked); about
    ``motive_share`` of the prompts get a motive sentence in front. Labelled harmful, split "train"
    (``sources.source_split`` assigns the real split)."""
    out = []
    for g in GOALS:
        frames = HOW_FRAMES if g.kind == "how" else WRITE_FRAMES
        order = sorted(range(len(frames)), key=lambda i: stable_hash(seed, "frame", g.text, i))
        for i in order[:frames_per_goal]:
            text = frames[i].format(g=g.text)
            if stable_hash(seed, "motive", g.text, i) % 1000 < motive_share * 1000:
                text = f"{MOTIVES[stable_hash(seed, 'which', g.text, i) % len(MOTIVES)]} {text}"
            text = check_prompt_text(text, f"{SOURCE} goal {g.text!r}")
            out.append(Prompt(text, True, "harmful", "train", SOURCE, hazard=g.hazard, source_category=None))
    return out
