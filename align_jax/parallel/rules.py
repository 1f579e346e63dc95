"""Logical axis names -> mesh axes: one table, applied to parameters and activations.

The model names its dimensions (``("embed", "mlp")``); this table decides where they go. Changing
parallelism changes the table, not the model. A dimension that the mesh axis does not divide is
replicated instead (e.g. SmolLM2's 9 heads on a 2-way tensor axis).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("member", None),  # separate-trunk ensembles: E trunks stacked on a leading axis (replicated)
)

# The leading axis of ensemble members stacked in one pytree (``stack_members``): its logical name in
# the parameters' ``axes`` and the axis name of the ``jax.vmap`` that runs them.
MEMBER_AXIS = "member"


def _mesh_axes(rule_value) -> tuple[str, ...]:
    if rule_value is None:
        return ()
    return (rule_value,) if isinstance(rule_value, str) else tuple(rule_value)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """PartitionSpec for a value whose dimensions carry ``logical_axes``.

    Unknown logical names raise; a mesh axis is used at most once; a dimension not divisible by
    its mesh axes (when ``shape`` is given) or mapped to size-1 axes is left replicated.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; rules cover {sorted(table)}")
        axes = tuple(a for a in _mesh_axes(table[name]) if a not in used and mesh.shape[a] > 1)
        size = 1
        for a in axes:
            size *= mesh.shape[a]
        if not axes or (shape is not None and shape[i] % size):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def param_shardings(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> dict[tuple[Any, ...], NamedSharding]:
    """Flat parameter path -> NamedSharding, from each parameter's ``axes`` metadata."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = var.get_metadata()["axes"]
        out[path] = NamedSharding(mesh, logical_to_spec(axes, mesh, rules, var.get_value().shape))
    return out


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.State:
    """A pytree like ``state`` with a NamedSharding per leaf (replicated when no ``axes``)."""

    def one(var):
        axes = var.get_metadata().get("axes")
        spec = PartitionSpec() if axes is None else logical_to_spec(axes, mesh, rules, var.get_value().shape)
        return var.replace(value=NamedSharding(mesh, spec))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def stack_members(trees: Sequence[Any]) -> Any:
    """Equally structured trees (nnx states, dicts of arrays) stacked on a new leading axis, which
    nnx variables name ``MEMBER_AXIS`` in their ``axes`` (so the stack shards by the rules)."""

    def stack(*leaves):
        if not _is_variable(leaves[0]):
            return jnp.stack(leaves)
        out = leaves[0].replace(value=jnp.stack([v.get_value() for v in leaves]))
        out.set_metadata("axes", (MEMBER_AXIS,) + tuple(leaves[0].get_metadata().get("axes", ())))
        return out

    return jax.tree.map(stack, *trees, is_leaf=_is_variable)


def member_of(tree: Any, index: int) -> Any:
    """Member ``index`` of a tree made by :func:`stack_members` (variables lose the member axis name)."""

    def take(leaf):
        if not _is_variable(leaf):
            return leaf[index]
        out = leaf.replace(value=leaf.get_value()[index])
        axes = tuple(leaf.get_metadata().get("axes", ()))
        if axes[:1] == (MEMBER_AXIS,):
            out.set_metadata("axes", axes[1:])
        return out

    return jax.tree.map(take, tree, is_leaf=_is_variable)


def shard_state(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.State:
    """Places every variable of ``state`` according to the rules (returns a new state)."""
    return jax.tree.map(
        lambda v, s: v.replace(value=jax.device_put(v.get_value(), s.get_value())),
        state,
        state_shardings(state, mesh, rules),
        is_leaf=_is_variable,
    )


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.Module:
    """Places every parameter of ``model`` according to the rules (returns a new module)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, shard_state(state, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Sharding for a [batch, ...] array: batch over the rule's axes, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), mesh, rules))


def rules_from_config(pairs: Mapping[str, Any] | Rules | None) -> Rules:
    """Rules from a config mapping (``{"embed": "fsdp", ...}``) layered over DEFAULT_RULES."""
    if not pairs:
        return DEFAULT_RULES
    overrides = dict(pairs.items() if isinstance(pairs, Mapping) else pairs)
    unknown = sorted(set(overrides) - {k for k, _ in DEFAULT_RULES})
    if unknown:
        raise KeyError(f"unknown logical axes {unknown}; known: {[k for k, _ in DEFAULT_RULES]}")
    return tuple((k, overrides.get(k, v)) for k, v in DEFAULT_RULES)
