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

from align_jax.models import DEFAULT_MODEL
from align_jax.training.optimizer import OptimizerConfig

TASKS = ("sft", "preference", "unpaired", "reward_model", "calibration")
SOURCES = ("preference", "sft", "unpaired", "hh_rlhf", "checkable_pairs")
# Preference-pair batch layouts: two padded rows per pair, or [prompt | chosen | rejected] once per
# pair (align_jax.data.pair_packing), one pair per row ("shared_prefix") or first-fit packed.
PAIR_LAYOUTS = ("separate", "shared_prefix", "packed", "length_grouped")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    name: str | None = DEFAULT_MODEL  # a registered model; or set `path`
    path: str | None = None  # a Hugging Face folder or a .gguf file
    param_dtype: str = "float32"
    dtype: str = "float32"
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
    eval_fraction: float = 0.1
    format: str | None = None  # None: from the file suffix
    fields: tuple[tuple[str, str], ...] = ()  # record field -> file column
    on_error: str = "raise"  # malformed rows: "raise" or "skip" (counted and logged)
    max_length: int = 256
    max_prompt_length: int = 0  # 0: half of max_length
    truncation: str = "truncate"  # or "drop"
    pair_layout: str = "separate"  # one of PAIR_LAYOUTS (train.task="preference" only)
    group_multiple: int = 64  # pair_layout="length_grouped": each pair's row is padded to a multiple of this
    batch_size: int = 8  # global examples per optimizer step
    micro_batches: int = 1  # gradient accumulation: batch_size / micro_batches per forward
    max_train_examples: int = 0  # 0: all
    max_eval_examples: int = 64
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ReferenceSection:
    mode: str = "precomputed"  # "frozen" | "precomputed" | "none"
    sync_every: int = 0  # TR-DPO (arXiv:2404.09656): update the reference every N steps (frozen mode)
    sync_alpha: float = 1.0  # 1: hard update; < 1: soft update
    cache_dir: str | None = None  # precomputed log-probs; None: ~/.cache/align_jax/reference_logps


@dataclasses.dataclass(frozen=True)
class LoraSection:
    rank: int = 0  # 0: full fine-tuning
    alpha: float = 16.0
    targets: str = r"attn/(q|k|v|o)|mlp/(gate|up|down)"


@dataclasses.dataclass(frozen=True)
class TrainSection:
    task: str = "preference"  # one of TASKS
    steps: int = 100
    eval_every: int = 25
    log_every: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    best_metric: str = ""  # e.g. "eval/loss": also keep the best checkpoint by it
    best_mode: str = "min"
    export_hf: bool = True  # write the final policy as a Hugging Face folder
    report: bool = True  # before/after report (evaluations of the task) at the end


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelSection
    mesh: MeshSection
    data: DataSection
    reference: ReferenceSection
    lora: LoraSection
    train: TrainSection
    optimizer: OptimizerConfig
    loss_name: str
    loss_options: tuple[tuple[str, Any], ...]

    def __post_init__(self):
        if self.train.task not in TASKS:
            raise ValueError(f"unknown train.task {self.train.task!r}; valid: {TASKS}")
        if self.data.source not in SOURCES:
            raise ValueError(f"unknown data.source {self.data.source!r}; valid: {SOURCES}")
        if self.data.pair_layout not in PAIR_LAYOUTS:
            raise ValueError(f"unknown data.pair_layout {self.data.pair_layout!r}; valid: {PAIR_LAYOUTS}")
        if self.data.pair_layout != "separate" and self.train.task != "preference":
            raise ValueError(f"data.pair_layout={self.data.pair_layout!r} needs train.task='preference'")
        if self.data.group_multiple < 1:
            raise ValueError(f"data.group_multiple must be >= 1, got {self.data.group_multiple}")
        if self.data.batch_size % self.data.micro_batches:
            raise ValueError("data.batch_size must be a multiple of data.micro_batches")
        if self.data.source != "checkable_pairs" and not self.data.train_path:
            raise ValueError(f"data.source={self.data.source!r} needs data.train_path")
        if self.train.task in ("sft", "reward_model", "calibration") and self.reference.mode != "none":
            raise ValueError(f"train.task={self.train.task!r} uses no reference: set reference.mode='none'")


_SECTIONS = {
    "model": ModelSection,
    "mesh": MeshSection,
    "data": DataSection,
    "reference": ReferenceSection,
    "lora": LoraSection,
    "train": TrainSection,
    "optimizer": OptimizerConfig,
}


def _section(name: str, cls, values: Mapping[str, Any]):
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise KeyError(f"config.{name} has unknown key(s) {unknown}; valid keys: {sorted(valid)}")
    values = dict(values)
    if name == "data" and "fields" in values:
        values["fields"] = tuple(sorted(dict(values["fields"]).items()))
    return cls(**values)


def parse_config(config: Mapping[str, Any]) -> RunConfig:
    """Typed, validated sections from a ConfigDict (or nested dict)."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    unknown = sorted(set(raw) - set(_SECTIONS) - {"loss"})
    if unknown:
        raise KeyError(f"config has unknown section(s) {unknown}; valid: {sorted(_SECTIONS) + ['loss']}")
    sections = {name: _section(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    loss = dict(raw.get("loss", {}))
    if "name" not in loss:
        raise KeyError("config.loss.name is required (an objective name, e.g. 'dpo')")
    name = loss.pop("name")
    return RunConfig(**sections, loss_name=name, loss_options=tuple(sorted(loss.items())))
