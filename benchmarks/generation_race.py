"""The generation race with each side of each row alone in its own process, alternating.

    python -m benchmarks.generation_race [--batch_sizes=1,16,64] [--rollout] [--repeats=3] [--runs_per_process=2]
        [--output_json=benchmarks/results/generation_race_cpu.json]

``benchmarks/generation.py`` times ours and ``transformers.generate`` in one process, alternating.
This driver starts one ``python -m benchmarks.generation`` per side (``--nohf`` / ``--noours``) and
row (one batch size, or the rollout row: 8 chat prompts x 8 samples at temperature 1, EOS on), in
the order ``row 1 ours, row 1 HF, row 2 ours, ..., row 1 ours, ...`` for ``--repeats`` rounds, and
merges their JSON. Per row and side: the median over processes of tokens/s (each process's own
figure is the median of its ``--runs_per_process`` timed runs after a compile / warm-up call), min
and max, the fraction of the compute ceiling against one peak (the largest fp32 ``jnp.dot`` rate any
process measured), and the process's peak RSS (``wait4``), so every row has its own memory figure
for both sides. The children's JSON is kept under ``runs``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import sys
from pathlib import Path

from absl import app, flags

from benchmarks.isolated import run_measured, schedule, workdir

SIDES = ("ours", "hf")


def define_flags() -> None:
    flags.DEFINE_list("batch_sizes", ["1", "16", "64"], "greedy rows: batch sizes (64-token prompts)")
    flags.DEFINE_bool("rollout", True, "also the rollout row: 8 chat prompts x 8 samples, temperature 1, EOS on")
    flags.DEFINE_integer("repeats", 3, "processes per side and row, alternating")
    flags.DEFINE_integer("runs_per_process", 2, "timed runs in each process (benchmarks.generation --repeats)")
    flags.DEFINE_integer("prompt_len", 64, "greedy rows: prompt tokens")
    flags.DEFINE_integer("new_tokens", 128, "greedy rows: new tokens per sequence (EOS ignored)")
    flags.DEFINE_integer("rollout_new_tokens", 128, "rollout row: max new tokens per sample")
    flags.DEFINE_string("output_json", "benchmarks/results/generation_race_cpu.json", "where to write the results")


def child_args(row: str, side: str, out: Path, flag_values: dict) -> list[str]:
    """``benchmarks.generation`` arguments for one side of one row (``row``: a batch size or "rollout")."""
    rows = ["--batch_sizes=", "--rollout"] if row == "rollout" else [f"--batch_sizes={row}", "--norollout"]
    return ["-m", "benchmarks.generation", *rows, "--nohf" if side == "ours" else "--noours",
            f"--repeats={flag_values['runs_per_process']}", f"--prompt_len={flag_values['prompt_len']}",
            f"--new_tokens={flag_values['new_tokens']}", f"--rollout_new_tokens={flag_values['rollout_new_tokens']}",
            f"--output_json={out}"]


def merge(children: list[dict]) -> dict:
    """Per row and side: medians over processes, one shared peak, ours / HF, each side's peak RSS."""
    peak = max(c["matmul_peak_flops"] for c in children)
    params = children[0]["params"]
    got: dict[str, dict[str, list[tuple[float, dict, dict]]]] = {}
    for c in children:
        for r in c["rows"]:
            rate = r[f"{c['side']}_tok_s"]
            if rate is not None and not math.isnan(rate):
                got.setdefault(str(r["batch"]), {}).setdefault(c["side"], []).append((rate, r, c))
    rows = {}
    for row, sides in got.items():
        out = {}
        for side, runs in sides.items():
            rates = [rate for rate, _, _ in runs]
            median = statistics.median(rates)
            out[side] = dict(
                processes=len(runs), tok_s=median, tok_s_min=min(rates), tok_s_max=max(rates),
                spread=(max(rates) - min(rates)) / median, run_tok_s=rates,
                compute_fraction=median * 2 * params / peak,
                peak_rss_process_mib=max(c["peak_rss_process_mib"] for _, _, c in runs),
                first_call_s=[r["ours_first_call_s"] for _, r, _ in runs] if side == "ours" else None,
                other_cores=[r.get("other_cores") for _, r, _ in runs],
                busy_machine=any(r.get("busy_machine", False) for _, r, _ in runs),
            )
        if "ours" in out and "hf" in out:
            out["ratio"] = out["ours"]["tok_s"] / out["hf"]["tok_s"]
        rows[row] = out
    return dict(peak_used=peak, params=params, rows=rows)


def markdown(merged: dict) -> str:
    lines = [
        f"Each side of each row alone in its process, alternating; medians over processes. fp32 matmul peak (the "
        f"largest any process measured) {merged['peak_used'] / 1e9:.1f} GFLOP/s.",
        "",
        "| row | ours tok/s (min - max) | HF tok/s (min - max) | ratio | ours % of peak | HF % of peak | "
        "peak RSS MiB ours / HF | busy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, r in merged["rows"].items():
        cell = lambda s: f"{r[s]['tok_s']:.1f} ({r[s]['tok_s_min']:.1f} - {r[s]['tok_s_max']:.1f})" if s in r else "-"  # noqa: E731
        frac = lambda s: f"{100 * r[s]['compute_fraction']:.1f}%" if s in r else "-"  # noqa: E731
        rss = " / ".join(f"{r[s]['peak_rss_process_mib']:.0f}" if s in r else "-" for s in SIDES)
        busy = "BUSY" if any(r[s]["busy_machine"] for s in SIDES if s in r) else "no"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        name = "rollout 8x8" if row == "rollout" else f"b{row}"
        lines.append(f"| {name} | {cell('ours')} | {cell('hf')} | {ratio} | {frac('ours')} | {frac('hf')} | "
                     f"{rss} | {busy} |")
    return "\n".join(lines)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    rows = [str(int(b)) for b in FLAGS.batch_sizes] + ["rollout"] * FLAGS.rollout
    if not rows or FLAGS.repeats < 1 or FLAGS.runs_per_process < 1:
        raise app.UsageError("nothing to run: give --batch_sizes or --rollout, and --repeats, --runs_per_process >= 1")
    values = {k: FLAGS[k].value for k in ("runs_per_process", "prompt_len", "new_tokens", "rollout_new_tokens")}
    load_start = os.getloadavg()
    print(f"load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)
    children = []
    tmp = workdir("generation_race_")
    print(f"children's JSON and logs: {tmp} (deleted after a good run)", flush=True)
    for repeat, (row, side) in schedule([(row, side) for row in rows for side in SIDES], FLAGS.repeats):
        out, log_path = tmp / f"{row}_{side}_{repeat}.json", tmp / f"{row}_{side}_{repeat}.log"
        measured = run_measured(child_args(row, side, out, values), log_path)
        child = json.loads(out.read_text())
        child.update(side=side, row=row, repeat=repeat, **measured)
        children.append(child)
        rate = child["rows"][0][f"{side}_tok_s"]
        print(f"repeat {repeat + 1}/{FLAGS.repeats} {row} {side}: {rate:.1f} tok/s; process "
              f"{child['process_s']:.0f}s, peak RSS {child['peak_rss_process_mib']:.0f} MiB", flush=True)
    shutil.rmtree(tmp)
    merged = merge(children)
    table = markdown(merged)
    print("\n" + table)
    out = Path(FLAGS.output_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        **merged, repeats=FLAGS.repeats, flags=values, cpu_count=os.cpu_count(), load_start=list(load_start),
        load_end=list(os.getloadavg()), table=table, command=" ".join(sys.argv), runs=children), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
