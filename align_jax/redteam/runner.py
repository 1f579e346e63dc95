"""The red-team runner: attacks x behaviours, judged, with attack-success rates per attack and per
hazard category (the 14 of ``safety.refusal.taxonomy``), resumable.

Behaviours are harmful requests from a refusal_direction-style JSON file (``instruction``,
``category``; the category maps to S1-S14). For each attack the behaviours run in batches: build the
attack prompts, answer them greedily with the attacked model (chat template), judge, and append one
record per behaviour to ``records.jsonl`` (flushed per batch). Run the same command again and the
(attack, behaviour) pairs already recorded are skipped. A searching attack that keeps a trace
(``pair``: every round's candidates, responses and scores) adds it to the record as ``trace``. At
the end: ``summary.json`` / ``summary.md`` (ASR with Wilson 95% CIs per attack, per family, per
attack x hazard), ``asr_heatmap.png`` and ``successes.jsonl`` (the prompts that worked: the next
round's training data).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Mapping

import numpy as np

from align_jax.evals.runner import chat_prompt_ids, generate_greedy
from align_jax.redteam.attacks import attack_family, attack_names, build_attack
from align_jax.redteam.judges import JUDGES, build_judge
from align_jax.redteam.pair import pair_config
from align_jax.registry import did_you_mean
from align_jax.safety.refusal.metrics import wilson_interval
from align_jax.safety.refusal.taxonomy import HAZARD_CODES, map_categories


@dataclasses.dataclass(frozen=True)
class RedTeamConfig:
    model_name: str | None
    model_path: str | None
    data_path: str  # harmful behaviours: a JSON list of {instruction, category}
    limit: int  # behaviours used (0 = all), a seeded sample
    seed: int
    attacks: tuple[str, ...]
    gcg: Mapping[str, Any]  # options of the gcg attack
    pair: Mapping[str, Any]  # options of the pair attack (PAIRConfig's fields; optional in a config)
    judge: str
    judge_options: Mapping[str, Any]
    max_new_tokens: int
    batch_size: int


def parse_config(c) -> RedTeamConfig:
    """A RedTeamConfig from an ml_collections config; names are checked before any model loads."""
    known = {f.name for f in dataclasses.fields(RedTeamConfig)} - {"model_name", "model_path"} | {"model"}
    unknown = sorted(set(c.keys()) - known)
    if unknown:
        raise KeyError(f"unknown red-team config key(s) {unknown}; valid: {sorted(known)}"
                       f"{did_you_mean(unknown[0], sorted(known))}")
    valid = attack_names()
    for a in c.attacks:
        if a not in valid:
            raise KeyError(f"unknown attack {a!r}; valid: {', '.join(valid)}{did_you_mean(a, valid)}")
    if c.judge not in JUDGES:
        raise KeyError(f"unknown judge {c.judge!r}; valid: {', '.join(JUDGES)}{did_you_mean(c.judge, list(JUDGES))}")
    if (c.model.get("name") is None) == (c.model.get("path") is None):
        raise ValueError("set exactly one of model.name and model.path")
    if c.batch_size < 1 or c.max_new_tokens < 1 or c.limit < 0:
        raise ValueError("batch_size and max_new_tokens must be >= 1 and limit >= 0")
    pair = dict(c.get("pair") or {})
    pair_config(pair)  # its errors too come before the model loads
    return RedTeamConfig(model_name=c.model.get("name"), model_path=c.model.get("path"), data_path=c.data_path,
                         limit=int(c.limit), seed=int(c.seed), attacks=tuple(c.attacks), gcg=dict(c.gcg), pair=pair,
                         judge=c.judge, judge_options=dict(c.judge_options), max_new_tokens=int(c.max_new_tokens),
                         batch_size=int(c.batch_size))


def load_behaviours(path: str | pathlib.Path, limit: int, seed: int) -> list[dict]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no behaviours file at {path} (the project's copy: "
                                f"../shared/data/refusal_direction/harmful_test.json)")
    rows = json.loads(path.read_text())
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str):
            raise ValueError(f"{path}: record {i} has no string 'instruction'")
    hazards = map_categories([r.get("category") for r in rows])
    order = np.random.default_rng([seed, len(rows)]).permutation(len(rows))
    order = order[:limit] if limit else order
    return [{"id": int(i), "behaviour": rows[i]["instruction"], "category": rows[i].get("category"),
             "hazard": hazards[i]} for i in sorted(order)]


def _rate(flags: list[bool]) -> dict:
    k, n = int(sum(flags)), len(flags)
    if n == 0:
        return {"asr": None, "k": 0, "n": 0}
    lo, hi = wilson_interval(k, n)
    return {"asr": k / n, "k": k, "n": n, "wilson_low": lo, "wilson_high": hi}


def summarize(records: list[dict], attacks: tuple[str, ...]) -> dict:
    out = {"per_attack": {}, "per_family": {}, "per_attack_hazard": {}}
    for a in attacks:
        rs = [r for r in records if r["attack"] == a]
        out["per_attack"][a] = _rate([r["success"] for r in rs])
        out["per_attack_hazard"][a] = {h: _rate([r["success"] for r in rs if r["hazard"] == h])
                                       for h in HAZARD_CODES if any(r["hazard"] == h for r in rs)}
    for fam in sorted({r["family"] for r in records}):
        out["per_family"][fam] = _rate([r["success"] for r in records if r["family"] == fam])
    return out


def run(cfg: RedTeamConfig, workdir: str | pathlib.Path, *, log=print) -> dict:
    from align_jax.models.registry import load_model

    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    behaviours = load_behaviours(cfg.data_path, cfg.limit, cfg.seed)
    records_path = workdir / "records.jsonl"
    records = [json.loads(l) for l in records_path.read_text().splitlines() if l.strip()] if records_path.exists() else []
    done = {(r["attack"], r["id"]) for r in records}
    if done:
        log(f"resuming: {len(done)} (attack, behaviour) pairs already in {records_path}")
    lm = load_model(cfg.model_name) if cfg.model_name else load_model(None, cfg.model_path)
    judge = build_judge(cfg.judge, lm, **cfg.judge_options)
    t0 = time.time()
    with open(records_path, "a") as fh:
        for name in cfg.attacks:
            attack = build_attack(name, **{"gcg": cfg.gcg, "pair": cfg.pair}.get(name, {}))
            traces = getattr(attack, "results", None)  # behaviour -> the search's result (pair)
            family = attack_family(name)
            todo = [b for b in behaviours if (name, b["id"]) not in done]
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start:start + cfg.batch_size]
                prompts = [attack(b["behaviour"], lm) for b in batch]
                gens = generate_greedy(lm, [chat_prompt_ids(lm, p) for p in prompts], max_new_tokens=cfg.max_new_tokens,
                                       batch_size=cfg.batch_size)
                responses = [g.text for g in gens]
                success = judge(prompts, responses)
                for b, p, r, s in zip(batch, prompts, responses, success):
                    rec = {**b, "attack": name, "family": family, "prompt": p, "response": r, "success": bool(s)}
                    if traces is not None and b["behaviour"] in traces:
                        rec["trace"] = traces.pop(b["behaviour"]).trace_json()
                    records.append(rec)
                    fh.write(json.dumps(rec) + "\n")
                fh.flush()
                log(f"{name}: {start + len(batch)}/{len(todo)} behaviours, ASR so far "
                    f"{np.mean([r['success'] for r in records if r['attack'] == name]):.3f} ({time.time() - t0:.0f} s)")
    summary = {"config": dataclasses.asdict(cfg), "n_behaviours": len(behaviours),
               **summarize([r for r in records if r["id"] in {b["id"] for b in behaviours}], cfg.attacks)}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    (workdir / "summary.md").write_text(summary_markdown(summary))
    with open(workdir / "successes.jsonl", "w") as fh:
        for r in records:
            if r["success"]:
                fh.write(json.dumps({k: r[k] for k in ("attack", "id", "behaviour", "hazard", "prompt")}) + "\n")
    plot_heatmap(summary, workdir / "asr_heatmap.png")
    return summary


def summary_markdown(summary: dict) -> str:
    lines = [f"# Red team: {summary['n_behaviours']} behaviours, judge `{summary['config']['judge']}`", "",
             "| attack | ASR | 95% CI (Wilson) | n |", "|---|---|---|---|"]
    for a, r in summary["per_attack"].items():
        if r["n"]:
            lines.append(f"| `{a}` | {r['asr']:.3f} | [{r['wilson_low']:.3f}, {r['wilson_high']:.3f}] | {r['n']} |")
    return "\n".join(lines) + "\n"


def plot_heatmap(summary: dict, path: pathlib.Path) -> None:
    from matplotlib.figure import Figure  # a standalone figure: the caller's pyplot backend is left alone

    attacks = list(summary["per_attack_hazard"])
    hazards = [h for h in HAZARD_CODES if any(h in summary["per_attack_hazard"][a] for a in attacks)]
    grid = np.full((len(attacks), len(hazards)), np.nan)
    for i, a in enumerate(attacks):
        for j, h in enumerate(hazards):
            cell = summary["per_attack_hazard"][a].get(h)
            if cell and cell["n"]:
                grid[i, j] = cell["asr"]
    fig = Figure(figsize=(1.0 * len(hazards) + 3, 0.45 * len(attacks) + 1.5))
    ax = fig.subplots()
    im = ax.imshow(grid, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(hazards)), hazards)
    ax.set_yticks(range(len(attacks)), attacks)
    for i in range(len(attacks)):
        for j in range(len(hazards)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.03, label="attack success rate")
    ax.set_title(f"ASR by attack and hazard ({summary['n_behaviours']} behaviours)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
