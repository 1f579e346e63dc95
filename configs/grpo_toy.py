"""GRPO on a toy verifiable task that learns in about a minute on CPU (and in the test suite).

A tiny random character model (``toy-chars``) is asked "Write the letter b." and rewarded with the
fraction of its characters that are that letter (reward ``toy_letter``): it starts near 0.01
(one character in 100) and reaches 1.0 within ~15 rollout batches (30 run).

    python -m align_jax.main --config=configs/grpo_toy.py --workdir=runs/grpo_toy
"""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))["base_config"]


def get_config():
    c = base_config()
    c.model.name = "toy-chars"
    c.mesh = dict(data=1, fsdp=1, tensor=1)
    c.data.source = "toy_letters"
    c.data.max_length = 64
    c.train.update(task="grpo", steps=30, eval_every=10, checkpoint_every=10, export_hf=False)
    c.reference.mode = "none"
    c.optimizer.update(learning_rate=1e-2, schedule="constant", warmup_steps=0, total_steps=0, max_grad_norm=1.0)
    c.loss = dict(name="ppo", clip_eps_low=0.2, clip_eps_high=0.28, aggregation="token-mean")
    c.rl.update(rewards="toy_letter", prompts_per_step=8, group_size=8, max_new_tokens=8, temperature=1.0,
                advantage="grpo", epochs=1, minibatches=1, eval_prompts=16)
    return c
