"""A Bradley-Terry reward model (decoder + linear head) on HH-RLHF pairs."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import dpo  # noqa: E402


def get_config():
    c = dpo.get_config()
    c.train.task = "reward_model"
    c.reference.mode = "none"
    c.loss = dict(name="bradley_terry", center_coef=0.01)
    c.optimizer.learning_rate = 2e-5
    return c
