"""IFEval: prompt/instruction-level strict/loose accuracy of greedy responses."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from eval_base import base_config  # noqa: E402


def get_config():
    c = base_config("ifeval")
    c.data_path = "../shared/data/ifeval/input_data.jsonl"  # relative to the repository root
    c.max_new_tokens = 512
    return c
