"""Batched KV-cache sampling: one compiled program does prefill and the whole decode loop.

Prompts of different lengths are LEFT-padded (padding has segment id 0, positions are
``cumsum(mask) - 1``), so the last column of every row is a real token and padding is never
attended. The prompt is prefilled once; its cache is repeated ``n`` times (rows ``i*n .. i*n+n-1``
are prompt ``i``'s samples) and a ``lax.while_loop`` decodes one token per step, leaving as soon as
every row has stopped (EOS id, stop sequence, or ``max_new_tokens``). The KV cache is allocated
inside the program and carried by the loop, so XLA updates it in place; nothing runs on the host
between steps.

Shapes are bucketed (prompt length to a multiple of ``prompt_bucket``, the completion buffer to a
multiple of ``new_tokens_bucket``; ``max_new_tokens`` itself is a traced value) so that differently
sized requests reuse compiled programs.

Under a mesh, pass the model already placed by ``shard_model`` and the same ``mesh``/``rules``:
the batch is split over the rule for ``batch`` (data, fsdp) and the cache follows the same table.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from align_jax.models.decoder import Decoder, KVCache, unstack_layers
from align_jax.models.interventions import SITES, Intervention
from align_jax.parallel.rules import DEFAULT_RULES, Rules, batch_sharding, logical_to_spec
from align_jax.sampling.decoding import DecodeStructure, DecodeValues, SamplingParams, choose_tokens


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SampleOutput:
    """Completions of ``B`` prompts x ``n`` samples (row ``i*n + j`` = sample j of prompt i).

    The full sequence of a row is ``concat(prompt_tokens, tokens)`` with mask
    ``concat(prompt_mask, completion_mask)`` and positions ``cumsum(mask) - 1``: what a trainer
    feeds to a teacher-forced pass to get ``model_logprobs`` back.
    """

    tokens: jax.Array  # [B*n, M] int32; pad_id after the stop
    completion_mask: jax.Array  # [B*n, M] int32; 1 up to and including the stop token
    sampling_logprobs: jax.Array  # [B*n, M] float32; under the sampling distribution (0 when greedy)
    model_logprobs: jax.Array  # [B*n, M] float32; log_softmax of the raw logits
    prompt_tokens: jax.Array  # [B*n, P] int32, left-padded with pad_id
    prompt_mask: jax.Array  # [B*n, P] int32

    @property
    def lengths(self) -> jax.Array:  # [B*n]
        return self.completion_mask.sum(-1)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def pad_prompts(
    prompts: Sequence[Sequence[int]], pad_id: int, bucket: int = 32
) -> tuple[np.ndarray, np.ndarray]:  # ([B, P] int32, [B, P] int32)
    """Left-pads token-id lists to a common length rounded up to ``bucket``."""
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    lengths = [len(p) for p in prompts]
    empty = [i for i, n in enumerate(lengths) if n == 0]
    if empty:
        raise ValueError(f"prompts {empty} are empty; every prompt needs at least one token")
    width = _round_up(max(lengths), bucket)
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p) :] = np.asarray(p, np.int32)
        mask[i, width - len(p) :] = 1
    return tokens, mask


class _Loop(NamedTuple):
    step: jax.Array  # [] int32: index of the next token to produce
    cache: KVCache
    last: jax.Array  # [R] int32 last produced token
    pos: jax.Array  # [R] int32 position of ``last``
    done: jax.Array  # [R] bool
    tokens: jax.Array  # [R, S + M] int32 (S = longest stop sequence - 1 leading -1s)
    mask: jax.Array  # [R, M] int32
    samp_lp: jax.Array  # [R, M] float32
    model_lp: jax.Array  # [R, M] float32


def _constrain(x, sharding):
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef", "structure", "n", "buffer_len", "cache_len", "pad_id", "shardings", "hoist_weights",
    ),
)
def sample_program(
    state: nnx.State,
    prompt_tokens: jax.Array,  # [B, P] int32, left-padded
    prompt_mask: jax.Array,  # [B, P] int32
    key: jax.Array,  # [] PRNG key
    values: DecodeValues,
    max_new_tokens: jax.Array,  # [] int32, <= buffer_len
    eos_ids: jax.Array,  # [E] int32 (-1 = unused)
    stop_sequences: jax.Array,  # [S, L] int32, right-aligned, -1 = no constraint; S may be 0
    *,
    graphdef,
    structure: DecodeStructure,
    n: int,
    buffer_len: int,
    cache_len: int,
    pad_id: int,
    shardings: tuple[NamedSharding, NamedSharding, NamedSharding] | None,
    hoist_weights: bool,
    intervention: Intervention | None = None,
):
    model: Decoder = nnx.merge(graphdef, state)
    cfg = model.cfg
    b, p = prompt_tokens.shape
    rows = b * n
    kv_sharding, row_sharding, row2_sharding = shardings or (None, None, None)

    # Prefill: every prompt once, into a cache of the prompt's own width (its attention reads the
    # prompt only), logits only at the last (real) column; then the cache is widened to cache_len
    # (empty slots: segment 0) and repeated n times.
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=-1) - 1, 0).astype(jnp.int32)
    prefill_cache = KVCache.init(cfg, b, p)
    prefill_cache = dataclasses.replace(prefill_cache, k=_constrain(prefill_cache.k, kv_sharding),
                                        v=_constrain(prefill_cache.v, kv_sharding))
    out = model(prompt_tokens, positions, prompt_mask, cache=prefill_cache, return_logits=False,
                intervention=intervention)
    last_logits = model.logits_from_hidden(out.final_hidden[:, -1])  # [B, V]

    rep = lambda x, axis: jnp.repeat(x, n, axis=axis) if n > 1 else x

    def widen(x, axis, slot_axis):  # each prompt's rows repeated n times; the slot axis padded to cache_len
        return jnp.pad(rep(x, axis), [(0, cache_len - p if a == slot_axis else 0) for a in range(x.ndim)])

    c = out.cache
    cache = KVCache(
        k=_constrain(widen(c.k, 1, 3), kv_sharding),  # [L, B*n, K, S, H]
        v=_constrain(widen(c.v, 1, 3), kv_sharding),
        positions=_constrain(widen(c.positions, 0, 1), row2_sharding),  # [B*n, S]
        segment_ids=_constrain(widen(c.segment_ids, 0, 1), row2_sharding),
        index=c.index,
    )
    last_logits = _constrain(rep(last_logits, 0), row2_sharding)
    next_pos = _constrain(rep(positions[:, -1] + 1, 0), row_sharding)

    lead = stop_sequences.shape[1] - 1

    def record(loop: _Loop, logits) -> _Loop:
        i = loop.step
        choice = choose_tokens(jax.random.fold_in(key, i), logits, structure, values)
        live = ~loop.done
        tok = jnp.where(live, choice.tokens, pad_id)
        tokens = jax.lax.dynamic_update_slice(loop.tokens, tok[:, None], (0, lead + i))
        stop = (tok[:, None] == eos_ids[None]).any(-1) | (i + 1 >= max_new_tokens)
        if stop_sequences.shape[0]:
            window = jax.lax.dynamic_slice(tokens, (0, i), (rows, lead + 1))  # [R, L]
            hit = (window[:, None, :] == stop_sequences[None]) | (stop_sequences[None] < 0)
            stop |= hit.all(-1).any(-1)
        col = lambda buf, v: jax.lax.dynamic_update_slice(buf, v[:, None].astype(buf.dtype), (0, i))
        return loop._replace(
            step=i + 1,
            last=tok,
            done=loop.done | stop,
            tokens=tokens,
            mask=col(loop.mask, live.astype(jnp.int32)),
            samp_lp=col(loop.samp_lp, jnp.where(live, choice.sampling_logprobs, 0.0)),
            model_lp=col(loop.model_lp, jnp.where(live, choice.model_logprobs, 0.0)),
        )

    zeros = lambda dt: _constrain(jnp.zeros((rows, buffer_len), dt), row2_sharding)
    loop = _Loop(
        step=jnp.zeros((), jnp.int32),
        cache=cache.per_layer() if hoist_weights else cache,
        last=jnp.zeros((rows,), jnp.int32),
        pos=next_pos - 1,
        done=jnp.zeros((rows,), bool),
        tokens=_constrain(jnp.full((rows, lead + buffer_len), -1, jnp.int32), row2_sharding),
        mask=zeros(jnp.int32),
        samp_lp=zeros(jnp.float32),
        model_lp=zeros(jnp.float32),
    )
    loop = record(loop, last_logits)

    # Loop invariants computed once: per-layer weights and the [D, V] unembedding (see ``sample``).
    layer_states = _as_matmul_operands(unstack_layers(model), model.cfg) if hoist_weights else None
    unembedding = model.unembedding().astype(model.cfg.jnp_matmul_dtype) if hoist_weights else None

    def cond(loop: _Loop):
        return (loop.step < max_new_tokens) & ~loop.done.all()

    def body(loop: _Loop) -> _Loop:
        pos = loop.pos + 1
        ones = jnp.ones((rows, 1), jnp.int32)
        out = model.forward(loop.last[:, None], pos[:, None], ones, loop.cache, return_logits=False,
                            return_hidden_states=False, layer_states=layer_states, intervention=intervention)
        loop = loop._replace(cache=out.cache, pos=pos)
        return record(loop, model.logits_from_hidden(out.final_hidden[:, 0], unembedding))

    loop = jax.lax.while_loop(cond, body, loop)
    tokens = loop.tokens[:, lead:]
    tokens = jnp.where(loop.mask > 0, tokens, pad_id)
    return SampleOutput(
        tokens=tokens,
        completion_mask=loop.mask,
        sampling_logprobs=loop.samp_lp,
        model_logprobs=loop.model_lp,
        prompt_tokens=rep(prompt_tokens, 0),
        prompt_mask=rep(prompt_mask, 0),
    )


def eos_array(eos_ids: Sequence[int]) -> jax.Array:  # [E], E rounded up to 4 (-1 = unused)
    ids = sorted({int(i) for i in eos_ids})
    arr = np.full(_round_up(max(len(ids), 1), 4), -1, np.int32)
    arr[: len(ids)] = ids
    return jnp.asarray(arr)


def stop_array(seqs: Sequence[Sequence[int]]) -> jax.Array:  # [S, L] right-aligned, -1 = wildcard
    if not seqs:
        return jnp.zeros((0, 1), jnp.int32)
    width = max(len(s) for s in seqs)
    arr = np.full((len(seqs), width), -1, np.int32)
    for j, s in enumerate(seqs):
        arr[j, width - len(s) :] = s
    return jnp.asarray(arr)


def batch_ways(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> int:
    """How many ways the mesh splits the batch axis (a batch must be a multiple of it)."""
    axes = logical_to_spec(("batch",), mesh, rules)[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return int(np.prod([mesh.shape[a] for a in axes]))


def decode_shardings(cfg, mesh: Mesh, batch: int, rules: Rules = DEFAULT_RULES) -> tuple[NamedSharding, ...]:
    """The ``shardings`` argument of :func:`sample_program`: KV cache, [R] rows, [R, X] rows."""
    kv_spec = logical_to_spec(("layers", "batch", "kv_heads", "length", "head_dim"), mesh, rules,
                              (cfg.num_layers, batch, cfg.num_kv_heads, 1, cfg.head_dim))
    return NamedSharding(mesh, kv_spec), batch_sharding(mesh, 1, rules), batch_sharding(mesh, 2, rules)


_MATMUL_WEIGHT = re.compile(r"\['(q|k|v|o|gate|up|down)'\]")  # a block's weights that only feed matmuls


def _as_matmul_operands(layer_states: tuple[nnx.State, ...], cfg) -> tuple[nnx.State, ...]:
    """The hoisted matmul weights cast once to the matmul dtype (``cfg.matmul_dtype``, e.g. bf16 over
    fp32 master weights), so the loop does not cast them again at every step. The values the matmuls
    see are the same: ``layers.rows_matmul`` casts to that dtype itself. Norms and biases keep theirs."""
    dtype = cfg.jnp_matmul_dtype

    def cast(path, leaf):
        return leaf.astype(dtype) if _MATMUL_WEIGHT.search(jax.tree_util.keystr(path)) else leaf

    return tuple(jax.tree_util.tree_map_with_path(cast, state) for state in layer_states)


def hoist_default(model_or_state) -> bool:
    """Hoisting the per-layer weights out of the decode loop pays on CPU (see :func:`sample`)."""
    leaves = jax.tree.leaves(nnx.state(model_or_state) if isinstance(model_or_state, nnx.Module) else model_or_state)
    return all(d.platform == "cpu" for leaf in leaves[:1] for d in leaf.devices())


def sample(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    mesh: Mesh | None = None,
    rules: Rules = DEFAULT_RULES,
    prompt_bucket: int = 32,
    new_tokens_bucket: int = 64,
    max_len: int | None = None,
    hoist_weights: bool | None = None,
    intervention: Intervention | None = None,
) -> SampleOutput:
    """Samples ``params.n`` completions for each prompt (lists of token ids).

    ``eos_ids`` end a completion (ignored with ``params.ignore_eos``); ``max_len`` bounds
    prompt + completion (default: the model's ``max_position_embeddings``). Returned arrays have
    exactly ``len(prompts) * n`` rows and ``max_new_tokens`` columns.

    ``hoist_weights`` (default: on when the parameters live on CPU) slices every layer's weights
    out of the stacked arrays, and transposes the unembedding, once before the decode loop instead
    of at every step; it costs a second copy of the weights while sampling. XLA:CPU feeds a matmul
    a slice of a stacked weight only by copying it, which made those copies a large part of each
    decode step; the results are the same either way.

    ``intervention`` (``models/interventions.py``) edits the activations of the prefill and of every
    decode step; a ``patch`` is indexed by token position (a prompt's first real token is 0) and
    must have one row, or one per prompt when ``params.n == 1``.
    """
    cfg = model.cfg
    max_len = cfg.max_position_embeddings if max_len is None else max_len
    tokens, mask = pad_prompts(prompts, pad_id, prompt_bucket)
    longest = int(mask.sum(-1).max())
    if longest + params.max_new_tokens > max_len:
        raise ValueError(
            f"the longest prompt has {longest} tokens; with max_new_tokens={params.max_new_tokens} that "
            f"exceeds the maximum length {max_len} (shorten the prompt or lower max_new_tokens)"
        )
    bad = tokens[(tokens < 0) | (tokens >= cfg.vocab_size)]
    if bad.size:
        raise ValueError(f"prompt token ids must be in [0, {cfg.vocab_size}); got {sorted(set(bad.tolist()))[:5]}")
    num_prompts = tokens.shape[0]
    if intervention is not None:
        intervention.validate(cfg.num_layers, cfg.hidden_size)
        for site in SITES:
            edit = getattr(intervention, site)
            if edit is not None and edit.patch is not None and edit.patch.shape[1] != 1 and (
                    params.n != 1 or mesh is not None or edit.patch.shape[1] != num_prompts):
                raise ValueError(f"{site}.patch has {edit.patch.shape[1]} rows; the sampler takes 1 (broadcast), "
                                 f"or one per prompt with n=1 and no mesh")
    shardings = None
    if mesh is not None:  # pad the batch to a multiple of the devices it is split over
        extra = -num_prompts % batch_ways(mesh, rules)
        tokens = np.concatenate([tokens, np.repeat(tokens[-1:], extra, 0)])
        mask = np.concatenate([mask, np.repeat(mask[-1:], extra, 0)])
        shardings = decode_shardings(cfg, mesh, tokens.shape[0], rules)
        tokens = jax.device_put(tokens, batch_sharding(mesh, 2, rules))
        mask = jax.device_put(mask, batch_sharding(mesh, 2, rules))
    buffer_len = _round_up(params.max_new_tokens, new_tokens_bucket)
    cache_len = _round_up(tokens.shape[1] + buffer_len, new_tokens_bucket)
    graphdef, state = nnx.split(model)
    out = sample_program(
        state,
        jnp.asarray(tokens),
        jnp.asarray(mask),
        jax.random.key(params.seed),
        params.values(),
        jnp.int32(params.max_new_tokens),
        eos_array(() if params.ignore_eos else eos_ids),
        stop_array(params.stop_sequences),
        graphdef=graphdef,
        structure=params.structure(),
        n=params.n,
        buffer_len=buffer_len,
        cache_len=cache_len,
        pad_id=int(pad_id),
        shardings=shardings,
        hoist_weights=hoist_default(model) if hoist_weights is None else bool(hoist_weights),
        intervention=intervention,
    )
    rows, m = num_prompts * params.n, params.max_new_tokens
    if out.tokens.shape == (rows, m):
        return out
    return SampleOutput(
        tokens=out.tokens[:rows, :m],
        completion_mask=out.completion_mask[:rows, :m],
        sampling_logprobs=out.sampling_logprobs[:rows, :m],
        model_logprobs=out.model_logprobs[:rows, :m],
        prompt_tokens=out.prompt_tokens[:rows],
        prompt_mask=out.prompt_mask[:rows],
    )
