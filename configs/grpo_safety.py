"""GRPO for precise refusal (SmolLM2-135M-Instruct, LoRA, CPU-sized): refuse harmful prompts,
answer benign ones, including those that only sound sensitive.

Prompts are the refusal classifier's train split (harmful by benchmark, benign-sensitive by
template, plain benign; ``align_jax.safety.prompt_records``) written once as prompt records with
``info["harmful"]``; val is held out for the greedy eval. The reward ``refusal_precision``
(AlphaAlign's verifiable safety reward, arXiv:2507.14987, judged by refusal phrases) gives 1 for a
refused harmful or an answered benign prompt, 0 for an answered harmful one and -1 for a refused
benign one. The KL to the reference is taken against the LoRA base (no second copy of the model).

    python experiments/safety_data.py --out_dir=runs/safety_prompts   # train.jsonl, val.jsonl
    python -m align_jax.main --config=configs/grpo_safety.py --workdir=runs/grpo_safety
"""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))["base_config"]


def get_config():
    c = base_config()
    c.data.update(source="prompt", train_path="runs/safety_prompts/train.jsonl",
                  eval_path="runs/safety_prompts/val.jsonl")
    c.model.remat = "full"  # as grpo_ifeval: the update's activations recomputed in the backward pass
    c.train.update(task="grpo", steps=60, eval_every=20, checkpoint_every=5)
    c.reference.mode = "none"  # with LoRA the frozen base is the reference
    c.lora.update(rank=16, alpha=32.0)
    c.optimizer.update(learning_rate=2e-5, schedule="constant", warmup_steps=0, total_steps=0)
    c.loss = dict(name="ppo", clip_eps_low=0.2, clip_eps_high=0.28, aggregation="token-mean")
    # 64 new tokens: the reward reads a reply's first 160 characters (where a refusal opens)
    c.rl.update(rewards="refusal_precision", prompts_per_step=8, group_size=4, max_new_tokens=64, temperature=1.0,
                advantage="grpo", epochs=1, minibatches=1, kl_coef=0.02, kl_estimator="k3", kl_in="loss",
                eval_prompts=32, dynamic_sampling=True)
    return c
