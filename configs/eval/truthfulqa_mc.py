"""TruthfulQA MC: option log-probs (sum and mean), accuracy and calibration of the chosen option."""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("eval_base.py")))["base_config"]


def get_config():
    c = base_config("truthfulqa_mc")
    c.data_path = "../shared/data/truthfulqa/TruthfulQA.csv"  # relative to the repository root
    c.bucket = 64  # scoring widths are rounded up to a multiple of this (fewer compiles)
    c.n_bins = 15  # equal-width ECE/MCE bins; equal-mass uses min(n_bins, n)
    return c
