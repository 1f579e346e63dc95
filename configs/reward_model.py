"""A Bradley-Terry reward model (decoder + linear head) on HH-RLHF pairs.

An ensemble of E members, each on its own bootstrap resample: --config.loss.ensemble_size=4 gives 4
heads over one shared trunk (about the cost of one model); add --config.loss.trunk=separate for a
trunk each (~4x the step; with --config.lora.rank=8, one LoRA adapter each over the frozen base).
benchmarks/README.md measures both."""

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
