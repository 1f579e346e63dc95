"""compliance_report on a tiny random decoder with SmolLM2's real tokenizer and chat format."""

import dataclasses

import pytest

from align_jax.data.checkable_pairs import build_checkable_pairs
from align_jax.evals.instruction_compliance import (
    compliance_report,
    format_report_markdown,
    generate_responses,
)
from align_jax.instructions import check
from align_jax.models import LoadedModel, ModelConfig, init_decoder
from align_jax.models.gguf_file import smollm2_gguf_path
from align_jax.models.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tiny_lm():
    tok = Tokenizer.from_gguf(smollm2_gguf_path())
    cfg = ModelConfig(family="llama", vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                      num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, max_position_embeddings=256)
    return LoadedModel(init_decoder(cfg, seed=0), tok, "chatml", "tiny-random")


@pytest.fixture(scope="module")
def examples():
    return [p.example for p in build_checkable_pairs("test", max_pairs=10)]


@pytest.fixture(scope="module")
def report(tiny_lm, examples):
    return compliance_report(tiny_lm, examples, max_new_tokens=8, batch_size=4, num_samples=len(examples))


def test_report_is_well_formed(report, examples):
    assert report["n"] == len(examples) == 10
    assert 0.0 <= report["strict_pass_rate"] <= report["loose_pass_rate"] <= 1.0
    assert 0.0 <= report["truncated_rate"] <= 1.0
    per = report["per_instruction"]
    assert sum(v["n"] for v in per.values()) == len(examples)
    assert set(per) == {e.instruction_id_list[0] for e in examples}
    assert all(0.0 <= v["strict_pass_rate"] <= 1.0 for v in per.values())
    assert report["seconds"] > 0 and report["max_new_tokens"] == 8
    assert [s["prompt"] for s in report["samples"]] == [e.prompt for e in examples]


def test_pass_rates_agree_with_the_verifiers(report, examples):
    passed = [
        check(e.instruction_id_list[0], s["response"], e.kwargs[0])
        for e, s in zip(examples, report["samples"])
    ]
    assert [s["strict_pass"] for s in report["samples"]] == passed
    assert report["strict_pass_rate"] == pytest.approx(sum(passed) / len(passed))


def test_batching_and_padding_do_not_change_greedy_outputs(tiny_lm, examples, report):
    prompts = [e.prompt for e in examples]
    texts, truncated = generate_responses(tiny_lm, prompts, max_new_tokens=8, batch_size=16)
    assert texts == [s["response"] for s in report["samples"]]
    assert len(truncated) == len(prompts)


def test_needs_a_chat_template(tiny_lm, examples):
    with pytest.raises(ValueError, match="chat template"):
        compliance_report(dataclasses.replace(tiny_lm, chat_template=None), examples)
    with pytest.raises(ValueError, match="no examples"):
        compliance_report(tiny_lm, [])


def test_markdown_table():
    before = {"strict_pass_rate": 0.25, "n": 4, "per_instruction": {
        "a:x": {"n": 2, "strict_pass_rate": 0.5}, "b:y": {"n": 2, "strict_pass_rate": 0.0}}}
    after = {"strict_pass_rate": 0.75, "n": 4, "per_instruction": {
        "a:x": {"n": 2, "strict_pass_rate": 1.0}, "c:z": {"n": 2, "strict_pass_rate": 0.5}}}
    table = format_report_markdown(before, after).splitlines()
    assert table[2] == "| **all** | 4 | 0.250 | 0.750 | +0.500 |"
    assert "| `a:x` | 2 | 0.500 | 1.000 | +0.500 |" in table
    assert "| `b:y` | 2 / 0 | 0.000 | - | - |" in table
    assert "| `c:z` | 0 / 2 | - | 0.500 | - |" in table
