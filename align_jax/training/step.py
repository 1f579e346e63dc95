"""Train state and the pure, sharded train/eval steps.

``step(state, batch) -> (state, metrics)`` is jitted with explicit ``in_shardings`` /
``out_shardings`` over the mesh and donates the state. Batches carry a leading micro-batch axis
``[A, B, ...]``; gradients are accumulated over it with exact weighted reduction (each task
returns a weighted-mean loss and its weight). A batch may also be a tuple of such trees with
different shapes (length groups, e.g. :func:`align_jax.data.pair_packing.pack_length_groups`):
each group is padded to its own length and all of them add into one update.

Parameters live in three places of one pytree, all sharded by the same logical-axis rules:
``params`` (trainable: the policy, or LoRA adapters; plus a reward head for reward models),
``frozen`` (the LoRA base, when LoRA is on) and ``reference`` (the frozen reference policy, when
the reference mode is "frozen"). Gradients only reach ``params``. ``extra`` holds the few running
statistics a loss reads back (``StepSpec.running_means``: BCO's reward shift), updated by the step.

Separate-trunk ensembles (``StepSpec.members`` E > 0): ``params`` and ``opt_state`` hold E members
stacked on a leading ``MEMBER_AXIS`` (full trunk copies, or one LoRA adapter each over the shared
frozen base; E heads), and the train / eval steps are the single-model steps ``jax.vmap``-ed over
that axis (named, so a loss can read its member index and reduce across members). Each member has
its own optimizer state and its own gradient clipping: member e trains exactly as a single-model
run with e's initial parameters would (tests/training/test_rm_ensemble.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from align_jax.models.decoder import Decoder
from align_jax.parallel.rules import (
    DEFAULT_RULES,
    MEMBER_AXIS,
    Rules,
    logical_to_spec,
    member_of,
    stack_members,
    state_shardings,
)
from align_jax.training import lora as lora_lib

REFERENCE_MODES = ("frozen", "precomputed", "none")

# Metrics that count something (examples, tokens: the reduction denominators the losses log) are summed
# over micro-batches and evaluation batches; every other metric is a weighted mean. ``eval/num_examples``
# is then the number of examples evaluated (32), not the mean batch size (8).
COUNT_METRICS = frozenset({"num_examples", "sft/tokens", "pg/loss_weight", "vf/loss_weight"})


def add_metrics(sums: Mapping[str, Any], metrics: Mapping[str, Any], weight) -> dict[str, Any]:
    """``sums`` plus one (micro-)batch's metrics: weighted by the batch's weight, counts as they are."""
    return {k: sums[k] + metrics[k] * (1.0 if k in COUNT_METRICS else weight) for k in sums}


def finish_metrics(sums: Mapping[str, Any], total) -> dict[str, Any]:
    """Summed metrics -> weighted means over ``total`` weight (counts stay sums)."""
    denom = jnp.maximum(total, 1e-9) if isinstance(total, jax.Array) else max(float(total), 1e-9)
    return {k: s if k in COUNT_METRICS else s / denom for k, s in sums.items()}


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array  # [] int32
    params: dict[str, Any]  # trainable: {"model": State} or {"lora": State}, optional "reward_head"
    frozen: dict[str, Any]  # {"model": State} under LoRA, else {}
    reference: Any  # nnx.State of the frozen reference policy, or None
    opt_state: Any
    # running means the step keeps (StepSpec.running_means): {field: {"mean": [], "count": []}}, or None
    extra: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about a step: model structure, loss, optimizer, reference handling."""

    graphdef: Any  # nnx.GraphDef of the Decoder
    task_loss: Callable[..., tuple[jax.Array, dict, jax.Array]]  # (model, batch[, head]) -> (loss, metrics, weight)
    optimizer: optax.GradientTransformation
    reference_mode: str = "none"
    # frozen mode: adds the reference's batch fields inside the step; None: the reference lives in the
    # state but the step does not read it (online RL scores the reference once per rollout)
    reference_fn: Callable[[Decoder, Mapping[str, jax.Array]], dict] | None = None
    lora: lora_lib.LoraConfig | None = None
    uses_head: bool = False  # reward models: task_loss(model, head, batch)
    reference_sync_every: int = 0  # TR-DPO: 0 = never update the reference
    reference_sync_alpha: float = 1.0  # 1 = hard update, < 1 = soft (Polyak) update
    # (batch field, metric): the loss reads, as that field, the running mean over past steps of the metric
    # (BCO's reward shift delta, arXiv:2404.04656); kept in TrainState.extra, so it is checkpointed
    running_means: tuple[tuple[str, str], ...] = ()
    # separate-trunk ensembles: E members stacked in params / opt_state, the step vmapped over them; 0: one model
    members: int = 0

    def __post_init__(self):
        if self.reference_mode not in REFERENCE_MODES:
            raise ValueError(f"unknown reference mode {self.reference_mode!r}; valid: {REFERENCE_MODES}")
        if self.reference_sync_every and self.reference_mode != "frozen":
            raise ValueError("TR-DPO reference updates need reference mode 'frozen'")
        if self.members and (self.reference_mode != "none" or self.running_means):
            raise ValueError("separate-trunk ensembles (members > 0) train without a reference and running means")

    @property
    def member(self) -> "StepSpec":
        """The spec of one member of a separate-trunk ensemble (what the vmapped step runs)."""
        return dataclasses.replace(self, members=0)


def policy_state(spec: StepSpec, params: Mapping[str, Any], frozen: Mapping[str, Any]) -> nnx.State:
    """The policy's full parameter state (LoRA adapters merged into the frozen base); for a
    separate-trunk ensemble, the members' states stacked on the member axis (E merged copies under LoRA)."""
    if spec.members and spec.lora is not None:
        return stack_members([policy_state(spec.member, member_of(params, e), frozen) for e in range(spec.members)])
    if spec.lora is None:
        return params["model"]
    return lora_lib.merge(frozen["model"], params["lora"], spec.lora)


def init_state(spec: StepSpec, model_state: nnx.State, *, lora_key=None, reward_head=None) -> TrainState:
    """A fresh state; the reference (frozen mode) starts as a copy of the initial policy.

    Separate-trunk ensembles (``spec.members`` E): every member's trunk starts as ``model_state`` (E
    copies; under LoRA the base is shared and ``lora_key`` is a sequence of E keys, one adapter each),
    ``reward_head`` is already stacked ``[E, ...]``, and each member gets its own optimizer state."""
    if spec.lora is not None:
        if spec.members:
            adapters = stack_members([lora_lib.init_lora(model_state, spec.lora, key) for key in lora_key])
        else:
            adapters = lora_lib.init_lora(model_state, spec.lora, lora_key)
        params, frozen = {"lora": adapters}, {"model": model_state}
    else:
        params, frozen = {"model": stack_members([model_state] * spec.members) if spec.members else model_state}, {}
    if reward_head is not None:
        params["reward_head"] = reward_head
    reference = None
    if spec.reference_mode == "frozen":
        reference = jax.tree.map(jnp.copy, model_state)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=frozen,
        reference=reference,
        opt_state=jax.vmap(spec.optimizer.init)(params) if spec.members else spec.optimizer.init(params),
        extra={field: {"mean": jnp.zeros((), jnp.float32), "count": jnp.zeros((), jnp.float32)}
               for field, _ in spec.running_means} or None,
    )


def _loss_and_aux(spec: StepSpec, params, frozen, reference, batch):
    model = nnx.merge(spec.graphdef, policy_state(spec, params, frozen))
    if spec.reference_mode == "frozen" and spec.reference_fn is not None:
        ref_model = nnx.merge(spec.graphdef, jax.lax.stop_gradient(reference))
        batch = {**batch, **spec.reference_fn(ref_model, batch)}
    if spec.uses_head:
        loss, metrics, weight = spec.task_loss(model, params["reward_head"], batch)
    else:
        loss, metrics, weight = spec.task_loss(model, batch)
    # Differentiate the weighted SUM so that micro-batches add up exactly.
    return loss * weight, (metrics, weight)


def _groups(batch) -> tuple:
    """A batch is one tree of ``[A, B, ...]`` arrays, or a tuple/list of such trees whose shapes
    differ (length groups: rows padded to each group's own length, so short pairs do not pay for
    the longest one's padding). Every group's micro-batches accumulate into the same sums."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def _with_running_means(spec: StepSpec, state: TrainState, groups: tuple) -> tuple:
    """Each running mean as a batch field of every micro-batch (broadcast over the micro-batch axis).
    It starts at 0, the implicit rewards' value while the policy is the reference."""
    if not spec.running_means:
        return groups
    return tuple(
        {**g, **{f: jnp.broadcast_to(state.extra[f]["mean"], jax.tree.leaves(g)[0].shape[:1]) for f, _ in spec.running_means}}
        for g in groups
    )


def _update_running_means(spec: StepSpec, extra, metrics: Mapping[str, jax.Array], total: jax.Array):
    """Adds this step's (exactly reduced) metric to each running mean; a step of weight 0 adds nothing."""
    if not spec.running_means:
        return extra
    out = {}
    for field, metric in spec.running_means:
        if metric not in metrics:
            raise KeyError(f"running mean {field!r}: the loss logs no metric {metric!r}; it logs {sorted(metrics)}")
        old = extra[field]
        count = old["count"] + 1.0
        mean = old["mean"] + (metrics[metric] - old["mean"]) / count
        out[field] = {"mean": jnp.where(total > 0, mean, old["mean"]), "count": jnp.where(total > 0, count, old["count"])}
    return out


def _accumulate(spec: StepSpec, state: TrainState, batch):
    """Gradients and metrics summed over the leading micro-batch axis (of every length group),
    then normalised by the total weight."""
    grad_fn = jax.value_and_grad(_loss_and_aux, argnums=1, has_aux=True)

    def micro(carry, micro_batch):
        grads, sums, total = carry
        (_, (metrics, weight)), g = grad_fn(spec, state.params, state.frozen, state.reference, micro_batch)
        grads = jax.tree.map(jnp.add, grads, g)
        sums = add_metrics(sums, _as_float32(metrics), weight)
        return (grads, sums, total + weight), None

    groups = _with_running_means(spec, state, _groups(batch))
    first = jax.tree.map(lambda x: x[0], groups[0])
    _, (metrics_shape, _) = jax.eval_shape(
        lambda: _loss_and_aux(spec, state.params, state.frozen, state.reference, first)
    )
    carry = (
        jax.tree.map(jnp.zeros_like, state.params),
        jax.tree.map(lambda m: jnp.zeros((), jnp.float32), metrics_shape),
        jnp.zeros((), jnp.float32),
    )
    for group in groups:
        carry, _ = jax.lax.scan(micro, carry, group)
    grads, sums, total = carry
    denom = jnp.maximum(total, 1e-9)
    grads = jax.tree.map(lambda g: g / denom, grads)
    return grads, finish_metrics(sums, total), total


def _member_mean(spec: StepSpec, metrics: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-member metrics [E] -> their mean over members, plus each member's ``member_{e}/loss``."""
    out = {k: jnp.mean(v, axis=0) for k, v in metrics.items()}
    out.update({f"member_{e}/loss": metrics["loss"][e] for e in range(spec.members) if "loss" in metrics})
    return out


def _members_train_step(spec: StepSpec, state: TrainState, batch) -> tuple[TrainState, dict]:
    """The single-model step vmapped over the stacked members (params, optimizer state); the frozen
    base (LoRA) and the batch are shared."""

    def member(params, opt_state):
        new, metrics = train_step(spec.member, dataclasses.replace(state, params=params, opt_state=opt_state), batch)
        return new.params, new.opt_state, metrics

    params, opt_state, metrics = jax.vmap(member, axis_name=MEMBER_AXIS)(state.params, state.opt_state)
    return dataclasses.replace(state, step=state.step + 1, params=params, opt_state=opt_state), _member_mean(spec, metrics)


def train_step(spec: StepSpec, state: TrainState, batch) -> tuple[TrainState, dict]:
    """One optimizer update from a batch [A, B, ...] (pure; jit it with `compile_train_step`)."""
    if spec.members:
        return _members_train_step(spec, state, batch)
    grads, metrics, total = _accumulate(spec, state, batch)
    updates, opt_state = spec.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    reference = state.reference
    if spec.reference_sync_every:  # TR-DPO: only sync steps pay for the (LoRA-merged) policy and the blend
        a = spec.reference_sync_alpha

        def synced(ref):
            new_policy = policy_state(spec, params, state.frozen)
            return jax.tree.map(
                lambda r, p: (a * p.astype(jnp.float32) + (1 - a) * r.astype(jnp.float32)).astype(r.dtype), ref, new_policy
            )

        reference = jax.lax.cond((step % spec.reference_sync_every) == 0, synced, lambda ref: ref, reference)
    extra = _update_running_means(spec, state.extra, metrics, total)
    metrics = {
        **metrics,
        "weight": total,
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(params),
    }
    return TrainState(step, params, state.frozen, reference, opt_state, extra), metrics


def eval_step(spec: StepSpec, state: TrainState, batch) -> dict:
    """Weighted metrics of a batch [A, B, ...] (or a tuple of length groups) without an update."""
    if spec.members:
        metrics = jax.vmap(lambda params: eval_step(spec.member, dataclasses.replace(state, params=params), batch),
                           axis_name=MEMBER_AXIS)(state.params)
        return _member_mean(spec, metrics)

    def micro(carry, micro_batch):
        sums, total = carry
        _, (metrics, weight) = _loss_and_aux(spec, state.params, state.frozen, state.reference, micro_batch)
        return (add_metrics(sums, _as_float32(metrics), weight), total + weight), None

    groups = _with_running_means(spec, state, _groups(batch))
    first = jax.tree.map(lambda x: x[0], groups[0])
    _, (metrics_shape, _) = jax.eval_shape(lambda: _loss_and_aux(spec, state.params, state.frozen, state.reference, first))
    carry = (jax.tree.map(lambda m: jnp.zeros((), jnp.float32), metrics_shape), jnp.zeros((), jnp.float32))
    for group in groups:
        carry, _ = jax.lax.scan(micro, carry, group)
    sums, total = carry
    return {**finish_metrics(sums, total), "weight": total}


def _as_float32(metrics: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v).astype(jnp.float32) for k, v in metrics.items()}


# -- shardings and compilation ------------------------------------------------------------
def train_state_shardings(state: TrainState, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> TrainState:
    """Shardings for every leaf: parameters (and their optimizer moments) by their logical
    axes; scalars and anything without axes replicated."""

    def of_tree(tree):
        if tree is None:
            return None
        if isinstance(tree, nnx.State):
            return state_shardings(tree, mesh, rules)
        return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)

    def of_params(params):
        return {k: of_tree(v) for k, v in params.items()}

    param_shardings = of_params(state.params)
    opt_shardings = _match_params_subtrees(state.opt_state, state.params, param_shardings, mesh)
    return TrainState(
        step=NamedSharding(mesh, PartitionSpec()),
        params=param_shardings,
        frozen=of_params(state.frozen),
        reference=of_tree(state.reference),
        opt_state=opt_shardings,
        extra=of_tree(state.extra),
    )


def _match_params_subtrees(opt_state, params, param_shardings, mesh):
    """Shardings for an optax state: any subtree with the params' structure gets their shardings."""
    params_def = jax.tree.structure(params)
    replicated = NamedSharding(mesh, PartitionSpec())

    def walk(node):
        if jax.tree.structure(node) == params_def:
            return param_shardings
        children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
        if len(children) == 1 and children[0] is node:  # a leaf
            return replicated
        return jax.tree_util.tree_unflatten(treedef, [walk(c) for c in children])

    return walk(opt_state)


def batch_shardings(batch, mesh: Mesh, rules: Rules = DEFAULT_RULES, *, micro_axis: bool = True):
    """[A, B, ...] arrays: B over the batch rule's mesh axes, the rest replicated."""

    def one(x):
        lead = (None, "batch") if micro_axis else ("batch",)
        axes = lead + (None,) * (x.ndim - len(lead))
        return NamedSharding(mesh, logical_to_spec(axes, mesh, rules, x.shape))

    return jax.tree.map(one, batch)


def compile_train_step(spec: StepSpec, state_sh: TrainState, batch_sh, mesh: Mesh):
    """``step(state, batch)`` jitted with explicit shardings and the state donated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        lambda state, batch: train_step(spec, state, batch),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, replicated),
        donate_argnums=0,
    )


def compile_eval_step(spec: StepSpec, state_sh: TrainState, batch_sh, mesh: Mesh):
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(lambda state, batch: eval_step(spec, state, batch), in_shardings=(state_sh, batch_sh), out_shardings=replicated)


def place(x, sharding):
    """Puts x on ``sharding``; values local to this process go through a per-shard callback, so
    this also works for shardings that span several processes (every process passes the same x)."""
    if x is None:
        return None
    if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_state(state: TrainState, shardings: TrainState) -> TrainState:
    return jax.tree.map(place, state, shardings, is_leaf=lambda x: x is None)


def gather_to_hosts(tree):
    """Every array fully on every process (for export from a multi-process run)."""
    from jax.experimental import multihost_utils

    return jax.tree.map(
        lambda x: x if x.is_fully_addressable else multihost_utils.process_allgather(x, tiled=True), tree
    )
