"""KTO (arXiv:2402.01306) on HH-RLHF, each pair split into a desirable and an undesirable example."""

import pathlib
import runpy

dpo_config = runpy.run_path(str(pathlib.Path(__file__).with_name("dpo.py")))["get_config"]


def get_config():
    c = dpo_config()
    c.train.task = "unpaired"
    c.loss = dict(name="kto", beta=0.1)
    return c
