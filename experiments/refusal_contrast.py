"""The contrastive refusal benchmark (#22): a prompt classifier trained on harmful / benign
minimal pairs, chosen by leave-one-phenomenon-out, against the old classifier.

    python experiments/refusal_contrast.py --model=smollm2-135m-instruct \
        --out_dir=experiments/results/refusal_contrast/smollm2-135m-instruct

Writes ``refusal_contrast.json`` and ``refusal_contrast.md`` to ``--out_dir``; features are cached
in ``--cache_dir`` (default ``<out_dir>/cache``, not committed). The protocol is in
align_jax/safety/refusal/contrast_experiment.py; the data and its datasheet in
align_jax/data/prompt_data/refusal_contrast/.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from align_jax.models.registry import MODELS, load_model
from align_jax.safety.refusal.contrast_experiment import contrast_markdown, run_contrast
from align_jax.safety.refusal.run import MODEL_STRIDE, RefusalConfig


def define_flags():
    """The script's flags, defined only when it runs as a script: tests import its functions into
    a process whose other modules (align_jax.main) already own names like --workdir."""
    flags.DEFINE_string("data_dir", "../shared/data/refusal_direction", "refusal_direction folder")
    flags.DEFINE_string("out_dir", "/tmp/refusal_contrast", "where the JSON and Markdown reports go")
    flags.DEFINE_string("cache_dir", None, "feature cache (default <out_dir>/cache)")
    flags.DEFINE_string("model", "smollm2-135m-instruct", "registered model name")
    flags.DEFINE_list("layers", ["10", "14", "18"], "layers whose features are extracted")
    flags.DEFINE_list("candidates", list(RefusalConfig.candidates), "feature specs 'layers:pooling' tried "
                      "(chosen by leave-one-phenomenon-out recall); layers must be among --layers")
    flags.DEFINE_float("threshold_fpr", RefusalConfig.threshold_fpr, "benign FPR the threshold is set for")
    flags.DEFINE_integer("hidden", 0, "hidden units of the head (0 = logistic regression)")
    flags.DEFINE_string("extra_model", None, "a second registered model whose prompt features join --model's; its "
                        f"layer l is feature key {MODEL_STRIDE} + l in --candidates")
    flags.DEFINE_list("extra_layers", [], "layers of --extra_model whose features are extracted")
    flags.DEFINE_bool("old", True, "also fit and score the old classifier (source sets only)")
    flags.DEFINE_integer("seed", 0, "seed for splits and heads")


def main(argv):
    del argv
    F = flags.FLAGS
    if F.model not in MODELS:
        raise app.UsageError(f"unknown --model {F.model!r}; registered: {sorted(MODELS)}")
    layers = tuple(int(x) for x in F.layers)
    if bool(F.extra_model) != bool(F.extra_layers):
        raise app.UsageError("--extra_model and --extra_layers go together")
    if F.extra_model and F.extra_model not in MODELS:
        raise app.UsageError(f"unknown --extra_model {F.extra_model!r}; registered: {sorted(MODELS)}")
    known = set(layers) | {MODEL_STRIDE + int(x) for x in F.extra_layers}
    for spec in F.candidates:
        missing = {int(x) for x in spec.partition(":")[0].split("+")} - known
        if missing:
            raise app.UsageError(f"--candidates {spec!r} names layers {sorted(missing)} not extracted "
                                 f"(--layers {list(layers)}, --extra_layers as {MODEL_STRIDE} + l)")
    if not pathlib.Path(F.data_dir, "harmful_test.json").exists():
        raise app.UsageError(f"--data_dir {F.data_dir} has no harmful_test.json (refusal_direction data)")
    out = pathlib.Path(F.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = RefusalConfig(data_dir=F.data_dir, cache_dir=F.cache_dir or str(out / "cache"), layers=layers,
                        candidates=tuple(F.candidates), threshold_fpr=F.threshold_fpr, hidden=F.hidden, seed=F.seed)
    lm = load_model(F.model)
    extra = [(load_model(F.extra_model), F.extra_model, tuple(int(x) for x in F.extra_layers))] if F.extra_model else []
    report = run_contrast(lm, F.model, cfg, log=lambda s: print(s, flush=True), extra_models=extra, old=F.old)
    (out / "refusal_contrast.json").write_text(json.dumps(report, indent=1, default=str))
    md = contrast_markdown(report)
    (out / "refusal_contrast.md").write_text(md)
    print(md)


if __name__ == "__main__":
    define_flags()
    app.run(main)
