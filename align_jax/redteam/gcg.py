"""Greedy Coordinate Gradient (GCG; Zou et al., arXiv:2307.15043) in JAX.

The attack optimises an adversarial suffix ``s`` (``S`` tokens) placed after the user's request so
that the model's answer starts with a target string ``y``: it minimises the mean cross-entropy of
``y`` given ``before + s + after`` (``before`` / ``after``: the chat template around the suffix).
Each step

1. takes the gradient of that loss with respect to the one-hot matrix of ``s`` (``[S, V]``; the
   embeddings are ``one_hot @ E``), a linear estimate of every single-token swap;
2. samples ``search_width`` candidates, each replacing ``n_replace`` random positions by one of the
   ``topk`` tokens with the most negative gradient there (disallowed tokens excluded);
3. drops candidates that do not survive decode -> encode (the string must mean the same tokens);
4. scores every candidate exactly, in batched forwards over the KV cache of ``before`` (computed
   once), and keeps the best.

Settings and defaults follow nanoGCG (``GCGConfig``): 250 steps, width 512, top-k 256, one swap,
ASCII-only tokens, retokenisation filter, prefix cache.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.models.chat import render_chat
from align_jax.models.decoder import Decoder, KVCache
from align_jax.models.registry import LoadedModel

OPTIM_MARK = "{optim_str}"


@dataclasses.dataclass(frozen=True)
class GCGConfig:
    num_steps: int = 250
    suffix_init: str = "x x x x x x x x x x x x x x x x x x x x"
    search_width: int = 512
    topk: int = 256
    n_replace: int = 1
    batch_size: int = 128  # candidates per scoring forward
    allow_non_ascii: bool = False
    filter_ids: bool = True
    early_stop: bool = False  # stop once the greedy continuation is the target
    seed: int = 0

    def __post_init__(self):
        for name in ("num_steps", "search_width", "topk", "n_replace", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"GCGConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class GCGResult:
    best_loss: float
    best_suffix: str
    best_ids: tuple[int, ...]
    losses: list[float]  # the kept candidate's loss at every step
    suffixes: list[str]
    seconds: float
    step_seconds: list[float]  # wall time of every step (the first includes compilation)


def split_chat(lm: LoadedModel, request: str) -> tuple[list[int], list[int]]:
    """Token ids of the chat-templated conversation before and after the suffix's place (the end
    of the user's turn, or where ``request`` writes ``{optim_str}``)."""
    if lm.chat_template is None:
        raise ValueError(f"model {lm.source!r} has no chat template")
    content = request if OPTIM_MARK in request else request + OPTIM_MARK
    text = render_chat([{"role": "user", "content": content}], template=lm.chat_template, add_generation_prompt=True)
    before, after = text.split(OPTIM_MARK)
    return lm.tokenizer.encode(before), lm.tokenizer.encode(after)


def not_allowed_mask(tokenizer, allow_non_ascii: bool = False) -> np.ndarray:  # [V] bool
    """Tokens a suffix may not use: special tokens, and with ``allow_non_ascii=False`` every token
    that does not decode to printable ASCII (nanoGCG's ``get_nonascii_toks``)."""
    v = tokenizer.vocab_size
    mask = np.zeros(v, bool)
    for i in range(v):
        text = tokenizer.decode([i])
        if not allow_non_ascii and not (text.isascii() and text.isprintable()):
            mask[i] = True
    for i in {tokenizer.eos_id, tokenizer.pad_id, tokenizer.bos_id, tokenizer.unk_id, *tokenizer.eos_ids}:
        if i is not None:
            mask[i] = True
    return mask


def prefix_cache(
    model: Decoder,
    before: Sequence[int],  # P token ids
    max_len: int,  # P + suffix + after + target
) -> KVCache:
    """The KV cache of ``before`` (one row), with room for ``max_len`` tokens."""
    cache = KVCache.init(model.cfg, 1, max_len)
    return model(jnp.asarray([list(before)], jnp.int32), cache=cache, return_logits=False).cache


def _target_loss(model: Decoder, cache: KVCache, suffix_embeds, after, target):
    """Mean target cross-entropy per row: suffix_embeds [B, S, D] -> [B]."""
    b, s, _ = suffix_embeds.shape
    tail = jnp.concatenate([after, target])  # [A + T]
    tail_embeds = jnp.broadcast_to(model.embed_tokens(tail[None]), (b,) + (tail.shape[0], suffix_embeds.shape[-1]))
    embeds = jnp.concatenate([suffix_embeds.astype(tail_embeds.dtype), tail_embeds], axis=1)  # [B, S + A + T, D]
    n = embeds.shape[1]
    start = cache.index
    rows_of = lambda a, axis: jnp.broadcast_to(a, a.shape[:axis] + (b,) + a.shape[axis + 1:])  # the prefix's row, b times
    rows = dataclasses.replace(cache, k=rows_of(cache.k, 1), v=rows_of(cache.v, 1),
                               positions=rows_of(cache.positions, 0), segment_ids=rows_of(cache.segment_ids, 0))
    positions = jnp.broadcast_to(start + jnp.arange(n, dtype=jnp.int32), (b, n))
    tokens = jnp.zeros((b, n), jnp.int32)  # unused: inputs_embeds replaces their embeddings
    out = model(tokens, positions, jnp.ones((b, n), jnp.int32), cache=rows, return_logits=False, inputs_embeds=embeds)
    t = target.shape[0]
    h = out.final_hidden[:, n - t - 1 : n - 1]  # [B, T, D]: the positions that predict the target
    logits = model.logits_from_hidden(h).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, -1)
    nll = -jnp.take_along_axis(logp, jnp.broadcast_to(target, (b, t))[..., None], -1)[..., 0]
    return nll.mean(-1), logits.argmax(-1)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _token_gradient(state, cache, suffix, after, target, *, graphdef):
    model = nnx.merge(graphdef, state)
    embed = model.embed[...]

    def loss_fn(one_hot):  # [S, V]
        e = one_hot @ embed.astype(jnp.float32)
        if model.cfg.embed_scale:
            e = e * jnp.asarray(model.cfg.hidden_size**0.5, e.dtype)
        return _target_loss(model, cache, e[None], after, target)[0][0]

    one_hot = jax.nn.one_hot(suffix, embed.shape[0], dtype=jnp.float32)
    return jax.value_and_grad(loss_fn)(one_hot)


def token_gradient(
    model: Decoder,
    cache: KVCache,
    suffix: jax.Array,  # [S] int
    after: jax.Array,  # [A] int
    target: jax.Array,  # [T] int
) -> tuple[jax.Array, jax.Array]:  # loss [], gradient [S, V]
    """The target loss and its gradient with respect to the suffix's one-hot matrix."""
    graphdef, state = nnx.split(model)
    return _token_gradient(state, cache, jnp.asarray(suffix), jnp.asarray(after), jnp.asarray(target),
                           graphdef=graphdef)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _candidate_losses(state, cache, candidates, after, target, *, graphdef):
    model = nnx.merge(graphdef, state)
    return _target_loss(model, cache, model.embed_tokens(candidates), after, target)


def candidate_losses(
    model: Decoder,
    cache: KVCache,
    candidates: jax.Array,  # [B, S] int
    after: jax.Array,  # [A] int
    target: jax.Array,  # [T] int
) -> tuple[jax.Array, jax.Array]:  # losses [B], greedy target-position predictions [B, T]
    """The target loss of every candidate suffix (one batched forward over the prefix cache)."""
    graphdef, state = nnx.split(model)
    return _candidate_losses(state, cache, jnp.asarray(candidates), jnp.asarray(after), jnp.asarray(target),
                             graphdef=graphdef)


@functools.partial(jax.jit, static_argnames=("width", "topk", "n_replace"))
def sample_candidates(
    key: jax.Array,
    suffix: jax.Array,  # [S] int
    grad: jax.Array,  # [S, V]
    not_allowed: jax.Array,  # [V] bool
    *,
    width: int,
    topk: int,
    n_replace: int,
) -> jax.Array:  # [width, S] int
    """``width`` copies of ``suffix``, each with ``n_replace`` random positions set to one of the
    ``topk`` tokens of most negative gradient there (nanoGCG's ``sample_ids_from_grad``)."""
    s = suffix.shape[0]
    grad = jnp.where(not_allowed[None], jnp.inf, grad)
    top = jax.lax.top_k(-grad, topk)[1]  # [S, K]
    k_pos, k_val = jax.random.split(key)
    positions = jnp.argsort(jax.random.uniform(k_pos, (width, s)), axis=1)[:, :n_replace]  # [W, R]
    choice = jax.random.randint(k_val, (width, n_replace), 0, topk)
    values = top[positions, choice]  # [W, R]
    rows = jnp.broadcast_to(suffix, (width, s))
    return rows.at[jnp.arange(width)[:, None], positions].set(values)


def retokenizes(tokenizer, candidates: np.ndarray) -> np.ndarray:  # [B, S] -> [B] bool
    """Whether each candidate's decoded string encodes back to the same ids."""
    return np.asarray([tokenizer.encode(tokenizer.decode(list(c))) == list(c) for c in candidates])


def run_gcg(
    lm: LoadedModel,
    request: str,
    target: str,
    config: GCGConfig = GCGConfig(),
    *,
    log_every: int = 0,
) -> GCGResult:
    """Optimises a suffix for ``request`` so that the reply starts with ``target``."""
    t0 = time.time()
    tok, model = lm.tokenizer, lm.model
    before, after = split_chat(lm, request)
    target_ids = tok.encode(target)
    suffix = tok.encode(config.suffix_init)
    if not target_ids or not suffix:
        raise ValueError("the target and the initial suffix need at least one token")
    mask = jnp.asarray(not_allowed_mask(tok, config.allow_non_ascii))
    cache = prefix_cache(model, before, len(before) + len(suffix) + len(after) + len(target_ids))
    after_arr, target_arr = jnp.asarray(after, jnp.int32), jnp.asarray(target_ids, jnp.int32)
    suffix_arr = jnp.asarray(suffix, jnp.int32)
    key = jax.random.key(config.seed)
    losses, strings = [], []
    best = (float("inf"), tuple(suffix))
    step_seconds = []
    for step in range(config.num_steps):
        t_step = time.perf_counter()
        _, grad = token_gradient(model, cache, suffix_arr, after_arr, target_arr)
        key, sub = jax.random.split(key)
        cands = np.asarray(sample_candidates(sub, suffix_arr, grad, mask, width=config.search_width,
                                             topk=config.topk, n_replace=config.n_replace))
        if config.filter_ids:
            cands = cands[retokenizes(tok, cands)]
            if not len(cands):
                raise RuntimeError("no candidate survives decode -> encode; set filter_ids=False or change suffix_init")
        n = len(cands)
        padded = np.concatenate([cands, np.repeat(cands[-1:], -n % config.batch_size, 0)])  # fixed shapes: one compile
        cand_losses, hits = [], []
        for i in range(0, len(padded), config.batch_size):
            l, pred = candidate_losses(model, cache, padded[i:i + config.batch_size], after_arr, target_arr)
            cand_losses.append(np.asarray(l))
            hits.append((np.asarray(pred) == np.asarray(target_ids)).all(-1))
        cand_losses = np.concatenate(cand_losses)[:n]
        j = int(np.argmin(cand_losses))
        suffix_arr = jnp.asarray(cands[j])
        losses.append(float(cand_losses[j]))
        strings.append(tok.decode(list(cands[j])))
        if losses[-1] < best[0]:
            best = (losses[-1], tuple(int(t) for t in cands[j]))
        step_seconds.append(time.perf_counter() - t_step)
        if log_every and (step + 1) % log_every == 0:
            print(f"gcg step {step + 1}: loss {losses[-1]:.4f} suffix {strings[-1]!r}", flush=True)
        if config.early_stop and np.concatenate(hits)[:n][j]:
            break
    return GCGResult(best_loss=best[0], best_suffix=tok.decode(list(best[1])), best_ids=best[1], losses=losses,
                     suffixes=strings, seconds=time.time() - t0, step_seconds=step_seconds)
