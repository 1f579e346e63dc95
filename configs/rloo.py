"""RLOO (arXiv:2402.14740) on the toy task: GRPO's loop with the leave-one-out baseline and no
std scaling; the same switch (``--config.rl.advantage=``) gives ``dr-grpo`` and ``reinforce++``.

    python -m align_jax.main --config=configs/rloo.py --workdir=runs/rloo
"""

import pathlib
import runpy

grpo_toy_config = runpy.run_path(str(pathlib.Path(__file__).with_name("grpo_toy.py")))["get_config"]


def get_config():
    c = grpo_toy_config()
    c.rl.advantage = "rloo"
    return c
