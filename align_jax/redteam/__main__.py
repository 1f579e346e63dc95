"""Red-team entry point: attacks x behaviours against one model, judged, in a workdir.

    python -m align_jax.redteam --config=configs/redteam/smollm2.py --workdir=runs/redteam

Writes records.jsonl (one line per attack x behaviour; the same command resumes), summary.json /
summary.md (attack-success rates with Wilson CIs per attack, family and hazard), asr_heatmap.png and
successes.jsonl (``align_jax.redteam.runner``). A bad key, attack or judge name fails before the
model loads.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from align_jax.cli import one_line, parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A red-team config (configs/redteam/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (records, summary, plots).", required=True)
flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    from align_jax.redteam.runner import parse_config, run, summary_markdown

    try:
        cfg = parse_config(_CONFIG.value)
    except (KeyError, ValueError) as e:
        sys.exit(one_line(e))
    summary = run(cfg, _WORKDIR.value)
    print(summary_markdown(summary))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
