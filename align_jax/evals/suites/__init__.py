"""Evaluation suites, one module each, picked by name (``cfg.suite``).

Every suite module has ``run(lm, cfg, *, progress) -> runner.SuiteResult``: per-example
records, rates and calibration sources; ``align_jax.evals.runner`` turns them into numbers
with confidence intervals and files. ``cfg`` is the module's ``Config`` (an
``align_jax.evals.config.EvalConfig`` declaring every key the suite reads). ``SUITES`` is the
one list of names (a module of the same name exists for each, and ``configs/eval/<name>.py``
configures it).
"""

from __future__ import annotations

import importlib
from typing import Callable

SUITES: tuple[str, ...] = ("truthfulqa_mc", "factual_qa", "ifeval", "constraints_ood", "refusal_generation")


def check_suite(name: str) -> str:
    if name not in SUITES:
        raise ValueError(f"unknown eval suite {name!r}; known suites: {', '.join(SUITES)}")
    return name


def get_suite(name: str) -> Callable:
    """The suite's ``run`` function (modules are imported on demand)."""
    return importlib.import_module(f"{__name__}.{check_suite(name)}").run


def config_class(name: str) -> type:
    """The suite's ``Config`` dataclass: the keys its config file must set."""
    return importlib.import_module(f"{__name__}.{check_suite(name)}").Config
