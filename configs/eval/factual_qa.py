"""Factual QA: greedy short answers, sequence-probability and P(True) confidence."""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("eval_base.py")))["base_config"]


def get_config():
    c = base_config("factual_qa")
    c.split = "test"  # train / validation / test of data.factual_qa.split_factual_qa
    c.split_seed = 0
    c.max_new_tokens = 24
    c.match_mode = "contains"  # "exact" or "contains" (answer_matches)
    c.bucket = 64  # P(True) scoring widths round up to a multiple of this
    c.n_bins = 15
    return c
