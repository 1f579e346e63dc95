"""Calibration fine-tuning: ConfTuner tokenized Brier (arXiv:2508.18847) on a verbalized confidence digit.

Data: JSONL records ``{prompt, answer, correct}`` (the model's own greedy answers, graded) as written
by ``experiments/calibration_finetune.py``; the completion trained on is
``answer + "\\nConfidence: " + digit`` (align_jax/data/verbalized_confidence.py). The eval set is
a 10% hold-out of the train file (``eval/conf/brier`` is its tokenized Brier); the validation split
stays untouched for fitting the post-hoc baselines.
"""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))["base_config"]


def get_config():
    c = base_config()
    c.data.update(source="unpaired", train_path="runs/calibration_finetune/data/train.jsonl",
                  eval_path=None, eval_fraction=0.1,
                  fields={"response": "answer", "desirable": "correct"},
                  max_length=128, max_prompt_length=112, batch_size=8, max_eval_examples=96)
    c.reference.mode = "none"
    c.lora.rank = 16  # LoRA on every projection (merged into the exported policy)
    c.train.update(task="calibration", steps=150, eval_every=75, checkpoint_every=75, report=True)
    c.optimizer.update(learning_rate=2e-4, warmup_steps=3)
    c.loss = dict(name="confidence_brier", answer_nll_coef=0.1)
    return c
