"""``generate_sampled``: n samples per chat prompt in fixed-shape batches, against the sampler itself."""

import numpy as np
import pytest

from align_jax.models import LoadedModel, ModelConfig, init_decoder
from align_jax.models.gguf_file import smollm2_gguf_path
from align_jax.models.tokenizer import Tokenizer
from align_jax.sampling.decoding import SamplingParams
from align_jax.sampling.greedy import PROMPT_BUCKET, chat_ids, generate_greedy, generate_sampled
from align_jax.sampling.sampler import sample


@pytest.fixture(scope="module")
def tiny_lm():
    tok = Tokenizer.from_gguf(smollm2_gguf_path())
    cfg = ModelConfig(family="llama", vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                      num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, max_position_embeddings=256)
    return LoadedModel(init_decoder(cfg, seed=0), tok, "chatml", "tiny")


def _prompts(lm):
    return [chat_ids(lm, [{"role": "user", "content": q}]) for q in ("Say hi.", "Name a colour.", "Count to 3.")]


def test_rows_are_the_samplers_rows_with_one_seed_per_batch(tiny_lm):
    prompts = _prompts(tiny_lm)
    out = generate_sampled(tiny_lm, prompts, n=3, max_new_tokens=6, batch_size=2, temperature=1.0, seed=7)
    assert [len(g) for g in out] == [3, 3, 3]
    tok = tiny_lm.tokenizer
    width = -(-max(len(p) for p in prompts) // PROMPT_BUCKET) * PROMPT_BUCKET
    for b, batch in enumerate(([prompts[0], prompts[1]], [prompts[2], prompts[2]])):  # the last batch is padded
        ref = sample(tiny_lm.model, batch, SamplingParams(n=3, max_new_tokens=6, temperature=1.0, seed=7 + b),
                     eos_ids=sorted(tok.eos_ids), pad_id=tok.pad_id or 0, prompt_bucket=width)
        tokens, mask = np.asarray(ref.tokens), np.asarray(ref.completion_mask)
        for i in range(2 if b == 0 else 1):
            for j in range(3):
                row, gen = i * 3 + j, out[2 * b + i][j]
                assert gen.token_ids == tuple(int(t) for t in tokens[row, :int(mask[row].sum())])
                np.testing.assert_allclose(gen.logprobs, np.asarray(ref.model_logprobs)[row, :len(gen.token_ids)])
    again = generate_sampled(tiny_lm, prompts, n=3, max_new_tokens=6, batch_size=2, temperature=1.0, seed=7)
    assert [[g.token_ids for g in gs] for gs in again] == [[g.token_ids for g in gs] for gs in out]
    other = generate_sampled(tiny_lm, prompts, n=3, max_new_tokens=6, batch_size=2, temperature=1.0, seed=8)
    assert [[g.token_ids for g in gs] for gs in other] != [[g.token_ids for g in gs] for gs in out]


def test_temperature_zero_is_greedy(tiny_lm):
    prompts = _prompts(tiny_lm)
    greedy = generate_greedy(tiny_lm, prompts, max_new_tokens=5, batch_size=2)
    sampled = generate_sampled(tiny_lm, prompts, n=2, max_new_tokens=5, batch_size=2, temperature=0.0)
    for g, gs in zip(greedy, sampled, strict=True):
        assert all(s.token_ids == g.token_ids for s in gs)
    with pytest.raises(ValueError, match="n must be >= 1"):
        generate_sampled(tiny_lm, prompts, n=0, max_new_tokens=5, batch_size=2)
