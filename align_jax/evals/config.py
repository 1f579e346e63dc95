"""Eval configs typed: ``configs/eval/<suite>.py`` in, the suite's frozen ``Config`` out.

Every suite module declares ``Config``, a subclass of :class:`EvalConfig` naming each key it
reads; the config files hold the values (the one place eval defaults live, so the classes have
none). :func:`parse_eval_config` refuses a key the suite does not declare (listing the valid keys
and the closest one) and a key it lacks, before any model is loaded, as the training configs'
``parse_config`` does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from align_jax.evals import suites
from align_jax.registry import did_you_mean


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str  # a registered model (align_jax.models.registry)
    path: str  # a Hugging Face folder or .gguf file; wins over name when set ("" = use name)
    param_dtype: str
    dtype: str


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The keys every suite reads (configs/eval/eval_base.py)."""

    suite: str  # a name in align_jax.evals.suites.SUITES
    model: ModelSpec
    limit: int  # first N examples (0 = all; some suites: per split or kind)
    batch_size: int  # rows per compiled generation / scoring batch
    seed: int  # data shuffling / generation seed and bootstrap seed
    n_resamples: int  # bootstrap resamples for the 95% CIs


def _keys(cls, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    valid = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise KeyError(f"{where} has unknown key(s) {unknown}; valid keys: {valid}{did_you_mean(unknown[0], valid)}")
    missing = sorted(set(valid) - set(values))
    if missing:
        raise KeyError(f"{where} is missing key(s) {missing}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def parse_eval_config(config: Any) -> EvalConfig:
    """The suite's typed ``Config`` from a ConfigDict or nested dict (an EvalConfig passes through)."""
    if isinstance(config, EvalConfig):
        return config
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    suite = suites.check_suite(raw.get("suite", ""))
    cls = suites.config_class(suite)
    values = _keys(cls, raw, f"config (suite {suite!r})")
    values["model"] = ModelSpec(**_keys(ModelSpec, dict(values["model"]), "config.model"))
    return cls(**values)
