"""PPO on HH-RLHF prompts against a learned reward model (SmolLM2-135M-Instruct, LoRA, CPU-sized).

Value head, GAE (arXiv:1506.02438), the KL to the reference in the per-token reward (RLHF shaping
of arXiv:2203.02155; with LoRA the frozen base is the reference). The reward is a Bradley-Terry
reward-model export named as ``rm:PATH`` (``rm:PATH@min`` for an ensemble's minimum); a second
reward at weight 0 (``rl.rewards=rm:A,rm:B``, ``rl.reward_weights=1,0``) is logged, not optimised.
Prompt files hold ``{"prompt": [messages]}`` records. ``experiments/overoptimization_hh.py`` writes the prompt
files and the reward models, runs this config once per reward variant and measures the proxy and
gold rewards of every checkpoint against the KL (issue #23):

    python experiments/overoptimization_hh.py --workdir=runs/overopt_hh

Alone, after that script's data and rm stages:

    python -m align_jax.main --config=configs/ppo_hh.py --workdir=runs/ppo_hh
"""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))["base_config"]

RUN = pathlib.Path(__file__).absolute().parents[1] / "runs" / "overopt_hh"


def get_config():
    c = base_config()
    c.data.update(source="prompt", train_path=str(RUN / "rl_prompts.jsonl"), eval_path=str(RUN / "eval_prompts.jsonl"),
                  max_length=192)
    c.model.remat = "full"  # as grpo_ifeval: the update's activations recomputed in the backward pass
    # only the step cadence saves, so the 5 kept checkpoints are steps 10, 20, 30, 40 (a time-based
    # save between them would push the early policies out)
    c.train.update(task="ppo", steps=40, eval_every=40, checkpoint_every=10, checkpoint_every_seconds=0.0,
                   keep_checkpoints=5)
    c.reference.mode = "none"  # with LoRA the frozen base is the reference
    c.lora.update(rank=16, alpha=32.0)
    c.optimizer.update(learning_rate=1e-4, schedule="constant", warmup_steps=0, total_steps=0)
    c.loss = dict(name="ppo", clip_eps_low=0.2, clip_eps_high=0.2, aggregation="token-mean")
    c.rl.update(rewards=f"rm:{RUN / 'rm_proxy' / 'export'}", prompts_per_step=8, group_size=2, max_new_tokens=64,
                temperature=1.0, epochs=2, minibatches=2, kl_coef=0.01, kl_estimator="k1", kl_in="reward",
                eval_prompts=32)
    return c
