"""Learned rewards: a reward model saved beside its trunk and loaded as a jitted, sharded scorer.

A reward-model folder is a Hugging Face decoder folder (``config.json``, safetensors, tokenizer)
plus the head the Bradley-Terry task trained (``reward_head.safetensors``: ``w [D]`` and ``b []``,
or stacked ``w [E, D]`` / ``b [E]`` for an ensemble) and ``reward_model.json`` (how it pools and
formats its input). The trunk opens in ``transformers`` as the causal LM it is; the reward is
``w . h_last + b`` on the final hidden state of the last token of prompt + completion, both
rendered exactly as training rendered the pairs (:class:`align_jax.data.tokenization.Tokenize`),
so a loaded model scores what the training-time head scored.

A separate-trunk ensemble (``loss.trunk="separate"``: each member its own trunk, or its own LoRA
adapter merged into the base at export) is a folder of members, ``member_0/`` ... ``member_{E-1}/``,
each a complete reward-model folder as above (its own trunk and a single head ``w [D]``, loadable
alone), and a ``reward_model.json`` with ``"trunk": "separate"`` and ``"members"`` listing them.
It loads as E trunks stacked on a leading member axis, run by one vmapped forward, and scores
``[N, E]`` like stacked heads do; the aggregation rules reduce both the same way.

    rm = load_reward_model("runs/rm/export")
    rm.score(["How do I boil an egg?"], ["Put it in boiling water for 8 minutes."])  # -> [1] float32

In online RL a reward model is named ``rm:PATH`` in ``rl.rewards`` (:func:`align_jax.rewards.build`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from align_jax.data.records import PromptRecord
from align_jax.data.tokenization import Tokenize
from align_jax.models.hf_layout import CheckpointError
from align_jax.models.registry import LoadedModel, load_model
from align_jax.models.safetensors_io import read_hf_config, save_hf_dir
from align_jax.objectives.reward import ENSEMBLE_AGGREGATIONS, last_token_rewards
from align_jax.parallel.rules import batch_sharding, shard_state, stack_members

HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


class RewardModelError(ValueError):
    """A reward-model folder that cannot be used; the message names the file."""


def _write_meta(folder: Path, *, hidden_size: int, ensemble_size: int | None, max_length: int, **meta: Any) -> None:
    info = {"pooling": "last_token", "hidden_size": int(hidden_size), "ensemble_size": ensemble_size,
            "max_length": int(max_length), **meta}
    (folder / META_FILE).write_text(json.dumps(info, indent=2, default=str))


def save_head(folder: str | os.PathLike, head: dict[str, Any], *, max_length: int, **meta: Any) -> Path:
    """Writes ``reward_head.safetensors`` and ``reward_model.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    w = np.asarray(jax.device_get(head["w"]), np.float32)
    b = np.asarray(jax.device_get(head["b"]), np.float32)
    safetensors.numpy.save_file({"w": w, "b": b}, str(folder / HEAD_FILE), metadata={"format": "np"})
    _write_meta(folder, hidden_size=w.shape[-1], ensemble_size=int(w.shape[0]) if w.ndim == 2 else None,
                max_length=max_length, **meta)
    return folder


def save_reward_model(folder: str | os.PathLike, model, head: dict[str, Any], tokenizer, *, max_length: int,
                      **meta: Any) -> Path:
    """The whole reward model: the trunk as a HF folder, its tokenizer, the head and its metadata."""
    folder = save_hf_dir(model, folder)
    tokenizer.save_pretrained(folder)
    return save_head(folder, head, max_length=max_length, **meta)


def save_member_ensemble(folder: str | os.PathLike, members: Iterable[tuple[Any, dict[str, Any]]], tokenizer, *,
                         max_length: int, **meta: Any) -> Path:
    """A separate-trunk ensemble: each ``(trunk model, head w [D] / b [])`` of ``members`` (written one
    at a time) as the reward-model folder ``member_{e}``, and the ensemble's ``reward_model.json``."""
    folder = Path(folder)
    names, hidden = [], None
    for e, (model, head) in enumerate(members):
        if np.ndim(head["w"]) != 1:
            raise ValueError(f"member {e}: a separate-trunk member has one head w [D], got shape {np.shape(head['w'])}")
        names.append(f"member_{e}")
        hidden = int(np.shape(head["w"])[0])
        save_reward_model(folder / names[-1], model, head, tokenizer, max_length=max_length, member=e, **meta)
    if not names:
        raise ValueError("a separate-trunk ensemble needs at least one member")
    _write_meta(folder, hidden_size=hidden, ensemble_size=len(names), max_length=max_length, trunk="separate",
                members=names, **meta)
    return folder


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError as e:
        raise RewardModelError(f"{path}: not valid JSON: {e}") from e


def _member_folders(folder: Path, meta: dict[str, Any]) -> list[Path]:
    names = meta.get("members")
    if not names or not isinstance(names, list):
        raise RewardModelError(f"{folder / META_FILE}: trunk 'separate' but no list of 'members' folders")
    return [folder / name for name in names]


def _read_member_heads(folder: Path, meta: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The members' heads, each checked against its own trunk, stacked ``w [E, D]`` / ``b [E]``; the
    members' trunks must share one architecture (they are stacked and vmapped)."""
    members = _member_folders(folder, meta)
    heads = [read_head(member)[0] for member in members]
    first = read_hf_config(members[0])
    for member, head in zip(members, heads):
        if head["w"].shape != heads[0]["w"].shape or head["w"].ndim != 1:
            raise RewardModelError(f"{member / HEAD_FILE}: head w has shape {list(head['w'].shape)}; every member of "
                                   f"{folder} needs one head of the first member's shape {list(heads[0]['w'].shape)}")
        if read_hf_config(member) != first:
            raise RewardModelError(f"{member / 'config.json'}: another architecture than {members[0] / 'config.json'}; "
                                   "the members of a separate-trunk ensemble share one (they run as one vmapped forward)")
    return {"w": np.stack([h["w"] for h in heads]), "b": np.stack([h["b"] for h in heads])}, meta


def read_head(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(head, metadata)`` of a reward-model folder, checked against its trunk's ``config.json``
    (a separate-trunk ensemble: every member's head against its own trunk, stacked)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RewardModelError(f"{folder}: no such reward-model folder")
    meta = _read_meta(folder)
    if meta.get("trunk") == "separate":
        return _read_member_heads(folder, meta)
    path = folder / HEAD_FILE
    if not path.exists():
        raise RewardModelError(f"{path}: missing reward head file; a reward-model folder is the export of a "
                               "train.task='reward_model' run (a policy export has no head)")
    try:
        tensors = safetensors.numpy.load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise RewardModelError(f"{path}: cannot read the reward head: {e}") from e
    missing = sorted({"w", "b"} - set(tensors))
    if missing:
        raise RewardModelError(f"{path}: the head lacks tensor(s) {missing} (has {sorted(tensors)})")
    try:
        hidden = read_hf_config(folder).hidden_size
    except (CheckpointError, OSError, KeyError, ValueError) as e:
        raise RewardModelError(f"{folder / 'config.json'}: cannot read the trunk's config: {e}") from e
    w, b = tensors["w"], tensors["b"]
    if w.ndim not in (1, 2) or w.shape[-1] != hidden:
        raise RewardModelError(f"{path}: head w has shape {list(w.shape)} but the trunk's hidden size is {hidden} "
                               f"({folder / 'config.json'}): the head does not belong to this trunk")
    if b.shape != w.shape[:-1]:
        raise RewardModelError(f"{path}: head b has shape {list(b.shape)}, expected {list(w.shape[:-1])}")
    return {"w": w, "b": b}, meta


def _rewards_of(state, head, tokens, positions, segment_ids, graphdef):
    model = nnx.merge(graphdef, state)
    hidden = model(tokens, positions, segment_ids, return_logits=False).final_hidden
    return last_token_rewards(hidden, segment_ids, head)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _rewards(state, head, tokens, positions, segment_ids, *, graphdef):
    """[B, L] right-padded rows -> [B] (or [B, E]) float32 rewards."""
    return _rewards_of(state, head, tokens, positions, segment_ids, graphdef)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _member_rewards(trunks, heads, tokens, positions, segment_ids, *, graphdef):
    """[B, L] right-padded rows -> [B, E]: member e's trunk and head (stacked on axis 0) on every row."""
    return jax.vmap(lambda s, h: _rewards_of(s, h, tokens, positions, segment_ids, graphdef))(trunks, heads).T


@dataclasses.dataclass
class RewardModel:
    """A loaded reward model: ``score(prompts, completions) -> [N]`` float32.

    Rows are run ``batch_size`` at a time (a short last batch repeats its final row), padded to a
    multiple of ``bucket`` tokens, so there is one compiled forward per width. With a mesh the
    trunk is sharded by the parameter rules and each batch over the batch axes. An ensemble
    head scores ``[N, E]``; ``aggregate`` (a name from ``ENSEMBLE_AGGREGATIONS``) reduces it to ``[N]``.
    A separate-trunk ensemble has ``trunks``, the E members' trunk states stacked on a leading axis
    (``lm`` is member 0 as loaded: its tokenizer and graph), and heads ``w [E, D]``.
    """

    lm: LoadedModel
    head: dict[str, jax.Array]
    meta: dict[str, Any]
    tokenize: Tokenize
    batch_size: int = 8
    bucket: int = 32
    mesh: jax.sharding.Mesh | None = None
    aggregate: str | None = None
    aggregate_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    trunks: Any = None  # nnx.State with leaves [E, ...], or None: one trunk (lm.model)

    def __post_init__(self):
        self._graphdef, self._state = nnx.split(self.lm.model)
        if self.aggregate is not None:
            self._aggregate = ENSEMBLE_AGGREGATIONS.build(self.aggregate, **self.aggregate_options)

    @property
    def ensemble_size(self) -> int | None:
        return int(self.head["w"].shape[0]) if self.head["w"].ndim == 2 else None

    def score(self, prompts: Sequence[Any], completions: Sequence[str]) -> np.ndarray:
        """Rewards of each (prompt, completion): [N] float32 ([N, E] for an un-aggregated ensemble).

        A prompt is a user message (``str``) or a list of chat messages (``{"role", "content"}``).
        """
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows = [self.tokenize.completions(PromptRecord(p).prompt, {"completion": c}) for p, c in zip(prompts, completions)]
        out = [self._batch(rows[i:i + self.batch_size]) for i in range(0, len(rows), self.batch_size)]
        values = np.concatenate(out) if out else np.zeros((0,), np.float32)
        if self.aggregate is not None and values.ndim == 2:
            values = np.asarray(self._aggregate(jnp.asarray(values.T)), np.float32)
        return values

    def _batch(self, rows: list[dict[str, np.ndarray]]) -> np.ndarray:
        n = len(rows)
        rows = rows + [rows[-1]] * (self.batch_size - n)
        longest = max(int(np.sum(r["completion_segment_ids"] > 0)) for r in rows)
        width = min(-(-longest // self.bucket) * self.bucket, self.tokenize.max_length)
        arrays = [np.stack([r[f"completion_{k}"][:width] for r in rows]) for k in ("tokens", "positions", "segment_ids")]
        if self.mesh is not None:
            sharding = batch_sharding(self.mesh, 2)
            arrays = [jax.device_put(a, sharding) for a in arrays]
        if self.trunks is None:
            values = _rewards(self._state, self.head, *arrays, graphdef=self._graphdef)
        else:
            values = _member_rewards(self.trunks, self.head, *arrays, graphdef=self._graphdef)
        return np.asarray(jax.device_get(values), np.float32)[:n]

    # --- the reward protocol of align_jax.rewards: per example and per batch of prompt records
    def __call__(self, record: Any, completion: str) -> float:
        return float(self.score_batch([record], [completion])[0])

    def score_batch(self, records: Sequence[Any], completions: Sequence[str]) -> np.ndarray:  # [N] float32
        values = self.score([r.prompt for r in records], completions)
        if values.ndim != 1:
            raise ValueError(f"an ensemble of {values.shape[1]} heads needs an aggregation rule to be a reward: "
                             f"name one, e.g. rm:PATH@min ({', '.join(ENSEMBLE_AGGREGATIONS.names())})")
        return values


def load_reward_model(
    path: str | os.PathLike,
    *,
    mesh: jax.sharding.Mesh | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    aggregate: str | None = None,
    param_dtype: str = "float32",
    dtype: str = "float32",
    **aggregate_options: Any,
) -> RewardModel:
    """Opens a reward-model folder (the head is checked against the trunk before the weights load).

    ``max_length`` defaults to the training run's ``data.max_length``; ``batch_size`` must be a
    multiple of the mesh's batch-axis size when a mesh is given.
    """
    head, meta = read_head(path)
    if mesh is not None:
        shards = int(np.prod([mesh.shape[a] for a in _batch_axes(mesh)]))
        if batch_size % shards:
            raise ValueError(f"batch_size={batch_size} is not a multiple of the mesh's {shards} batch shards")
    trunks = None
    if meta.get("trunk") == "separate":  # one trunk per member, stacked (then vmapped)
        members = [load_model(path=p, mesh=mesh, param_dtype=param_dtype, dtype=dtype)
                   for p in _member_folders(Path(path), meta)]
        lm = members[0]
        trunks = stack_members([nnx.state(m.model) for m in members])
        del members
        if mesh is not None:
            trunks = shard_state(trunks, mesh)
    else:
        lm = load_model(path=path, mesh=mesh, param_dtype=param_dtype, dtype=dtype)
    length = int(max_length or meta.get("max_length") or 512)
    prompt_length = meta.get("max_prompt_length")
    if prompt_length is not None and not 0 < prompt_length < length:
        prompt_length = None
    tokenize = Tokenize(lm.tokenizer, template=meta.get("chat_template") or lm.chat_template, max_length=length,
                        max_prompt_length=prompt_length)
    placed = {k: jnp.asarray(v) for k, v in head.items()}
    if mesh is not None:
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        placed = jax.device_put(placed, replicated)
    return RewardModel(lm, placed, meta, tokenize, batch_size=batch_size, mesh=mesh, aggregate=aggregate,
                       aggregate_options=dict(aggregate_options), trunks=trunks)


def _batch_axes(mesh: jax.sharding.Mesh) -> tuple[str, ...]:
    spec = batch_sharding(mesh, 2).spec[0]
    if spec is None:
        return ()
    return (spec,) if isinstance(spec, str) else tuple(spec)


class LazyRewardModel:
    """A reward model named in a config (``rm:PATH`` or ``rm:PATH@RULE`` for an ensemble): its head
    and config are checked when named, its weights load on the first score."""

    def __init__(self, spec: str, **options: Any):
        path, _, rule = spec.partition("@")
        self.path, self.aggregate, self.options = path, rule or None, options
        head, _ = read_head(path)  # missing or mismatched heads fail here, before any model loads
        if self.aggregate is not None:
            ENSEMBLE_AGGREGATIONS.entry(self.aggregate)
        elif head["w"].ndim == 2:
            raise RewardModelError(f"{Path(path) / HEAD_FILE}: an ensemble of {head['w'].shape[0]} heads; "
                                   f"name an aggregation rule: rm:{path}@RULE, RULE one of "
                                   f"{', '.join(ENSEMBLE_AGGREGATIONS.names())}")
        self._model: RewardModel | None = None

    @property
    def model(self) -> RewardModel:
        if self._model is None:
            self._model = load_reward_model(self.path, aggregate=self.aggregate, **self.options)
        return self._model

    def __call__(self, record: Any, completion: str) -> float:
        return self.model(record, completion)

    def score_batch(self, records: Sequence[Any], completions: Sequence[str]) -> np.ndarray:
        return self.model.score_batch(records, completions)
