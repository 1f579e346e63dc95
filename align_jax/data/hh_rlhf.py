"""Anthropic HH-RLHF transcripts -> :class:`PreferenceRecord`.

Each row holds two full transcripts, ``chosen`` and ``rejected``, written as
``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: <reply>"``. The prompt is every
turn before the final ``"\\n\\nAssistant:"`` marker, as chat messages; the replies are the text
after it (one leading space removed). :func:`transcript` renders messages back, so
``transcript(prompt) + "\\n\\nAssistant: " + reply`` equals the original text exactly.

Errors (:class:`RecordError` reasons, counted when a source skips):

* ``hh_prefix_mismatch``: the two transcripts differ before their final assistant turn (5
  pairs of ``harmless-base-test``, where one side continues the dialogue);
* ``empty_text``: an empty turn or reply (4 empty chosen replies in ``harmless-base-test``);
* ``hh_format``: text that does not start with ``"\\n\\nHuman: "`` or a marker without a space.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from align_jax.data.records import Message, PreferenceRecord, RecordError

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_ROLE = {"Human": "user", "Assistant": "assistant"}
_NAME = {v: k for k, v in _ROLE.items()}
_MARKER = re.compile(r"\n\n(Human|Assistant):")


def split_transcript(text: str) -> tuple[Message, ...]:
    """The turns of an HH transcript as ``{"role", "content"}`` messages (contents verbatim)."""
    if not isinstance(text, str):
        raise RecordError("wrong_type", f"transcript must be a string, got {type(text).__name__}")
    parts = _MARKER.split(text)
    if parts[0] != "" or len(parts) < 3 or parts[1] != "Human":
        raise RecordError("hh_format", f"transcript must start with {HUMAN!r}: {text[:40]!r}")
    messages = []
    for name, body in zip(parts[1::2], parts[2::2]):
        if not body.startswith(" "):
            raise RecordError("hh_format", f"'{name}:' must be followed by a space: {body[:40]!r}")
        if not body[1:].strip():
            raise RecordError("empty_text", f"empty {name} turn")
        messages.append({"role": _ROLE[name], "content": body[1:]})
    return tuple(messages)


def transcript(messages: Sequence[Message]) -> str:
    """Inverse of :func:`split_transcript`."""
    return "".join(f"\n\n{_NAME[m['role']]}: {m['content']}" for m in messages)


def _split_final(text: Any, name: str) -> tuple[str, str]:
    if not isinstance(text, str):
        raise RecordError("wrong_type", f"{name!r} must be a string, got {type(text).__name__}")
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        raise RecordError("hh_format", f"{name!r} has no {ASSISTANT!r} turn")
    reply = text[cut + len(ASSISTANT):]
    if not reply.startswith(" "):
        raise RecordError("hh_format", f"final 'Assistant:' in {name!r} must be followed by a space")
    if not reply[1:].strip():
        raise RecordError("empty_text", f"final assistant reply of {name!r} is empty")
    return text[:cut], reply[1:]


def pair_from_transcripts(chosen: Any, rejected: Any) -> PreferenceRecord:
    """The shared prompt and the two final replies of an HH pair."""
    prefix_c, reply_c = _split_final(chosen, "chosen")
    prefix_r, reply_r = _split_final(rejected, "rejected")
    if prefix_c != prefix_r:
        at = next((i for i, (a, b) in enumerate(zip(prefix_c, prefix_r)) if a != b), min(len(prefix_c), len(prefix_r)))
        raise RecordError(
            "hh_prefix_mismatch",
            f"chosen and rejected differ before the final assistant turn (at character {at}: "
            f"{prefix_c[at:at + 30]!r} vs {prefix_r[at:at + 30]!r})",
        )
    prompt = split_transcript(prefix_c)
    if prompt[-1]["role"] != "user":
        raise RecordError("hh_format", "the turn before the final assistant reply is not a Human turn")
    return PreferenceRecord(prompt, reply_c, reply_r)


def parse_row(row: Any, fields: Mapping[str, str] | None = None) -> PreferenceRecord:
    """A source row ``{"chosen": transcript, "rejected": transcript}`` (columns renamable)."""
    fields = dict(fields or {})
    if not isinstance(row, Mapping):
        raise RecordError("wrong_type", f"a row must be an object, got {type(row).__name__}")
    values = []
    for key in ("chosen", "rejected"):
        column = fields.get(key, key)
        if row.get(column) is None:
            raise RecordError("missing_field", f"field {column!r} (for {key!r}) is missing")
        values.append(row[column])
    return pair_from_transcripts(*values)
