"""A Bradley-Terry reward model (decoder + linear head) on HH-RLHF pairs."""

import pathlib
import runpy

dpo_config = runpy.run_path(str(pathlib.Path(__file__).with_name("dpo.py")))["get_config"]


def get_config():
    c = dpo_config()
    c.train.task = "reward_model"
    c.reference.mode = "none"
    c.loss = dict(name="bradley_terry", center_coef=0.01)
    c.optimizer.learning_rate = 2e-5
    return c
