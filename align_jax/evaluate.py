"""Evaluation entry point: one suite, one model, files in a workdir.

    python -m align_jax.evaluate --config=configs/eval/truthfulqa_mc.py \
        --config.model.name=smollm2-135m-instruct --config.limit=100 --workdir=runs/eval_tqa

Suites: truthfulqa_mc, factual_qa, ifeval, constraints_ood, refusal_generation (``configs/eval/<suite>.py``).
``--config.model.path=/path/to/hf_dir_or.gguf`` evaluates a checkpoint instead of a named model.
A key the suite does not read fails in one line before any model loads (valid keys listed).
Writes results.json, summary.md, examples.jsonl and reliability_*.png (calibration suites);
see ``align_jax.evals.runner``.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from align_jax.cli import one_line, parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "An eval config (configs/eval/<suite>.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder for results and examples.", required=True)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show tqdm progress bars.")
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    from align_jax.evals.config import parse_eval_config
    from align_jax.evals.runner import evaluate, summary_markdown

    try:
        cfg = parse_eval_config(_CONFIG.value)  # before the model loads: a bad key fails in seconds
    except (KeyError, ValueError) as e:
        sys.exit(one_line(e))
    logging.info("eval config: %s", cfg)
    results = evaluate(cfg, _WORKDIR.value, progress=_PROGRESS.value)
    print(summary_markdown(results))
    print(f"wrote {', '.join(results['files'])} to {_WORKDIR.value}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
