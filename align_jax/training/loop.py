"""The training run: config -> model, data, state -> jitted steps -> metrics, checkpoints, export.

Resuming: the same command on the same workdir restores the newest complete checkpoint (state and
data-iterator position) and truncates the metric trace after it, so an interrupted run continues
exactly where the uninterrupted one would be. A non-finite loss stops the run before anything is
saved for that step, so the last checkpoint on disk is the last good state.

Memory: the loaded weights are dropped once the train state holds its own copy (the "before" policy
is read again from the weights file at the end, for the report), checkpoint saves are waited for when
the state lives in host memory (CPU: Orbax's host copy would otherwise coexist with the next step),
and the C heap's free pages go back to the OS after each phase (``release_free_memory``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from align_jax.data import pipeline
from align_jax.data.packing import pad
from align_jax.data.tokenization import Tokenize
from align_jax.models import LoadedModel, load_model, save_hf_dir
from align_jax.models.host_memory import release_free_memory
from align_jax.parallel.mesh import make_mesh
from align_jax.parallel.rules import member_of
from align_jax.rewards.model import save_head, save_member_ensemble
from align_jax.training import data_setup as D
from align_jax.training import step as S
from align_jax.training.checkpointing import Checkpointer, SaveCadence, check_finite
from align_jax.training.config import RunConfig
from align_jax.training.flops import measure_matmul_peak, model_flops_per_token
from align_jax.training.lora import LoraConfig
from align_jax.training.metrics_logging import MetricsWriter, ProgressBar, Throughput, read_metrics
from align_jax.training.optimizer import make_optimizer
from align_jax.training.reference_cache import cached_reference_logps, model_fingerprint
from align_jax.training.tasks import init_reward_head, reference_logps, separate_members


REFERENCE_CACHE = "reference_cache"  # precomputed reference log-probs, under the workdir unless reference.cache_dir


def build_task_loss(cfg: RunConfig, tokenizer=None):
    """(task loss function, whether it takes a reward head) for the configured task and loss.

    ``tokenizer`` is needed by tasks whose loss reads token ids (calibration's confidence digits)."""
    task = cfg.task
    loss = task.build_loss(cfg.loss_name, dict(cfg.loss_options), tokenizer=tokenizer, pair_layout=cfg.data.pair_layout)
    return loss, task.uses_head


def load(cfg: RunConfig):
    """(mesh, loaded model) of the config: the model sharded over the mesh on load."""
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    m = cfg.model
    lm = load_model(m.name if m.path is None else None, m.path, param_dtype=m.param_dtype, dtype=m.dtype,
                    matmul_dtype=m.matmul_dtype, remat=m.remat, scan_layers=m.scan_layers, mesh=mesh)
    return mesh, lm  # load_model has handed the loader's freed copies back to the OS


def frozen_reference_fn(cfg: RunConfig):
    """The step's reference pass in reference mode "frozen" (None otherwise): the reference log-probs
    the task's loss reads, per token too when the loss declares it needs them (LD-DPO)."""
    if cfg.reference.mode != "frozen":
        return None
    per_token = cfg.task.loss_needs(cfg.loss_name, dict(cfg.loss_options)).per_token_reference
    return functools.partial(reference_logps, kind=cfg.task.record_kind, per_token=per_token)


def build_state(cfg: RunConfig, lm: LoadedModel, mesh, task_loss, *, reference_fn=None):
    """(spec, sharded fresh state, state shardings) for the config's task; the loaded model
    stays intact (the "before" policy)."""
    task = cfg.task
    lora = LoraConfig(rank=cfg.lora.rank, alpha=cfg.lora.alpha, targets=cfg.lora.targets) if cfg.lora.rank else None
    needs = task.loss_needs(cfg.loss_name, dict(cfg.loss_options))
    members = separate_members(dict(cfg.loss_options)) if task.uses_head else 0
    graphdef, model_state = nnx.split(lm.model)
    spec = S.StepSpec(
        graphdef=graphdef,
        task_loss=task_loss,
        optimizer=make_optimizer(cfg.optimizer),
        reference_mode=cfg.reference.mode,
        reference_fn=reference_fn,
        lora=lora,
        uses_head=task.uses_head,
        reference_sync_every=cfg.reference.sync_every,
        reference_sync_alpha=cfg.reference.sync_alpha,
        running_means=needs.running_means,  # BCO: delta = running mean of the batch reward means
        members=members,
    )
    state = S.init_state(
        spec,
        jax.tree.map(jnp.copy, model_state),
        # separate trunks: member e's adapter is that of a single run with lora.seed + e
        lora_key=[jax.random.key(cfg.lora.seed + e) for e in range(members)] if members else jax.random.key(cfg.lora.seed),
        reward_head=init_reward_head(lm.model.cfg.hidden_size, int(dict(cfg.loss_options).get("ensemble_size", 1)))
        if task.uses_head else None,
    )
    state_sh = S.train_state_shardings(state, mesh)
    return spec, S.shard_state(state, state_sh), state_sh


def checkpoint_policies(cfg: RunConfig, workdir: Path, *, skip=(), only=None):
    """``(step, policy model)`` for every checkpoint of the run in ``workdir`` (or those of its steps in
    ``only``) but those in ``skip``, oldest first (LoRA adapters merged into the base): the policies
    an experiment measures along a run."""
    mesh, lm = load(cfg)
    spec, state, state_sh = build_state(cfg, lm, mesh, task_loss=None)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh)
    del state, lm  # only the shapes are needed: free the fresh state's copies of the weights
    skip, only = set(skip), None if only is None else set(only)
    with Checkpointer(Path(workdir) / "checkpoints", keep_last=cfg.train.keep_checkpoints) as ckpt:
        for step in ckpt.all_steps():
            if step in skip or (only is not None and step not in only):
                continue
            restored, _ = ckpt.restore(step, abstract_state=abstract)
            yield step, nnx.merge(spec.graphdef, S.policy_state(spec, restored.params, restored.frozen))


def open_checkpoints(cfg: RunConfig, workdir: Path, state, state_sh):
    """(checkpointer, state, data-iterator state or None, start step): the newest complete
    checkpoint of ``workdir`` restored, or the fresh state at step 0."""
    ckpt = Checkpointer(workdir / "checkpoints", keep_last=cfg.train.keep_checkpoints,
                        best_metric=cfg.train.best_metric or None, best_mode=cfg.train.best_mode)
    start = ckpt.latest_step() or 0
    data_state = None
    if start:
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sh)
        state, data_state = ckpt.restore(start, abstract_state=abstract)
        logging.info("resumed from step %d", start)
    return ckpt, state, data_state, start


def reference_layout(cfg: RunConfig, packer) -> tuple[D.PairPacker | None, int]:
    """(layout, batch size) of the precomputed reference pass. Prefix-shared layouts: one micro-batch
    of the steps' own rows, so the reference equals the step-0 policy bit for bit (margins exactly 0,
    checked in tests/training/test_engine.py). The separate layout, and length groups (whose shapes
    change with every batch), use separate rows of 16 pairs."""
    if not isinstance(packer, D.PairPacker):
        return None, 16
    pairs = cfg.data.batch_size // jax.process_count() // cfg.data.micro_batches
    return dataclasses.replace(packer, micro_batches=1, pair_offset=0), pairs


def save_cadence(cfg: RunConfig) -> SaveCadence:
    """Checkpoints every ``train.checkpoint_every`` steps or ``train.checkpoint_every_seconds``, and at the end."""
    return SaveCadence(cfg.train.checkpoint_every, cfg.train.checkpoint_every_seconds, cfg.train.steps)


def stored_before(workdir: Path) -> dict | None:
    """The evaluation at step 0 that an earlier (interrupted) run of this workdir logged."""
    rows = [r for r in read_metrics(workdir, split="eval") if r.get("step") == 0]
    return {k: v for k, v in rows[-1].items() if k.startswith("eval/")} if rows else None


def finish(cfg: RunConfig, spec, state, lm: LoadedModel, workdir: Path, result: dict) -> dict[str, Any]:
    """Exports the policy, writes ``result.json`` and returns the result with the live objects
    (loaded model, trained policy state, graphdef) for notebooks and the report."""
    export = export_policy(cfg, spec, state, lm, workdir)
    if export:
        result["export"] = export
    (workdir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    live = {"loaded": lm, "policy_state": S.policy_state(spec, state.params, state.frozen), "graphdef": spec.graphdef}
    if "reward_head" in state.params:
        live["reward_head"] = state.params["reward_head"]
    return {**result, **live}


def export_policy(cfg: RunConfig, spec, state, lm: LoadedModel, workdir: Path) -> str | None:
    """The trained policy as a Hugging Face folder (``workdir/export``), if the config asks."""
    if not cfg.train.export_hf:
        return None
    policy_state = S.gather_to_hosts(S.policy_state(spec, state.params, state.frozen))
    if jax.process_index() != 0:
        return None
    head_meta = dict(max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length or None,
                     chat_template=lm.chat_template, loss=cfg.loss_name, loss_options=dict(cfg.loss_options),
                     source=lm.source)
    if spec.members:  # a separate-trunk ensemble: one reward-model folder per member
        head = S.gather_to_hosts(state.params["reward_head"])
        members = ((nnx.merge(spec.graphdef, member_of(policy_state, e)), member_of(head, e)) for e in range(spec.members))
        return str(save_member_ensemble(workdir / "export", members, lm.tokenizer, **head_meta))
    export = save_hf_dir(nnx.merge(spec.graphdef, policy_state), workdir / "export")
    lm.tokenizer.save_pretrained(export)
    if cfg.train.task == "reward_model":  # the trunk plus its head: a folder rewards.model loads
        save_head(export, S.gather_to_hosts(state.params["reward_head"]), **head_meta)
    return str(export)


def _tokens_in(batch) -> float:
    """Non-padding tokens of every side of a batch, or of every length group (the throughput definition)."""
    if isinstance(batch, (tuple, list)):
        return sum(_tokens_in(group) for group in batch)
    return float(sum(np.sum(np.asarray(v) > 0) for k, v in batch.items() if k.endswith("segment_ids")))


class _ShapeKeyedStep:
    """A step over length-grouped batches (tuples of ``[1, rows, length]`` groups): compiled once
    per group structure met, with each group's batch shardings (rows over the data axes when
    they divide, else replicated)."""

    def __init__(self, compile_fn, mesh):
        self.compile_fn, self.mesh, self.compiled = compile_fn, mesh, {}

    def place(self, groups) -> tuple:
        shardings = S.batch_shardings(tuple(groups), self.mesh)
        return jax.tree.map(S.place, tuple(groups), shardings)

    def __call__(self, state, groups):
        key = tuple(tuple((k, v.shape) for k, v in sorted(g.items())) for g in groups)
        if key not in self.compiled:
            self.compiled[key] = self.compile_fn(S.batch_shardings(groups, self.mesh), self.mesh)
        return self.compiled[key](state, groups)


def run(cfg: RunConfig, workdir: str | Path) -> dict[str, Any]:
    """Trains the config's task in ``workdir`` (resuming it if it holds checkpoints)."""
    if cfg.task.online:
        from align_jax.training.rl_loop import run_online

        return run_online(cfg, workdir)
    _given_peak_flops()  # a bad value fails now, not after the model loads
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh, lm = load(cfg)
    fingerprint = model_fingerprint(lm.source, lm.model)
    task_loss, _ = build_task_loss(cfg, lm.tokenizer)

    # -- data ---------------------------------------------------------------------------
    splits = D.load_splits(cfg.data, cfg.task)
    tokenize = Tokenize(
        lm.tokenizer,
        template=lm.chat_template,
        max_length=cfg.data.max_length,
        max_prompt_length=cfg.data.max_prompt_length or None,
        policy=cfg.data.truncation,
    )
    train_ex = pipeline.tokenize_all(tokenize, splits.train)
    eval_ex = pipeline.tokenize_all(tokenize, splits.eval)
    if cfg.task.pad_to_max_length:
        train_ex = [pad(e, cfg.data.max_length, tokenize.pad_id) for e in train_ex]
        eval_ex = [pad(e, cfg.data.max_length, tokenize.pad_id) for e in eval_ex]
    truncation = D.log_truncation(tokenize, "train+eval")
    if not train_ex or not eval_ex:
        raise ValueError(f"no examples left after truncation policy {cfg.data.truncation!r}: {truncation}")

    packer = D.pair_packer(cfg.data, train_ex + eval_ex, tokenize.pad_id)  # None: separate layout
    kind = cfg.task.record_kind
    if cfg.reference.mode == "precomputed":
        cache_dir = cfg.reference.cache_dir or workdir / REFERENCE_CACHE
        layout, batch_size = reference_layout(cfg, packer)
        for name, examples in (("train", train_ex), ("eval", eval_ex)):
            values, path, hit = cached_reference_logps(lm.model, lm.source, examples, kind, cache_dir,
                                                       batch_size=batch_size, layout=layout)
            logging.info("%s reference log-probs: %s (%s)", name, path, "cache hit" if hit else "computed")
            if name == "train":
                train_ex = pipeline.attach(examples, values)
            else:
                eval_ex = pipeline.attach(examples, values)
        release_free_memory()

    # -- state and steps ------------------------------------------------------------------
    spec, state, state_sh = build_state(cfg, lm, mesh, task_loss, reference_fn=frozen_reference_fn(cfg))
    model_cfg = lm.model.cfg
    del lm  # frees the loaded weights (the state holds a copy); the "before" policy is reloaded at the end
    host_state = all(d.platform == "cpu" for d in mesh.devices.flat)

    train_it = D.iterator(train_ex, cfg.data, train=True, transform=packer)
    if isinstance(packer, D.LengthGrouper):  # a tuple of differently shaped groups per batch
        train_step = _ShapeKeyedStep(functools.partial(S.compile_train_step, spec, state_sh), mesh)
        eval_step = _ShapeKeyedStep(functools.partial(S.compile_eval_step, spec, state_sh), mesh)
        to_device = train_step.place
    else:
        sample = {k: np.asarray(v) for k, v in next(D.iterator(train_ex, cfg.data, train=False, transform=packer)).items()}
        a, hosts = cfg.data.micro_batches, jax.process_count()
        shaped = {k: np.zeros((a, v.shape[0] * hosts // a) + v.shape[1:], v.dtype) for k, v in sample.items()}
        batch_sh = S.batch_shardings(shaped, mesh)
        train_step = S.compile_train_step(spec, state_sh, batch_sh, mesh)
        eval_step = S.compile_eval_step(spec, state_sh, batch_sh, mesh)
        to_device = functools.partial(D.to_global, data=cfg.data, shardings=batch_sh)

    def evaluate(state) -> dict[str, float]:
        sums, total = None, 0.0
        for batch in D.iterator(eval_ex, cfg.data, train=False, transform=packer):
            metrics = {k: float(v) for k, v in jax.device_get(eval_step(state, to_device(batch))).items()}
            w = metrics.pop("weight")
            sums = S.add_metrics(sums or dict.fromkeys(metrics, 0.0), metrics, w)
            total += w
        return {f"eval/{k}": v for k, v in S.finish_metrics(sums or {}, total).items()}

    # -- resume -----------------------------------------------------------------------------
    ckpt, state, data_state, start = open_checkpoints(cfg, workdir, state, state_sh)
    if data_state is not None:
        train_it.set_state(data_state)
    writer = MetricsWriter(workdir, resume_step=start if start else None)
    (workdir / "config.json").write_text(json.dumps(_jsonable(cfg), indent=2))

    flops_per_token = model_flops_per_token(model_cfg, cfg.data.max_length, training=True)
    throughput = Throughput(flops_per_token=flops_per_token, peak_flops=_peak_flops())
    before = evaluate(state) if start == 0 else stored_before(workdir)
    if start == 0:
        writer.write(0, before, split="eval")
    metrics: dict[str, float] = {}
    cadence = save_cadence(cfg)
    try:
        with ProgressBar(cfg.train.steps, initial=start, desc=cfg.train.task, show=("loss",)) as bar:
            for step in range(start + 1, cfg.train.steps + 1):
                host_batch = next(train_it)
                state, device_metrics = train_step(state, to_device(host_batch))
                metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
                check_finite(step, metrics)  # raises before this step's state can be saved
                metrics.update(throughput.update(_tokens_in(host_batch)))
                metrics["learning_rate"] = float(_lr(cfg, step))
                if step % cfg.train.log_every == 0:
                    writer.write(step, metrics)
                if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
                    eval_metrics = evaluate(state)
                    writer.write(step, eval_metrics, split="eval")
                    metrics.update(eval_metrics)
                if cadence.due(step):
                    ckpt.save(step, state, data_state=train_it.get_state(), metrics=metrics)
                    if host_state:  # its host copy must not coexist with the next step's buffers
                        ckpt.wait()
                        release_free_memory()
                bar.update(step, metrics)
    finally:  # a stopped run still finishes writing its last good checkpoint and metrics
        ckpt.close()
        writer.close()

    if not metrics:  # resumed a finished run: report its held-out metrics again
        metrics = evaluate(state)
    result = {"final": metrics, "before": before, "truncation": truncation, "data": splits.stats,
              "train_examples": len(train_ex), "eval_examples": len(eval_ex)}
    state = dataclasses.replace(state, opt_state=None)  # finish() reads the parameters only
    release_free_memory()
    _, lm = load(cfg)  # the "before" policy, for the report and notebooks
    if model_fingerprint(lm.source, lm.model) != fingerprint:
        logging.warning("%s changed during the run: the reloaded 'before' policy is the new file", lm.source)
    return finish(cfg, spec, state, lm, workdir, result)


def _lr(cfg: RunConfig, step: int) -> float:
    from align_jax.training.optimizer import learning_rate_schedule

    return learning_rate_schedule(cfg.optimizer)(step - 1)


PEAK_FLOPS_ENV = "ALIGN_JAX_PEAK_FLOPS"


def _given_peak_flops() -> float | None:
    """The MFU denominator from ``$ALIGN_JAX_PEAK_FLOPS`` (FLOP/s of all devices, e.g. a vendor's
    peak), or None: then it is measured. Checked before the model loads."""
    given = os.environ.get(PEAK_FLOPS_ENV, "").strip()
    if not given:
        return None
    try:
        value = float(given)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{PEAK_FLOPS_ENV}={given!r} must be a positive number of FLOP/s (e.g. 9.9e14), or unset to measure")
    return value


@functools.lru_cache(maxsize=None)
def _peak_flops() -> float:
    """Given, or measured once per process (~1-2 s of float32 1024^2 matmuls on this 2-core CPU)."""
    return _given_peak_flops() or measure_matmul_peak("float32", size=1024, repeats=3)


def _jsonable(cfg: RunConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
