"""Hidden-state features of prompts (and prompt + response chats) from a decoder.

A text is rendered in the model's chat format (a prompt as a user turn plus the generation
prompt; a response as the assistant turn after it). For each chosen layer ``l`` of
``hidden_states`` ([L+1, B, T, D], 0 = embeddings) the feature is
``concat(mean over the content tokens, state at the last token)`` -> ``[2D]``: the content
tokens are the user message (prompts) or the assistant message (responses), the last token is
the end of the rendered text (the generation prompt's newline for prompts).

Batches are left-padded (segment id 0), lengths are bucketed to a multiple of ``bucket`` and
the batch size is fixed (short batches padded with empty rows) so the forward compiles once
per bucket. ``cached_features`` stores the result in an ``.npz`` named by a hash of the model,
the chat format, the layers and every text, so re-running an experiment skips the forward.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flax import nnx

from align_jax.models.chat import render_chat
from align_jax.models.decoder import Decoder, abstract_decoder


@dataclasses.dataclass(frozen=True)
class Encoded:
    ids: tuple[int, ...]
    content_mask: tuple[int, ...]  # 1 on the tokens of the pooled message


def encode_for_features(
    tokenizer, template: str, prompt: str, response: str | None = None
) -> Encoded:
    """Token ids of the chat and a mask of the user (``response=None``) or assistant content."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("empty prompt")
    if response is not None and (not isinstance(response, str) or not response.strip()):
        raise ValueError(f"empty response for prompt {prompt[:60]!r}")
    if response is None:
        messages, target = [{"role": "user", "content": prompt}], prompt
    else:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        target = response
    text = render_chat(messages, template=template, add_generation_prompt=response is None)
    target = target.strip()
    start = text.rfind(target)
    if start < 0:
        raise ValueError(f"content not found in the rendered chat: {target[:60]!r}")
    end = start + len(target)
    ids, offsets = tokenizer.encode_with_offsets(text)
    mask = tuple(int(a < end and b > start) for a, b in offsets)
    if not any(mask):
        raise ValueError(f"no content tokens for {target[:60]!r}")
    return Encoded(tuple(int(i) for i in ids), mask)


def truncated_decoder(model: Decoder, n_layers: int) -> Decoder:
    """The first ``n_layers`` blocks of ``model`` (same weights): its ``hidden_states[0..n]`` equal
    the full model's, at ``n / L`` of the cost. Features never need the later layers or logits."""
    cfg = model.cfg
    if not 1 <= n_layers <= cfg.num_layers:
        raise ValueError(f"n_layers must be in [1, {cfg.num_layers}], got {n_layers}")
    if n_layers == cfg.num_layers:
        return model
    types = cfg.layer_types[:n_layers] if cfg.layer_types is not None else None
    small = dataclasses.replace(cfg, num_layers=n_layers, layer_types=types)
    graphdef, _ = nnx.split(abstract_decoder(small))
    state = nnx.state(model)
    state["blocks"] = jax.tree.map(lambda a: a[:n_layers], state["blocks"])
    return nnx.merge(graphdef, state)


@jax.jit
def pool_hidden(hidden: jax.Array, content_mask: jax.Array) -> jax.Array:
    """hidden [K, B, T, D], content_mask [B, T] -> [K, B, 2D]: content mean ++ last-token state."""
    m = content_mask.astype(hidden.dtype)[None, :, :, None]  # [1, B, T, 1]
    mean = (hidden * m).sum(axis=2) / jnp.maximum(m.sum(axis=2), 1.0)
    return jnp.concatenate([mean, hidden[:, :, -1, :]], axis=-1)


def left_pad(batch: Sequence[Encoded], length: int, pad_id: int = 0):
    """-> tokens, positions, segment_ids, content_mask, each [B, length] (left padded)."""
    b = len(batch)
    tokens = np.full((b, length), pad_id, np.int32)
    segments = np.zeros((b, length), np.int32)
    content = np.zeros((b, length), np.int32)
    for i, e in enumerate(batch):
        n = len(e.ids)
        if n > length:
            raise ValueError(f"sequence of {n} tokens longer than the bucket {length}")
        if n:
            tokens[i, length - n:] = e.ids
            segments[i, length - n:] = 1
            content[i, length - n:] = e.content_mask
    positions = np.clip(np.cumsum(segments, axis=1) - 1, 0, None).astype(np.int32)
    return tokens, positions, segments, content


def extract_features(
    model: Callable,
    encoded: Sequence[Encoded],
    layers: Sequence[int],
    *,
    batch_size: int = 32,
    bucket: int = 32,
    max_len: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> dict[int, np.ndarray]:
    """layer -> float32 features [N, 2D] in the order of ``encoded`` (texts truncated to ``max_len``
    keeping the end, which holds the last token)."""
    if not encoded:
        raise ValueError("extract_features got no texts")
    encoded = [
        e if len(e.ids) <= max_len else Encoded(e.ids[-max_len:], e.content_mask[-max_len:]) for e in encoded
    ]
    order = np.argsort([len(e.ids) for e in encoded], kind="stable")
    layer_idx = jnp.asarray(list(layers))
    out: dict[int, np.ndarray] = {}
    chunks = []
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = [encoded[i] for i in idx]
        length = -(-max(len(e.ids) for e in batch) // bucket) * bucket
        batch = batch + [Encoded((), ())] * (batch_size - len(batch))
        tokens, positions, segments, content = left_pad(batch, length)
        o = model(tokens, positions, segments, return_logits=False, return_hidden_states=True)
        pooled = np.asarray(pool_hidden(o.hidden_states[layer_idx], jnp.asarray(content)))  # [K, B, 2D]
        chunks.append((idx, pooled[:, : len(idx)]))
        if progress is not None:
            progress(min(s + batch_size, len(order)), len(order))
    dim = chunks[0][1].shape[-1]
    for k, layer in enumerate(layers):
        arr = np.zeros((len(encoded), dim), np.float32)
        for idx, pooled in chunks:
            arr[idx] = pooled[k]
        out[int(layer)] = arr
    return out


def features_key(model_id: str, template: str, layers: Sequence[int], items: Sequence[tuple[str, str | None]]) -> str:
    """A hex digest of everything the features depend on."""
    h = hashlib.sha256()
    h.update(json.dumps({"model": model_id, "template": template, "layers": list(map(int, layers)), "v": 1}).encode())
    for prompt, response in items:
        h.update(json.dumps([prompt, response]).encode("utf-8"))
    return h.hexdigest()[:20]


def cached_features(
    cache_dir: str | os.PathLike | None,
    model_id: str,
    template: str,
    layers: Sequence[int],
    items: Sequence[tuple[str, str | None]],
    compute: Callable[[], dict[int, np.ndarray]],
) -> dict[int, np.ndarray]:
    """``compute()`` once per (model, template, layers, texts); later calls read the .npz."""
    if cache_dir is None:
        return compute()
    path = Path(cache_dir) / f"features_{features_key(model_id, template, layers, items)}.npz"
    if path.exists():
        with np.load(path) as z:
            return {int(k.split("_")[1]): z[k] for k in z.files}
    feats = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{f"layer_{k}": v for k, v in feats.items()})
    os.replace(tmp, path)
    return feats


POOLINGS: tuple[str, ...] = ("mean", "last", "mean_last")


def parse_feature_spec(spec: str) -> tuple[tuple[int, ...], str]:
    """``"10+14:mean"`` -> ((10, 14), "mean"); the pooling defaults to ``mean_last``."""
    layers, _, pooling = spec.partition(":")
    pooling = pooling or "mean_last"
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r} in {spec!r}; valid: {list(POOLINGS)}")
    try:
        out = tuple(int(x) for x in layers.split("+"))
    except ValueError:
        raise ValueError(f"bad layers in feature spec {spec!r} (want e.g. '10+14:mean')") from None
    return out, pooling


def select_features(feats: dict[int, np.ndarray], layers: Sequence[int], pooling: str = "mean_last") -> np.ndarray:
    """[N, K * (D or 2D)]: for each of ``layers`` the content mean, the last-token state or both
    (the two halves of an ``extract_features`` row), concatenated in ``layers`` order."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}")
    parts = []
    for layer in layers:
        if layer not in feats:
            raise KeyError(f"layer {layer} was not extracted (have {sorted(feats)})")
        a = feats[layer]
        d = a.shape[1] // 2
        parts.append(a[:, :d] if pooling == "mean" else a[:, d:] if pooling == "last" else a)
    return np.concatenate(parts, axis=1)
