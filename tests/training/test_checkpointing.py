"""Checkpointer: sharded round trips, typed keys, retention, NaN guard, and SIGKILL atomicity."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from align_jax.training.checkpointing import Checkpointer, NonFiniteLossError, SaveCadence, check_finite

pytestmark = pytest.mark.slow  # a subprocess SIGKILLed mid-save


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
    rng: jax.Array


class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(8, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 4, rngs=rngs)


TX = optax.adam(1e-3)


def make_state(seed: int) -> TrainState:
    params = nnx.state(Tiny(nnx.Rngs(seed)), nnx.Param)
    return TrainState(
        step=jnp.asarray(seed, jnp.int32),
        params=params,
        opt_state=TX.init(params),
        rng=jax.random.key(seed),
    )


def small_state(value: float):
    return {"w": jnp.full((4,), value)}


ABSTRACT_SMALL = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}


@pytest.fixture
def mesh():
    return jax.make_mesh((4, 2), ("data", "model"))


def _leaves_equal(a, b) -> bool:
    def unwrap(x):
        return np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(unwrap(x), unwrap(y)) for x, y in zip(la, lb))


def test_round_trip_restores_values_types_and_target_shardings(tmp_path, mesh):
    saved = jax.device_put(make_state(1), NamedSharding(mesh, P()))  # replicated when saved
    data_state = {"next_index": 17, "worker": [0, 1]}
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.save(5, saved, data_state=data_state, metrics={"loss": jnp.float32(0.5)})
        ckpt.wait()
        assert ckpt.latest_step() == 5

        # Restore onto a different layout: 2-D arrays sharded over both mesh axes.
        def target(x):
            spec = P("data", "model") if x.ndim == 2 else P()
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

        abstract = jax.tree.map(target, jax.eval_shape(lambda: make_state(0)))
        state, data = ckpt.restore(abstract_state=abstract)

    assert isinstance(state, TrainState) and isinstance(state.params, nnx.State)
    assert data == data_state
    assert _leaves_equal(state, saved)
    assert int(state.step) == 1
    assert jnp.issubdtype(state.rng.dtype, jax.dtypes.prng_key)  # typed key back
    np.testing.assert_array_equal(jax.random.key_data(state.rng), jax.random.key_data(jax.random.key(1)))
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)):
        assert got.sharding == want.sharding
    kernel = state.params["l1"]["kernel"][...]
    assert kernel.sharding.spec == P("data", "model")
    assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (2, 8)


def test_concrete_target_and_none_data_state(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, small_state(3.0))
        state, data = ckpt.restore(1, abstract_state=small_state(0.0))
    assert data is None
    np.testing.assert_array_equal(state["w"], np.full((4,), 3.0))


def test_keep_last(tmp_path):
    with Checkpointer(tmp_path, keep_last=2) as ckpt:
        for step in range(1, 6):
            ckpt.save(step, small_state(step))
        ckpt.wait()
        assert ckpt.all_steps() == [4, 5]
        state, _ = ckpt.restore(abstract_state=ABSTRACT_SMALL)
    assert float(state["w"][0]) == 5.0


@pytest.mark.parametrize("mode,best", [("min", 2), ("max", 4)])
def test_keeps_best_by_metric_as_well_as_last(tmp_path, mode, best):
    evals = {2: 1.0, 4: 9.0, 6: 5.0}  # eval every other step
    with Checkpointer(tmp_path, keep_last=1, best_metric="eval/loss", best_mode=mode) as ckpt:
        for step in range(1, 8):
            metrics = {"train/loss": 3.0}
            if step in evals:
                metrics["eval/loss"] = evals[step]
            ckpt.save(step, small_state(step), metrics=metrics)
        ckpt.wait()
        assert ckpt.all_steps() == [best, 7]
        assert ckpt.best_step() == best
        state, _ = ckpt.restore(ckpt.best_step(), abstract_state=ABSTRACT_SMALL)
    assert float(state["w"][0]) == best
    # A restarted run reads the saved metrics back: the best step survives later saves.
    with Checkpointer(tmp_path, keep_last=1, best_metric="eval/loss", best_mode=mode) as ckpt:
        assert ckpt.best_step() == best
        ckpt.save(8, small_state(8), metrics={"eval/loss": 7.0})
        ckpt.save(9, small_state(9), metrics={"train/loss": 1.0})
        ckpt.wait()
        assert ckpt.all_steps() == [best, 9]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_loss_raises_and_is_not_saved(tmp_path, bad):
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, small_state(1.0), metrics={"train/loss": 0.3})
        with pytest.raises(NonFiniteLossError, match=r"train/loss.*step 2") as info:
            ckpt.save(2, small_state(bad), metrics={"train/loss": jnp.float32(bad), "grad_norm": 1.0})
        assert info.value.step == 2 and info.value.name == "train/loss"
        assert ckpt.all_steps() == [1]
    assert sorted(os.listdir(tmp_path)) == ["1"]


def test_check_finite_key_selection():
    check_finite(3, {"loss": 1.0, "grad_norm": float("nan")})  # grad_norm is not a loss
    check_finite(3, None)
    with pytest.raises(NonFiniteLossError, match="grad_norm"):
        check_finite(3, {"loss": 1.0, "grad_norm": float("nan")}, keys=["grad_norm"])
    with pytest.raises(NonFiniteLossError, match="eval/dpo_loss"):
        check_finite(3, {"eval/dpo_loss": np.array([1.0, np.inf])})


def test_save_cadence_by_steps_by_wall_time_and_at_the_end():
    now = [0.0]
    cadence = SaveCadence(every_steps=10, every_seconds=300.0, last_step=25, clock=lambda: now[0])
    saved = []
    for step in range(1, 26):
        now[0] += 130.0 if step <= 6 else 1.0  # six slow steps (compiling, a busy machine), then fast ones
        if cadence.due(step):
            saved.append(step)
    # by time: step 3 (390 s since the start) and step 6 (390 s since step 3); by steps: 10, 20; the last: 25
    assert saved == [3, 6, 10, 20, 25]
    off = SaveCadence(every_steps=0, every_seconds=0.0, last_step=5, clock=lambda: now[0])
    assert [s for s in range(1, 6) if off.due(s)] == [5]


def test_interval_force_duplicates_and_missing(tmp_path):
    with Checkpointer(tmp_path, save_interval_steps=10, async_save=False) as ckpt:
        with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
            ckpt.restore(abstract_state=ABSTRACT_SMALL)
        assert ckpt.save(10, small_state(1.0))
        assert not ckpt.save(13, small_state(2.0))  # off the interval
        assert ckpt.save(13, small_state(2.0), force=True)
        assert not ckpt.save(13, small_state(3.0), force=True)  # already saved
        assert ckpt.all_steps() == [10, 13]
        with pytest.raises(FileNotFoundError, match="step 11"):
            ckpt.restore(11, abstract_state=ABSTRACT_SMALL)
        state, _ = ckpt.restore(abstract_state=ABSTRACT_SMALL)
    assert float(state["w"][0]) == 2.0


_KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    import jax.numpy as jnp
    from align_jax.training.checkpointing import Checkpointer

    ckpt = Checkpointer(sys.argv[1], keep_last=5)
    ckpt.save(1, {"w": jnp.full((1 << 24,), 1.0)}, data_state={"pos": 1})
    ckpt.wait()
    ckpt.save(2, {"w": jnp.full((1 << 24,), 2.0)}, data_state={"pos": 2})  # 64 MiB, async
    # The background save creates its temporary folder a moment later: wait for it (on a busy
    # machine the kill could otherwise come before any partial save exists).
    deadline = time.time() + 30
    while ckpt._manager.is_saving_in_progress() and time.time() < deadline and not any(
        ".orbax-checkpoint-tmp" in n for n in os.listdir(sys.argv[1])
    ):
        time.sleep(0.002)
    names = os.listdir(sys.argv[1])
    if ckpt._manager.is_saving_in_progress() and "2" not in names:
        print("KILLED MID-SAVE", names, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_sigkill_during_async_save_leaves_previous_checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_CHILD, str(directory)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert "KILLED MID-SAVE" in proc.stdout, (proc.stdout, proc.stderr[-2000:])
    assert any(".orbax-checkpoint-tmp" in n for n in os.listdir(directory))  # the partial save

    abstract = {"w": jax.ShapeDtypeStruct((1 << 24,), jnp.float32)}
    with Checkpointer(directory, keep_last=5) as ckpt:
        assert ckpt.all_steps() == [1]
        state, data = ckpt.restore(abstract_state=abstract)
        assert data == {"pos": 1} and float(state["w"][-1]) == 1.0
        # The partial directory is cleaned up and step 2 can be saved again.
        assert ckpt.save(2, {"w": jnp.full((4,), 2.0)}, data_state={"pos": 2})
        ckpt.wait()
        assert ckpt.all_steps() == [1, 2]
    assert not any("tmp" in n for n in os.listdir(directory))
