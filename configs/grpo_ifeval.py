"""GRPO on verifiable instruction constraints (SmolLM2-135M-Instruct, LoRA, CPU-sized).

Prompts from the project's constraint generator (``data.source="ifeval_constraints"``: the
``train`` split to learn from, ``in_distribution`` held out); the reward is the fraction of a
prompt's instructions the completion follows strictly, by the IFEval verifiers (``ifeval``).
The KL to the reference is taken against the LoRA base (no second copy of the model).
Evaluate the exported policy on the OOD splits with ``configs/eval/constraints_ood.py``
(``--config.model.path=<workdir>/export``).

    python -m align_jax.main --config=configs/grpo_ifeval.py --workdir=runs/grpo_ifeval
"""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))["base_config"]


def get_config():
    c = base_config()
    c.data.source = "ifeval_constraints"
    c.data.max_length = 512
    # remat "full": a layer's activations are recomputed in the backward pass. Without it the update
    # on 32 rows x (prompt + 192) tokens keeps every layer's attention scores (measured: XLA asked
    # for 26.5 GB and the step failed); with it the 30-step run peaked at 7.6 GiB RSS (experiments/README.md).
    c.model.remat = "full"
    c.train.update(task="grpo", steps=60, eval_every=20, checkpoint_every=5)
    c.reference.mode = "none"  # with LoRA the frozen base is the reference
    c.lora.update(rank=16, alpha=32.0)
    c.optimizer.update(learning_rate=2e-5, schedule="constant", warmup_steps=0, total_steps=0)
    c.loss = dict(name="ppo", clip_eps_low=0.2, clip_eps_high=0.28, aggregation="token-mean")
    c.rl.update(rewards="ifeval", prompts_per_step=8, group_size=4, max_new_tokens=192, temperature=1.0,
                advantage="grpo", epochs=1, minibatches=1, kl_coef=0.02, kl_estimator="k3", kl_in="loss",
                eval_prompts=32, dynamic_sampling=True)
    return c
