"""The DPO step race with every row alone in its own process, rows alternating, ``--repeats`` rounds.

    python -m benchmarks.dpo_race [--workload=fixed,realistic] [--repeats=3] [--steps=3] [--warmup=1]
        [--variants=shared_prefix_grouped_remat_attention,trl,trl_precomputed] [--precision=fp32]
        [--output_json=benchmarks/results/dpo_race_cpu.json]

``benchmarks/dpo_step.py`` runs all its rows in one process, TRL's steps interleaved with ours. That
is not what a user runs (one framework per process), and it is not neutral: measured on 2026-12-08,
our fixed step took 10.94 s alone in its process and 14.97 s sharing one with TRL (17 GB of two
frameworks' tensors and threads), while TRL's moved 2% (issue #28). So this driver starts one
``python -m benchmarks.dpo_step --variants=<row> --frameworks=<its framework>`` per row and
repeat, in the order ``row 1, row 2, ..., row 1, row 2, ...``, so a slow spell of the shared VM
hits every row alike, and merges their JSON:

* per workload and row: the median over processes of tokens/s, with min, max and spread
  ((max - min) / median), the median step time over every timed step, and MFU and hardware
  utilisation against one peak, the largest fp32 (or bf16) matmul rate any process measured
  (``jnp.dot`` and ``torch.mm``, each at its start and end);
* ``vs_trl`` (TRL defaults) and ``vs_best_trl`` (the faster of ``trl`` and ``trl_precomputed``);
* each row's peak RSS: the largest ``wait4`` maximum resident set of its processes (a process runs
  every workload, so this is the larger workload's figure);
* the quiet-machine record of every process (load before / after, other processes' cores) and
  ``busy_machine`` if any of its timed blocks was busy.

The children's own JSON files (every step time) are kept in the output's ``runs``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from absl import app, flags

from benchmarks.isolated import run_measured, schedule, workdir
TRL_ROWS = ("trl", "trl_precomputed")
PASSED_FLAGS = ("workload", "steps", "warmup", "precision", "pairs", "prompt_len", "completion_len", "hh_rlhf",
                "max_length", "num_batches", "group_multiple", "pad_multiple", "pack_row_length", "learning_rate",
                "peak_size", "seed")


def define_flags() -> None:
    """``benchmarks.dpo_step``'s flags (its import defines them; the ones in ``PASSED_FLAGS`` go to every
    child), this driver's defaults for three of them, and ``--repeats``."""
    import benchmarks.dpo_step  # noqa: F401  (defines the workload, precision and data flags)

    flags.DEFINE_integer("repeats", 3, "processes per row, rows alternating")
    flags.FLAGS.set_default("variants", ["shared_prefix_grouped_remat_attention", *TRL_ROWS])
    flags.FLAGS.set_default("steps", 3)
    flags.FLAGS.set_default("output_json", "benchmarks/results/dpo_race_cpu.json")


def framework_of(row: str) -> str:
    return "trl" if row in TRL_ROWS else "align_jax"


def child_args(row: str, out: Path, passed: dict) -> list[str]:
    """``benchmarks.dpo_step`` arguments for one row: its variant and framework, and the passed flags."""
    value = lambda v: ",".join(v) if isinstance(v, list) else v  # noqa: E731
    return ["-m", "benchmarks.dpo_step", f"--variants={row}", f"--frameworks={framework_of(row)}",
            f"--output_json={out}"] + [f"--{k}={value(v)}" for k, v in passed.items()]


def run_child(row: str, out: Path, log_path: Path, passed: dict) -> dict:
    """``benchmarks.dpo_step`` for one row in a fresh process: its JSON plus wall time and peak RSS."""
    measured = run_measured(child_args(row, out, passed), log_path)
    result = json.loads(out.read_text())
    result.update(row=row, **measured)
    return result


def merge(children: list[dict]) -> dict:
    """Per workload, per row: medians over processes and one shared peak (see the module docstring)."""
    peak = max(v for c in children for v in c["matmul_peak_flops"].values())
    by_row: dict[str, dict[str, list[tuple[dict, dict]]]] = {}
    for child in children:
        for workload, rows in child["results"].items():
            for r in rows:
                if r["row"] == child["row"] and "tokens_per_s" in r:
                    by_row.setdefault(workload, {}).setdefault(r["row"], []).append((r, child))
    out: dict[str, dict] = {}
    for workload, rows in by_row.items():
        summary = {}
        for name, runs in rows.items():
            tps = [r["tokens_per_s"] for r, _ in runs]
            median = statistics.median(tps)
            summary[name] = dict(
                framework=framework_of(name),
                processes=len(runs),
                tokens_per_s=median,
                tokens_per_s_min=min(tps),
                tokens_per_s_max=max(tps),
                spread=(max(tps) - min(tps)) / median,
                run_tokens_per_s=tps,
                step_s_median=statistics.median(s for r, _ in runs for s in r["step_s"]),
                mfu=statistics.median(r["model_flops_per_s"] for r, _ in runs) / peak,
                hardware_utilisation=statistics.median(r["computed_flops_per_s"] for r, _ in runs) / peak,
                counted_tokens_per_step=runs[0][0]["counted_tokens_per_step"],
                computed_tokens_per_step=runs[0][0]["computed_tokens_per_step"],
                first_call_s=[r["first_call_s"] for r, _ in runs],
                peak_rss_process_mib=max(c["peak_rss_process_mib"] for _, c in runs),
                other_cores=[r.get("other_cores") for r, _ in runs],
                busy_machine=any(r.get("busy_machine", False) for r, _ in runs),
            )
        trl = summary.get("trl", {}).get("tokens_per_s")
        best = max((summary[n]["tokens_per_s"] for n in TRL_ROWS if n in summary), default=None)
        for s in summary.values():
            if trl:
                s["vs_trl"] = s["tokens_per_s"] / trl
            if best:
                s["vs_best_trl"] = s["tokens_per_s"] / best
        out[workload] = summary
    return dict(peak_used=peak, workloads=out)


def markdown(merged: dict, dtype: str) -> str:
    ratio = lambda s, k: f"{s[k]:.2f}x" if k in s else "-"  # noqa: E731
    lines = [
        f"Each row alone in its process, rows alternating; medians over processes. Peak ({dtype} matmul, the "
        f"largest any process measured) {merged['peak_used'] / 1e9:.1f} GFLOP/s.",
        "",
        "| workload | row | tokens/s (median) | min - max | vs TRL | vs best TRL | step s (median) | MFU | HW util | "
        "peak RSS MiB | other cores | busy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, rows in merged["workloads"].items():
        for name, s in rows.items():
            cores = ", ".join("?" if c is None else f"{c:.2f}" for c in s["other_cores"])
            lines.append(
                f"| {workload} | {name} | {s['tokens_per_s']:.1f} | {s['tokens_per_s_min']:.1f} - "
                f"{s['tokens_per_s_max']:.1f} | {ratio(s, 'vs_trl')} | {ratio(s, 'vs_best_trl')} | "
                f"{s['step_s_median']:.2f} | {100 * s['mfu']:.1f}% | {100 * s['hardware_utilisation']:.1f}% | "
                f"{s['peak_rss_process_mib']:.0f} | {cores} | {'BUSY' if s['busy_machine'] else 'no'} |")
    return "\n".join(lines)


def main(argv):
    del argv
    from benchmarks.dpo_step import JAX_VARIANTS

    FLAGS = flags.FLAGS
    rows = list(FLAGS.variants)
    unknown = sorted(set(rows) - set(JAX_VARIANTS + TRL_ROWS))
    if unknown:
        raise app.UsageError(f"unknown variants {unknown}; valid: {', '.join(JAX_VARIANTS + TRL_ROWS)}")
    if FLAGS.repeats < 1 or FLAGS.steps < 1:
        raise app.UsageError("--repeats and --steps must be >= 1")
    ignored = [k for k in ("model", "model_override_layers", "frameworks") if FLAGS[k].present]
    if ignored:
        raise app.UsageError(f"--{', --'.join(ignored)}: not for the race (SmolLM2, each row's own framework); "
                             "use benchmarks.dpo_step")
    passed = {k: FLAGS[k].value for k in PASSED_FLAGS}
    passed["hh_rlhf"] = str(Path(passed["hh_rlhf"]).resolve())  # the children run from the repository root
    load_start = os.getloadavg()
    print(f"load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
    children = []
    tmp = workdir("dpo_race_")
    print(f"children's JSON and logs: {tmp} (deleted after a good run)", flush=True)
    for repeat, row in schedule(rows, FLAGS.repeats):
        out, log_path = tmp / f"{row}_{repeat}.json", tmp / f"{row}_{repeat}.log"
        child = run_child(row, out, log_path, passed)
        child["repeat"] = repeat
        children.append(child)
        got = {w: next((f"{r['tokens_per_s']:.1f} tok/s" for r in rs if r["row"] == row and "tokens_per_s" in r),
                       "not run") for w, rs in child["results"].items()}
        print(f"repeat {repeat + 1}/{FLAGS.repeats} {row}: {got}; process {child['process_s']:.0f}s, "
              f"peak RSS {child['peak_rss_process_mib']:.0f} MiB", flush=True)
    shutil.rmtree(tmp)
    merged = merge(children)
    table = markdown(merged, "bf16" if FLAGS.precision == "bf16" else "fp32")
    print("\n" + table)
    out = Path(FLAGS.output_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        **merged, precision=FLAGS.precision, rows=rows, repeats=FLAGS.repeats, cpu_count=os.cpu_count(),
        load_start=list(load_start), load_end=list(os.getloadavg()), flags=passed,
        versions={k: v for c in children for k, v in c.get("versions", {}).items()},
        peaks_by_process=[dict(row=c["row"], repeat=c["repeat"], **c["matmul_peak_flops"]) for c in children],
        table=table, command=" ".join(sys.argv), runs=children), indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
