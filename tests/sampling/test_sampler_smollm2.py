"""Greedy SmolLM2-135M-Instruct completions equal ``transformers`` greedy generation.

Our sampler runs the chat prompts as one left-padded batch; transformers generates one prompt at a
time (no padding) from the same GGUF weights. Also compares our untempered per-token log-probs with
log_softmax of transformers' raw logits.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from align_jax.models.chat import encode_chat
from align_jax.models.registry import load_model
from align_jax.sampling import SamplingParams, sample

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "Hi!",
    "Write one sentence about the ocean.",
    "List three primary colors, separated by commas, and say nothing else. Be brief and precise, please.",
]
MAX_NEW = 24


@pytest.fixture(scope="module")
def loaded():
    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def hf_model(loaded):
    import transformers

    path = Path(loaded.source)
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()


def test_greedy_matches_transformers(loaded, hf_model):
    tok = loaded.tokenizer
    prompts = [encode_chat(tok, [{"role": "user", "content": q}], template=loaded.chat_template,
                           add_generation_prompt=True).ids
               for q in QUESTIONS]
    assert len({len(p) for p in prompts}) >= 3  # really different lengths (left padding is exercised)
    eos = sorted(tok.eos_ids)
    out = sample(loaded.model, prompts, SamplingParams(temperature=0, max_new_tokens=MAX_NEW),
                 eos_ids=eos, pad_id=tok.pad_id)
    tokens, mask = np.asarray(out.tokens), np.asarray(out.completion_mask)
    model_lp = np.asarray(out.model_logprobs)
    stopped = 0
    for i, p in enumerate(prompts):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                    do_sample=False, max_new_tokens=MAX_NEW, eos_token_id=eos,
                                    pad_token_id=tok.pad_id, return_dict_in_generate=True, output_logits=True)
        ref_new = ref.sequences[0, len(p):].tolist()
        ours = tokens[i, : mask[i].sum()].tolist()
        assert ours == ref_new, (QUESTIONS[i], tok.decode(ours), tok.decode(ref_new))
        stopped += ours[-1] in eos
        ref_lp = torch.log_softmax(torch.stack(ref.logits)[:, 0].float(), -1)
        ref_lp = ref_lp[torch.arange(len(ref_new)), torch.tensor(ref_new)].numpy()
        np.testing.assert_allclose(model_lp[i, : len(ours)], ref_lp, atol=2e-3)
    assert stopped >= 1  # at least one completion ended on EOS before MAX_NEW
    assert "Paris" in tok.decode(tokens[0, : mask[0].sum()])
