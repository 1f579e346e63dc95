"""IFEval: prompt/instruction-level strict/loose accuracy of greedy responses."""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("eval_base.py")))["base_config"]


def get_config():
    c = base_config("ifeval")
    c.data_path = "../shared/data/ifeval/input_data.jsonl"  # relative to the repository root
    c.max_new_tokens = 512
    return c
