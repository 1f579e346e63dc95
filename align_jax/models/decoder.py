"""The decoder-only transformer shared by every family (Llama, Qwen2, Gemma 3), in Flax NNX.

Layer parameters are stored stacked, with a leading ``layers`` axis, so the forward can run as
one ``lax.scan`` over layers (fast compiles) or as an unrolled Python loop (``scan_layers=False``)
over the same parameters. Per-layer differences (Gemma's sliding/global layers with different
RoPE bases) are scanned-over inputs, not different modules.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.models.attention import Attention, attention_mask, dot_product_attention, recomputed_attention
from align_jax.models.config import ModelConfig
from align_jax.models.interventions import SITES, Intervention, apply_edit
from align_jax.models.layers import GatedMLP, RMSNorm, param, rows_matmul
from align_jax.models.rope import inverse_frequencies


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Pre-allocated keys/values of every layer plus the position and segment of each slot."""

    k: jax.Array  # [L, B, K, S, H]: head-major, so attention reads a layer's slice without a transpose
    v: jax.Array  # [L, B, K, S, H]
    positions: jax.Array  # [B, S] int32
    segment_ids: jax.Array  # [B, S] int32, 0 = empty
    index: jax.Array  # [] int32, next slot to write

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
        dtype = dtype or cfg.jnp_dtype
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            positions=jnp.zeros((batch, max_len), jnp.int32),
            segment_ids=jnp.zeros((batch, max_len), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return (self.k[0] if isinstance(self.k, tuple) else self.k).shape[-2]

    def per_layer(self) -> "KVCache":
        """The same cache with ``k`` / ``v`` as tuples of L arrays ``[B, K, S, H]``.

        A layer then reads and writes its own buffer: reading a layer's slice of the stacked
        array is a copy on XLA:CPU (two per layer and decode step, over a quarter of a batch-64
        step), while separate buffers carried by the decode loop are updated in place. Only
        ``forward(layer_states=...)`` (the unrolled layers) takes this form.
        """
        if isinstance(self.k, tuple):
            return self
        split = lambda a: tuple(a[i] for i in range(a.shape[0]))
        return dataclasses.replace(self, k=split(self.k), v=split(self.v))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecoderOutput:
    logits: jax.Array | None  # [B, T, V]; None when return_logits=False
    final_hidden: jax.Array  # [B, T, D] after the final norm (what the unembedding reads)
    hidden_states: jax.Array | None  # [L + 1, B, T, D]: embeddings, then each block's output
    cache: KVCache | None
    captured: dict[str, jax.Array] | None = None  # site -> [L, B, T, D] (after any edit); see ``capture``


class Block(nnx.Module):
    """Pre-norm transformer block; Gemma adds post-norms ("sandwich") around both sublayers."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.hidden_size, "embed", cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.hidden_size, "embed", cfg, rngs=rngs)
        self.mlp = GatedMLP(cfg, rngs=rngs)
        if cfg.sandwich_norm:
            self.attn_post_norm = RMSNorm(cfg.hidden_size, "embed", cfg, rngs=rngs)
            self.mlp_post_norm = RMSNorm(cfg.hidden_size, "embed", cfg, rngs=rngs)
        self.cfg = cfg

    def qkv(
        self,
        x: jax.Array,  # [B, T, D]
        positions: jax.Array,  # [B, T] int
        inv_freq: jax.Array,  # [H/2] float32
    ) -> tuple[jax.Array, jax.Array, jax.Array]:  # q [B, T, N, H]; k, v [B, T, K, H]
        """The normed input's rotated q, rotated k, and v."""
        return self.attn.project_qkv(self.attn_norm(x), positions, inv_freq)

    def finish(
        self,
        x: jax.Array,  # [B, T, D] the block's input (the residual stream)
        q: jax.Array,  # [B, T, N, H]
        keys: jax.Array,  # [B, S, K, H] ([B, K, S, H] with kv_heads_first)
        values: jax.Array,  # [B, S, K, H] ([B, K, S, H] with kv_heads_first)
        mask: jax.Array,  # [B, T, S] bool
        hook=None,  # (site, h [B, T, D]) -> h: edits / records the sublayer outputs ("attn_out", "mlp_out")
        kv_heads_first: bool = False,  # keys / values in the KV cache's head-major layout
    ) -> jax.Array:  # [B, T, D]
        """Attention of q over keys/values, then the MLP; returns the new x."""
        hook = hook or (lambda site, h: h)
        plain = self.cfg.remat == "none" and self.cfg.attn_logit_softcap is not None
        attend = dot_product_attention if plain else recomputed_attention
        attended = attend(
            q, keys.astype(q.dtype), values.astype(q.dtype), mask, self.attn.scale, self.cfg.attn_logit_softcap,
            kv_heads_first,
        )
        h = self.attn.output(attended)
        if self.cfg.sandwich_norm:
            h = self.attn_post_norm(h)
        x = x + hook("attn_out", h)
        h = self.mlp(self.mlp_norm(x))
        if self.cfg.sandwich_norm:
            h = self.mlp_post_norm(h)
        return x + hook("mlp_out", h)

    def __call__(
        self,
        x: jax.Array,  # [B, T, D]
        positions: jax.Array,  # [B, T] int
        inv_freq: jax.Array,  # [H/2] float32
        mask: jax.Array,  # [B, T, T] bool
    ) -> jax.Array:  # [B, T, D]
        """The block over the T tokens themselves (no cache)."""
        q, k, v = self.qkv(x, positions, inv_freq)
        return self.finish(x, q, k, v, mask)


def _stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
    """L independently initialised blocks whose parameters share a leading ``layers`` axis."""
    keys = jax.random.split(rngs.params(), cfg.num_layers)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Block(cfg, rngs=nnx.Rngs(0))))
    state = jax.vmap(lambda key: nnx.state(Block(cfg, rngs=nnx.Rngs(params=key))))(keys)
    for _, variable in nnx.to_flat_state(state):
        variable.set_metadata("axes", ("layers",) + tuple(variable.get_metadata()["axes"]))
    return nnx.merge(graphdef, state)


_REMAT_POLICIES = {  # layer-level checkpoint policies; "none" and "attention" have none
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
}


class Decoder(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dt = cfg.jnp_param_dtype
        self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), dt)
        self.blocks = _stacked_blocks(cfg, rngs)
        self.final_norm = RMSNorm(cfg.hidden_size, "embed", cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), dt)
        self.cfg = cfg

    # -- pieces -------------------------------------------------------------------------
    def embed_tokens(self, tokens: jax.Array) -> jax.Array:  # [B, T] -> [B, T, D]
        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.jnp_dtype)
        if self.cfg.embed_scale:
            x = x * jnp.asarray(self.cfg.hidden_size**0.5, x.dtype)
        return x

    def unembedding(self) -> jax.Array:  # [D, V]
        if self.cfg.tie_embeddings:
            return self.embed[...].T
        return self.lm_head[...]

    def logits_from_hidden(
        self,
        h: jax.Array,  # [..., D] final hidden states
        unembedding: jax.Array | None = None,  # [D, V]; None: self.unembedding()
    ) -> jax.Array:  # [..., V]
        """Logits of final hidden states; pass ``unembedding`` to reuse one precomputed ``self.unembedding()``."""
        unembedding = self.unembedding() if unembedding is None else unembedding
        logits = rows_matmul(h, unembedding, self.cfg.jnp_matmul_dtype, jnp.float32)  # float32 logits in every precision
        cap = self.cfg.final_logit_softcap
        if cap is not None:
            logits = cap * jnp.tanh(logits / cap)
        return logits

    # -- forward ------------------------------------------------------------------------
    def __call__(
        self,
        tokens: jax.Array,  # [B, T] int
        positions: jax.Array | None = None,  # [B, T] int; default 0..T-1
        segment_ids: jax.Array | None = None,  # [B, T] int; 0 = padding; default all 1
        *,
        cache: KVCache | None = None,
        return_logits: bool = True,
        return_hidden_states: bool = False,
        branch_ids: jax.Array | None = None,  # [B, T] int; prefix-tree branches (no cache)
        intervention: Intervention | None = None,
        capture: tuple[str, ...] = (),
        inputs_embeds: jax.Array | None = None,  # [B, T, D] replaces embed_tokens(tokens) (attribution)
    ) -> DecoderOutput:
        """Runs the decoder. With ``cache``, the T new tokens are written at ``cache.index``.

        ``intervention`` edits activations inside the layers (``models/interventions.py``);
        ``capture`` names sites (``resid_pre``, ``attn_out``, ``mlp_out``) whose activations, after
        any edit, come back in ``DecoderOutput.captured`` as ``[L, B, T, D]``.

        ``branch_ids`` (0 = shared prefix, b > 0 = branch b; see ``attention_mask``) lets several
        completions share one prompt in a row: give each completion the positions it would have
        in a row of its own. Not supported together with ``cache``.

        Eager calls (in a notebook) run one compiled program, cached by structure and shapes (one
        compile per shape); inside an outer ``jit`` (tracer inputs) the forward is traced directly,
        with no split of the module and no nested jit per call.
        """
        capture = tuple(capture)
        if isinstance(tokens, jax.core.Tracer):
            return self.forward(tokens, positions, segment_ids, cache, return_logits, return_hidden_states, branch_ids,
                                intervention=intervention, capture=capture, inputs_embeds=inputs_embeds)
        graphdef, state = nnx.split(self)
        return _compiled_forward(
            graphdef, state, tokens, positions, segment_ids, cache,
            return_logits=return_logits, return_hidden_states=return_hidden_states, branch_ids=branch_ids,
            intervention=intervention, capture=capture, inputs_embeds=inputs_embeds,
        )

    def forward(
        self,
        tokens: jax.Array,  # [B, T] int
        positions: jax.Array | None,  # [B, T] int; None: 0..T-1
        segment_ids: jax.Array | None,  # [B, T] int; 0 = padding; None: all 1
        cache: KVCache | None,
        return_logits: bool,
        return_hidden_states: bool,
        branch_ids: jax.Array | None = None,  # [B, T] int; prefix-tree branches (no cache)
        layer_states: Sequence[nnx.State] | None = None,  # L per-layer block parameters (unstack_layers)
        *,
        intervention: Intervention | None = None,
        capture: tuple[str, ...] = (),
        inputs_embeds: jax.Array | None = None,  # [B, T, D] what enters block 0 (after any embedding scale)
    ) -> DecoderOutput:
        """The uncompiled forward (see ``__call__``).

        ``layer_states`` (from ``unstack_layers``): each layer's block parameters as separate arrays;
        the layers then run unrolled over them instead of slicing the stacked parameters. A decode
        loop computes them once, before the loop: XLA:CPU otherwise copies every layer's weights
        out of the stacked arrays at every step.
        """
        cfg = self.cfg
        b, t = tokens.shape
        unknown = set(capture) - set(SITES)
        if unknown:
            raise ValueError(f"unknown capture sites {sorted(unknown)}; choose from {SITES}")
        if intervention is not None:
            intervention.validate(cfg.num_layers, cfg.hidden_size)
        if branch_ids is not None and cache is not None:
            raise ValueError("branch_ids (prefix-tree attention) is not supported with a KV cache")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if cache is not None:
            idx = cache.index
            k_positions = jax.lax.dynamic_update_slice(cache.positions, positions.astype(jnp.int32), (0, idx))
            k_segments = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids.astype(jnp.int32), (0, idx))
        else:
            k_positions, k_segments = positions, segment_ids

        full_mask = attention_mask(positions, segment_ids, k_positions, k_segments, None, branch_ids, branch_ids)
        sliding = np.asarray(cfg.layer_is_sliding)
        global_inv = jnp.asarray(inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling))
        if sliding.any():
            local_mask = attention_mask(
                positions, segment_ids, k_positions, k_segments, cfg.sliding_window, branch_ids, branch_ids
            )
            local_inv = jnp.asarray(
                inverse_frequencies(
                    cfg.head_dim, cfg.local_rope_theta or cfg.rope_theta, cfg.local_rope_scaling
                )
            )

        x = self.embed_tokens(tokens) if inputs_embeds is None else inputs_embeds.astype(cfg.jnp_dtype)
        embeddings = x
        graphdef, block_state = nnx.split(self.blocks)

        def layer(carry, per_layer, static_i):  # static_i: the layer index as a Python int (unrolled), or None
            x, kv = carry
            state, is_sliding, i, edits = per_layer
            i = i if static_i is None else static_i
            block = nnx.merge(graphdef, state)
            captured = {}

            def hook(site, h):
                if edits is not None:
                    h = apply_edit(getattr(edits, site), h, positions)
                if site in capture:
                    captured[site] = h
                return h

            x = hook("resid_pre", x)
            if sliding.any():
                mask = jnp.where(is_sliding, local_mask, full_mask)
                inv = jnp.where(is_sliding, local_inv, global_inv)
            else:
                mask, inv = full_mask, global_inv
            q, k, v = block.qkv(x, positions, inv)
            if kv is None:
                keys, values = k, v
            else:  # write the new rows [B, K, T, H] into the cache in place, then read this layer's keys
                rows = [jnp.swapaxes(a, 1, 2) for a in (k, v)]
                if isinstance(kv[0], tuple):  # per-layer buffers (KVCache.per_layer); i is a Python int
                    kv = tuple(buf[:i] + (jax.lax.dynamic_update_slice(buf[i], new.astype(buf[i].dtype),
                                                                       (0, 0, cache.index, 0)),) + buf[i + 1:]
                               for buf, new in zip(kv, rows))
                else:  # the stacked [L, B, K, S, H] cache
                    kv = tuple(jax.lax.dynamic_update_slice(c, new[None].astype(c.dtype), (i, 0, 0, cache.index, 0))
                               for c, new in zip(kv, rows))
                keys, values = kv[0][i], kv[1][i]  # [B, K, S, H]
            x = block.finish(x, q, keys, values, mask, hook, kv_heads_first=kv is not None)
            return (x, kv), ((x if return_hidden_states else None), captured)

        if cfg.remat in _REMAT_POLICIES:
            layer = jax.checkpoint(layer, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers,
                                   static_argnums=(2,))
        carry = (x, (cache.k, cache.v) if cache is not None else None)
        xs = (block_state, jnp.asarray(sliding), jnp.arange(cfg.num_layers), intervention)
        if cache is not None and isinstance(cache.k, tuple) and layer_states is None:
            raise ValueError("a per-layer KV cache (KVCache.per_layer) needs layer_states (unrolled layers)")
        if cfg.scan_layers and layer_states is None:
            (x, kv), (hidden, captured) = jax.lax.scan(lambda c, p: layer(c, p, None), carry, xs)
        else:
            outs = []
            for i in range(cfg.num_layers):
                per_layer = jax.tree.map(lambda a: a[i], xs)
                if layer_states is not None:
                    per_layer = (layer_states[i],) + per_layer[1:]
                carry, out = layer(carry, per_layer, i)  # a static layer index (per-layer cache buffers)
                outs.append(out)
            (x, kv) = carry
            hidden = jnp.stack([o[0] for o in outs]) if return_hidden_states else None
            captured = {site: jnp.stack([o[1][site] for o in outs]) for site in capture}

        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=kv[0], v=kv[1], positions=k_positions, segment_ids=k_segments, index=cache.index + t)
        hidden_states = None
        if return_hidden_states:
            hidden_states = jnp.concatenate([embeddings[None], hidden], axis=0)
        h = self.final_norm(x)
        logits = self.logits_from_hidden(h) if return_logits else None
        return DecoderOutput(logits=logits, final_hidden=h, hidden_states=hidden_states, cache=new_cache,
                             captured=captured if capture else None)


@functools.partial(jax.jit, static_argnames=("graphdef", "return_logits", "return_hidden_states", "capture"))
def _compiled_forward(
    graphdef, state, tokens, positions, segment_ids, cache, *, return_logits, return_hidden_states, branch_ids=None,
    intervention=None, capture=(), inputs_embeds=None,
):
    model = nnx.merge(graphdef, state)
    return model.forward(tokens, positions, segment_ids, cache, return_logits, return_hidden_states, branch_ids,
                         intervention=intervention, capture=capture, inputs_embeds=inputs_embeds)


def unstack_layers(model: Decoder) -> tuple[nnx.State, ...]:
    """Each layer's block parameters sliced out of the stacked arrays (``forward(layer_states=...)``)."""
    block_state = nnx.state(model.blocks)
    return tuple(jax.tree.map(lambda a, i=i: a[i], block_state) for i in range(model.cfg.num_layers))


def init_decoder(cfg: ModelConfig, seed: int = 0) -> Decoder:
    """A randomly initialised decoder (tests, speed benchmarks)."""
    return Decoder(cfg, rngs=nnx.Rngs(params=seed))


def abstract_decoder(cfg: ModelConfig) -> Decoder:
    """The decoder's structure with ShapeDtypeStructs instead of arrays (no memory used)."""
    return nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))


def param_axes(model: nnx.Module) -> dict[tuple[Any, ...], tuple[str | None, ...]]:
    """Flat path -> logical axis names of every parameter."""
    return {
        path: tuple(var.get_metadata()["axes"])
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
