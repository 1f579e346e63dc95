"""Defaults shared by every training config: one place, every key read by the engine."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(name="smollm2-135m-instruct", path=None, param_dtype="float32", dtype="float32",
                   remat="none", scan_layers=True)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.data = dict(source="checkable_pairs", train_path=None, eval_path=None, eval_fraction=0.1, format=None,
                  fields={}, on_error="raise", max_length=128, max_prompt_length=0, truncation="truncate",
                  pair_layout="separate", group_multiple=64, batch_size=8, micro_batches=1, max_train_examples=0,
                  max_eval_examples=64, seed=0)
    c.reference = dict(mode="precomputed", sync_every=0, sync_alpha=1.0, cache_dir=None)
    c.lora = dict(rank=0, alpha=16.0, targets=r"attn/(q|k|v|o)|mlp/(gate|up|down)")
    c.train = dict(task="preference", steps=40, eval_every=20, log_every=1, checkpoint_every=20,
                   keep_checkpoints=2, best_metric="", best_mode="min", export_hf=True, report=True)
    c.optimizer = dict(learning_rate=5e-6, schedule="cosine", warmup_steps=0, total_steps=40, weight_decay=0.0,
                       b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0)
    c.loss = dict(name="dpo", beta=0.1)
    return ml_collections.ConfigDict(c)
