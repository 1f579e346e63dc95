"""Supervised fine-tuning on the chosen replies of the HH-RLHF pairs (held-out NLL is reported)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import dpo  # noqa: E402


def get_config():
    c = dpo.get_config()
    c.train.task = "sft"
    c.reference.mode = "none"
    c.loss = dict(name="sft")
    c.train.steps = 100
    c.optimizer.total_steps = 100
    return c
