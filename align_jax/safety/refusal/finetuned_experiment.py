"""The refusal prompt classifier, fine-tuned (``finetune``) instead of a head on frozen features.

Same prompt sets as ``run.run_experiment`` (``build_source_sets``: harmful split by benchmark,
StrongREJECT / JailbreakBench / HarmBench held out for test; benign-sensitive split by template),
same loss weight shares per kind (``cfg.shares``) and the same threshold rule, FPR <=
``cfg.threshold_fpr`` on each benign set, but set on val only: cross-fitting the threshold as the
frozen-feature run does would cost ``threshold_folds`` more fine-tuning runs. Nothing is chosen
on test: the fine-tuning settings are fixed before the run and test is scored once at the end.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from align_jax.safety.refusal.datasets import Prompt
from align_jax.safety.refusal.finetune import FinetuneConfig, classifier_scores, cut_to, encode_prompts, train_classifier
from align_jax.safety.refusal.probe import group_weights, threshold_for_groups
from align_jax.safety.refusal.run import BENIGN_KINDS, RefusalConfig, build_source_sets, evaluate_flags, held_out_tables, score_ceiling


def run_finetuned_experiment(
    lm, model_id: str, cfg: RefusalConfig, ft: FinetuneConfig, log: Callable[[str], None] = print,
    sets: dict[str, list[Prompt]] | None = None,
) -> dict:
    """Fine-tunes on train, sets the threshold on val, scores test once -> the report dict.

    ``lm``: has ``model``, ``tokenizer``, ``chat_template``; ``sets`` (split -> prompts) default to
    ``build_source_sets(cfg)``."""
    t0 = time.time()
    if sets is None:
        sets, split_summary = build_source_sets(cfg)
    else:
        split_summary = {"n": {s: len(v) for s, v in sets.items()}}
    log(f"prompt sets: {split_summary}")
    full = {s: encode_prompts(lm.tokenizer, lm.chat_template, [p.text for p in v], None) for s, v in sets.items()}
    n_cut = {s: sum(len(e.ids) > ft.max_len for e in v) for s, v in full.items()}  # chats cut to their last max_len tokens
    enc = {s: [cut_to(e, ft.max_len) for e in v] for s, v in full.items()}
    tr = sets["train"]
    y = np.array([int(p.harmful) for p in tr])
    w = group_weights([p.kind for p in tr], dict(zip(("harmful", "benign_sensitive", "plain_benign"), cfg.shares)))

    def progress(i, n, loss):
        if i == 1 or i % 25 == 0 or i == n:
            log(f"  step {i}/{n}: loss {loss:.4f} ({time.time() - t0:.0f} s)")

    t_train = time.time()
    clf = train_classifier(lm.model, enc["train"], y, w, ft, progress=progress)
    train_seconds = time.time() - t_train
    scores = {s: classifier_scores(clf, enc[s]) for s in ("val", "test")}
    kinds = {s: np.array([p.kind for p in sets[s]]) for s in ("val", "test")}
    threshold = threshold_for_groups({k: scores["val"][kinds["val"] == k] for k in BENIGN_KINDS}, cfg.threshold_fpr)
    val = {
        "recall": float((scores["val"][kinds["val"] == "harmful"] > threshold).mean()),
        **{f"fpr_{k}": float((scores["val"][kinds["val"] == k] > threshold).mean()) for k in BENIGN_KINDS},
        "n": {k: int((kinds["val"] == k).sum()) for k in ("harmful", *BENIGN_KINDS)},
    }
    test = {**evaluate_flags(scores["test"] > threshold, sets["test"], cfg), **score_ceiling(scores["test"], sets["test"], cfg)}
    met = test["fpr_benign_sensitive"]["point"] < cfg.target_fpr and test["fpr_plain_benign"]["point"] < cfg.target_fpr \
        and test["recall_harmful"]["point"] >= 0.9
    return {
        "model": model_id,
        "config": dataclasses.asdict(cfg),
        "finetune": dataclasses.asdict(ft),
        "splits": split_summary,
        "prompts_cut_to_max_len": n_cut,
        "prompt_classifier": {
            "features": f"fine-tuned: first {ft.n_layers} blocks, LoRA rank {ft.lora_rank}, mean-pooled head",
            "threshold": threshold, "val": val, "test": test, "target_met": bool(met),
            "train_loss": {"first_10": float(clf.losses[:10].mean()), "last_10": float(clf.losses[-10:].mean())},
            "train_seconds": train_seconds,
        },
        "scores": {s: scores[s].tolist() for s in scores},  # val / test logits in sets order, for ROC analysis
        "seconds": time.time() - t0,
    }


def finetuned_report_markdown(r: dict) -> str:
    pc, ft, cfg = r["prompt_classifier"], r["finetune"], r["config"]
    v = pc["val"]
    lines = [
        f"# Fine-tuned refusal prompt classifier on {r['model']}",
        "",
        f"{pc['features']}; {ft['steps']} steps x {ft['batch_size']} prompts, learning rate {ft['learning_rate']}, "
        f"loss shares harmful / benign-sensitive / plain {cfg['shares']}; train loss {pc['train_loss']['first_10']:.3f} "
        f"-> {pc['train_loss']['last_10']:.3f} in {pc['train_seconds']:.0f} s. Chats longer than "
        f"{ft['max_len']} tokens keep their last {ft['max_len']}: "
        + ", ".join(f"{s} {n}" for s, n in r["prompts_cut_to_max_len"].items()) + ".",
        "",
        f"Threshold {pc['threshold']:.3f}: FPR <= {100 * cfg['threshold_fpr']:.1f}% on each benign set of val "
        f"(val: recall {100 * v['recall']:.1f}%, FPR benign-sensitive {100 * v['fpr_benign_sensitive']:.1f}% "
        f"(n={v['n']['benign_sensitive']}), plain {100 * v['fpr_plain_benign']:.1f}% (n={v['n']['plain_benign']})). "
        f"Target (FPR < {100 * cfg['target_fpr']:.0f}% at recall >= 90% on test): "
        f"**{'met' if pc['target_met'] else 'missed'}**.",
        "",
    ]
    lines += held_out_tables(pc["test"])
    lines += ["", f"Run time {r['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"
