"""LoRA (arXiv:2106.09685) as pure functions over parameter pytrees; the model code is unchanged.

Each targeted weight W is viewed as a matrix [in, out] per layer (the ``layers`` axis stays
stacked) and gets two adapters, A [L, in, r] and B [L, r, out] (stored with W's own dims, e.g.
B [L, r, heads, head_dim], so they shard like W) with B = 0 at init, so that the merged weight
W' = W + (alpha / r) * A @ B equals W until B is trained. The training step merges inside the loss and differentiates w.r.t. the adapters only, so the base stays frozen::

    graphdef, base = nnx.split(model, nnx.Param)
    adapters = init_lora(base, cfg, key)
    def loss(adapters):
        model = nnx.merge(graphdef, merge(base, adapters, cfg))
        ...
    grads = jax.grad(loss)(adapters)

Export is ``nnx.merge(graphdef, merge(base, adapters, cfg))`` followed by ``save_hf_dir``: a plain
HF checkpoint with the update folded in.

Memory: ``merge`` materialises W' (and the backward pass dL/dW') for every targeted weight, so a
step holds one extra copy of the targeted weights; adapters add only L * (in + out) * r each.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

DEFAULT_TARGETS = r"attn/(q|k|v|o)|mlp/(gate|up|down)"


# How many leading (non-"layers") axes of a weight are its input; the rest are its output. Keyed by
# the weight's logical axes, so that a weight the table does not know is an error, not a guess.
_NUM_INPUT_AXES: dict[tuple[str | None, ...], int] = {
    ("embed", "heads", "head_dim"): 1,  # attn q
    ("embed", "kv_heads", "head_dim"): 1,  # attn k, v
    ("heads", "head_dim", "embed"): 2,  # attn o
    ("embed", "mlp"): 1,  # mlp gate, up
    ("mlp", "embed"): 1,  # mlp down
    ("embed", "vocab"): 1,  # untied lm_head
}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """``targets``: regex over "/"-joined parameter paths ("blocks/attn/q"); it must match a whole
    trailing run of path components, so "attn/q" selects "blocks/attn/q" but not "blocks/attn/q_bias"
    or "blocks/attn/q_norm/weight"."""

    rank: int = 8
    alpha: float = 16.0
    targets: str = DEFAULT_TARGETS

    def __post_init__(self):
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if not math.isfinite(float(self.alpha)):
            raise ValueError(f"LoRA alpha must be a finite number, got {self.alpha!r}")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(f"LoRA targets {self.targets!r} is not a valid regex: {e}") from None

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank


def _path_str(path: tuple[Any, ...]) -> str:
    return "/".join(str(k) for k in path)


def _split_layers(axes: tuple[str | None, ...]) -> tuple[bool, tuple[str | None, ...]]:
    stacked = bool(axes) and axes[0] == "layers"
    return stacked, axes[1:] if stacked else axes


def target_paths(params: nnx.State, cfg: LoraConfig) -> list[tuple[Any, ...]]:
    """Paths of the parameters ``cfg.targets`` selects; errors if none, or one is not a matrix."""
    pattern = re.compile(rf"(?:^|/)(?:{cfg.targets})$")
    flat = list(nnx.to_flat_state(params))
    chosen = [path for path, _ in flat if pattern.search(_path_str(path))]
    if not chosen:
        available = ", ".join(_path_str(p) for p, _ in flat)
        raise ValueError(f"LoRA targets {cfg.targets!r} match no parameter; available: {available}")
    axes_of = {path: tuple(var.get_metadata().get("axes", ())) for path, var in flat}
    for path in chosen:
        _, axes = _split_layers(axes_of[path])
        if axes not in _NUM_INPUT_AXES:
            raise ValueError(
                f"LoRA target {_path_str(path)!r} has logical axes {axes_of[path]}, which is not a "
                f"weight matrix LoRA knows how to adapt (supported: {sorted(_NUM_INPUT_AXES)})"
            )
    return chosen


def init_lora(params: nnx.State, cfg: LoraConfig, key: jax.Array) -> nnx.State:
    """Adapters {path + ("lora_a",): A, path + ("lora_b",): B} for every target of ``cfg``.

    A weight [L, *in_dims, *out_dims] gets A [L, *in_dims, r] and B [L, r, *out_dims] (e.g. attn o
    [L, N, H, D]: A [L, N, H, r], B [L, r, D]); seen as matrices they are [L, in, r] and [L, r, out].
    Keeping the weight's dims (rather than flattening them) lets A and B carry the weight's own
    logical axes (rank: None), so they shard exactly like the weight they adapt. Weights without
    a ``layers`` axis (lm_head) get A [in, r] and B [r, out]. A is kaiming-uniform with bound
    1/sqrt(in) (as in PEFT), B is zero, both float32.
    """
    base = dict(nnx.to_flat_state(params))
    out = []
    for i, path in enumerate(target_paths(params, cfg)):
        var = base[path]
        shape = tuple(var.get_value().shape)
        all_axes = tuple(var.get_metadata()["axes"])
        stacked, axes = _split_layers(all_axes)
        split = int(stacked) + _NUM_INPUT_AXES[axes]
        bound = 1.0 / math.sqrt(math.prod(shape[int(stacked) : split]))
        a_shape = shape[:split] + (cfg.rank,)
        b_shape = shape[: int(stacked)] + (cfg.rank,) + shape[split:]
        a = jax.random.uniform(jax.random.fold_in(key, i), a_shape, jnp.float32, -bound, bound)
        b = jnp.zeros(b_shape, jnp.float32)
        out.append((path + ("lora_a",), nnx.Param(a, axes=all_axes[:split] + (None,))))
        out.append((path + ("lora_b",), nnx.Param(b, axes=all_axes[: int(stacked)] + (None,) + all_axes[split:])))
    return nnx.from_flat_state(out)


def _adapter_pairs(adapters: nnx.State) -> dict[tuple[Any, ...], dict[str, jax.Array]]:
    pairs: dict[tuple[Any, ...], dict[str, jax.Array]] = {}
    for path, var in nnx.to_flat_state(adapters):
        pairs.setdefault(tuple(path[:-1]), {})[path[-1]] = var.get_value()
    return pairs


def merge(params: nnx.State, adapters: nnx.State, cfg: LoraConfig) -> nnx.State:
    """``params`` with W' = W + (alpha / rank) * A @ B on every adapted weight (pure, jittable).

    The sum is formed in float32 and cast to W's dtype; other parameters are passed through.
    """
    pairs = _adapter_pairs(adapters)
    flat = dict(nnx.to_flat_state(params))
    unknown = sorted(_path_str(p) for p in set(pairs) - set(flat))
    if unknown:
        raise ValueError(f"adapters for parameters that do not exist: {unknown}")
    merged = []
    for path, var in flat.items():
        if path in pairs:
            w = var.get_value()
            a, b = pairs[path]["lora_a"], pairs[path]["lora_b"]
            lead = a.shape[: a.ndim + b.ndim - 2 - w.ndim]  # (L,) or ()
            a = a.reshape(lead + (-1, cfg.rank)).astype(jnp.float32)  # [L, in, r]
            b = b.reshape(lead + (cfg.rank, -1)).astype(jnp.float32)  # [L, r, out]
            delta = jnp.matmul(a, b) * cfg.scale
            w = (w.astype(jnp.float32) + delta.reshape(w.shape)).astype(w.dtype)
            var = var.replace(value=w)
        merged.append((path, var))
    return nnx.from_flat_state(merged)


def count_params(adapters: nnx.State) -> int:
    """Number of trainable adapter scalars."""
    return sum(int(math.prod(var.get_value().shape)) for _, var in nnx.to_flat_state(adapters))
