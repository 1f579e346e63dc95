"""The end-of-run report: held-out metrics before vs after, training curves, and for the
checkable-instruction preference set, instruction compliance of greedy generations before/after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from align_jax.training.config import RunConfig  # noqa: E402
from align_jax.training.metrics_logging import read_metrics  # noqa: E402

COMPLIANCE_PROMPTS = 32  # per split; greedy generation dominates the report's time on CPU
CURVES = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected", "sft/nll", "rm/accuracy",
          "conf/brier", "conf/expected_confidence")


# Training metrics are logged every step or few: a line. Evaluations are a handful of points: markers,
# joined by a thin dotted line only as a guide (a solid line would invent values between them).
SPLIT_STYLES = {
    "train": dict(linestyle="-", linewidth=1.2),
    "eval": dict(linestyle=":", linewidth=0.7, marker="o", markersize=5),
}


def curves_figure(rows: list[dict]) -> Figure | None:
    """One panel per metric of ``CURVES`` present in ``rows`` (metrics.jsonl records)."""
    names = [n for n in CURVES if any(n in r for r in rows)]
    if not names:
        return None
    fig = Figure(figsize=(4 * len(names), 3.2))
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        for split, style in SPLIT_STYLES.items():
            pts = [(r["step"], r[name]) for r in rows if r.get("split") == split and name in r]
            pts += [(r["step"], r[f"eval/{name}"]) for r in rows if r.get("split") == split and f"eval/{name}" in r]
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, label=split, **style)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    return fig


def plot_curves(workdir: Path) -> Path | None:
    fig = curves_figure(read_metrics(workdir))
    if fig is None:
        return None
    path = workdir / "curves.png"
    fig.savefig(path, dpi=90)
    return path


def _table(before: dict | None, after: dict) -> list[str]:
    lines = ["| metric | before | after |", "|---|---|---|"]
    for k in sorted(after):
        if not k.startswith("eval/"):
            continue
        b = "" if before is None or k not in before else f"{before[k]:.4f}"
        lines.append(f"| `{k}` | {b} | {after[k]:.4f} |")
    return lines


def write_report(cfg: RunConfig, workdir: str | Path, result: dict[str, Any]) -> Path:
    """``workdir/report.md`` for the run's task (online RL runs: :mod:`align_jax.training.rl_report`)."""
    if cfg.task.online:
        from align_jax.training.rl_report import write_rl_report

        return write_rl_report(cfg, workdir, result)
    workdir = Path(workdir)
    truncation = f"; truncation {result['truncation']}" if "truncation" in result else ""
    lines = [
        f"# {cfg.train.task} run: {cfg.loss_name} on {cfg.data.source}",
        "",
        f"model `{cfg.model.name or cfg.model.path}`, {cfg.train.steps} steps, batch {cfg.data.batch_size}, "
        f"lr {cfg.optimizer.learning_rate}, reference `{cfg.reference.mode}`, LoRA rank {cfg.lora.rank}; "
        f"{result['train_examples']} train / {result['eval_examples']} held-out examples{truncation}.",
        "",
        "## Held-out metrics",
        "",
        *_table(result.get("before"), result["final"]),
        "",
    ]
    if cfg.data.source == "checkable_pairs" and cfg.train.task == "preference":
        lines += _compliance_section(result)
    curves = plot_curves(workdir)
    if curves is not None:
        lines += ["## Training curves", "", f"![curves]({curves.name})", ""]
    if "export" in result:
        lines += [f"Policy exported to `{result['export']}` (opens with `transformers.AutoModelForCausalLM`).", ""]
    path = workdir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _compliance_section(result: dict[str, Any]) -> list[str]:
    from flax import nnx

    from align_jax.data.checkable_pairs import build_checkable_pairs
    from align_jax.evals.instruction_compliance import compliance_report, format_report_markdown

    lm = result["loaded"]
    tuned = type(lm)(nnx.merge(result["graphdef"], result["policy_state"]), lm.tokenizer, lm.chat_template, lm.source)
    lines = ["## Instruction compliance of greedy answers (held-out facts)", ""]
    summary = {}
    for split in ("test", "test_ood"):
        examples = [p.example for p in build_checkable_pairs(split)][:COMPLIANCE_PROMPTS]
        before = compliance_report(lm, examples, max_new_tokens=40)
        after = compliance_report(tuned, examples, max_new_tokens=40)
        summary[split] = {"before": before, "after": after}
        lines += [f"### split `{split}` ({len(examples)} prompts)", "", format_report_markdown(before, after), ""]
    (Path(result["export"]).parent if "export" in result else Path(".")).joinpath("compliance.json").write_text(
        json.dumps(summary, indent=2, default=str)
    )
    return lines
