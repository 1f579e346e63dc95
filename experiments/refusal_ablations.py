"""Ablations of the refusal prompt classifier (experiments/README.md, "Ablations").

    python experiments/refusal_ablations.py --data_dir=../shared/data/refusal_direction \
        --cache_dir=runs/refusal/cache --out=runs/refusal/ablations.jsonl

Each row changes one ``RefusalConfig`` field against the default, fits the head on the train
split, sets the threshold on val + cross-fitted train benign scores (as
``run.fit_prompt_classifier`` does) and prints the leave-one-benchmark-out mean recall, val recall
and the held-out test rates per benchmark. The test columns are for diagnosis: no choice in
``refusal_classifier.py`` reads them. The README's ablation table was measured before the
cross-fitted threshold, the written harmful requests and the 96-template benign set (dafa254).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
from absl import app, flags

from align_jax.models.registry import load_model
from align_jax.safety.refusal import run as R
from align_jax.safety.refusal.features import parse_feature_spec, select_features
from align_jax.safety.refusal.probe import positive_score


def define_flags():
    """The script's flags, defined only when it runs as a script: tests import its functions into
    a process whose other modules (align_jax.main) already own names like --workdir."""
    flags.DEFINE_string("data_dir", "../shared/data/refusal_direction", "refusal_direction folder")
    flags.DEFINE_string("cache_dir", "runs/refusal/cache", "feature cache shared with refusal_classifier.py")
    flags.DEFINE_string("out", "runs/refusal/ablations.jsonl", "one JSON line per row")
    flags.DEFINE_string("model", "smollm2-135m-instruct", "registered model name")


ROWS: tuple[tuple[str, dict], ...] = (
    ("14", {}),
    ("14", {"l2": 0.03}),
    ("14", {"l2": 0.1}),
    ("14", {"style_copies": 2}),
    ("10+14+18", {"style_copies": 2}),
    ("14", {"hidden": 256}),
    ("14", {"hidden": 256, "test_benchmarks": ("strongreject", "jailbreakbench")}),
)


def evaluate_row(lm, model_id: str, cfg: R.RefusalConfig, spec: str) -> dict:
    sets, _ = R.build_source_sets(cfg)
    feats = R.prompt_features(lm, model_id, cfg, sets, log=lambda s: None)
    layers, pooling = parse_feature_spec(spec)
    x = {s: select_features(feats[s], layers, pooling) for s in ("train", "val", "test")}
    lobo = R.leave_one_benchmark_out(x["train"], x["val"], sets, cfg)
    head, threshold, s_val, _, _ = R.fit_with_threshold(x["train"], sets["train"], x["val"], sets["val"], cfg)
    s_test = positive_score(head, x["test"])
    kind_val = np.array([p.kind for p in sets["val"]])
    kind = np.array([p.kind for p in sets["test"]])
    source = np.array([p.source for p in sets["test"]])
    harm = kind == "harmful"
    return {
        "spec": spec,
        "lobo_mean": float(np.mean(list(lobo.values()))),
        "val_recall": float((s_val[kind_val == "harmful"] > threshold).mean()),
        "test_recall": float((s_test[harm] > threshold).mean()),
        "test_recall_per_benchmark": {b: float((s_test[harm & (source == b)] > threshold).mean())
                                      for b in cfg.test_benchmarks},
        "test_fpr_benign_sensitive": float((s_test[kind == "benign_sensitive"] > threshold).mean()),
        "test_fpr_plain_benign": float((s_test[kind == "plain_benign"] > threshold).mean()),
    }


def main(argv):
    del argv
    F = flags.FLAGS
    lm = load_model(F.model)
    base = R.RefusalConfig(data_dir=F.data_dir, cache_dir=F.cache_dir)
    out = pathlib.Path(F.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for spec, change in ROWS:
            row = {"change": {k: list(v) if isinstance(v, tuple) else v for k, v in change.items()},
                   **evaluate_row(lm, F.model, dataclasses.replace(base, **change), spec)}
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    define_flags()
    app.run(main)
