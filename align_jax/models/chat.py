"""Chat formats as explicit Python, with an exact mask of the assistant tokens.

A format turns ``messages`` (``[{"role": ..., "content": str}, ...]``) into segments of text,
each tagged assistant or not. :func:`encode_chat` tokenizes the whole rendered string once
(so the ids equal ``hf_tokenizer.apply_chat_template(messages, tokenize=True)``) and marks a
token 1 in ``assistant_mask`` when its characters fall in an assistant segment: the content
of each assistant turn plus its end-of-turn token (``<|im_end|>`` / ``<end_of_turn>``), which
is what SFT trains on. Role headers, the newline after the end-of-turn token and the
generation prompt are 0.

Formats (pick by name, or let :func:`detect_template` read GGUF / tokenizer_config metadata):

* ``"chatml"``: SmolLM2-Instruct's ChatML, with its default system prompt when the first
  message is not a system message.
* ``"chatml_plain"``: the same without a default system prompt (Qwen-style ChatML users).
* ``"gemma"``: Gemma 3: ``<bos>``, ``<start_of_turn>user\\n ... <end_of_turn>\\n``, the
  assistant role written ``model``, contents stripped, a leading system message folded into
  the first user turn (``system + "\\n\\n" + user``), user/assistant strictly alternating.

A token that spans an assistant/non-assistant boundary (a merge across it) counts as
assistant; with the formats here the boundaries sit next to special tokens or a ``"\\n"``
after the role, so this only happens for content starting with whitespace.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

SMOLLM_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

Message = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Segment:
    text: str
    assistant: bool = False


@dataclasses.dataclass(frozen=True)
class ChatEncoding:
    ids: list[int]
    assistant_mask: list[int]  # 1 on assistant content + end-of-turn tokens, else 0

    def __len__(self) -> int:
        return len(self.ids)


def _content(message: Message) -> str:
    if "role" not in message or "content" not in message:
        raise ValueError(f"a chat message needs 'role' and 'content', got keys {sorted(message)}")
    content = message["content"]
    if not isinstance(content, str):
        raise TypeError(f"message content must be a string, got {type(content).__name__}")
    return content


def _chatml(default_system: str | None) -> Callable[[Sequence[Message], bool], list[Segment]]:
    def render(messages: Sequence[Message], add_generation_prompt: bool) -> list[Segment]:
        segs: list[Segment] = []
        if messages and default_system is not None and messages[0].get("role") != "system":
            segs.append(Segment(f"<|im_start|>system\n{default_system}<|im_end|>\n"))
        for m in messages:
            content = _content(m)
            segs.append(Segment(f"<|im_start|>{m['role']}\n"))
            if m["role"] == "assistant":
                segs.append(Segment(content + "<|im_end|>", assistant=True))
                segs.append(Segment("\n"))
            else:
                segs.append(Segment(content + "<|im_end|>\n"))
        if add_generation_prompt:
            segs.append(Segment("<|im_start|>assistant\n"))
        return segs

    return render


def _gemma(messages: Sequence[Message], add_generation_prompt: bool) -> list[Segment]:
    segs = [Segment("<bos>")]
    prefix, loop = "", list(messages)
    if loop and loop[0].get("role") == "system":
        prefix, loop = _content(loop[0]) + "\n\n", loop[1:]
    for i, m in enumerate(loop):
        content = _content(m).strip()
        if (m["role"] == "user") != (i % 2 == 0):
            raise ValueError("Conversation roles must alternate user/assistant/user/assistant/...")
        role = "model" if m["role"] == "assistant" else m["role"]
        segs.append(Segment(f"<start_of_turn>{role}\n" + (prefix if i == 0 else "")))
        if m["role"] == "assistant":
            segs.append(Segment(content + "<end_of_turn>", assistant=True))
            segs.append(Segment("\n"))
        else:
            segs.append(Segment(content + "<end_of_turn>\n"))
    if add_generation_prompt:
        segs.append(Segment("<start_of_turn>model\n"))
    return segs


TEMPLATES: dict[str, Callable[[Sequence[Message], bool], list[Segment]]] = {
    "chatml": _chatml(SMOLLM_DEFAULT_SYSTEM),
    "chatml_plain": _chatml(None),
    "gemma": _gemma,
}

# Jinja equivalents, written into tokenizer_config.json on export (never used to render here).
JINJA_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\n" + SMOLLM_DEFAULT_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "chatml_plain": (
        "{% for message in messages %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "gemma": (
        "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
        "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
        "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
        "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
        "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
        "{%- endif -%}{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
        "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
        "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}"
        "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}"
    ),
}
assert set(JINJA_TEMPLATES) == set(TEMPLATES)


def template_names() -> list[str]:
    return sorted(TEMPLATES)


def _get(name: str) -> Callable[[Sequence[Message], bool], list[Segment]]:
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; valid templates: {template_names()}")
    return TEMPLATES[name]


def jinja_template(name: str) -> str:
    """The jinja text equivalent to template ``name`` (for tokenizer_config.json)."""
    _get(name)
    return JINJA_TEMPLATES[name]


def detect_template(source: Any) -> str:
    """The template name for a :class:`Tokenizer`, a jinja string, or a metadata mapping.

    Mappings may be GGUF metadata (``tokenizer.chat_template``, ``tokenizer.ggml.tokens``) or
    a ``tokenizer_config.json`` dict (``chat_template``). Without a template string the
    vocabulary decides (``<start_of_turn>`` -> gemma, ``<|im_start|>`` -> chatml).
    """
    template, has_token = None, None
    if isinstance(source, str):
        template = source
    elif isinstance(source, Mapping):
        template = source.get("tokenizer.chat_template", source.get("chat_template"))
        tokens = source.get("tokenizer.ggml.tokens")
        if tokens is not None:
            vocab = set(tokens)
            has_token = vocab.__contains__
    elif hasattr(source, "token_to_id"):
        template = getattr(source, "chat_template", None)
        has_token = lambda t: source.token_to_id(t) is not None  # noqa: E731
    if isinstance(template, str):
        if "<start_of_turn>" in template:
            return "gemma"
        if "<|im_start|>" in template:
            return "chatml" if SMOLLM_DEFAULT_SYSTEM in template else "chatml_plain"
    if has_token is not None:
        if has_token("<start_of_turn>"):
            return "gemma"
        if has_token("<|im_start|>"):
            return "chatml"
    raise ValueError(
        f"cannot detect the chat format of {type(source).__name__}; pass template= one of "
        f"{template_names()}"
    )


def render_segments(
    messages: Sequence[Message], *, template: str, add_generation_prompt: bool = False
) -> list[Segment]:
    return _get(template)(list(messages), add_generation_prompt)


def render_chat(
    messages: Sequence[Message], *, template: str, add_generation_prompt: bool = False
) -> str:
    """The conversation as text, special tokens spelled out (as apply_chat_template renders)."""
    segs = render_segments(messages, template=template, add_generation_prompt=add_generation_prompt)
    return "".join(s.text for s in segs)


def encode_chat(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    template: str | None = None,
    add_generation_prompt: bool = False,
) -> ChatEncoding:
    """Ids and assistant mask of a conversation. ``template=None`` detects it from the tokenizer."""
    name = template if template is not None else detect_template(tokenizer)
    segs = render_segments(messages, template=name, add_generation_prompt=add_generation_prompt)
    text = "".join(s.text for s in segs)
    spans, pos = [], 0
    for s in segs:
        if s.assistant:
            spans.append((pos, pos + len(s.text)))
        pos += len(s.text)
    ids, offsets = tokenizer.encode_with_offsets(text)
    mask = []
    for start, end in offsets:
        hit = any(
            (start < b and end > a) or (start == end and a <= start < b) for a, b in spans
        )
        mask.append(int(hit))
    return ChatEncoding(list(ids), mask)
