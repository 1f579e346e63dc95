"""The end-of-run report of an online RL run: held-out reward before / after, the reward-vs-KL
curve, the rollout / score / update time split, and greedy samples before and after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from align_jax.training.metrics_logging import read_metrics  # noqa: E402

SAMPLES_SHOWN = 6


def plot_reward_curves(workdir: Path) -> Path | None:
    """``rl_curves.png``: reward and KL to the reference per step, and reward against KL."""
    rows = read_metrics(workdir, split="train")
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    kl_key = "rl/kl_to_reference" if any("rl/kl_to_reference" in r for r in rows) else None
    evals = [(r["step"], r["eval/reward"]) for r in read_metrics(workdir, split="eval") if "eval/reward" in r]
    fig = Figure(figsize=(12, 3.4))
    ax = fig.add_subplot(1, 3, 1)
    ax.plot(steps, [r.get("reward", float("nan")) for r in rows], "-", label="train (sampled)")
    if evals:
        ax.plot(*zip(*evals), "o", label="held-out (greedy)")
    ax.set_title("reward")
    ax.set_xlabel("step")
    ax.legend()
    ax = fig.add_subplot(1, 3, 2)
    if kl_key:
        ax.plot(steps, [r.get(kl_key, float("nan")) for r in rows], "-")
        ax.set_title("KL(policy || reference) per token")
    else:
        ax.plot(steps, [r.get("rl/entropy", float("nan")) for r in rows], "-")
        ax.set_title("policy entropy per token (no reference)")
    ax.set_xlabel("step")
    ax = fig.add_subplot(1, 3, 3)
    x_key = kl_key or "rl/entropy"
    ax.scatter([r.get(x_key, float("nan")) for r in rows], [r.get("reward", float("nan")) for r in rows],
               c=steps, cmap="viridis", s=12)
    ax.set_xlabel("KL to reference" if kl_key else "entropy")
    ax.set_ylabel("reward")
    ax.set_title("reward vs " + ("KL" if kl_key else "entropy") + " (colour = step)")
    fig.tight_layout()
    path = workdir / "rl_curves.png"
    fig.savefig(path, dpi=90)
    return path


def _samples(workdir: Path, name: str) -> list[dict]:
    path = workdir / name
    return json.loads(path.read_text()) if path.exists() else []


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|").replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_rl_report(cfg: Any, workdir: str | Path, result: dict[str, Any]) -> Path:
    workdir = Path(workdir)
    rl = cfg.rl
    lines = [
        f"# {cfg.train.task} run: {cfg.loss_name} loss, {rl.advantage} advantages, rewards {rl.rewards} "
        f"on {cfg.data.source}",
        "",
        f"{cfg.train.steps} steps x {rl.prompts_per_step} prompts x {rl.group_size} samples, "
        f"{rl.max_new_tokens} new tokens, temperature {rl.temperature}, KL coef {rl.kl_coef} ({rl.kl_estimator} in "
        f"the {rl.kl_in}), {rl.epochs} epoch(s) x {rl.minibatches} minibatch(es).",
        "",
        "## Held-out reward (greedy)",
        "",
        "| metric | before | after |",
        "|---|---|---|",
    ]
    before, after = result.get("before") or {}, result.get("final") or {}
    for key in sorted(k for k in after if k.startswith("eval/")):
        b = f"{before[key]:.4f}" if key in before else ""
        lines.append(f"| `{key}` | {b} | {after[key]:.4f} |")
    rows = read_metrics(workdir, split="train")
    if rows:
        keys = ("perf/rollout_seconds", "perf/score_seconds", "perf/logps_seconds", "perf/update_seconds")
        means = {k: sum(r.get(k, 0.0) for r in rows[1:] or rows) / max(len(rows[1:] or rows), 1) for k in keys}
        total = sum(means.values()) or 1.0
        lines += ["", "## Time per step (after the first, which compiles)", "",
                  "| rollout | score | reference / old log-probs | update |", "|---|---|---|---|",
                  "| " + " | ".join(f"{means[k]:.2f} s ({100 * means[k] / total:.0f}%)" for k in keys) + " |",
                  ""]
        updated = [r for r in rows if "rl/ratio_mean_epoch0" in r]
        if updated:
            lines.append(f"First-epoch importance ratio (sampler vs trainer log-probs) over {len(updated)} updated "
                         f"steps: mean {sum(r['rl/ratio_mean_epoch0'] for r in updated) / len(updated):.6f}, max "
                         f"{max(r['rl/ratio_max_epoch0'] for r in updated):.6f}.")
        skipped = len(rows) - len(updated)
        if skipped:
            lines.append(f"{skipped} step(s) had nothing to learn from (every group's rewards equal or failed) "
                         "and made no update.")
    curves = plot_reward_curves(workdir)
    if curves:
        lines += ["", f"![reward curves]({curves.name})"]
    pairs = list(zip(_samples(workdir, "samples_before.json"), _samples(workdir, "samples_after.json")))
    if pairs:
        lines += ["", "## Greedy samples on held-out prompts", "", "| prompt | before (reward) | after (reward) |",
                  "|---|---|---|"]
        for b, a in pairs[:SAMPLES_SHOWN]:
            lines.append(f"| {_cell(b['prompt'], 120)} | {_cell(b['completion'])} ({b['reward']:.2f}) | "
                         f"{_cell(a['completion'])} ({a['reward']:.2f}) |")
    path = workdir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
