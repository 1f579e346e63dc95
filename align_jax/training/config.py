"""The run configuration: ml_collections in, typed sections out, unknown keys rejected.

A config file (``configs/*.py``) returns a ``ConfigDict`` with the sections below. `parse_config`
turns it into frozen dataclasses; a key that no section declares fails with the valid keys listed,
so every key a config sets is one the engine reads. ``loss`` is the exception by design: its
``name`` picks an objective from a registry, and the remaining keys must be that objective's
options (checked by the registry, which lists the valid ones).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from align_jax.data.pipeline import TFDS_PREFIX, TFDS_RECORD_KINDS
from align_jax.models import DEFAULT_MODEL
from align_jax.objectives.reward import REWARD_TRANSFORMS
from align_jax.training.optimizer import OptimizerConfig
from align_jax.training.tasks import PAIR_LAYOUTS, TASKS, did_you_mean

FILE_SOURCES = ("preference", "sft", "unpaired", "hh_rlhf", "prompt")
TFDS_SOURCES = tuple(TFDS_PREFIX + name for name in TFDS_RECORD_KINDS)  # registered tfds datasets over local files
SOURCES = FILE_SOURCES + ("checkable_pairs", "toy_letters", "ifeval_constraints", "factual_qa") + TFDS_SOURCES


@dataclasses.dataclass(frozen=True)
class ModelSection:
    name: str | None = DEFAULT_MODEL  # a registered model; or set `path`
    path: str | None = None  # a Hugging Face folder or a .gguf file
    param_dtype: str = "float32"
    dtype: str = "float32"
    matmul_dtype: str = ""  # "" = dtype; "bfloat16": bf16 matmul operands, f32 accumulation (ModelConfig)
    remat: str = "none"
    scan_layers: bool = True


@dataclasses.dataclass(frozen=True)
class MeshSection:
    data: int = 1
    fsdp: int = -1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class DataSection:
    source: str = "checkable_pairs"  # one of SOURCES
    train_path: str | None = None  # file for file sources
    eval_path: str | None = None  # None: hold out `eval_fraction` of the train file
    tfds_data_dir: str | None = None  # tfds sources: where the prepared dataset is (None: tfds's default)
    manual_dir: str | None = None  # tfds sources: the local files to prepare it from, when not prepared yet
    train_split: str = "train"  # tfds sources: any tfds split string ("train", "train[:90%]")
    eval_split: str = ""  # tfds sources; "": hold out `eval_fraction` of the train split
    eval_fraction: float = 0.1
    format: str | None = None  # None: from the file suffix
    fields: tuple[tuple[str, str], ...] = ()  # record field -> file column
    on_error: str = "raise"  # malformed rows: "raise" or "skip" (counted and logged)
    max_length: int = 128
    max_prompt_length: int = 0  # 0: half of max_length
    truncation: str = "truncate"  # or "drop"
    pair_layout: str = "separate"  # one of PAIR_LAYOUTS (train.task="preference"; "reward_model": all but length_grouped)
    group_multiple: int = 64  # pair_layout="length_grouped": each pair's row is padded to a multiple of this
    batch_size: int = 8  # global examples per optimizer step
    micro_batches: int = 1  # gradient accumulation: batch_size / micro_batches per forward
    max_train_examples: int = 0  # 0: all
    max_eval_examples: int = 64
    seed: int = 0
    shuffle: bool = True  # False: train pairs in file order every epoch (a curriculum: Curry-DPO)
    group_field: str = ""  # file sources: the column holding each row's group id (MaxMin-RLHF)
    groups: str = ""  # comma-separated group ids to keep ("": all); needs group_field

    @property
    def group_ids(self) -> tuple[str, ...]:
        return tuple(g.strip() for g in self.groups.split(",") if g.strip())


@dataclasses.dataclass(frozen=True)
class ReferenceSection:
    mode: str = "precomputed"  # "frozen" | "precomputed" | "none"
    sync_every: int = 0  # TR-DPO (arXiv:2404.09656): update the reference every N steps (frozen mode)
    sync_alpha: float = 1.0  # 1: hard update; < 1: soft update
    cache_dir: str | None = None  # precomputed log-probs; None: <workdir>/reference_cache


@dataclasses.dataclass(frozen=True)
class LoraSection:
    rank: int = 0  # 0: full fine-tuning
    alpha: float = 16.0
    targets: str = r"attn/(q|k|v|o)|mlp/(gate|up|down)"
    seed: int = 0  # initialisation of the adapters (independent of data.seed)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    task: str = "preference"  # one of TASKS
    steps: int = 40
    eval_every: int = 20
    log_every: int = 1
    checkpoint_every: int = 20  # steps (0: off)
    checkpoint_every_seconds: float = 300.0  # also save once this much wall time passed since the last save (0: off)
    keep_checkpoints: int = 2
    best_metric: str = ""  # e.g. "eval/loss": also keep the best checkpoint by it
    best_mode: str = "min"
    export_hf: bool = True  # write the final policy as a Hugging Face folder
    report: bool = True  # before/after report (evaluations of the task) at the end


@dataclasses.dataclass(frozen=True)
class RLSection:
    """Online RL (train.task = "grpo" or "ppo"): rollouts, rewards, advantages, KL; ``loss.*`` picks the
    policy loss (``ppo`` / ``gspo``: clip ranges, aggregation). One train step = one rollout batch."""

    rewards: str = "toy_letter"  # comma-separated names from align_jax.rewards.REWARDS
    reward_weights: str = ""  # comma-separated weights, one per reward ("": all 1; 0: watched, scored and logged only)
    reward_combine: str = "sum"  # "sum": sum_k w_k r_k; "min": min_k w_k r_k (MaxMin-RLHF, arXiv:2402.08925)
    # each reward relative to the reference policy's own samples of the same prompt, before combining:
    # "identity" (off), "log-sigmoid" (log sigmoid(r - quantile of the reference rewards), arXiv:2402.00742)
    # or "par" (mean over references of sigmoid(r - r_ref), arXiv:2502.18770); needs a reference
    reward_transform: str = "identity"
    reference_samples: int = 4  # R reference-policy samples per prompt scored for the transform (not identity)
    transform_quantile: float = 0.85  # log-sigmoid: the quantile of the R reference rewards
    prompts_per_step: int = 8  # P prompts per rollout batch
    group_size: int = 8  # G samples per prompt: P * G rows per rollout batch
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    advantage: str = "grpo"  # from the advantage registry: grpo, dr-grpo, rloo, reinforce++
    epochs: int = 1  # passes over each rollout batch
    minibatches: int = 1  # optimizer updates per epoch (rows split into this many)
    kl_coef: float = 0.0  # beta of the KL to the reference (needs reference.mode != "none")
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_in: str = "loss"  # "loss" (GRPO) or "reward" (per-token -beta KL shaping, PPO-RLHF)
    dynamic_sampling: bool = False  # DAPO: groups whose rewards are all equal get weight 0
    overlong_buffer: int = 0  # DAPO over-long shaping: linear penalty in the last N tokens before max_new_tokens
    overlong_penalty: float = 1.0  # the penalty at max_new_tokens
    recompute_old_logps: bool = False  # old log-probs from a trainer pass instead of the sampler's
    eval_prompts: int = 32  # held-out prompts scored greedily at each evaluation
    gamma: float = 1.0  # PPO: GAE discount
    lam: float = 0.95  # PPO: GAE lambda
    value_coef: float = 0.1  # PPO: weight of the value loss
    clip_eps_value: float = 0.2  # PPO: value clipping (<= 0: none)

    def __post_init__(self):
        if self.reward_transform not in REWARD_TRANSFORMS.names():
            raise ValueError(f"rl.reward_transform={self.reward_transform!r} is unknown; valid: {REWARD_TRANSFORMS.names()}")
        if not 0.0 <= self.transform_quantile <= 1.0:
            raise ValueError(f"rl.transform_quantile must be in [0, 1], got {self.transform_quantile}")
        for name in ("prompts_per_step", "group_size", "max_new_tokens", "epochs", "minibatches", "reference_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"rl.{name} must be >= 1, got {getattr(self, name)}")
        if self.reward_combine not in ("sum", "min"):
            raise ValueError(f"rl.reward_combine must be 'sum' or 'min', got {self.reward_combine!r}")
        if self.kl_in not in ("loss", "reward"):
            raise ValueError(f"rl.kl_in must be 'loss' or 'reward', got {self.kl_in!r}")
        if (self.prompts_per_step * self.group_size) % self.minibatches:
            raise ValueError("rl.prompts_per_step * rl.group_size must be a multiple of rl.minibatches")

    @property
    def reward_names(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.rewards.split(",") if n.strip())

    @property
    def weights(self) -> tuple[float, ...]:
        if not self.reward_weights.strip():
            return (1.0,) * len(self.reward_names)
        return tuple(float(w) for w in self.reward_weights.split(","))

    @property
    def updates_per_step(self) -> int:
        return self.epochs * self.minibatches


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelSection
    mesh: MeshSection
    data: DataSection
    reference: ReferenceSection
    lora: LoraSection
    train: TrainSection
    optimizer: OptimizerConfig
    rl: RLSection
    loss_name: str
    loss_options: tuple[tuple[str, Any], ...]

    @property
    def task(self):
        """The registered :class:`align_jax.training.tasks.Task` of ``train.task``."""
        return TASKS[self.train.task]

    def __post_init__(self):
        task = self.task  # raises for an unknown task, with the valid names
        if self.data.source not in SOURCES:
            raise ValueError(f"unknown data.source {self.data.source!r}; valid: {SOURCES}"
                             f"{did_you_mean(self.data.source, SOURCES)}")
        if self.data.pair_layout not in PAIR_LAYOUTS:
            raise ValueError(f"unknown data.pair_layout {self.data.pair_layout!r}; valid: {PAIR_LAYOUTS}")
        if self.data.pair_layout not in task.pair_layouts:
            raise ValueError(f"data.pair_layout={self.data.pair_layout!r} is not valid for train.task={task.name!r}; "
                             f"valid: {task.pair_layouts}")
        if self.data.group_multiple < 1:
            raise ValueError(f"data.group_multiple must be >= 1, got {self.data.group_multiple}")
        if self.data.batch_size % self.data.micro_batches:
            raise ValueError("data.batch_size must be a multiple of data.micro_batches")
        if self.data.group_ids and not self.data.group_field:
            raise ValueError(f"data.groups={self.data.groups!r} needs data.group_field (the column holding group ids)")
        if self.data.group_field and self.data.source not in FILE_SOURCES:
            raise ValueError(f"data.group_field reads a column of a data file: data.source={self.data.source!r} "
                             f"is not a file source ({FILE_SOURCES})")
        if self.data.source in FILE_SOURCES and not self.data.train_path:
            raise ValueError(f"data.source={self.data.source!r} needs data.train_path")
        if task.reference == "none" and self.reference.mode != "none":
            raise ValueError(f"train.task={task.name!r} uses no reference: set reference.mode='none'")
        if task.online and self.reference.mode == "precomputed":
            raise ValueError(f"train.task={task.name!r} scores its own new samples, which reference.mode='precomputed' "
                             "cannot: use 'frozen' (a frozen copy of the policy) or 'none'")
        task.check_loss(self.loss_name, dict(self.loss_options))  # before any model loads
        if task.check_config is not None:
            task.check_config(self)


_SECTIONS = {
    "model": ModelSection,
    "mesh": MeshSection,
    "data": DataSection,
    "reference": ReferenceSection,
    "lora": LoraSection,
    "train": TrainSection,
    "optimizer": OptimizerConfig,
    "rl": RLSection,
}


def _section(name: str, cls, values: Mapping[str, Any]):
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        hint = did_you_mean(unknown[0], sorted(valid))
        raise KeyError(f"config.{name} has unknown key(s) {unknown}; valid keys: {sorted(valid)}{hint}")
    values = dict(values)
    if name == "data" and "fields" in values:
        values["fields"] = tuple(sorted(dict(values["fields"]).items()))
    return cls(**values)


def parse_config(config: Mapping[str, Any]) -> RunConfig:
    """Typed, validated sections from a ConfigDict (or nested dict)."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    unknown = sorted(set(raw) - set(_SECTIONS) - {"loss"})
    if unknown:
        raise KeyError(f"config has unknown section(s) {unknown}; valid: {sorted(_SECTIONS) + ['loss']}"
                       f"{did_you_mean(unknown[0], sorted(_SECTIONS) + ['loss'])}")
    sections = {name: _section(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    if sections["optimizer"].total_steps == 0:  # follow the run length (in optimizer updates)
        train = sections["train"]
        updates = sections["rl"].updates_per_step if TASKS[train.task].online else 1
        sections["optimizer"] = dataclasses.replace(sections["optimizer"], total_steps=train.steps * updates)
    loss = dict(raw.get("loss", {}))
    if "name" not in loss:
        raise KeyError("config.loss.name is required (an objective name, e.g. 'dpo')")
    name = loss.pop("name")
    return RunConfig(**sections, loss_name=name, loss_options=tuple(sorted(loss.items())))
