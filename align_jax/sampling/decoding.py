"""Decoding options and the logit processors that turn raw logits into a sampling distribution.

Order (as in Hugging Face ``generate``): temperature, then top-k, then top-p, then min-p. Each
truncation acts on the distribution left by the previous one, and the result is renormalised,
so ``sampling_logprobs`` is exactly the distribution a token was drawn from. ``temperature=0``
is greedy decoding: the distribution is a point mass on the argmax (log-prob 0).

The *structure* of the processing (greedy or not, k, whether top-p / min-p run) is static and
part of the compiled program; the values of temperature, top-p and min-p are traced, so changing
them does not recompile.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to decode. Defaults: plain sampling at temperature 1, 64 new tokens, 1 sample per prompt.

    temperature: 0 = greedy; > 0 divides the logits.   top_k: 0 = off, else keep the k most likely.
    top_p: nucleus mass in (0, 1]; 1 = off.            min_p: in [0, 1); keep p >= min_p * max p.
    n: samples per prompt (the prompt is prefilled once and its cache repeated n times).
    max_new_tokens: completion length cap.  stop_sequences: token-id sequences that end a
    completion (included in it), on top of ``eos_ids`` given to the sampler.
    ignore_eos: never stop early (benchmarks).  seed: PRNG seed; same seed, same samples.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    n: int = 1
    max_new_tokens: int = 64
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    ignore_eos: bool = False
    seed: int = 0

    def __post_init__(self):
        def fail(msg):
            raise ValueError(f"invalid SamplingParams: {msg}")

        if not isinstance(self.temperature, (int, float)) or not self.temperature >= 0:
            fail(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            fail(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            fail(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not isinstance(self.min_p, (int, float)) or not 0.0 <= self.min_p < 1.0:
            fail(f"min_p must be in [0, 1) (0 = off), got {self.min_p!r}")
        if not isinstance(self.n, int) or self.n < 1:
            fail(f"n (samples per prompt) must be an integer >= 1, got {self.n!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            fail(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        seqs = tuple(tuple(int(t) for t in s) for s in self.stop_sequences)
        if any(len(s) == 0 for s in seqs):
            fail("stop_sequences must not contain an empty sequence")
        if any(t < 0 for s in seqs for t in s):
            fail(f"stop_sequences must hold non-negative token ids, got {seqs}")
        object.__setattr__(self, "stop_sequences", seqs)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def structure(self) -> "DecodeStructure":
        return DecodeStructure(
            greedy=self.greedy,
            top_k=self.top_k,
            use_top_p=(not self.greedy) and self.top_p < 1.0,
            use_min_p=(not self.greedy) and self.min_p > 0.0,
        )

    def values(self) -> "DecodeValues":
        return DecodeValues(
            temperature=jnp.float32(self.temperature if self.temperature > 0 else 1.0),
            top_p=jnp.float32(self.top_p),
            min_p=jnp.float32(self.min_p),
        )


class DecodeStructure(NamedTuple):
    """The static (compile-time) part of the decoding options."""

    greedy: bool
    top_k: int
    use_top_p: bool
    use_min_p: bool


class DecodeValues(NamedTuple):
    """The traced part of the decoding options (float32 scalars)."""

    temperature: jax.Array
    top_p: jax.Array
    min_p: jax.Array


def top_k_mask(logits: jax.Array, k: int) -> jax.Array:  # [B, V] -> [B, V] bool (True = keep)
    """Keeps the k largest logits (ties at the k-th value are all kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return jnp.ones(logits.shape, bool)
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return logits >= kth


def top_p_mask(logprobs: jax.Array, top_p: jax.Array) -> jax.Array:  # [B, V] -> [B, V] bool
    """Smallest set of most likely tokens whose mass reaches ``top_p`` (the top token always kept)."""
    sorted_lp = jnp.sort(logprobs, axis=-1)[..., ::-1]
    probs = jnp.exp(sorted_lp)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted token
    keep_sorted = mass_before < top_p
    keep_sorted = keep_sorted.at[..., 0].set(True)
    # The smallest kept log-prob is the threshold; everything at least that likely stays.
    threshold = jnp.min(jnp.where(keep_sorted, sorted_lp, jnp.inf), axis=-1, keepdims=True)
    return logprobs >= threshold


def min_p_mask(logprobs: jax.Array, min_p: jax.Array) -> jax.Array:  # [B, V] -> [B, V] bool
    """Keeps tokens with p >= min_p * max p."""
    top = jnp.max(logprobs, axis=-1, keepdims=True)
    return logprobs >= top + jnp.log(min_p)


def sampling_logprobs(
    logits: jax.Array,  # [B, V] raw model logits
    structure: DecodeStructure,
    values: DecodeValues,
) -> jax.Array:  # [B, V] float32 log-probs of the sampling distribution, -inf where excluded
    """log of the distribution tokens are drawn from (temperature, then truncations, renormalised)."""
    logits = logits.astype(jnp.float32)
    if structure.greedy:
        best = jnp.argmax(logits, axis=-1)
        return jnp.where(jax.nn.one_hot(best, logits.shape[-1], dtype=bool), 0.0, NEG_INF)
    lp = jax.nn.log_softmax(logits / values.temperature, axis=-1)
    if structure.top_k:
        lp = jax.nn.log_softmax(jnp.where(top_k_mask(lp, structure.top_k), lp, NEG_INF), axis=-1)
    if structure.use_top_p:
        lp = jax.nn.log_softmax(jnp.where(top_p_mask(lp, values.top_p), lp, NEG_INF), axis=-1)
    if structure.use_min_p:
        lp = jax.nn.log_softmax(jnp.where(min_p_mask(lp, values.min_p), lp, NEG_INF), axis=-1)
    return lp


def greedy_argmax(
    logits: jax.Array,  # [B, V] float32
) -> tuple[jax.Array, jax.Array]:  # ([B] int32 first index of the row maximum, [B] the maximum)
    """The first index of each row's maximum, and the maximum.

    Same tokens as ``jnp.argmax`` (ties go to the lowest index), as two plain reductions: XLA:CPU
    lowers ``argmax`` to a variadic (value, index) reduce that ran at a fraction of the speed of a
    max, 6 of the ~95 ms of a batch-64 decode step over SmolLM2's 49k vocabulary.
    """
    top = jnp.max(logits, axis=-1)
    iota = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    idx = jnp.min(jnp.where(logits == top[..., None], iota, logits.shape[-1] - 1), axis=-1)
    return idx, top


class TokenChoice(NamedTuple):
    tokens: jax.Array  # [B] int32
    sampling_logprobs: jax.Array  # [B] float32, under the sampling distribution
    model_logprobs: jax.Array  # [B] float32, log_softmax of the raw logits


def choose_tokens(
    key: jax.Array,  # [] PRNG key
    logits: jax.Array,  # [B, V]
    structure: DecodeStructure,
    values: DecodeValues,
) -> TokenChoice:
    """Draws one token per row and returns its log-probs under both distributions."""
    logits = logits.astype(jnp.float32)
    if structure.greedy:  # the chosen token's log-prob is max - logsumexp = -log(sum(exp(logits - max)))
        tokens, top = greedy_argmax(logits)
        model = -jnp.log(jnp.sum(jnp.exp(logits - top[:, None]), axis=-1))
        return TokenChoice(tokens, jnp.zeros(tokens.shape, jnp.float32), model)
    model_lp = jax.nn.log_softmax(logits, axis=-1)
    lp = sampling_logprobs(logits, structure, values)
    tokens = jax.random.categorical(key, lp, axis=-1).astype(jnp.int32)
    samp = jnp.take_along_axis(lp, tokens[:, None], axis=-1)[:, 0]
    model = jnp.take_along_axis(model_lp, tokens[:, None], axis=-1)[:, 0]
    return TokenChoice(tokens, samp, model)
