"""Generated multi-constraint prompts: in-distribution vs each out-of-distribution split."""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("eval_base.py")))["base_config"]


def get_config():
    c = base_config("constraints_ood")
    c.splits = ("in_distribution", "ood_unseen_combinations", "ood_more_constraints", "ood_unseen_topics")
    c.limit = 100  # prompts per split (must be > 0)
    c.max_new_tokens = 256
    return c
