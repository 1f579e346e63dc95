"""Model FLOPs per token: a hand count, the parameter count, and XLA's cost analysis."""

import itertools
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from align_jax.models.config import ModelConfig
from align_jax.models.decoder import init_decoder
from align_jax.training import flops
from align_jax.training.flops import matmul_params, measure_matmul_peak, model_flops_per_token

TINY = ModelConfig(
    family="llama", vocab_size=512, hidden_size=64, intermediate_size=192, num_layers=2,
    num_heads=4, num_kv_heads=2, head_dim=16, tie_embeddings=False, scan_layers=False,
)


def test_hand_count():
    # Per layer: q 64x64, k 64x32, v 64x32, o 64x64, gate/up 64x192, down 192x64; unembed 64x512.
    per_layer = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 2 * 64 * 192 + 192 * 64
    n = 2 * per_layer + 64 * 512
    assert n == 131_072 and matmul_params(TINY) == n
    attention = 2 * 2 * (2 * 64 * 4 * 16)  # layers x (QK^T + AV) x 2*T*H*Dh, T = 64
    assert model_flops_per_token(TINY, 64, training=False) == 2 * n + attention == 294_912
    assert model_flops_per_token(TINY, 64, training=True) == 6 * n + 3 * attention == 884_736
    # 12·L·T·H·Dh, the PaLM appendix B attention term:
    assert 3 * attention == 12 * 2 * 64 * 4 * 16


def test_agrees_with_parameter_count_and_ignores_tying():
    norms = TINY.num_layers * 2 * TINY.hidden_size + TINY.hidden_size
    embedding = TINY.vocab_size * TINY.hidden_size
    assert matmul_params(TINY) == TINY.num_params() - norms - embedding
    assert matmul_params(TINY.replace(tie_embeddings=True)) == matmul_params(TINY)  # still unembeds
    longer = model_flops_per_token(TINY, 128, training=True) - model_flops_per_token(TINY, 64, training=True)
    assert longer == 12 * 2 * 64 * 4 * 16  # linear in T


def _xla_flops(fn, *args) -> float:
    """XLA's own FLOP count; a compile failure or a missing count fails the test (never a skip)."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    assert cost and "flops" in cost, f"cost_analysis gave no flops on {jax.default_backend()}: {cost}"
    return float(cost["flops"])


@pytest.mark.parametrize("training", [False, True])
def test_matches_xla_cost_analysis(training):
    batch, seq = 2, 64
    graphdef, state = nnx.split(init_decoder(TINY))
    tokens = jax.random.randint(jax.random.key(1), (batch, seq), 0, TINY.vocab_size)

    def logits(state, tokens):
        return nnx.merge(graphdef, state).forward(tokens, None, None, None, True, False).logits

    def loss(state, tokens):
        logp = jax.nn.log_softmax(logits(state, tokens).astype(jnp.float32))
        return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], axis=-1))

    measured = _xla_flops(jax.grad(loss) if training else logits, state, tokens)
    predicted = model_flops_per_token(TINY, seq, training=training) * batch * seq
    # The formula counts matmuls only; XLA adds softmax, norms, activations (a few % here).
    assert 0.99 <= measured / predicted <= 1.10, (measured, predicted)


def test_measure_matmul_peak_arithmetic(monkeypatch):
    ticks = itertools.count()
    monkeypatch.setattr(flops.time, "perf_counter", lambda: 0.5 * next(ticks))  # every call 0.5 s
    assert measure_matmul_peak(size=64, repeats=3, matmuls_per_call=2) == 2 * 64**3 * 2 / 0.5


def test_measure_matmul_peak_is_plausible():
    peak = measure_matmul_peak(size=128, repeats=3, matmuls_per_call=2)
    assert math.isfinite(peak) and 1e6 < peak < 1e14
    assert measure_matmul_peak("bfloat16", size=64, repeats=2) > 0
