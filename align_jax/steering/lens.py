"""The logit lens (nostalgebraist, 2020; Belrose et al., arXiv:2303.08112): each layer's residual
stream read through the final norm and the unembedding, as if the model stopped there."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from align_jax.models.decoder import Decoder


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _lens(state, tokens, positions, segment_ids, *, graphdef):
    model = nnx.merge(graphdef, state)
    out = model(tokens, positions, segment_ids, return_logits=False, return_hidden_states=True)
    hidden = out.hidden_states  # [L + 1, B, T, D]: embeddings, then each block's output
    logits = model.logits_from_hidden(model.final_norm(hidden)).astype(jnp.float32)
    return jax.nn.log_softmax(logits, axis=-1)


def logit_lens(
    model: Decoder,
    tokens: jax.Array,  # [B, T] int
    positions: jax.Array | None = None,  # [B, T] int
    segment_ids: jax.Array | None = None,  # [B, T] int; 0 = padding
) -> jax.Array:  # [L + 1, B, T, V] float32 log-probs; row 0 reads the embeddings, row L the model's own output
    """Next-token log-probs read from every layer's residual stream (``[L]`` equals the model's)."""
    graphdef, state = nnx.split(model)
    return _lens(state, jnp.asarray(tokens), positions, segment_ids, graphdef=graphdef)
