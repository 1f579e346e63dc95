"""DPO (or any registered preference loss: --config.loss.name=ipo ...) on Anthropic HH-RLHF
harmless-base pairs from ../shared/data. Override the path with --config.data.train_path.

A malformed row stops the run, naming its file and line. The shipped test file has 9 malformed pairs
in 2,312 rows: pass --config.data.on_error=skip to skip them (they are counted and logged)."""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))["base_config"]

HH = pathlib.Path(__file__).absolute().parents[2] / "shared" / "data" / "hh_rlhf" / "harmless-base-test.jsonl.gz"


def get_config():
    c = base_config()
    c.data.source = "hh_rlhf"
    c.data.train_path = str(HH)
    c.data.max_length = 192
    c.data.max_prompt_length = 128
    c.data.eval_fraction = 0.1
    c.data.max_eval_examples = 128
    c.train.steps = 150
    c.train.eval_every = 50
    c.train.checkpoint_every = 50
    c.optimizer.learning_rate = 1e-5
    c.optimizer.warmup_steps = 10
    return c
