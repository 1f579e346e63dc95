"""The online RL run: rollout -> score -> advantages -> policy updates, once per train step.

Each step (one rollout batch of ``P`` prompts x ``G`` samples):

1. **rollout** (jitted, explicit shardings): the KV-cache sampler reads the *live* policy
   parameters of the train state (LoRA adapters merged on the fly): no weight copy, no sync.
   The sampling key is ``fold_in(key(data.seed), step)``, so a resumed run draws the same samples.
2. **score** (host): every reward of ``rl.rewards`` on every decoded completion
   (:mod:`align_jax.rewards`); a reward that raises excludes that completion and is counted.
   With ``rl.reward_transform`` (log-sigmoid, PAR) the reference policy also samples
   ``rl.reference_samples`` completions per prompt, and each reward is taken relative to theirs
   before the rewards are combined (``reference_relative_total``).
   Optional DAPO over-long shaping, and the KL to the reference in the reward (``rl.kl_in``).
3. **advantages**: the registered estimator over each prompt's group; with
   ``rl.dynamic_sampling`` groups whose rewards are all equal get weight 0 (DAPO).
4. **update**: ``rl.epochs`` passes of ``rl.minibatches`` optimizer steps each, through the
   engine's donated, sharded :func:`align_jax.training.step.train_step`.

Old log-probs come from the sampler (fp32: equal to the trainer's to ~1e-6, so the first
epoch's importance ratio is 1; logged as ``rl/ratio_*_epoch0``), or from a trainer pass with
``rl.recompute_old_logps`` (forced when top-k / top-p truncate the sampling distribution).
Time is split ``perf/rollout_seconds``, ``perf/score_seconds``, ``perf/logps_seconds``, ``perf/update_seconds``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from align_jax import rewards as R
from align_jax.data.records import PromptRecord
from align_jax.models.chat import encode_chat
from align_jax.objectives.kl import KL_ESTIMATORS
from align_jax.objectives.policy_gradient import ADVANTAGE_ESTIMATORS, POLICY_LOSSES
from align_jax.sampling.decoding import SamplingParams
from align_jax.sampling.sampler import batch_ways, decode_shardings, eos_array, sample_program, stop_array
from align_jax.training import data_setup as D
from align_jax.training import step as S
from align_jax.training.checkpointing import check_finite
from align_jax.training.config import RunConfig
from align_jax.training.loop import build_state, finish, load, open_checkpoints, save_cadence, stored_before
from align_jax.training.metrics_logging import MetricsWriter, ProgressBar
from align_jax.objectives.kl import kl_penalized_rewards, masked_mean
from align_jax.objectives.reward import REWARD_TRANSFORMS
from align_jax.objectives.policy_gradient import gae
from align_jax.training.tasks.online import (
    completion_hidden,
    completion_logps,
    logps_from_hidden,
    policy_gradient_loss,
    ppo_task_loss,
    token_values,
)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class PromptSet:
    """Tokenized prompts (left-padded to one width, a multiple of 32, for the whole set) with their records."""

    def __init__(self, records: list[PromptRecord], lm, width: int | None = None):
        self.records = records
        self.ids = [encode_chat(lm.tokenizer, r.prompt, template=lm.chat_template, add_generation_prompt=True).ids
                    for r in records]
        self.width = width or _round_up(max(len(i) for i in self.ids), 32)
        pad = lm.tokenizer.pad_id or 0
        self.tokens = np.full((len(records), self.width), pad, np.int32)
        self.mask = np.zeros((len(records), self.width), np.int32)
        for i, ids in enumerate(self.ids):
            if len(ids) > self.width:
                raise ValueError(f"prompt {i} has {len(ids)} tokens, more than the width {self.width}")
            self.tokens[i, self.width - len(ids):] = ids
            self.mask[i, self.width - len(ids):] = 1


def _policy_loss_options(cfg: RunConfig) -> tuple[Any, str]:
    """(bound policy loss, its aggregation): the KL term is aggregated like the policy loss."""
    options = dict(cfg.loss_options)
    entry = POLICY_LOSSES.entry(cfg.loss_name)
    aggregation = options.get("aggregation", entry.options.get("aggregation", "seq-mean-token-mean"))
    return POLICY_LOSSES.build(cfg.loss_name, **options), aggregation


def group_advantages(
    rewards: np.ndarray,  # [P * G] total reward per completion (NaN where a reward failed)
    valid: np.ndarray,  # [P * G] bool
    group_size: int,
    estimator: str,
    dynamic_sampling: bool,
) -> tuple[np.ndarray, np.ndarray, float]:  # ([R] advantages, [R] row weight, fraction of groups dropped)
    """Advantages of every completion within its prompt's group, and which rows train."""
    r = np.where(valid, rewards, 0.0).reshape(-1, group_size).astype(np.float32)
    v = valid.reshape(-1, group_size)
    adv = np.asarray(ADVANTAGE_ESTIMATORS.build(estimator)(jnp.asarray(r), jnp.asarray(v)))
    keep = v.copy()
    dropped = 0.0
    if dynamic_sampling:
        spread = np.array([np.ptp(row[m]) if m.any() else 0.0 for row, m in zip(r, v)])
        same = spread == 0
        keep &= ~same[:, None]
        dropped = float(same.mean())
    return adv.reshape(-1), keep.reshape(-1).astype(np.float32), dropped


def reference_relative_total(
    scores: R.Scores,  # [P*G, K] the policy's samples
    ref_scores: R.Scores,  # [P*R, K] the reference policy's samples of the same P prompts
    group_size: int,
    weights,  # [K]
    combine: str,
    transform: str,
    **options,
) -> np.ndarray:  # [P*G] float32; NaN where a policy reward failed or no reference reward of a prompt scored
    """Each reward ``k`` transformed against the reference rewards of its prompt (a transform of
    ``objectives.reward.REWARD_TRANSFORMS``: log-sigmoid, arXiv:2402.00742; PAR, arXiv:2502.18770),
    then weighted and combined as ``Scores.total`` does. Failed reference rewards are masked out."""
    n, k = scores.values.shape
    prompts = n // group_size
    refs = np.asarray(ref_scores.values, np.float32).reshape(prompts, -1, k)  # [P, R, K]
    ok = ~np.asarray(ref_scores.failed).reshape(prompts, -1, k)
    refs = np.repeat(np.nan_to_num(refs), group_size, axis=0)  # [P*G, R, K]
    ok = np.repeat(ok, group_size, axis=0)
    fn = REWARD_TRANSFORMS.build(transform, **options)
    out = np.stack([np.asarray(fn(jnp.asarray(scores.values[:, j]), jnp.asarray(refs[:, :, j]), jnp.asarray(ok[:, :, j])))
                    for j in range(k)], axis=1)  # [P*G, K]
    out = np.where(ok.any(axis=1), out, np.nan)
    return R.Scores(scores.names, out.astype(np.float32), scores.failed, []).total(weights, combine)


def overlong_penalty(lengths: np.ndarray, max_new_tokens: int, buffer: int, penalty: float) -> np.ndarray:  # [R]
    """DAPO's soft over-long punishment (arXiv:2503.14476): 0 up to ``max - buffer`` tokens, then
    falling linearly to ``-penalty`` at ``max_new_tokens``."""
    if buffer <= 0:
        return np.zeros(lengths.shape, np.float32)
    start = max_new_tokens - buffer
    return (-penalty * np.clip(lengths - start, 0, buffer) / buffer).astype(np.float32)


def ppo_advantages(rl, total, valid, old, ref, values, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PPO-RLHF: per-token rewards (the score at the last token, ``-kl_coef * KL_t`` at every
    token), GAE over them, advantages whitened over valid tokens; ``([R, M], [R, M] returns, [R] keep)``."""
    keep = valid.astype(np.float32)
    mask = jnp.asarray(mask * keep[:, None])
    scores = jnp.asarray(np.where(valid, total, 0.0), jnp.float32)
    beta = rl.kl_coef if rl.kl_in == "reward" else 0.0
    rewards, _ = kl_penalized_rewards(scores, jnp.asarray(old), jnp.asarray(ref), mask, beta=beta,
                                      estimator=rl.kl_estimator)
    adv, returns = gae(rewards, jnp.asarray(values), mask, gamma=rl.gamma, lam=rl.lam)
    mean = masked_mean(adv, mask)
    std = jnp.sqrt(masked_mean(jnp.square(adv - mean), mask))
    adv = jnp.where(mask > 0, (adv - mean) / (std + 1e-8), 0.0)
    return np.asarray(adv, np.float32), np.asarray(returns, np.float32), keep


class OnlineRL:
    """The jitted pieces of one run, bound to its config, model, mesh and shardings."""

    def __init__(self, cfg: RunConfig, lm, mesh, spec, state_sh, width: int):
        self.cfg, self.lm, self.mesh, self.spec, self.state_sh = cfg, lm, mesh, spec, state_sh
        rl = cfg.rl
        self.width, self.m = width, rl.max_new_tokens
        self.pad_id = lm.tokenizer.pad_id or 0
        self.eos = eos_array(sorted(lm.tokenizer.eos_ids))
        truncating = rl.top_k > 0 or rl.top_p < 1.0
        self.recompute = rl.recompute_old_logps or truncating
        self.need_ref = rl.kl_coef > 0
        self.ppo = cfg.task.uses_head  # a value head: per-token GAE advantages
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self._rollouts = {}
        self.hoist = mesh.devices.flat[0].platform == "cpu"  # see align_jax.sampling.sampler.sample
        self.logps_pass = jax.jit(self._logps_pass, in_shardings=(state_sh, None), out_shardings=self.replicated)

    # -- rollout ----------------------------------------------------------------------------
    def rollout(self, state, tokens: np.ndarray, mask: np.ndarray, key, params: SamplingParams,
                reference: bool = False) -> dict:
        """Samples ``params.n`` completions per prompt from the live policy (or, with ``reference``,
        from the reference policy); the batch of the module docstring of
        :mod:`align_jax.training.tasks.online` (without advantages)."""
        rows = tokens.shape[0] * params.n
        sig = (tokens.shape, params.structure(), params.n, reference)
        if sig not in self._rollouts:
            ways = batch_ways(self.mesh)
            split = tokens.shape[0] % ways == 0 and ways > 1
            shardings = decode_shardings(self.lm.model.cfg, self.mesh, rows) if split else None
            prompt_sh = S.batch_shardings(tokens, self.mesh, micro_axis=False) if split else self.replicated
            fn = functools.partial(self._rollout, structure=params.structure(), n=params.n, shardings=shardings,
                                   reference=reference)
            self._rollouts[sig] = jax.jit(fn, in_shardings=(self.state_sh, prompt_sh, prompt_sh, None, None),
                                          out_shardings=self.replicated)
        return self._rollouts[sig](state, tokens, mask, key, params.values())

    def _rollout(self, state, tokens, mask, key, values, *, structure, n, shardings, reference=False):
        policy = self._reference_state(state) if reference else S.policy_state(self.spec, state.params, state.frozen)
        out = sample_program(
            policy, tokens, mask, key, values, jnp.int32(self.m), self.eos, stop_array(()),
            graphdef=self.spec.graphdef, structure=structure, n=n, buffer_len=self.m,
            cache_len=tokens.shape[1] + self.m, pad_id=self.pad_id, shardings=shardings,
            hoist_weights=self.hoist,
        )
        full_mask = jnp.concatenate([out.prompt_mask, out.completion_mask], axis=1)
        return {
            "tokens": jnp.concatenate([out.prompt_tokens, out.tokens], axis=1),
            "positions": jnp.maximum(jnp.cumsum(full_mask, axis=1) - 1, 0).astype(jnp.int32),
            "segment_ids": full_mask.astype(jnp.int32),
            "completion_mask": out.completion_mask,
            "sampler_logps": out.sampling_logprobs,
        }

    @staticmethod
    def _reference_state(state):
        """The reference policy: the frozen copy, or with LoRA the frozen base model."""
        return state.reference if state.reference is not None else state.frozen["model"]

    # -- trainer-side log-probs ------------------------------------------------------------------
    def _logps_pass(self, state, batch) -> dict:
        out = {}
        temperature = self.cfg.rl.temperature
        if self.recompute or self.ppo:
            policy = nnx.merge(self.spec.graphdef, S.policy_state(self.spec, state.params, state.frozen))
            hidden = completion_hidden(policy, batch)
            if self.recompute:
                m = batch["completion_mask"].shape[1]
                out["old_logps"] = logps_from_hidden(policy, hidden, batch["tokens"][:, -m:], temperature)[0]
            if self.ppo:
                out["old_values"] = token_values(state.params["reward_head"], hidden)
        if self.need_ref:
            ref = nnx.merge(self.spec.graphdef, self._reference_state(state))
            out["ref_logps"] = completion_logps(ref, batch, temperature)[0]
        return out


def _decode(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
    return [tokenizer.decode([int(t) for t, m in zip(row, mrow) if m], skip_special_tokens=True)
            for row, mrow in zip(tokens, mask)]


def run_online(cfg: RunConfig, workdir: str | Path) -> dict[str, Any]:
    if jax.process_count() > 1:  # prompts and rewards live on one host; a global rollout batch is not built yet
        raise NotImplementedError("online RL (train.task='grpo'/'ppo') runs in a single process (any number of "
                                  "devices); multi-host rollouts are not implemented")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rl = cfg.rl
    reward_fns = R.build(rl.reward_names)
    splits = D.load_splits(cfg.data, cfg.task)
    if not all(isinstance(r, PromptRecord) for r in splits.train + splits.eval):
        raise ValueError(f"train.task={cfg.task.name!r} needs prompt records; data.source={cfg.data.source!r} gives others")
    mesh, lm = load(cfg)
    eval_records = splits.eval[: rl.eval_prompts]
    train_set = PromptSet(splits.train, lm)
    eval_set = PromptSet(eval_records, lm)
    width = train_set.width  # the eval prompts have their own width (their rollout compiles apart anyway)
    if max(width, eval_set.width) + rl.max_new_tokens > lm.model.cfg.max_position_embeddings:
        raise ValueError(f"prompts padded to {width} tokens + rl.max_new_tokens={rl.max_new_tokens} exceed the "
                         f"model's {lm.model.cfg.max_position_embeddings} positions")

    loss_fn, aggregation = _policy_loss_options(cfg)
    options = dict(loss_fn=loss_fn, temperature=rl.temperature, kl_coef=rl.kl_coef if rl.kl_in == "loss" else 0.0,
                   kl_estimator=rl.kl_estimator, aggregation=aggregation)
    if cfg.task.uses_head:  # PPO: value head, per-token advantages
        task_loss = functools.partial(ppo_task_loss, **options, value_coef=rl.value_coef,
                                      clip_eps_value=rl.clip_eps_value if rl.clip_eps_value > 0 else None)
    else:
        task_loss = functools.partial(policy_gradient_loss, **options)
    spec, state, state_sh = build_state(cfg, lm, mesh, task_loss)
    engine = OnlineRL(cfg, lm, mesh, spec, state_sh, width)

    rows = rl.prompts_per_step * rl.group_size
    per_update = rows // rl.minibatches
    a = cfg.data.micro_batches
    m, n = (rl.max_new_tokens,), (width + rl.max_new_tokens,)
    shapes = {"tokens": n, "positions": n, "segment_ids": n, "completion_mask": m, "old_logps": m, "ref_logps": m,
              "advantages": m if engine.ppo else ()}
    if engine.ppo:
        shapes.update(returns=m, old_values=m)
    batch_keys = tuple(shapes)
    dtypes = {"tokens": np.int32, "positions": np.int32, "segment_ids": np.int32}
    shaped = {k: np.zeros((a, per_update // a) + shapes[k], dtypes.get(k, np.float32)) for k in batch_keys}
    batch_sh = S.batch_shardings(shaped, mesh)
    train_step = S.compile_train_step(spec, state_sh, batch_sh, mesh)

    prompt_cfg = dataclasses.replace(cfg.data, batch_size=rl.prompts_per_step)
    prompt_it = D.iterator(list(range(len(train_set.records))), prompt_cfg, train=True)

    ckpt, state, data_state, start = open_checkpoints(cfg, workdir, state, state_sh)
    if data_state is not None:
        prompt_it.set_state(data_state)
    writer = MetricsWriter(workdir, resume_step=start if start else None)
    (workdir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    base_key = jax.random.key(cfg.data.seed)

    def evaluate(state) -> tuple[dict[str, float], list[dict]]:
        greedy = SamplingParams(temperature=0.0, n=1, max_new_tokens=rl.max_new_tokens)
        out = jax.device_get(engine.rollout(state, eval_set.tokens, eval_set.mask, base_key, greedy))
        texts = _decode(lm.tokenizer, out["tokens"][:, eval_set.width:], out["completion_mask"])
        scores = R.score(rl.reward_names, reward_fns, eval_set.records, texts)
        total = scores.total(rl.weights, rl.reward_combine)
        metrics = {"eval/reward": float(np.nanmean(total)) if scores.ok_under(rl.weights).any() else float("nan"),
                   "eval/response_length": float(out["completion_mask"].sum(1).mean()),
                   "eval/reward_failures": float(scores.failed.any(1).sum())}
        for k, name in enumerate(scores.names):
            metrics[f"eval/reward/{name}"] = float(np.nanmean(scores.values[:, k]))
        samples = [{"prompt": r.prompt[-1]["content"], "completion": t, "reward": float(v)}
                   for r, t, v in zip(eval_set.records, texts, total)]
        return metrics, samples

    before, before_samples = (evaluate(state) if start == 0 else (stored_before(workdir), None))
    if start == 0:
        writer.write(0, before, split="eval")
        (workdir / "samples_before.json").write_text(json.dumps(before_samples, indent=2))
    metrics: dict[str, float] = {}
    last_eval = None
    cadence = save_cadence(cfg)
    try:
        with ProgressBar(cfg.train.steps, initial=start, desc=cfg.task.name, show=("reward", "loss")) as bar:
            for step in range(start + 1, cfg.train.steps + 1):
                state, metrics = _rl_step(cfg, engine, train_step, state, step, next(prompt_it), train_set,
                                          reward_fns, base_key, batch_sh, width)
                check_finite(step, metrics)  # raises before this step's state can be saved
                if step % cfg.train.log_every == 0:
                    writer.write(step, metrics)
                if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
                    eval_metrics, samples = evaluate(state)
                    writer.write(step, eval_metrics, split="eval")
                    metrics.update(eval_metrics)
                    if step == cfg.train.steps:
                        last_eval = (eval_metrics, samples)
                if cadence.due(step):
                    ckpt.save(step, state, data_state=prompt_it.get_state(), metrics=metrics)
                bar.update(step, metrics)
    finally:
        ckpt.close()
        writer.close()

    final, after_samples = last_eval or evaluate(state)  # a resumed finished run evaluates again
    (workdir / "samples_after.json").write_text(json.dumps(after_samples, indent=2))
    result = {"final": {**metrics, **final}, "before": before, "data": splits.stats,
              "train_examples": len(train_set.records), "eval_examples": len(eval_set.records)}
    return finish(cfg, spec, state, lm, workdir, result)


def _rl_step(cfg, engine: OnlineRL, train_step, state, step, prompt_idx, prompts: PromptSet, reward_fns, base_key,
             batch_sh, width) -> tuple[Any, dict]:
    """One rollout batch: rollout, score, advantages, ``epochs x minibatches`` updates."""
    rl = cfg.rl
    idx = np.asarray(prompt_idx)
    t0 = time.perf_counter()
    params = SamplingParams(temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p, n=rl.group_size,
                            max_new_tokens=rl.max_new_tokens)
    key = jax.random.fold_in(base_key, step)
    batch = jax.device_get(engine.rollout(state, prompts.tokens[idx], prompts.mask[idx], key, params))
    t1 = time.perf_counter()

    records = [prompts.records[i] for i in idx for _ in range(rl.group_size)]
    texts = _decode(engine.lm.tokenizer, batch["tokens"][:, width:], batch["completion_mask"])
    scores = R.score(rl.reward_names, reward_fns, records, texts)
    for message in scores.errors[:3]:
        logging.warning("step %d: %s", step, message)
    lengths = batch["completion_mask"].sum(1)
    metrics: dict[str, float] = {}
    if rl.reward_transform == "identity":
        total = scores.total(rl.weights, rl.reward_combine)
    else:
        ref_params = dataclasses.replace(params, n=rl.reference_samples)
        ref_batch = jax.device_get(engine.rollout(state, prompts.tokens[idx], prompts.mask[idx],
                                                  jax.random.fold_in(key, 1), ref_params, reference=True))
        ref_records = [prompts.records[i] for i in idx for _ in range(rl.reference_samples)]
        ref_texts = _decode(engine.lm.tokenizer, ref_batch["tokens"][:, width:], ref_batch["completion_mask"])
        ref_scores = R.score(rl.reward_names, reward_fns, ref_records, ref_texts)
        options = {"quantile": rl.transform_quantile} if rl.reward_transform == "log-sigmoid" else {}
        total = reference_relative_total(scores, ref_scores, rl.group_size, rl.weights, rl.reward_combine,
                                         rl.reward_transform, **options)
        metrics["rl/reference_reward"] = float(np.nanmean(ref_scores.total(rl.weights, rl.reward_combine)))
        metrics["rl/transformed_reward"] = float(np.nanmean(total))
    total = total + overlong_penalty(lengths, rl.max_new_tokens, rl.overlong_buffer, rl.overlong_penalty)
    t_score = time.perf_counter()
    extra = jax.device_get(engine.logps_pass(state, batch)) if (engine.recompute or engine.need_ref or engine.ppo) else {}
    old = extra.get("old_logps", batch["sampler_logps"])
    ref = extra.get("ref_logps", np.zeros_like(old))
    mask = batch["completion_mask"].astype(np.float32)
    if engine.need_ref:
        kl = np.asarray(KL_ESTIMATORS.build(rl.kl_estimator)(jnp.asarray(old), jnp.asarray(ref), jnp.asarray(mask)))
        metrics["rl/kl_to_reference"] = float((kl * mask).sum() / max(mask.sum(), 1.0))
        if rl.kl_in == "reward" and not engine.ppo:  # PPO shapes per token (ppo_advantages)
            total = total - rl.kl_coef * (kl * mask).sum(1)
    if engine.recompute:
        diff = np.abs(old - batch["sampler_logps"]) * mask
        metrics["rl/sampler_trainer_logp_maxdiff"] = float(diff.max())
    full = {"tokens": batch["tokens"], "positions": batch["positions"], "segment_ids": batch["segment_ids"],
            "old_logps": old.astype(np.float32), "ref_logps": ref.astype(np.float32)}
    # a transform leaves NaN where no reference reward scored; a watched (weight-0) reward may fail
    valid = scores.ok_under(rl.weights) & np.isfinite(total)
    if engine.ppo:
        adv, returns, keep = ppo_advantages(rl, total, valid, old, ref, extra["old_values"], mask)
        full.update(returns=returns, old_values=np.asarray(extra["old_values"], np.float32))
        dropped = 0.0
    else:
        adv, keep, dropped = group_advantages(total, valid, rl.group_size, rl.advantage, rl.dynamic_sampling)
    full.update(completion_mask=mask * keep[:, None], advantages=adv.astype(np.float32))
    t2 = time.perf_counter()

    rows = full["tokens"].shape[0]
    per_update, a = rows // rl.minibatches, cfg.data.micro_batches
    rng = np.random.default_rng([cfg.data.seed, step])
    update_metrics: list[dict] = []
    # Nothing to learn from (every group dropped or failed): no update at all, since AdamW would
    # still move the parameters on a zero gradient (momentum, weight decay).
    learn = bool(keep.any())
    for epoch in range(rl.epochs if learn else 0):
        order = rng.permutation(rows) if rl.epochs * rl.minibatches > 1 else np.arange(rows)
        for mb in range(rl.minibatches):
            sel = order[mb * per_update:(mb + 1) * per_update]
            host = {k: v[sel].reshape((a, per_update // a) + v.shape[1:]) for k, v in full.items()}
            device = {k: S.place(v, batch_sh[k]) for k, v in host.items()}
            state, m = train_step(state, device)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            m["epoch"] = epoch
            update_metrics.append(m)
    t3 = time.perf_counter()

    if learn:
        last, first = update_metrics[-1], [m for m in update_metrics if m["epoch"] == 0]
        metrics.update({k: v for k, v in last.items() if k != "epoch"})
        metrics.update({
            "rl/ratio_mean_epoch0": float(np.mean([m["pg/ratio_mean"] for m in first])),
            "rl/ratio_max_epoch0": float(max(m["pg/ratio_max"] for m in first)),
            "rl/approx_kl_epoch0": float(np.mean([m["pg/approx_kl"] for m in first])),
        })
    metrics.update({
        "rl/updated": float(learn),
        "reward": float(np.mean(total[valid])) if valid.any() else float("nan"),
        "reward_std": float(np.std(total[valid])) if valid.any() else float("nan"),
        "rl/response_length": float(lengths.mean()),
        "rl/truncated_fraction": float(np.mean(lengths >= rl.max_new_tokens)),
        "rl/groups_dropped": dropped,
        "rl/reward_failures": float((~valid).sum()),
        "perf/rollout_seconds": t1 - t0, "perf/score_seconds": t_score - t1,
        "perf/logps_seconds": t2 - t_score, "perf/update_seconds": t3 - t2,
        "perf/tokens_per_sec": float(batch["segment_ids"].sum()) / max(t3 - t0, 1e-9),
    })
    for k, name in enumerate(scores.names):
        column = scores.values[:, k]
        metrics[f"reward/{name}"] = float(np.nanmean(column)) if valid.any() and np.isfinite(column).any() else float("nan")
    return state, metrics
