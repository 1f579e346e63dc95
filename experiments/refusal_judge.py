"""Trains the 3-way response judge (compliance / partial refusal / refusal) and saves it for the
``refusal_generation`` eval suite, which loads it (``judge_path``) instead of training one.

    python experiments/refusal_judge.py --data_dir=../shared/data/refusal_direction \
        --out=runs/refusal_judge/response_judge.npz --cache_dir=runs/refusal/cache

A head on --model's frozen hidden states (the best of --layers on val), trained on the project's
response templates with the prompts of ``build_prompt_sets`` (``safety.refusal.run.train_response_judge``,
the response classifier of ``experiments/refusal_classifier.py``); prints its held-out report.
"""

from __future__ import annotations

import json

from absl import app, flags

from align_jax.models.registry import load_model
from align_jax.safety.refusal.classifiers import save_response_judge
from align_jax.safety.refusal.run import RefusalConfig, train_response_judge


def define_flags():
    """The script's flags, defined only when it runs as a script: tests import its functions into
    a process whose other modules (align_jax.main) already own names like --workdir."""
    flags.DEFINE_string("data_dir", "../shared/data/refusal_direction", "refusal_direction folder")
    flags.DEFINE_string("out", "runs/refusal_judge/response_judge.npz",
                        "where the judge is saved (configs/eval's default)")
    flags.DEFINE_string("cache_dir", None, "feature cache (None: no cache)")
    flags.DEFINE_string("model", "smollm2-135m-instruct", "registered model whose features the judge reads")
    flags.DEFINE_string("model_path", None, "a Hugging Face folder or .gguf file instead of --model")
    flags.DEFINE_list("layers", [str(x) for x in RefusalConfig.layers], "layers tried (the best on val is kept)")
    flags.DEFINE_integer("seed", 0, "seed for splits, sampling and the head")
    flags.DEFINE_integer("n_resamples", RefusalConfig.n_resamples, "bootstrap resamples of the held-out report")


def main(argv):
    del argv
    F = flags.FLAGS
    model_id = F.model_path or F.model
    lm = load_model(None, F.model_path) if F.model_path else load_model(F.model)
    cfg = RefusalConfig(data_dir=F.data_dir, cache_dir=F.cache_dir, layers=tuple(int(x) for x in F.layers),
                        seed=F.seed, n_resamples=F.n_resamples)
    clf, report = train_response_judge(lm, model_id, cfg, log=lambda s: print(s, flush=True))
    path = save_response_judge(F.out, clf, model_id=model_id, source=lm.source, report=report)
    print(json.dumps(report, indent=1, default=str))
    print(f"saved the response judge (layer {clf.layer}, {model_id}) to {path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
