"""Generated multi-constraint prompts: in-distribution vs each out-of-distribution split."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from eval_base import base_config  # noqa: E402


def get_config():
    c = base_config("constraints_ood")
    c.splits = ("in_distribution", "ood_unseen_combinations", "ood_more_constraints", "ood_unseen_topics")
    c.limit = 100  # prompts per split (must be > 0)
    c.max_new_tokens = 256
    return c
