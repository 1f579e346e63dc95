"""TruthfulQA MC: option log-probs (sum and mean), accuracy and calibration of the chosen option."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from eval_base import base_config  # noqa: E402


def get_config():
    c = base_config("truthfulqa_mc")
    c.data_path = "../shared/data/truthfulqa/TruthfulQA.csv"  # relative to the repository root
    c.bucket = 64  # scoring widths are rounded up to a multiple of this (fewer compiles)
    c.n_bins = 15  # equal-width ECE/MCE bins; equal-mass uses min(n_bins, n)
    return c
