"""The common evaluation runner: model + eval config -> numbers with 95% CIs, files in a workdir.

``run_suite(lm, cfg, workdir)`` runs one suite (``cfg.suite``, a module of
``align_jax.evals.suites``) on a loaded model and, with a workdir, writes:

* ``results.json``: ``suite``, ``model`` (``lm.source``), ``n`` (examples), ``n_failures``,
  ``metrics`` (``name -> {"value", "low", "high", "n"}``; low/high are a 95% percentile
  bootstrap over examples), ``settings`` (the config except ``model``, plus what the suite
  chose), ``seconds``, ``files``.
* ``summary.md``: the metrics as a Markdown table.
* ``examples.jsonl``: one record per example (``failure`` is None or the reason, e.g.
  ``"empty generation"``; nothing is skipped).
* ``reliability_<source>.png`` for every confidence source of a calibration suite.

Suites only produce per-example outcomes (``SuiteResult``); every statistic is computed here:

* a *rate* ``(successes [N], trials [N])`` is ``sum(successes) / sum(trials)``, bootstrapped
  over examples (for instruction-level accuracy the example is the prompt, so correlated
  instructions of one prompt are resampled together);
* a *calibration source* ``(confidence [N], correct [N])`` gives ``<source>/accuracy``,
  ``mean_confidence``, ``ece`` (equal-width bins), ``ece_equal_mass`` (min(n_bins, N) bins),
  ``mce``, ``brier`` and ``auroc`` (stratified bootstrap: positives and negatives resampled
  separately, so every resample has both classes; None when all answers are right or all wrong).

Shared model helpers used by the suites: ``continuation_logprobs`` (teacher-forced, batched,
jit-compiled, bucketed widths) and ``generate_greedy`` (KV-cache sampler, fixed batch shape; it lives in
``align_jax.sampling.greedy`` so that layers below evals generate with it too).
``evaluate(cfg, workdir)`` also loads the model named by ``cfg.model``; the CLI is
``align_jax/evaluate.py``. Training runs call ``run_suite`` with ``load_eval_config(suite, ...)``.
Both parse ``cfg`` into the suite's typed ``Config`` first (``align_jax.evals.config``): a key the
suite does not read fails before anything runs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
import time
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from align_jax.bootstrap import bootstrap_ci
from align_jax.evals import suites
from align_jax.evals.calibration_metrics import (
    auroc,
    brier_score,
    expected_calibration_error,
    maximum_calibration_error,
    validate_inputs,
)
from align_jax.evals.config import EvalConfig, parse_eval_config
from align_jax.evals.reliability_plot import save_reliability_diagram
from align_jax.models.interventions import Intervention
from align_jax.models.registry import LoadedModel, load_model
from align_jax.sampling.greedy import Generation, chat_ids, generate_greedy  # noqa: F401 - the suites' helpers

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs" / "eval"
CI_LEVEL = 0.95
EMPTY_GENERATION = "empty generation"


# --- what a suite returns ----------------------------------------------------------------

class Rate(NamedTuple):
    successes: np.ndarray  # [N] per example (bool or counts)
    trials: np.ndarray  # [N] per example (1 for a plain accuracy)


def accuracy_rate(flags: Sequence[bool]) -> Rate:
    flags = np.asarray(flags, dtype=np.float64)
    return Rate(flags, np.ones_like(flags))


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    examples: list[dict[str, Any]]  # one JSON-able record per example, each with "failure"
    rates: dict[str, Rate] = dataclasses.field(default_factory=dict)
    calibration: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)


# --- statistics -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Metric:
    value: float | None
    low: float | None
    high: float | None
    n: int


def rate_metric(rate: Rate, *, n_resamples: int, seed: int) -> Metric:
    s, t = np.asarray(rate.successes, np.float64), np.asarray(rate.trials, np.float64)
    ci = bootstrap_ci(lambda a, b: a.sum(-1) / b.sum(-1), s, t, n_resamples=n_resamples,
                      confidence_level=CI_LEVEL, seed=seed, vectorized=True)
    return Metric(ci.point, ci.low, ci.high, int(s.shape[0]))


def _ci_metric(fn, conf, corr, *, n_resamples: int, seed: int) -> Metric:
    ci = bootstrap_ci(fn, conf, corr, n_resamples=n_resamples, confidence_level=CI_LEVEL, seed=seed)
    return Metric(ci.point, ci.low, ci.high, int(conf.shape[0]))


def auroc_metric(conf: np.ndarray, corr: np.ndarray, *, n_resamples: int, seed: int) -> Metric:
    """AUROC with a stratified bootstrap CI; value None when only one class is present."""
    pos, neg = conf[corr], conf[~corr]
    if pos.size == 0 or neg.size == 0:
        return Metric(None, None, None, int(conf.shape[0]))
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    stats = [auroc(np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)]), labels)
             for _ in range(n_resamples)]
    alpha = 1.0 - CI_LEVEL
    low, high = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return Metric(auroc(conf, corr), float(low), float(high), int(conf.shape[0]))


def calibration_metrics(
    confidences: Any, correct: Any, *, n_bins: int, n_resamples: int, seed: int
) -> dict[str, Metric]:
    """accuracy, mean_confidence, ece, ece_equal_mass, mce, brier, auroc, each with a CI."""
    conf, corr = validate_inputs(confidences, correct)
    mass_bins = min(n_bins, conf.shape[0])
    kw = dict(n_resamples=n_resamples, seed=seed)
    return {
        "accuracy": rate_metric(accuracy_rate(corr), **kw),
        "mean_confidence": rate_metric(Rate(conf, np.ones_like(conf)), **kw),
        "ece": _ci_metric(functools.partial(expected_calibration_error, n_bins=n_bins), conf, corr, **kw),
        "ece_equal_mass": _ci_metric(
            functools.partial(expected_calibration_error, n_bins=mass_bins, scheme="equal_mass"),
            conf, corr, **kw),
        "mce": _ci_metric(functools.partial(maximum_calibration_error, n_bins=n_bins), conf, corr, **kw),
        "brier": _ci_metric(brier_score, conf, corr, **kw),
        "auroc": auroc_metric(conf, corr, **kw),
    }


# --- model helpers shared by the suites ---------------------------------------------------

def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _next_token_logprobs(state, tokens, mask, intervention=None, *, graphdef):
    """log p(tokens[:, t+1] | tokens[:, :t+1]) for left-padded rows: [B, W] -> [B, W-1] float32."""
    model = nnx.merge(graphdef, state)
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)
    logits = model(tokens, positions, mask, intervention=intervention).logits[:, :-1].astype(jnp.float32)
    picked = jnp.take_along_axis(logits, tokens[:, 1:, None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def continuation_logprobs(
    lm: LoadedModel,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int,
    bucket: int = 64,
    progress: bool = False,
    desc: str = "scoring",
    intervention: Intervention | None = None,
) -> list[np.ndarray]:
    """Per-token log-probs [T_k] of each continuation given its prompt (token-id pairs).

    Rows are sorted by length, left-padded to a multiple of ``bucket`` and run ``batch_size``
    at a time (the last batch repeats its final row), one compiled forward per width.
    ``intervention`` (no ``patch``: rows are reordered) edits every forward (steering).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i, (p, c) in enumerate(pairs):
        if len(p) == 0 or len(c) == 0:
            raise ValueError(f"pair {i}: prompt and continuation each need >= 1 token "
                             f"(got {len(p)} and {len(c)})")
    pad_id = lm.tokenizer.pad_id or 0
    graphdef, state = nnx.split(lm.model)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    out: list[np.ndarray | None] = [None] * len(pairs)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
        idx = order[start:start + batch_size]
        rows = [list(pairs[i][0]) + list(pairs[i][1]) for i in idx]
        width = _round_up(max(len(r) for r in rows), bucket)
        tokens = np.full((batch_size, width), pad_id, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        for j in range(batch_size):
            r = rows[min(j, len(rows) - 1)]
            tokens[j, width - len(r):], mask[j, width - len(r):] = r, 1
        logps = np.asarray(_next_token_logprobs(state, tokens, mask, intervention, graphdef=graphdef))
        for j, i in enumerate(idx):
            out[i] = logps[j, logps.shape[1] - len(pairs[i][1]):].astype(np.float64)
    return out  # type: ignore[return-value]


def chat_prompt_ids(lm: LoadedModel, text: str) -> list[int]:
    """One user turn rendered with the model's chat template, generation prompt added."""
    return chat_ids(lm, [{"role": "user", "content": text}])


# --- config, data paths -----------------------------------------------------------------

def resolve_data_path(path: str, what: str) -> pathlib.Path:
    """Absolute path, or relative to the repository root; FileNotFoundError naming both if missing."""
    resolved = (pathlib.Path(path) if os.path.isabs(path) else REPO_ROOT / path).resolve()
    if not resolved.exists():
        raise FileNotFoundError(
            f"{what} not found: {resolved} (config data_path={path!r}; relative paths are taken "
            f"from the repository root {REPO_ROOT}); set --config.data_path=/path/to/the/file"
        )
    return resolved


def take(items: Sequence[Any], limit: int) -> list[Any]:
    """The first ``limit`` items (all when limit is 0)."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (0 = all), got {limit}")
    return list(items[:limit] if limit else items)


def load_eval_config(suite: str, **overrides: Any):
    """``configs/eval/<suite>.py``'s config with top-level keys replaced (for training runs)."""
    suites.check_suite(suite)
    spec = importlib.util.spec_from_file_location(f"eval_config_{suite}", CONFIG_DIR / f"{suite}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    cfg = module.get_config()
    for key, value in overrides.items():
        if key not in cfg:
            raise KeyError(f"eval config {suite!r} has no key {key!r}; keys: {sorted(cfg.keys())}")
        cfg[key] = value
    return cfg


# --- running and writing ----------------------------------------------------------------

def _to_json(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return _to_json(obj.to_dict())
    if isinstance(obj, Mapping):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _to_json(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def summary_markdown(results: Mapping[str, Any]) -> str:
    lines = [
        f"# {results['suite']} — {results['model']}",
        "",
        f"n = {results['n']} examples, {results['n_failures']} failures; "
        f"{int(CI_LEVEL * 100)}% bootstrap CIs over examples.",
        "",
        "| metric | value | 95% CI | n |",
        "|---|---:|---|---:|",
    ]
    for name, m in results["metrics"].items():
        if m["value"] is None:
            lines.append(f"| {name} | n/a | n/a | {m['n']} |")
        else:
            lines.append(f"| {name} | {m['value']:.4f} | [{m['low']:.4f}, {m['high']:.4f}] | {m['n']} |")
    return "\n".join(lines) + "\n"


def run_suite(lm: LoadedModel, cfg, workdir: str | os.PathLike | None = None, *,
              progress: bool = True) -> dict[str, Any]:
    """Runs ``cfg.suite`` on ``lm``; returns the results.json dict (and writes files to workdir)."""
    cfg = parse_eval_config(cfg)
    run = suites.get_suite(cfg.suite)
    start = time.perf_counter()
    result: SuiteResult = run(lm, cfg, progress=progress)
    kw = dict(n_resamples=int(cfg.n_resamples), seed=int(cfg.seed))
    metrics: dict[str, Metric] = {}
    for source, (conf, correct) in result.calibration.items():
        for name, m in calibration_metrics(conf, correct, n_bins=int(cfg.n_bins), **kw).items():
            metrics[f"{source}/{name}"] = m
    for name, rate in result.rates.items():
        metrics[name] = rate_metric(rate, **kw)
    examples = [_to_json(e) for e in result.examples]
    results: dict[str, Any] = {
        "suite": cfg.suite,
        "model": lm.source,
        "n": len(examples),
        "n_failures": sum(e.get("failure") is not None for e in examples),
        "metrics": {k: _to_json(dataclasses.asdict(m)) for k, m in metrics.items()},
        "settings": _to_json({**{k: v for k, v in dataclasses.asdict(cfg).items() if k != "model"},
                              **result.settings, "ci_level": CI_LEVEL}),
        "seconds": time.perf_counter() - start,
        "files": [],
    }
    if workdir is not None:
        results["files"] = write_outputs(results, examples, result.calibration, workdir,
                                         n_bins=int(cfg.n_bins) if result.calibration else None)
    return results


def write_outputs(results: dict[str, Any], examples: list[dict[str, Any]],
                  calibration: Mapping[str, tuple[np.ndarray, np.ndarray]],
                  workdir: str | os.PathLike, *, n_bins: int | None) -> list[str]:
    """Writes examples.jsonl, reliability PNGs, summary.md and results.json; returns file names."""
    os.makedirs(workdir, exist_ok=True)
    files = ["results.json", "summary.md", "examples.jsonl"]
    with open(os.path.join(workdir, "examples.jsonl"), "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    for source, (conf, correct) in calibration.items():
        name = f"reliability_{source}.png"
        save_reliability_diagram(conf, correct, os.path.join(workdir, name), n_bins=n_bins,
                                 title=f"{results['suite']} ({source}) — {os.path.basename(str(results['model']))}")
        files.append(name)
    results["files"] = files
    with open(os.path.join(workdir, "summary.md"), "w", encoding="utf-8") as f:
        f.write(summary_markdown(results))
    with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, allow_nan=False)
    return files


def load_configured_model(cfg: EvalConfig) -> LoadedModel:
    """``cfg.model.path`` (a Hugging Face folder or .gguf) if set, else ``cfg.model.name``."""
    m = cfg.model
    kw = dict(param_dtype=m.param_dtype, dtype=m.dtype)
    return load_model(None, m.path, **kw) if m.path else load_model(m.name, **kw)


def evaluate(cfg, workdir: str | os.PathLike, *, progress: bool = True) -> dict[str, Any]:
    """Loads the configured model and runs the configured suite, writing to ``workdir``."""
    cfg = parse_eval_config(cfg)  # a bad suite name or key fails before the (slow) model load
    return run_suite(load_configured_model(cfg), cfg, workdir, progress=progress)
