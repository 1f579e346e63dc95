"""KTO (arXiv:2402.01306) on HH-RLHF, each pair split into a desirable and an undesirable example."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import dpo  # noqa: E402


def get_config():
    c = dpo.get_config()
    c.train.task = "unpaired"
    c.loss = dict(name="kto", beta=0.1)
    return c
