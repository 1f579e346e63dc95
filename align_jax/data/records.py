"""Record kinds: the typed, validated examples every source produces.

A record is text, not ids; tokenization happens later in the pipeline. Chat turns are plain
``{"role": str, "content": str}`` dicts (what :func:`align_jax.models.chat.encode_chat`
takes), held in tuples so records are immutable.

=================  ==============================================  =======================
kind (registry)    class                                           used by
=================  ==============================================  =======================
``"sft"``          :class:`SFTRecord` (messages)                   supervised fine-tuning
``"preference"``   :class:`PreferenceRecord` (prompt, chosen,      DPO family, reward model
                   rejected)
``"ranked"``       :class:`RankedRecord` (prompt, responses,       listwise ranking losses
                   scores)
``"unpaired"``     :class:`UnpairedRecord` (prompt, response,      KTO / BCO
                   desirable)
``"prompt"``       :class:`PromptRecord` (prompt)                  generation, RL rollouts
=================  ==============================================  =======================

:func:`record_from_row` turns one raw row (a JSON object, CSV row, Parquet row) into a record
through a field mapping ``{record_field: column}``. A prompt column may hold a string (one
user turn) or a list of chat messages; an optional ``system`` column adds a system turn.
Every problem raises :class:`RecordError` with a ``reason`` (``missing_field``,
``wrong_type``, ``empty_text``, ...) that sources count when skipping.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Mapping, Sequence

Message = dict  # {"role": str, "content": str}
ROLES = ("system", "user", "assistant")


class RecordError(ValueError):
    """A row that cannot become a record. ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"{name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError("empty_text", f"{name!r} is empty")
    return value


def _messages(value: Any, name: str) -> tuple[Message, ...]:
    if not isinstance(value, (list, tuple)):
        raise RecordError("wrong_type", f"{name!r} must be a list of messages, got {type(value).__name__}")
    if not value:
        raise RecordError("empty_text", f"{name!r} has no messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise RecordError("wrong_type", f"{name}[{i}] must be a {{'role', 'content'}} mapping")
        if m["role"] not in ROLES:
            raise RecordError("wrong_type", f"{name}[{i}] has role {m['role']!r}; valid roles: {ROLES}")
        out.append({"role": m["role"], "content": _text(m["content"], f"{name}[{i}].content")})
    return tuple(out)


def _prompt(value: Any, name: str) -> tuple[Message, ...]:
    """A prompt: a string (one user turn) or messages not ending with an assistant turn."""
    msgs = ({"role": "user", "content": _text(value, name)},) if isinstance(value, str) else _messages(value, name)
    if msgs[-1]["role"] == "assistant":
        raise RecordError("wrong_type", f"{name!r} must not end with an assistant turn")
    return msgs


@dataclasses.dataclass(frozen=True)
class SFTRecord:
    """A conversation to imitate; the loss falls on the assistant turns."""

    messages: tuple[Message, ...]

    def __post_init__(self):
        msgs = _messages(self.messages, "messages")
        if not any(m["role"] == "assistant" for m in msgs):
            raise RecordError("wrong_type", "'messages' has no assistant turn to train on")
        object.__setattr__(self, "messages", msgs)


@dataclasses.dataclass(frozen=True)
class PreferenceRecord:
    """A shared prompt with a preferred (``chosen``) and a dispreferred (``rejected``) reply."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str

    def __post_init__(self):
        object.__setattr__(self, "prompt", _prompt(self.prompt, "prompt"))
        _text(self.chosen, "chosen")
        _text(self.rejected, "rejected")


@dataclasses.dataclass(frozen=True)
class RankedRecord:
    """A prompt with K >= 2 replies and a finite score each (higher is better)."""

    prompt: tuple[Message, ...]
    responses: tuple[str, ...]
    scores: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "prompt", _prompt(self.prompt, "prompt"))
        if not isinstance(self.responses, (list, tuple)) or not isinstance(self.scores, (list, tuple)):
            raise RecordError("wrong_type", "'responses' and 'scores' must be lists")
        responses = tuple(_text(r, f"responses[{i}]") for i, r in enumerate(self.responses))
        scores = []
        for i, s in enumerate(self.scores):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise RecordError("wrong_type", f"scores[{i}] must be a finite number, got {s!r}")
            scores.append(float(s))
        if len(responses) < 2 or len(responses) != len(scores):
            raise RecordError(
                "wrong_type", f"need >= 2 responses and one score each, got {len(responses)} and {len(scores)}"
            )
        object.__setattr__(self, "responses", responses)
        object.__setattr__(self, "scores", tuple(scores))


@dataclasses.dataclass(frozen=True)
class UnpairedRecord:
    """A prompt with one reply labelled desirable or not (KTO / BCO)."""

    prompt: tuple[Message, ...]
    response: str
    desirable: bool

    def __post_init__(self):
        object.__setattr__(self, "prompt", _prompt(self.prompt, "prompt"))
        _text(self.response, "response")
        if not isinstance(self.desirable, bool):
            raise RecordError("wrong_type", f"'desirable' must be a bool, got {self.desirable!r}")


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """A prompt to generate from; ``info`` carries what a reward needs to judge a completion
    (a reference answer, instruction ids and their arguments, ...)."""

    prompt: tuple[Message, ...]
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "prompt", _prompt(self.prompt, "prompt"))


Record = SFTRecord | PreferenceRecord | RankedRecord | UnpairedRecord | PromptRecord

RECORD_KINDS: dict[str, type] = {
    "sft": SFTRecord,
    "preference": PreferenceRecord,
    "ranked": RankedRecord,
    "unpaired": UnpairedRecord,
    "prompt": PromptRecord,
}


def kind_of(record: Any) -> str:
    for name, cls in RECORD_KINDS.items():
        if isinstance(record, cls):
            return name
    raise TypeError(f"not a record: {type(record).__name__}")


def to_dict(record: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a record (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(record)))


def from_dict(kind: str, data: Mapping[str, Any]) -> Any:
    """Inverse of :func:`to_dict`."""
    cls = RECORD_KINDS[kind]
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


# ---------------------------------------------------------------------- rows -> records


def _get(row: Mapping[str, Any], fields: Mapping[str, str], name: str) -> Any:
    column = fields.get(name, name)
    if column not in row or row[column] is None:
        raise RecordError("missing_field", f"field {column!r} (for {name!r}) is missing")
    return row[column]


def _maybe_json(value: Any) -> Any:
    """CSV cells hold lists as JSON text (``'["a", "b"]'``)."""
    if isinstance(value, str) and value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise RecordError("wrong_type", f"cannot parse JSON list {value[:40]!r}: {e}") from None
    return value


def _as_list(value: Any) -> Any:
    """Parquet lists arrive as numpy arrays; make them Python lists."""
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, (str, bytes)) else value


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise RecordError("wrong_type", f"'desirable' must be a bool (or 0/1/true/false), got {value!r}")


def _row_prompt(row: Mapping[str, Any], fields: Mapping[str, str]) -> tuple[Message, ...]:
    prompt = _maybe_json(_as_list(_get(row, fields, "prompt")))
    prompt = _prompt(prompt, fields.get("prompt", "prompt"))
    if "system" in fields:
        prompt = ({"role": "system", "content": _text(_get(row, fields, "system"), "system")},) + prompt
    return prompt


def _row_sft(row, fields):
    return SFTRecord(_maybe_json(_as_list(_get(row, fields, "messages"))))


def _row_preference(row, fields):
    return PreferenceRecord(_row_prompt(row, fields), _get(row, fields, "chosen"), _get(row, fields, "rejected"))


def _row_ranked(row, fields):
    responses = _maybe_json(_as_list(_get(row, fields, "responses")))
    scores = _maybe_json(_as_list(_get(row, fields, "scores")))
    return RankedRecord(_row_prompt(row, fields), responses, scores)


def _row_unpaired(row, fields):
    return UnpairedRecord(
        _row_prompt(row, fields), _get(row, fields, "response"), _bool(_get(row, fields, "desirable"))
    )


def _row_prompt_record(row, fields):
    prompt_columns = set(fields.values()) | {"prompt", "system"}
    return PromptRecord(_row_prompt(row, fields), {k: v for k, v in row.items() if k not in prompt_columns})


ROW_PARSERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, str]], Any]] = {
    "sft": _row_sft,
    "preference": _row_preference,
    "ranked": _row_ranked,
    "unpaired": _row_unpaired,
    "prompt": _row_prompt_record,
}
assert set(ROW_PARSERS) == set(RECORD_KINDS)


def record_from_row(kind: str, row: Any, fields: Mapping[str, str] | None = None) -> Any:
    """The record of ``kind`` in ``row``; ``fields`` maps record fields to row columns.

    Raises :class:`RecordError` for a row that is not an object, a missing column, a value of
    the wrong type, or empty text.
    """
    if kind not in ROW_PARSERS:
        raise ValueError(f"unknown record kind {kind!r}; valid kinds: {sorted(ROW_PARSERS)}")
    if not isinstance(row, Mapping):
        raise RecordError("wrong_type", f"a row must be an object, got {type(row).__name__}")
    fields = check_fields(kind, fields or {})
    return ROW_PARSERS[kind](row, fields)


def check_fields(kind: str, fields: Mapping[str, str]) -> dict[str, str]:
    """``fields`` as a dict, after checking its keys are fields of ``kind`` (or ``system``)."""
    valid = {f.name for f in dataclasses.fields(RECORD_KINDS[kind])} | ({"system"} if kind != "sft" else set())
    unknown = set(fields) - valid
    if unknown:
        raise ValueError(f"field mapping for {kind!r} has unknown keys {sorted(unknown)}; valid: {sorted(valid)}")
    return dict(fields)


def pairs_to_unpaired(records: Sequence[Any]) -> list:
    """Preference pairs -> unpaired examples (chosen desirable, rejected not), as KTO papers do;
    other records pass through."""
    out = []
    for r in records:
        if isinstance(r, PreferenceRecord):
            out += [UnpairedRecord(r.prompt, r.chosen, True), UnpairedRecord(r.prompt, r.rejected, False)]
        else:
            out.append(r)
    return out


def pairs_to_sft(records: Sequence[Any]) -> list:
    """Preference pairs -> SFT conversations on the chosen reply; other records pass through."""
    return [
        SFTRecord(tuple(r.prompt) + ({"role": "assistant", "content": r.chosen},)) if isinstance(r, PreferenceRecord) else r
        for r in records
    ]
