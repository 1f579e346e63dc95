"""The tiny-model run config used by test_engine.py; importable from a config file without JAX
(a multi-process run must not touch the JAX backend before jax.distributed.initialize)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "configs"))
from common import base_config  # noqa: E402


def make_config(model_dir, data_file, **overrides):
    c = base_config()
    c.model.name = None
    c.model.path = str(model_dir)
    c.mesh = dict(data=1, fsdp=1, tensor=1)
    c.data.update(source="preference", train_path=str(data_file), max_length=40, batch_size=4, max_eval_examples=8)
    c.train.update(steps=4, eval_every=2, checkpoint_every=2, export_hf=False, report=False)
    c.optimizer.update(learning_rate=1e-3, total_steps=4)
    c.reference.cache_dir = str(Path(data_file).parent / "refcache")
    for key, value in overrides.items():
        section, name = key.split("__")
        c[section][name] = value
    return c
