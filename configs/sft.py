"""Supervised fine-tuning on the chosen replies of the HH-RLHF pairs (held-out NLL is reported)."""

import pathlib
import runpy

dpo_config = runpy.run_path(str(pathlib.Path(__file__).with_name("dpo.py")))["get_config"]


def get_config():
    c = dpo_config()
    c.train.task = "sft"
    c.reference.mode = "none"
    c.loss = dict(name="sft")
    c.train.steps = 100
    return c
