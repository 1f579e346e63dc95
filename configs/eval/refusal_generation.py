"""Refusal behaviour: over-refusal on benign and compliance on harmful held-out prompts, judged by
the response classifier."""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("eval_base.py")))["base_config"]


def get_config():
    c = base_config("refusal_generation")
    c.data_dir = "../shared/data/refusal_direction"  # relative to the repository root
    c.limit = 100  # prompts of each kind: harmful, benign-sensitive, plain benign (0 = all)
    c.max_new_tokens = 96
    c.response_layers = (10, 14, 18)  # the response classifier picks one on val (SmolLM2 has 30 layers)
    c.cache_dir = ""  # feature cache for the response classifier ("" = none)
    return c
