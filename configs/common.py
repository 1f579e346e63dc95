"""Defaults shared by every training config: one place, every key read by the engine.

Every key is settable from the command line (``--config.model.path=...``): keys whose default is
None are typed references (``None`` until set), so ml_collections knows how to parse them. The
sections are locked, so a misspelt key (``--config.train.stepz``) fails while the flags are parsed;
``loss`` (options depend on ``loss.name``) and ``data.fields`` (record field -> file column) stay
open and are checked by ``align_jax.training.config.parse_config``.
"""

import ml_collections
from ml_collections import config_dict


def optional_str(default: str | None = None) -> config_dict.FieldReference:
    """A string key that may be None (settable from the command line even while it is None)."""
    return config_dict.FieldReference(default, field_type=str)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(name=optional_str("smollm2-135m-instruct"), path=optional_str(), param_dtype="float32",
                   dtype="float32", matmul_dtype="", remat="none", scan_layers=True)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.data = dict(source="checkable_pairs", train_path=optional_str(), eval_path=optional_str(), eval_fraction=0.1,
                  tfds_data_dir=optional_str(), manual_dir=optional_str(), train_split="train", eval_split="",
                  format=optional_str(), fields={}, on_error="raise", max_length=128, max_prompt_length=0,
                  truncation="truncate", pair_layout="separate", group_multiple=64, batch_size=8, micro_batches=1,
                  max_train_examples=0, max_eval_examples=64, seed=0, shuffle=True, group_field="", groups="")
    c.reference = dict(mode="precomputed", sync_every=0, sync_alpha=1.0, cache_dir=optional_str())
    c.lora = dict(rank=0, alpha=16.0, targets=r"attn/(q|k|v|o)|mlp/(gate|up|down)", seed=0)
    # checkpoints every `checkpoint_every` steps and at least every `checkpoint_every_seconds` (5 min of work at risk)
    c.train = dict(task="preference", steps=40, eval_every=20, log_every=1, checkpoint_every=20,
                   checkpoint_every_seconds=300.0, keep_checkpoints=2, best_metric="", best_mode="min", export_hf=True,
                   report=True)
    # total_steps=0: the schedule follows train.steps (times rl.epochs * rl.minibatches for online tasks)
    c.optimizer = dict(learning_rate=5e-6, schedule="cosine", warmup_steps=0, total_steps=0, weight_decay=0.0,
                       b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0)
    # Online RL (train.task="grpo" / "ppo") only: rollouts, rewards, advantages, KL.
    c.rl = dict(rewards="toy_letter", reward_weights="", reward_combine="sum", reward_transform="identity",
                reference_samples=4, transform_quantile=0.85, prompts_per_step=8, group_size=8,
                max_new_tokens=32, temperature=1.0, top_p=1.0, top_k=0, advantage="grpo", epochs=1, minibatches=1, kl_coef=0.0,
                kl_estimator="k3", kl_in="loss", dynamic_sampling=False, overlong_buffer=0, overlong_penalty=1.0,
                recompute_old_logps=False, eval_prompts=32, gamma=1.0, lam=0.95, value_coef=0.1, clip_eps_value=0.2)
    c.loss = dict(name="dpo", beta=0.1)
    return lock_sections(c)


def lock_sections(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks ``c`` but for its open sections, ``loss`` and ``data.fields`` (a file replacing
    ``c.loss = dict(...)`` gets an open section anyway). Call this, not ``c.lock()``, after an
    ``unlock()``: ``lock()`` would close them too."""
    c.lock()
    c.loss.unlock()
    c.data.fields.unlock()
    return c
