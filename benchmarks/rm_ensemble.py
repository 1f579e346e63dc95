"""Reward-model ensembles: which is cheaper per training step, E heads over one shared trunk, or E
separate trunks (full copies, or one LoRA adapter each)? Step time and peak memory, each row in its
own process.

    nice -n 10 python -m benchmarks.rm_ensemble                               # the toy model (seconds)
    nice -n 10 python -m benchmarks.rm_ensemble --model=smollm2-135m-instruct --batch_size=4 --max_length=128

Every row is the reward-model task as the engine builds it (``configs/reward_model.py`` with
``loss.ensemble_size`` / ``loss.trunk`` / ``lora.rank`` set; ``loop.build_state`` and
``step.compile_train_step``: AdamW with clipping, fp32, ``model.remat`` from ``--remat``), one
micro-batch of ``--batch_size`` pairs, both replies ``--max_length`` random token ids (no padding):

* ``single``: one reward model (full fine-tuning, head ``w [D]``);
* ``shared``: ``--members`` E heads ``w [E, D]`` over one trunk (one forward for all members);
* ``separate_full``: E full trunk copies stacked on a member axis, the step vmapped over them;
* ``separate_lora``: one LoRA adapter (rank ``--lora_rank``, the default targets) per member over
  the one frozen base, vmapped over the adapters;
* ``single_lora``: one reward model with one LoRA adapter (the baseline of ``separate_lora``).

Reported per row: the median of ``--steps`` timed steps after ``--warmup`` untimed ones (the step
compiled beforehand, compile time reported apart); XLA's compiled memory analysis of the step
(arguments, outputs, temporaries, aliased donated bytes, and their ``argument + output + temp -
alias`` peak estimate); the device's ``peak_bytes_in_use`` where the backend keeps memory stats
(GPU; not XLA:CPU); the process's RSS after set-up and its high-water mark (``VmHWM``, and
``ru_maxrss`` from ``wait4``, which includes loading the model); the train state's bytes and its
trainable parameter count; the load averages around the row and the CPU that other processes used
meanwhile (``other_cores``; ``busy_machine`` above 0.2 cores: compare such timings with care).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from absl import app, flags

from align_jax.models.config import REMAT_POLICIES
from benchmarks.memory import status_mib
from benchmarks.quiet import Contention

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "reward_model.py"

# name -> (ensemble members E? (else 1), trunk, LoRA?)
ROWS: dict[str, tuple[bool, str, bool]] = {
    "single": (False, "shared", False),
    "shared": (True, "shared", False),
    "separate_full": (True, "separate", False),
    "separate_lora": (True, "separate", True),
    "single_lora": (False, "shared", True),
}

FLAGS = flags.FLAGS
PASSED_FLAGS = ("model", "members", "lora_rank", "batch_size", "max_length", "remat", "steps", "warmup")  # to each row


def define_flags() -> None:
    flags.DEFINE_string("model", "toy-chars", "a registered model name (toy-chars, smollm2-135m-instruct, ...)")
    flags.DEFINE_list("rows", ["all"], f"rows to run (or 'all'): {', '.join(ROWS)}")
    flags.DEFINE_integer("members", 4, "ensemble members E of the ensemble rows")
    flags.DEFINE_integer("lora_rank", 8, "LoRA rank of the *_lora rows")
    flags.DEFINE_integer("batch_size", 8, "pairs per step")
    flags.DEFINE_integer("max_length", 64, "tokens of each reply (prompt included)")
    flags.DEFINE_enum("remat", "none", list(REMAT_POLICIES), "the decoder's model.remat (activation memory)")
    flags.DEFINE_integer("steps", 5, "timed steps per row (the median is reported)")
    flags.DEFINE_integer("warmup", 1, "untimed steps before them (after compiling)")
    flags.DEFINE_string("output_json", None, "default: benchmarks/results/rm_ensemble_<model>.json")
    flags.DEFINE_string("worker", None, "internal: run one row in this process")
    flags.DEFINE_string("worker_out", None, "internal: where a worker writes its result")


def row_config(name: str):
    """``configs/reward_model.py`` set up for row ``name`` (parsed: a bad combination fails here)."""
    import runpy

    from align_jax.training.config import parse_config

    ensemble, trunk, lora = ROWS[name]
    c = runpy.run_path(str(CONFIG))["get_config"]()
    c.model.name, c.model.remat = FLAGS.model, FLAGS.remat
    c.data.max_length, c.data.batch_size, c.data.micro_batches = FLAGS.max_length, FLAGS.batch_size, 1
    c.mesh.fsdp = 1
    c.lora.rank = FLAGS.lora_rank if lora else 0
    c.loss = dict(name="bradley_terry", center_coef=0.01, ensemble_size=FLAGS.members if ensemble else 1, trunk=trunk)
    return parse_config(c)


def worker(name: str, out_path: str) -> None:
    import jax
    import numpy as np

    from align_jax.training import step as S
    from align_jax.training.loop import build_state, build_task_loss, load, release_free_memory

    cfg = row_config(name)
    mesh, lm = load(cfg)
    task_loss, _ = build_task_loss(cfg, lm.tokenizer)
    spec, state, state_sh = build_state(cfg, lm, mesh, task_loss)
    vocab = lm.model.cfg.vocab_size
    del lm
    release_free_memory()
    rng = np.random.default_rng(0)
    shape = (1, FLAGS.batch_size, FLAGS.max_length)  # [A, B, L]
    batch = {}
    for side in ("chosen", "rejected"):
        batch[f"{side}_tokens"] = rng.integers(3, vocab, shape).astype(np.int32)
        batch[f"{side}_positions"] = np.broadcast_to(np.arange(shape[2], dtype=np.int32), shape).copy()
        batch[f"{side}_segment_ids"] = np.ones(shape, np.int32)
        batch[f"{side}_loss_mask"] = np.ones(shape, np.int32)
    batch_sh = S.batch_shardings(batch, mesh)
    batch = jax.tree.map(jax.device_put, batch, batch_sh)

    out: dict[str, Any] = {"members": spec.members or int(dict(cfg.loss_options)["ensemble_size"]),
                           "trunk": dict(cfg.loss_options)["trunk"], "lora_rank": cfg.lora.rank}
    out["trainable_params"] = int(sum(x.size for x in jax.tree.leaves(state.params)))
    out["state_mib"] = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
    t = time.perf_counter()
    compiled = S.compile_train_step(spec, state_sh, batch_sh, mesh).lower(state, batch).compile()
    out["compile_s"] = time.perf_counter() - t
    memory = compiled.memory_analysis()
    if memory is not None:
        fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
        out["xla"] = {f.removesuffix("_size_in_bytes") + "_mib": getattr(memory, f) / 2**20 for f in fields}
        x = out["xla"]
        out["xla"]["peak_estimate_mib"] = x["argument_mib"] + x["output_mib"] + x["temp_mib"] - x["alias_mib"]
    out["setup_rss_mib"] = status_mib("VmRSS")
    times = []
    for i in range(FLAGS.warmup + FLAGS.steps):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        if i >= FLAGS.warmup:
            times.append(time.perf_counter() - t)
    out["step_s"] = times
    out["step_median_s"] = statistics.median(times)
    out["loss"] = float(metrics["loss"])
    stats = jax.local_devices()[0].memory_stats()
    out["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None
    out["device"] = str(jax.local_devices()[0].device_kind)
    out["peak_self_mib"] = status_mib("VmHWM")
    Path(out_path).write_text(json.dumps(out))


def run_worker(name: str, out_path: Path) -> dict:
    """One row in a fresh subprocess: its result, wall time, peak RSS (``wait4``), load averages and the
    CPU other processes used meanwhile (``benchmarks.quiet``)."""
    passed = [f"--{k}={FLAGS[k].value}" for k in PASSED_FLAGS]
    cmd = [sys.executable, "-m", "benchmarks.rm_ensemble", f"--worker={name}", f"--worker_out={out_path}", *passed]
    t = time.perf_counter()
    with Contention() as contention:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"row {name} failed (exit {os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}")
    result = json.loads(out_path.read_text())
    result.update(process_s=time.perf_counter() - t, peak_rss_mib=usage.ru_maxrss / 1024, **contention.record())
    return result


def summary_table(results: dict[str, dict]) -> str:
    base = results.get("single")
    lines = ["| row | E | trainable params | step s (median) | vs single | XLA peak est. MiB | device peak MiB | "
             "peak RSS MiB | state MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        ratio = f"{r['step_median_s'] / base['step_median_s']:.2f}x" if base else ""
        device = "" if r["device_peak_mib"] is None else f"{r['device_peak_mib']:.1f}"
        xla = f"{r['xla']['peak_estimate_mib']:.1f}" if "xla" in r else ""
        lines.append(f"| {name} | {r['members']} | {r['trainable_params']:,} | {r['step_median_s']:.4f} | {ratio} | "
                     f"{xla} | {device} | {r['peak_rss_mib']:.0f} | {r['state_mib']:.1f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.worker:
        worker(FLAGS.worker, FLAGS.worker_out)
        return
    names = list(ROWS) if FLAGS.rows == ["all"] else FLAGS.rows
    unknown = sorted(set(names) - set(ROWS))
    if unknown:
        raise app.UsageError(f"unknown rows {unknown}; valid: {', '.join(ROWS)}")
    if FLAGS.steps < 3:
        raise app.UsageError("--steps must be >= 3 (a median of at least three)")
    for name in names:  # a bad combination fails before any row runs
        row_config(name)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rm_ensemble_") as tmp:
        for name in names:
            r = results[name] = run_worker(name, Path(tmp) / f"{name}.json")
            print(f"{name}: step {r['step_median_s']:.4f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, load "
                  f"{r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}, other processes {r['other_cores']} cores",
                  flush=True)
    import jax

    table = summary_table(results)
    print("\n" + table)
    out = Path(FLAGS.output_json or f"benchmarks/results/rm_ensemble_{FLAGS.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        config=str(CONFIG.relative_to(REPO_ROOT)), cpu_count=os.cpu_count(), jax=jax.__version__,
        flags={k: FLAGS[k].value for k in ("rows", *PASSED_FLAGS)},
        peak_definition="peak_rss_mib: ru_maxrss of the row's subprocess (wait4), model loading included; "
                        "xla.peak_estimate_mib: argument + output + temp - alias of the compiled step",
        results=results, table=table, command=" ".join(["python -m benchmarks.rm_ensemble", *sys.argv[1:]])),
        indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
