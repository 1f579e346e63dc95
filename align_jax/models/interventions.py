"""Interventions as data: edits of the decoder's activations, applied inside the scanned layers.

An :class:`Intervention` names, per *site*, an :class:`Edit` whose arrays carry a leading layer
axis ``L``; the decoder's forward (and so the sampler's prefill and decode) slices it per layer
inside ``lax.scan``, under ``jit`` and any mesh, with no Python hooks. A site left ``None`` (or an
edit field left ``None``) compiles to nothing, so ``Intervention()`` is the plain forward.

Sites (TransformerLens names):

- ``resid_pre``: the residual stream entering block ``l`` (``l = 0``: the token embeddings).
  Adding a vector "after layer l" is ``resid_pre`` of block ``l + 1``.
- ``attn_out``: the attention sublayer's output, as added to the residual stream (after Gemma's
  post-norm).
- ``mlp_out``: the MLP sublayer's output, as added to the residual stream.

An edit applies, in this order: ``patch`` (replace with given values at chosen positions),
``ablate`` (project out a unit direction), ``scale``, ``add``; then, with ``keep_norm``, rescales
each edited vector back to its norm before the edit (the norm-preserving intervention of GrAInS,
arXiv:2507.18043). Every operation is the identity at its neutral value (a zero direction, a
scale of one, a zero vector, a false mask), so a partly-filled ``[L, ...]`` array edits only the
layers it names.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

SITES = ("resid_pre", "attn_out", "mlp_out")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Edit:
    """The edits of one site at every layer (each array's leading axis is the layer ``L``)."""

    patch: jax.Array | None = None  # [L, B or 1, S, D] replacement values, indexed by token position
    patch_mask: jax.Array | None = None  # [L, B or 1, S] bool: where ``patch`` replaces the activation
    ablate: jax.Array | None = None  # [L, D] unit directions projected out (a zero row: no-op)
    scale: jax.Array | None = None  # [L, D] or [L, 1] multipliers
    add: jax.Array | None = None  # [L, D] added at every position (alpha * v)
    keep_norm: bool = dataclasses.field(default=False, metadata={"static": True})

    def __post_init__(self):
        if (self.patch is None) != (self.patch_mask is None):
            raise ValueError("patch and patch_mask go together")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Intervention:
    """Edits per site; ``None`` leaves a site alone."""

    resid_pre: Edit | None = None
    attn_out: Edit | None = None
    mlp_out: Edit | None = None

    def at_layer(self, layer: int) -> "Intervention":
        """This intervention's layer ``layer`` slice (the per-layer view the scan body sees)."""
        return jax.tree.map(lambda a: a[layer], self)

    def validate(self, num_layers: int, hidden_size: int) -> None:
        """Raises ValueError unless every array has the model's layer count and hidden size."""
        for site in SITES:
            edit = getattr(self, site)
            if edit is None:
                continue
            for name in ("patch", "ablate", "scale", "add"):
                a = getattr(edit, name)
                if a is None:
                    continue
                if a.shape[0] != num_layers:
                    raise ValueError(f"{site}.{name} has {a.shape[0]} layers; the model has {num_layers}")
                if a.shape[-1] not in ((hidden_size, 1) if name == "scale" else (hidden_size,)):
                    raise ValueError(f"{site}.{name} ends in {a.shape[-1]}; the hidden size is {hidden_size}")


def apply_edit(
    edit: Edit | None,  # one layer's slice (no leading L axis)
    x: jax.Array,  # [B, T, D]
    positions: jax.Array,  # [B, T] int token positions
) -> jax.Array:  # [B, T, D], x's dtype
    """``x`` after one layer's edit of one site (see the module docstring for the order)."""
    if edit is None:
        return x
    before = x
    if edit.patch is not None:
        s = edit.patch.shape[1]
        idx = jnp.clip(positions, 0, s - 1)
        patch = jnp.broadcast_to(edit.patch, (x.shape[0],) + edit.patch.shape[1:])
        mask = jnp.broadcast_to(edit.patch_mask, (x.shape[0], s))
        values = jnp.take_along_axis(patch, idx[..., None], axis=1)
        chosen = jnp.take_along_axis(mask, idx, axis=1) & (positions < s)
        x = jnp.where(chosen[..., None], values.astype(x.dtype), x)
    if edit.ablate is not None:
        u = edit.ablate.astype(jnp.float32)
        x32 = x.astype(jnp.float32)
        x = (x32 - (x32 @ u)[..., None] * u).astype(x.dtype)
    if edit.scale is not None:
        x = x * edit.scale.astype(x.dtype)
    if edit.add is not None:
        x = x + edit.add.astype(x.dtype)
    if edit.keep_norm:
        norm = lambda a: jnp.linalg.norm(a.astype(jnp.float32), axis=-1, keepdims=True)
        x = (x.astype(jnp.float32) * (norm(before) / jnp.maximum(norm(x), 1e-12))).astype(x.dtype)
    return x


def add_vector(
    site: str,
    num_layers: int,
    layers: int | list[int],
    vector: jax.Array,  # [D] (or [len(layers), D])
    alpha: float = 1.0,
    keep_norm: bool = False,
) -> Intervention:
    """``alpha * vector`` added to ``site`` at ``layers`` (every position)."""
    layers = [layers] if isinstance(layers, int) else list(layers)
    vector = jnp.asarray(vector, jnp.float32)
    add = jnp.zeros((num_layers, vector.shape[-1]), jnp.float32).at[jnp.asarray(layers)].set(alpha * vector)
    return Intervention(**{site: Edit(add=add, keep_norm=keep_norm)})


def ablate_direction(
    direction: jax.Array,  # [D]
    num_layers: int,
    sites: tuple[str, ...] = SITES,
) -> Intervention:
    """Directional ablation at every layer of ``sites`` (Arditi et al., arXiv:2406.11717):
    ``x <- x - (x . r) r`` with ``r`` the unit ``direction``; with all three sites no block can
    write the direction back into the residual stream."""
    r = jnp.asarray(direction, jnp.float32)
    r = r / jnp.linalg.norm(r)
    rows = jnp.broadcast_to(r, (num_layers, r.shape[0]))
    return Intervention(**{site: Edit(ablate=rows) for site in sites})


def patch_positions(
    site: str,
    values: jax.Array,  # [L, B, S, D] activations of another run (a capture)
    mask: jax.Array,  # [L, B, S] bool: which layers / rows / positions to replace
) -> Intervention:
    """Activation patching: ``values`` replace ``site`` where ``mask`` is true."""
    return Intervention(**{site: Edit(patch=values, patch_mask=mask)})
