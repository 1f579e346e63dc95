"""PPO with a value head (arXiv:1707.06347; RLHF shaping of arXiv:2203.02155) on the toy task:
per-token rewards (score at the last token, -beta KL to the frozen reference at every token),
GAE advantages (arXiv:1506.02438), clipped policy and value losses.

    python -m align_jax.main --config=configs/ppo.py --workdir=runs/ppo
"""

import pathlib
import runpy

grpo_toy_config = runpy.run_path(str(pathlib.Path(__file__).with_name("grpo_toy.py")))["get_config"]


def get_config():
    c = grpo_toy_config()
    c.train.task = "ppo"
    c.reference.mode = "frozen"
    c.rl.update(kl_coef=0.01, kl_in="reward", kl_estimator="k1", epochs=2, minibatches=2)
    return c
