"""DPO (or any registered preference loss: --config.loss.name=ipo ...) on Anthropic HH-RLHF
harmless-base pairs from ../shared/data. Override the path with --config.data.train_path."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from common import base_config  # noqa: E402

HH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "hh_rlhf", "harmless-base-test.jsonl.gz")


def get_config():
    c = base_config()
    c.data.source = "hh_rlhf"
    c.data.train_path = os.path.normpath(HH)
    c.data.on_error = "skip"  # 9 of 2,312 rows are malformed pairs: skipped and counted
    c.data.max_length = 192
    c.data.max_prompt_length = 128
    c.data.eval_fraction = 0.1
    c.data.max_eval_examples = 128
    c.train.steps = 150
    c.train.eval_every = 50
    c.train.checkpoint_every = 50
    c.optimizer.total_steps = 150
    c.optimizer.learning_rate = 1e-5
    c.optimizer.warmup_steps = 10
    return c
