"""Refusal behaviour: over-refusal on benign and compliance on harmful held-out prompts, judged by a
saved response classifier (make it once: python experiments/refusal_audit.py --score --models=smollm2-135m-instruct
--save_judge=runs/refusal_judge/response_judge.npz, fitted on hand-labelled real answers; or, from response
templates alone, python experiments/refusal_judge.py)."""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("eval_base.py")))["base_config"]


def get_config():
    c = base_config("refusal_generation")
    c.data_dir = "../shared/data/refusal_direction"  # relative to the repository root
    c.limit = 100  # prompts of each kind: harmful, benign-sensitive, plain benign (0 = all)
    c.max_new_tokens = 96
    c.judge_path = "runs/refusal_judge/response_judge.npz"  # refusal_audit.py --save_judge / refusal_judge.py --out
    return c
