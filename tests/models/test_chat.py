"""Chat formats against transformers' apply_chat_template (jinja) and an independent mask check."""

from __future__ import annotations


import pytest

from align_jax.models import chat, gguf_file
from align_jax.models.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
from test_tokenizer import _gguf, hf_reference, with_smollm2_upstream_pretokenizer  # noqa: E402

pytestmark = pytest.mark.slow  # real models' tokenizers built by transformers

# Gemma 3's chat template as published in google/gemma-3-*-it tokenizer_config.json (text-only
# branches kept). The packaged Gemma GGUF is the base model and carries no template.
GEMMA3_OFFICIAL_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "12 + 30 = 42."}],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "  Hello, how are you?  "},
        {"role": "assistant", "content": " Très bien, merci ! 😀 "},
        {"role": "user", "content": "Write code."},
        {"role": "assistant", "content": "```py\ndef f(x):\n\treturn x  # ok\n```\n\nDone."},
    ],
    [
        {"role": "user", "content": "日本語で答えて。"},
        {"role": "assistant", "content": "はい、わかりました。"},
        {"role": "user", "content": "Say <|im_end|> or <end_of_turn> literally"},
        {"role": "assistant", "content": ""},
    ],
]


def _hf_reference(kind: str):
    """(ours, transformers' tokenizer) for the packaged GGUF, via test_tokenizer.py's cache."""
    ref = hf_reference(kind)
    if kind == "smollm2":  # SmolLM2's own pre-tokenizer (see test_tokenizer.py)
        with_smollm2_upstream_pretokenizer(ref)
    return Tokenizer.from_gguf(_gguf(kind)), ref


@pytest.fixture(scope="module")
def smollm2():
    return _hf_reference("smollm2")


@pytest.fixture(scope="module")
def gemma3():
    return _hf_reference("gemma3")


def _hf_chat(ref, messages, template, generation, tokenize=True):
    out = ref.apply_chat_template(
        messages, tokenize=tokenize, add_generation_prompt=generation, chat_template=template
    )
    return out["input_ids"] if tokenize and not isinstance(out, list) else out


def _expected_assistant_text(messages, kind):
    """What the mask must cover, from the messages alone."""
    if kind == "smollm2":
        return "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
    return "".join(m["content"].strip() + "<end_of_turn>" for m in messages if m["role"] == "assistant")


@pytest.mark.parametrize("kind", ["smollm2", "gemma3"])
@pytest.mark.parametrize("generation", [False, True])
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_encode_chat_matches_apply_chat_template(kind, generation, conv, request):
    tok, ref = request.getfixturevalue(kind)
    messages = CONVERSATIONS[conv]
    template = ref.chat_template if kind == "smollm2" else GEMMA3_OFFICIAL_TEMPLATE
    name = chat.detect_template(tok)
    assert name == {"smollm2": "chatml", "gemma3": "gemma"}[kind]

    enc = chat.encode_chat(tok, messages, add_generation_prompt=generation)
    assert enc.ids == _hf_chat(ref, messages, template, generation)
    assert chat.render_chat(messages, template=name, add_generation_prompt=generation) == _hf_chat(
        ref, messages, template, generation, tokenize=False
    )
    assert len(enc.assistant_mask) == len(enc.ids)
    masked = [i for i, m in zip(enc.ids, enc.assistant_mask) if m]
    assert tok.decode(masked) == _expected_assistant_text(messages, kind)
    # every assistant turn ends with a stop token, and nothing outside assistant turns is masked
    n_turns = sum(m["role"] == "assistant" for m in messages)
    assert sum(1 for i in masked if i in tok.eos_ids) == n_turns
    if kind == "smollm2" and messages[0]["role"] != "system":
        assert chat.SMOLLM_DEFAULT_SYSTEM in tok.decode(enc.ids)


def test_exported_jinja_templates_agree_with_python(gemma3, smollm2):
    for (tok, ref), name in ((smollm2, "chatml"), (gemma3, "gemma")):
        for messages in CONVERSATIONS:
            for generation in (False, True):
                assert _hf_chat(ref, messages, chat.jinja_template(name), generation) == chat.encode_chat(
                    tok, messages, template=name, add_generation_prompt=generation
                ).ids


def test_detect_template_from_metadata():
    smol = gguf_file.read_metadata(gguf_file.smollm2_gguf_path())
    assert chat.detect_template(smol) == "chatml"
    assert chat.detect_template({"chat_template": smol["tokenizer.chat_template"]}) == "chatml"
    assert chat.detect_template({"chat_template": chat.jinja_template("chatml_plain")}) == "chatml_plain"
    assert chat.detect_template(GEMMA3_OFFICIAL_TEMPLATE) == "gemma"
    assert chat.detect_template({"tokenizer.ggml.tokens": ["<bos>", "<start_of_turn>"]}) == "gemma"
    with pytest.raises(ValueError, match="chatml"):
        chat.detect_template({"chat_template": "{{ messages }}"})


def test_bad_input_errors(smollm2):
    tok, _ = smollm2
    with pytest.raises(ValueError, match=r"'nope'.*\['chatml', 'chatml_plain', 'gemma'\]"):
        chat.encode_chat(tok, CONVERSATIONS[0], template="nope")
    with pytest.raises(ValueError, match="alternate"):
        chat.render_chat([{"role": "assistant", "content": "x"}], template="gemma")
    with pytest.raises(ValueError, match="role"):
        chat.render_chat([{"content": "x"}], template="chatml")
