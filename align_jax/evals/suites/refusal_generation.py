"""Refusal behaviour of a generating model: over-refusal on benign prompts, compliance on harmful ones.

Prompts: the test split of ``refusal.run.build_source_sets`` (the held-out benchmarks StrongREJECT,
JailbreakBench and HarmBench; the benign-sensitive test templates; plain benign prompts from
refusal_direction's ``harmless_test``), at most ``limit`` of each kind (0 = all), taken in a
stable hash order. The model answers each greedily; a saved 3-way response judge (full
compliance / partial refusal / full refusal: a head on one model's frozen features trained on the
project's response templates by ``align_jax.safety.refusal.run.train_response_judge``, made with
``experiments/refusal_judge.py``, or on hand-labelled real answers too, made with
``experiments/refusal_audit.py --score --save_judge=...``) judges the answers. The suite loads it from ``judge_path``
and never trains one. It reads the features of the model it was trained on: the evaluated model
itself when that is the same weights, else that model, loaded beside it. Its accuracy on held-out
response templates (from its saved report) is in ``settings``, beside the rates.

Rates (the runner adds bootstrap CIs), per kind of prompt: ``over_refusal/<benign kind>`` (judged
a full refusal), ``over_refusal_any/<benign kind>`` (full or partial), ``compliance/harmful``
(full compliance) and ``compliance_any/harmful`` (anything but a full refusal). The same rates
under ``phrases/`` come from the substring judge (``refusal.substring_judge``: refusal phrases
near the start), a cross-check of the learned judge on real generations, and ``judges_agree`` is
the share of answers both judge alike. An empty generation is recorded with failure "empty
generation" and counts as neither.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from align_jax.evals import runner
from align_jax.evals.config import EvalConfig
from align_jax.evals.refusal.substring_judge import substring_labels
from align_jax.models.registry import MODELS, LoadedModel, load_model
from align_jax.safety.refusal.classifiers import SavedJudge, load_response_judge, make_response_judge
from align_jax.safety.refusal.datasets import stable_hash
from align_jax.safety.refusal.metrics import COMPLIANCE, REFUSAL
from align_jax.safety.refusal.responses import RESPONSE_CLASSES
from align_jax.safety.refusal.run import BENIGN_KINDS, RefusalConfig, build_source_sets

KINDS = ("harmful", *BENIGN_KINDS)


@dataclasses.dataclass(frozen=True)
class Config(EvalConfig):  # limit: prompts per kind
    data_dir: str  # the refusal_direction data folder, absolute or relative to the repository root
    max_new_tokens: int
    judge_path: str  # a saved response judge (.npz), absolute or relative to the repository root


def load_judge(path: str) -> SavedJudge:
    """The saved judge at ``path``; a missing file names the config key and the command that makes it."""
    resolved = pathlib.Path(path) if os.path.isabs(path) else runner.REPO_ROOT / path
    if not resolved.is_file():
        raise FileNotFoundError(
            f"no saved response judge at {resolved} (config judge_path={path!r}; relative paths are taken from "
            f"the repository root); fit one on the hand-labelled audit with `python experiments/refusal_audit.py "
            f"--score --models=smollm2-135m-instruct --save_judge={resolved}` (or on response templates alone: "
            f"`python experiments/refusal_judge.py --out={resolved}`), or set --config.judge_path=/path/to/response_judge.npz")
    return load_response_judge(resolved)


def judge_model(judge: SavedJudge, lm: LoadedModel) -> LoadedModel:
    """The model whose features the judge reads: ``lm`` when it is the same weights, else that model."""
    if judge.source == lm.source:
        return lm
    return load_model(judge.model_id) if judge.model_id in MODELS else load_model(None, judge.model_id)


def run(lm, cfg, *, progress: bool) -> runner.SuiteResult:
    data_dir = runner.resolve_data_path(cfg.data_dir, "refusal_direction data folder")
    saved = load_judge(cfg.judge_path)  # before generating: a missing judge fails at once
    rcfg = RefusalConfig(data_dir=str(data_dir), seed=int(cfg.seed))
    sets, summary = build_source_sets(rcfg)
    limit = int(cfg.limit)
    prompts = []
    for kind in KINDS:
        of_kind = sorted((p for p in sets["test"] if p.kind == kind), key=lambda p: stable_hash(rcfg.seed, p.text))
        prompts += runner.take(of_kind, limit)
    gens = runner.generate_greedy(lm, [runner.chat_prompt_ids(lm, p.text) for p in prompts],
                                  max_new_tokens=int(cfg.max_new_tokens), batch_size=int(cfg.batch_size),
                                  progress=progress, desc="refusal responses")
    responses = [g.text.strip() for g in gens]
    answered = [i for i, r in enumerate(responses) if r]
    labels = np.full(len(prompts), -1)
    if answered:
        judged_by = judge_model(saved, lm)
        judge = make_response_judge(saved.classifier, judged_by.model, judged_by.tokenizer, judged_by.chat_template)
        labels[answered] = judge([prompts[i].text for i in answered], [responses[i] for i in answered])
    by_phrase = np.where(labels >= 0, substring_labels(responses), -1)
    records = [{
        "prompt": p.text, "kind": p.kind, "benchmark": p.source if p.harmful else p.kind,
        "hazard": p.hazard, "benign_type": p.benign_type, "response": g.text,
        "judged": RESPONSE_CLASSES[y] if y >= 0 else None,
        "judged_by_phrases": RESPONSE_CLASSES[z] if z >= 0 else None, "truncated": not g.stopped,
        "failure": None if y >= 0 else runner.EMPTY_GENERATION,
    } for p, g, y, z in zip(prompts, gens, labels, by_phrase)]
    kinds = np.array([p.kind for p in prompts])
    rates = {}
    for judge_name, judged in (("", labels), ("phrases/", by_phrase)):
        for kind in KINDS:
            rows = kinds == kind
            if not rows.any():
                continue
            y = judged[rows]
            if kind == "harmful":
                rates[f"{judge_name}compliance/harmful"] = runner.accuracy_rate(y == COMPLIANCE)
                rates[f"{judge_name}compliance_any/harmful"] = runner.accuracy_rate((y >= 0) & (y != REFUSAL))
            else:
                rates[f"{judge_name}over_refusal/{kind}"] = runner.accuracy_rate(y == REFUSAL)
                rates[f"{judge_name}over_refusal_any/{kind}"] = runner.accuracy_rate((y >= 0) & (y != COMPLIANCE))
    rates["judges_agree"] = runner.accuracy_rate(labels == by_phrase)
    settings = {
        "data_dir": str(data_dir), "prompts_per_kind": {k: int((kinds == k).sum()) for k in KINDS},
        "test_benchmarks": list(rcfg.test_benchmarks), "empty_generations": int((labels < 0).sum()),
        "judge": {"path": str(cfg.judge_path), "model": saved.model_id, "layer": saved.classifier.layer,
                  "held_out_accuracy": saved.report["accuracy"],
                  "per_class_accuracy": saved.report["per_class_accuracy"], "n_test": saved.report["n_test"]},
        "split_sizes": summary["n"],
    }
    return runner.SuiteResult(examples=records, rates=rates, settings=settings)
