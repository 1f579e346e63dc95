"""Records -> token arrays, with a truncation policy and counters.

Prompts are rendered with the chat template and ``add_generation_prompt=True``; a completion is
the text the template writes for an assistant turn (its content plus the end-of-turn token,
e.g. ``reply + "<|im_end|>"`` for ChatML), so ``prompt_ids + completion_ids`` are the ids of
the whole conversation as :func:`align_jax.models.chat.encode_chat` would give them.

Truncation (``max_length`` L, ``max_prompt_length`` P, default ``L // 2``): when the prompt
plus the longest completion of a record exceeds L, the prompt is left-truncated first (keeping
its last tokens, never below ``min(P, len(prompt))``), then every completion is right-truncated
to fit ``L - len(prompt)``. With ``policy="drop"`` such a record is dropped instead (the call
returns ``None``). SFT conversations are right-truncated to L. :class:`TruncationStats` counts,
per process, ``examples`` seen, ``prompt_truncated``, ``completion_truncated`` and ``dropped``.

Output arrays (numpy, int32, all of length L, right-padded):

* completion records (preference / unpaired / ranked): for each completion ``c`` in
  ``chosen``, ``rejected`` (preference), ``completion`` (unpaired) or stacked ``[K, L]``
  (ranked, key prefix ``completion``): ``{c}_ids`` (the completion alone), ``{c}_tokens``
  (prompt + completion), ``{c}_loss_mask`` (1 on completion tokens), ``{c}_positions``
  (0.. on tokens, 0 on padding), ``{c}_segment_ids`` (1 on tokens, 0 = padding); plus
  ``prompt_ids`` and the scalars ``prompt_length``, ``{c}_length``. Unpaired adds
  ``desirable`` (int32 0/1); ranked adds ``scores`` ``[K]`` float32.
* SFT: ``tokens`` and ``loss_mask`` (``encode_chat``'s assistant mask) *unpadded*, to be padded
  or packed by :mod:`align_jax.data.packing`.
* prompts: ``prompt_ids`` and ``prompt_length``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from align_jax.data.records import (
    PreferenceRecord,
    PromptRecord,
    RankedRecord,
    SFTRecord,
    UnpairedRecord,
)
from align_jax.models import chat

POLICIES = ("truncate", "drop")


@dataclasses.dataclass
class TruncationStats:
    examples: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def completion_text(reply: str, template: str) -> str:
    """What ``template`` writes for an assistant turn with content ``reply`` (content + end of turn)."""
    segs = chat.render_segments(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": reply}], template=template
    )
    (seg,) = [s for s in segs if s.assistant]
    return seg.text


def truncate_lengths(
    prompt_len: int, completion_lens: Sequence[int], max_length: int, max_prompt_length: int
) -> tuple[int, list[int]]:
    """Kept prompt length and kept completion lengths under the policy above (pure arithmetic)."""
    longest = max(completion_lens)
    if prompt_len + longest <= max_length:
        return prompt_len, list(completion_lens)
    keep_prompt = min(prompt_len, max(max_length - longest, max_prompt_length))
    room = max_length - keep_prompt
    return keep_prompt, [min(n, room) for n in completion_lens]


def _pad(ids: Sequence[int], length: int, value: int) -> np.ndarray:
    out = np.full((length,), value, np.int32)
    out[: len(ids)] = ids
    return out


class Tokenize:
    """``record -> dict of arrays`` (or ``None`` when dropped); a picklable grain map function."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        template: str | None = None,
        max_length: int,
        max_prompt_length: int | None = None,
        policy: str = "truncate",
    ):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.max_prompt_length = max_length // 2 if max_prompt_length is None else max_prompt_length
        if not 0 < self.max_prompt_length < max_length:
            raise ValueError(f"need 0 < max_prompt_length ({self.max_prompt_length}) < max_length ({max_length})")
        self.tokenizer = tokenizer
        self.template = template if template is not None else chat.detect_template(tokenizer)
        self.max_length, self.policy = max_length, policy
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        self.pad_id = int(pad) if pad is not None else 0
        self.stats = TruncationStats()

    def __call__(self, record: Any) -> dict[str, np.ndarray] | None:
        self.stats.examples += 1
        if isinstance(record, SFTRecord):
            return self._sft(record)
        if isinstance(record, PromptRecord):
            return self._prompt_only(record)
        if isinstance(record, PreferenceRecord):
            return self._completions(record.prompt, {"chosen": record.chosen, "rejected": record.rejected})
        if isinstance(record, UnpairedRecord):
            out = self._completions(record.prompt, {"completion": record.response})
            if out is not None:
                out["desirable"] = np.int32(record.desirable)
            return out
        if isinstance(record, RankedRecord):
            names = [f"r{k}" for k in range(len(record.responses))]
            out = self._completions(record.prompt, dict(zip(names, record.responses)))
            if out is None:
                return None
            stacked = {
                f"completion_{f}": np.stack([out.pop(f"{n}_{f}") for n in names])
                for f in ("ids", "tokens", "loss_mask", "positions", "segment_ids", "length")
            }
            return {**out, **stacked, "scores": np.asarray(record.scores, np.float32)}
        raise TypeError(f"not a record: {type(record).__name__}")

    def completions(self, prompt: Sequence[dict] | tuple, replies: dict[str, str]) -> dict[str, np.ndarray]:
        """The arrays of ``prompt`` (chat messages) with each named reply, as for a record's completions;
        a reply may be empty (a policy's empty answer is still its end-of-turn token, and is scored).
        Always truncates (never drops)."""
        if self.policy != "truncate":
            raise ValueError("completions() needs policy='truncate'")
        return self._completions(prompt, replies)

    def prompt_ids(self, messages) -> list[int]:
        return chat.encode_chat(self.tokenizer, messages, template=self.template, add_generation_prompt=True).ids

    def completion_ids(self, reply: str) -> list[int]:
        return self.tokenizer.encode(completion_text(reply, self.template))

    def _prompt_only(self, record: PromptRecord):
        ids = self.prompt_ids(record.prompt)
        if len(ids) > self.max_length:
            if self.policy == "drop":
                self.stats.dropped += 1
                return None
            self.stats.prompt_truncated += 1
            ids = ids[-self.max_length:]
        return {"prompt_ids": _pad(ids, self.max_length, self.pad_id), "prompt_length": np.int32(len(ids))}

    def _completions(self, prompt, replies: dict[str, str]):
        L = self.max_length
        p = self.prompt_ids(prompt)
        comps = {name: self.completion_ids(text) for name, text in replies.items()}
        keep_p, keep_c = truncate_lengths(len(p), [len(c) for c in comps.values()], L, self.max_prompt_length)
        cut_p = keep_p < len(p)
        cut_c = any(k < len(c) for k, c in zip(keep_c, comps.values()))
        if cut_p or cut_c:
            if self.policy == "drop":
                self.stats.dropped += 1
                return None
            self.stats.prompt_truncated += cut_p
            self.stats.completion_truncated += cut_c
        p = p[len(p) - keep_p:]
        out = {"prompt_ids": _pad(p, L, self.pad_id), "prompt_length": np.int32(len(p))}
        for (name, c), k in zip(comps.items(), keep_c):
            c = c[:k]
            n = len(p) + len(c)
            out[f"{name}_ids"] = _pad(c, L, self.pad_id)
            out[f"{name}_length"] = np.int32(len(c))
            out[f"{name}_tokens"] = _pad(p + c, L, self.pad_id)
            out[f"{name}_loss_mask"] = _pad([0] * len(p) + [1] * len(c), L, 0)
            out[f"{name}_positions"] = _pad(range(n), L, 0)
            out[f"{name}_segment_ids"] = _pad([1] * n, L, 0)
        return out

    def _sft(self, record: SFTRecord):
        enc = chat.encode_chat(self.tokenizer, record.messages, template=self.template)
        ids, mask = enc.ids, enc.assistant_mask
        if len(ids) > self.max_length:
            if self.policy == "drop":
                self.stats.dropped += 1
                return None
            self.stats.completion_truncated += 1
            ids, mask = ids[: self.max_length], mask[: self.max_length]
        return {"tokens": np.asarray(ids, np.int32), "loss_mask": np.asarray(mask, np.int32)}
