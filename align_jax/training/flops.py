"""Model FLOPs per token (for MFU) and a measured matmul peak of the local device.

FLOPs count multiply-adds as 2, as in the PaLM paper (Chowdhery et al. 2022, arXiv:2204.02311,
appendix B). With ``N`` the matmul parameters, ``L`` layers, ``H`` query heads of size ``Dh`` and
``T`` the sequence length (keys each query attends to):

    forward   = 2·N + 4·L·T·H·Dh    per token
    training  = 6·N + 12·L·T·H·Dh   per token (backward = 2 × forward)

``N`` = L·(D·Dh·(2H + 2K) + 3·D·M) + D·V: the q/k/v/o projections (K key/value heads), the gated
MLP's gate/up/down (intermediate size M) and the unembedding (D·V, tied or not). The embedding
lookup is a gather, not a matmul, and is excluded, as are norms, biases, RoPE, softmax and
activations (together a few percent at realistic sizes). The attention term is QKᵀ (2·T·Dh per
query and head) plus attention-weighted values (2·T·Dh); like PaLM it counts all T keys, not T/2 for
the causal mask, which is also what our dense attention computes (sliding-window layers too).

These are *model* FLOPs: recomputation by rematerialisation is not counted, so MFU = achieved model
FLOP/s / peak FLOP/s is comparable across remat policies.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from align_jax.models.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that take part in matmuls: projections, MLP and unembedding (not the embedding lookup)."""
    d, h, k, dh, m = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    per_layer = d * dh * (2 * h + 2 * k) + 3 * d * m
    return cfg.num_layers * per_layer + d * cfg.vocab_size


def attention_flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs of attention scores and weighted values per token: 4·L·T·H·Dh."""
    return 4 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim


def model_flops_per_token(cfg: ModelConfig, seq_len: int, *, training: bool) -> int:
    """6·N + 12·L·T·H·Dh when ``training`` (forward + backward), else 2·N + 4·L·T·H·Dh.

    For a full-sequence pass ``seq_len`` is the (padded or packed) sequence length; for one decoding
    step it is the number of cached positions attended to.
    """
    forward = 2 * matmul_params(cfg) + attention_flops_per_token(cfg, seq_len)
    return 3 * forward if training else forward


def measure_matmul_peak(
    dtype: str = "float32",
    size: int = 2048,
    repeats: int = 10,
    *,
    matmuls_per_call: int = 8,
    warmup: int = 2,
    device: jax.Device | None = None,
) -> float:
    """Achieved FLOP/s of square ``size`` × ``size`` matmuls on one device (default: the first).

    One jitted call runs ``matmuls_per_call`` dependent matmuls (to amortise dispatch); each call is
    timed to ``block_until_ready`` and the median of ``repeats`` calls is used, after ``warmup``
    calls (compilation included) that are not timed. Matmuls use JAX's default precision, which on
    GPUs/TPUs may run float32 in reduced-precision passes (see ``jax_default_matmul_precision``).
    Use it as the ``peak_flops`` of MFU when the vendor's peak is unknown; it is a lower bound on
    the true peak.
    """
    device = device or jax.devices()[0]
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(ka, (size, size), dtype), device)
    # Scaled so that repeated products neither overflow nor underflow.
    b = jax.device_put((jax.random.normal(kb, (size, size), jnp.float32) / size**0.5).astype(dtype), device)

    @jax.jit
    def chain(x, w):  # low-precision operands accumulate in float32, as the model's matmuls do
        mm = lambda _, y: jnp.dot(y, w, preferred_element_type=jnp.float32).astype(y.dtype)  # noqa: E731
        return jax.lax.fori_loop(0, matmuls_per_call, mm, x)

    for _ in range(max(1, warmup)):
        chain(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        chain(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 * matmuls_per_call / statistics.median(times)
