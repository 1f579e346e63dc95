"""Safety DPO (#24, route b): SmolLM2-135M-Instruct on refusal > compliance pairs for harmful train
prompts and answer > refusal pairs for benign ones, written by ``experiments/safety_dpo.py
--stage=pairs`` (default path below; override with --config.data.train_path)."""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))["base_config"]

PAIRS = pathlib.Path(__file__).absolute().parents[1] / "runs" / "safety_dpo" / "pairs.jsonl"


def get_config():
    c = base_config()
    c.model.remat = "full"
    c.data.source = "preference"
    c.data.train_path = str(PAIRS)
    c.data.pair_layout = "shared_prefix"
    c.data.max_length = 192
    c.data.max_prompt_length = 96
    c.data.eval_fraction = 0.1
    c.data.max_eval_examples = 64
    c.data.max_train_examples = 1200  # = steps x batch: one pass, no reference pass over unused pairs
    c.train.steps = 150
    c.train.eval_every = 50
    c.train.checkpoint_every = 50
    c.optimizer.learning_rate = 2e-5
    c.optimizer.warmup_steps = 10
    c.loss.beta = 0.1
    return c
