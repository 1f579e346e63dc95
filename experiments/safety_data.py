"""Safety training data (issue #24, routes a and c): the prompt records of ``configs/grpo_safety.py``
and, with --cai_model, Constitutional AI critique -> revision data (``align_jax.safety.cai``).

    python experiments/safety_data.py --out_dir=runs/safety_prompts
    python experiments/safety_data.py --out_dir=runs/safety_prompts --cai_model=smollm2-135m-instruct \
        --cai_limit=64 --cai_dir=runs/cai_smollm2

Writes ``out_dir/train.jsonl`` and ``val.jsonl`` (``data.source="prompt"``, ``info["harmful"]`` and
``info["kind"]`` per prompt; the test split is left for evaluation). With --cai_model, the first
--cai_limit train prompts (hash order, kinds mixed) are drafted, critiqued and revised by the model,
and ``cai_dir`` gets ``pairs.jsonl`` (``data.source="preference"``), ``sft.jsonl`` (``"sft"``),
``revisions.jsonl`` (every draft, critique and revision) and ``summary.json`` (counts, skips by reason).
"""

from __future__ import annotations

import json
import os

import jax
from absl import app, flags

from align_jax.data.sources import load_records
from align_jax.models.registry import load_model
from align_jax.safety.cai import constitutional_pairs, load_constitution, write_cai_data
from align_jax.safety.prompt_records import write_safety_prompts
from align_jax.safety.refusal.run import RefusalConfig


def define_flags():
    """The script's flags, defined only when it runs as a script: tests import its functions into
    a process whose other modules (align_jax.main) already own names like --workdir."""
    flags.DEFINE_string("data_dir", "../shared/data/refusal_direction", "refusal_direction folder")
    flags.DEFINE_string("out_dir", "runs/safety_prompts",
                        "where train.jsonl and val.jsonl go (configs/grpo_safety.py reads them)")
    flags.DEFINE_integer("per_kind", 0, "at most this many prompts of each kind per split (0: all)")
    flags.DEFINE_string("cai_model", "", "registered model name or model folder for the CAI data ('': no CAI data)")
    flags.DEFINE_string("cai_dir", "runs/cai", "where the CAI data goes")
    flags.DEFINE_string("constitution", "", "a constitution JSONL file ('': the packaged one)")
    flags.DEFINE_integer("cai_limit", 64, "train prompts drafted, critiqued and revised")
    flags.DEFINE_integer("max_new_tokens", 128, "new tokens per draft, critique and revision")
    flags.DEFINE_integer("batch_size", 8, "generation batch size")
    flags.DEFINE_integer("seed", 0, "seed of the splits, the prompt order and the principle draws")


def main(argv):
    del argv
    F = flags.FLAGS
    cfg = RefusalConfig(data_dir=F.data_dir, seed=F.seed)
    paths = write_safety_prompts(cfg, F.out_dir, per_kind=F.per_kind)
    print(json.dumps({split: str(p) for split, p in paths.items()}))
    if not F.cai_model:
        return
    lm = load_model(path=F.cai_model) if os.path.exists(F.cai_model) else load_model(F.cai_model)
    records, _ = load_records(paths["train"], "prompt")
    prompts = [r.prompt[-1]["content"] for r in records[:F.cai_limit]]
    results = constitutional_pairs(lm, prompts, principles=load_constitution(F.constitution or None),
                                   key=jax.random.key(F.seed), max_new_tokens=F.max_new_tokens,
                                   batch_size=F.batch_size, progress=True)
    print(json.dumps(write_cai_data(results, F.cai_dir), indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
