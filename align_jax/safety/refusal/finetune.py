"""A prompt classifier fine-tuned end to end, the alternative to heads on frozen features.

The model is the first ``n_layers`` blocks of a decoder (``truncated_decoder``: features never
need the later layers or the unembedding) with LoRA adapters (arXiv:2106.09685) on its attention
and MLP weights, plus a linear head on the mean of the final-norm states of the user message's
tokens (the prompt rendered in the model's chat format, as ``features.encode_for_features`` does).
The loss is the weighted logistic loss ``classifier_loss``; the update is the training engine's
(``StepSpec`` with ``uses_head``, ``compile_train_step``: jitted with explicit shardings over a
mesh, state donated), so the classifier shards like any other run.

Batches hold prompts of one length bucket (left padded, ``features.left_pad``), so the step
compiles once per bucket; each batch is ``[1, B, T]`` (one micro-batch).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from align_jax.parallel.mesh import make_mesh
from align_jax.safety.refusal.features import Encoded, encode_for_features, left_pad, truncated_decoder
from align_jax.training import step as S
from align_jax.training.lora import LoraConfig
from align_jax.training.tasks import init_reward_head


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    n_layers: int = 14  # blocks kept (of the model's L)
    lora_rank: int = 16
    lora_alpha: float = 32.0
    steps: int = 250
    batch_size: int = 16
    learning_rate: float = 5e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    bucket: int = 16  # prompt lengths are padded up to a multiple of this
    max_len: int = 256  # longer prompts keep their last max_len tokens
    seed: int = 0


def classifier_logits(model, head, batch) -> jax.Array:
    """Decoder + head -> [B] logits: ``w . mean(final states of the content tokens) + b``.

    ``batch``: tokens, positions, segment_ids, content_mask, each [B, T]."""
    hidden = model(batch["tokens"], batch["positions"], batch["segment_ids"], return_logits=False).final_hidden
    m = batch["content_mask"].astype(jnp.float32)[..., None]  # [B, T, 1]
    pooled = jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)  # [B, D]
    return pooled @ head["w"] + head["b"]


def weighted_logistic_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum_i w_i * BCE(sigmoid(z_i), y_i) / sum_i w_i`` (logits, labels in {0, 1}, weights: [B]),
    computed stably as ``softplus(z) - y z``; 0 when every weight is 0."""
    nll = jax.nn.softplus(logits) - labels.astype(jnp.float32) * logits
    return jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1e-9)


def classifier_loss(model, head, batch) -> tuple[jax.Array, dict, jax.Array]:
    """The engine's task loss (``uses_head``): weighted logistic loss of ``classifier_logits``
    against ``batch["labels"]`` [B] with ``batch["example_weight"]`` [B] (0 on padding rows)."""
    z = classifier_logits(model, head, batch)
    w = batch["example_weight"].astype(jnp.float32)
    loss = weighted_logistic_loss(z, batch["labels"], w)
    correct = ((z > 0) == (batch["labels"] > 0)).astype(jnp.float32)
    accuracy = jnp.sum(w * correct) / jnp.maximum(jnp.sum(w), 1e-9)
    return loss, {"loss": loss, "accuracy": accuracy}, jnp.sum(w)


def encode_prompts(tokenizer, template: str, texts: Sequence[str], max_len: int | None) -> list[Encoded]:
    """Chat-rendered prompts with their content masks, each cut to its last ``max_len`` tokens
    (``cut_to``; None: uncut)."""
    return [cut_to(encode_for_features(tokenizer, template, t), max_len) for t in texts]


def cut_to(e: Encoded, max_len: int | None) -> Encoded:
    """The over-long policy: keep the last ``max_len`` tokens (the end holds the generation prompt)."""
    return e if max_len is None or len(e.ids) <= max_len else Encoded(e.ids[-max_len:], e.content_mask[-max_len:])


def make_batch(encoded: Sequence[Encoded], labels, weights, batch_size: int, bucket: int) -> dict[str, np.ndarray]:
    """Rows -> a ``[1, batch_size, T]`` batch (T: the longest row rounded up to ``bucket``);
    missing rows are empty with weight 0."""
    n = len(encoded)
    if not 0 < n <= batch_size:
        raise ValueError(f"need 1..{batch_size} rows, got {n}")
    length = -(-max(len(e.ids) for e in encoded) // bucket) * bucket
    rows = list(encoded) + [Encoded((), ())] * (batch_size - n)
    tokens, positions, segments, content = left_pad(rows, length)
    pad = batch_size - n
    batch = {
        "tokens": tokens, "positions": positions, "segment_ids": segments, "content_mask": content,
        "labels": np.concatenate([np.asarray(labels, np.int32), np.zeros(pad, np.int32)]),
        "example_weight": np.concatenate([np.asarray(weights, np.float32), np.zeros(pad, np.float32)]),
    }
    return {k: v[None] for k, v in batch.items()}


def training_batches(
    encoded: Sequence[Encoded], labels: np.ndarray, weights: np.ndarray, cfg: FinetuneConfig
) -> Iterator[dict[str, np.ndarray]]:
    """Endless shuffled batches, each from one length bucket (epoch after epoch, seeded)."""
    rng = np.random.default_rng(cfg.seed)
    bucket_of = np.array([-(-len(e.ids) // cfg.bucket) for e in encoded])
    while True:
        chunks = []
        for b in np.unique(bucket_of):
            idx = rng.permutation(np.flatnonzero(bucket_of == b))
            chunks += [idx[i:i + cfg.batch_size] for i in range(0, len(idx), cfg.batch_size)]
        for k in rng.permutation(len(chunks)):
            idx = chunks[k]
            yield make_batch([encoded[i] for i in idx], labels[idx], weights[idx], cfg.batch_size, cfg.bucket)


class FinetunedClassifier(NamedTuple):
    spec: S.StepSpec
    state: S.TrainState  # sharded over the training mesh (its arrays carry their shardings)
    cfg: FinetuneConfig
    losses: np.ndarray  # [steps] training loss per step


def _optimizer(cfg: FinetuneConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(cfg.steps, cfg.warmup_steps + 1)
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=cfg.weight_decay))


def train_classifier(
    model, encoded: Sequence[Encoded], labels, weights, cfg: FinetuneConfig, *, mesh=None, progress=None
) -> FinetunedClassifier:
    """Fits LoRA adapters + head on the first ``cfg.n_layers`` blocks of ``model`` for ``cfg.steps``
    updates. labels [N] in {0, 1}, weights [N] (e.g. ``probe.group_weights``)."""
    labels, weights = np.asarray(labels, np.int32), np.asarray(weights, np.float32)
    if not (len(encoded) == len(labels) == len(weights)):
        raise ValueError(f"{len(encoded)} prompts, {len(labels)} labels, {len(weights)} weights")
    if set(np.unique(labels)) != {0, 1}:
        raise ValueError(f"need both labels 0 and 1, got {sorted(set(labels.tolist()))}")
    mesh = mesh or make_mesh()
    small = truncated_decoder(model, cfg.n_layers)
    graphdef, model_state = nnx.split(small)
    spec = S.StepSpec(
        graphdef=graphdef, task_loss=classifier_loss, optimizer=_optimizer(cfg),
        lora=LoraConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha), uses_head=True,
    )
    # a copy: the step donates its state, and the truncated model shares arrays (the embedding) with ``model``
    state = S.init_state(spec, jax.tree.map(jnp.copy, model_state), lora_key=jax.random.key(cfg.seed),
                         reward_head=init_reward_head(small.cfg.hidden_size))
    state_sh = S.train_state_shardings(state, mesh)
    state = S.shard_state(state, state_sh)
    compiled: dict[tuple, Any] = {}
    losses = []
    batches = training_batches(encoded, labels, weights, cfg)
    for i in range(cfg.steps):
        batch = next(batches)
        shape = batch["tokens"].shape
        if shape not in compiled:
            batch_sh = S.batch_shardings(batch, mesh)
            compiled[shape] = (S.compile_train_step(spec, state_sh, batch_sh, mesh), batch_sh)
        step, batch_sh = compiled[shape]
        state, metrics = step(state, jax.tree.map(S.place, batch, batch_sh))
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"classifier fine-tuning: loss {loss} at step {i + 1}")
        losses.append(loss)
        if progress is not None:
            progress(i + 1, cfg.steps, loss)
    return FinetunedClassifier(spec, state, cfg, np.asarray(losses))


@functools.partial(jax.jit, static_argnums=0)
def _merged_logits(spec: S.StepSpec, params, frozen, batch) -> jax.Array:
    model = nnx.merge(spec.graphdef, S.policy_state(spec, params, frozen))
    return classifier_logits(model, params["reward_head"], batch)


def classifier_scores(clf: FinetunedClassifier, encoded: Sequence[Encoded], batch_size: int = 32) -> np.ndarray:
    """[N] logits of the fine-tuned classifier (flag when above a threshold)."""
    order = np.argsort([len(e.ids) for e in encoded], kind="stable")
    out = np.zeros(len(encoded), np.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = make_batch([encoded[i] for i in idx], np.zeros(len(idx)), np.ones(len(idx)), batch_size, clf.cfg.bucket)
        z = _merged_logits(clf.spec, clf.state.params, clf.state.frozen, {k: jnp.asarray(v[0]) for k, v in batch.items()})
        out[idx] = np.asarray(z)[: len(idx)]
    return out
