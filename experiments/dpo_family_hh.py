"""The DPO family head to head on HH-RLHF, same budget each (issue #26, row 2).

DPO (arXiv:2305.18290), IPO (arXiv:2310.12036), cDPO (DPO with label smoothing, arXiv:2305.18290's
note), SimPO (arXiv:2405.14734), ORPO (arXiv:2403.07691) and KTO (arXiv:2402.01306), each with its
registered default options (set explicitly: SimPO's beta is 2.0, the others' 0.1), trained from
SmolLM2-135M-Instruct on the same HH-RLHF harmless-base pairs in the same order for the same steps:
the script writes the proxy pairs once in a seeded order and every run reads them unshuffled. KTO
sees each pair as one desirable and one undesirable reply, adjacent, so its step k holds the same
pairs as the others' step k. The data split and the judge come from
``experiments/overoptimization_hh.py`` (run its ``data`` and ``rm`` stages first):

* training pairs: its proxy half (``proxy_pairs.jsonl``);
* held-out pairs: one pair for each of its 128 held-out prompts (``eval_pairs.jsonl``); no
  model here or there trained on these prompts;
* judge: its **gold** reward model, trained on the other half, which no policy here saw.

    python experiments/overoptimization_hh.py --workdir=runs/overopt_hh --stages=data,rm
    python experiments/dpo_family_hh.py --workdir=runs/dpo_family_hh --overopt_dir=runs/overopt_hh

Stages (each skipped when its outputs exist; ``--stages`` picks some):

1. ``train``: one engine run per method (``configs/dpo.py`` / ``configs/kto.py`` with the overrides of
   :func:`train_overrides`); the reference-based pairwise losses share one reference pass
   (``reference.cache_dir``).
2. ``judge``: for the base model and every method's export:
   - **held-out accuracy** on the held-out pairs (95% Wilson intervals), by two rewards computed the
     same way for every policy: DPO's implicit reward, log pi(y|x) - log pi_ref(y|x) (what DPO, IPO,
     cDPO and KTO optimise), and the mean token log-prob (what SimPO and ORPO optimise); each
     favours its own family, so the win rate is the main comparison;
   - **win rate against the base model**: greedy replies (``--reply_tokens``) to the held-out
     prompts, judged by the gold reward model; an identical reply is a tie (a half), and the
     wins / ties / losses are reported beside the rate and its 95% Wilson interval;
   - the mean gold reward and mean reply length (a longer reply can win a reward model's favour).
3. ``report``: ``report.md`` and ``results.json``, also each run's own last eval metrics.
"""

from __future__ import annotations

import json
import math
import pathlib
import shlex
import subprocess
import sys
from typing import Any, Mapping, Sequence

import numpy as np
from absl import app, flags

from align_jax.run_settings import check_names, check_same_settings, read_jsonl, run_stages, work_folder, write_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]
# method -> (engine task, loss name, reference mode); options: each loss's registered defaults, set
# explicitly (the base config's loss section carries beta=0.1, which would otherwise reach SimPO)
METHODS = {
    "dpo": ("preference", "dpo", "precomputed"),
    "ipo": ("preference", "ipo", "precomputed"),
    "cdpo": ("preference", "cdpo", "precomputed"),
    "simpo": ("preference", "simpo", "none"),
    "orpo": ("preference", "orpo", "none"),
    "kto": ("unpaired", "kto", "precomputed"),
}


def define_flags():
    """Defined only when run as a script (tests import this module beside align_jax.main)."""
    flags.DEFINE_string("workdir", "runs/dpo_family_hh", "one engine run per method, judgements, report")
    flags.DEFINE_string("overopt_dir", "runs/overopt_hh", "overoptimization_hh.py's workdir: pairs and the gold RM")
    flags.DEFINE_list("stages", ["train", "judge", "report"], "which stages to run")
    flags.DEFINE_list("methods", list(METHODS), "losses to compare")
    flags.DEFINE_string("model", "smollm2-135m-instruct", "registered model every method starts from")
    flags.DEFINE_integer("steps", 32, "optimizer steps per method (~10 min each on 2 cores)")
    flags.DEFINE_integer("batch", 8, "pairs per step (KTO: twice as many single replies, the same pairs)")
    flags.DEFINE_float("learning_rate", 5e-5, "peak learning rate (cosine, 5 warmup steps), every method")
    flags.DEFINE_integer("max_length", 128, "tokens per sequence in training (prompt + reply)")
    flags.DEFINE_integer("max_prompt_length", 64, "prompt tokens kept when a pair must be truncated")
    flags.DEFINE_integer("seed", 0, "data order and initialisation, the same for every method")
    flags.DEFINE_integer("reply_tokens", 64, "greedy reply length for the win rate")
    flags.DEFINE_integer("score_tokens", 96, "reply tokens scored for the held-out accuracy")


F = flags.FLAGS


# -- 1. train -------------------------------------------------------------------------------------

def loss_defaults(method: str) -> dict[str, Any]:
    """The registered default options of ``method``'s loss."""
    from align_jax.objectives import PREFERENCE_LOSSES
    from align_jax.objectives.unpaired import UNPAIRED_LOSSES

    task, loss, _ = METHODS[method]
    return dict((UNPAIRED_LOSSES if task == "unpaired" else PREFERENCE_LOSSES).entry(loss).options)


def order_pairs(pairs: Sequence[Mapping[str, Any]], seed: int) -> list[Mapping[str, Any]]:
    """The training order every method reads (unshuffled): a seeded permutation of the pairs."""
    return [pairs[i] for i in np.random.default_rng(seed).permutation(len(pairs))]


def train_overrides(method: str, *, train_pairs: pathlib.Path, eval_pairs: pathlib.Path, cache: pathlib.Path,
                    model: str, steps: int, batch: int, learning_rate: float, max_length: int, max_prompt_length: int,
                    seed: int) -> tuple[str, dict]:
    """(config file, dotted overrides) of one method's run: same pairs, order, steps and learning rate."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")
    task, loss, reference = METHODS[method]
    single = 2 if task == "unpaired" else 1  # KTO: a pair is two single replies
    o = {"model.name": model, "data.source": "preference", "data.train_path": str(train_pairs),
         "data.eval_path": str(eval_pairs), "data.eval_fraction": 0.0, "data.shuffle": False,
         "data.max_eval_examples": 128 * single, "data.batch_size": batch * single,
         "data.max_train_examples": steps * batch * single,  # one pass; the reference pass reads no more
         "data.max_length": max_length, "data.max_prompt_length": max_prompt_length, "data.seed": seed,
         "train.steps": steps, "train.eval_every": steps, "train.checkpoint_every": steps,
         "optimizer.learning_rate": learning_rate, "optimizer.total_steps": steps, "optimizer.warmup_steps": 5,
         "loss.name": loss, **{f"loss.{k}": v for k, v in loss_defaults(method).items()},
         "reference.mode": reference, "model.remat": "full"}
    if reference == "precomputed":
        o["reference.cache_dir"] = str(cache)
    return ("configs/kto.py" if task == "unpaired" else "configs/dpo.py"), o


def train_stage(wd: pathlib.Path) -> None:
    overopt = _overopt_dir(["train"])
    train_pairs = wd / "train_pairs.jsonl"
    if not train_pairs.exists():
        ordered = order_pairs(read_jsonl(overopt / "proxy_pairs.jsonl"), F.seed)
        write_jsonl(train_pairs, ordered)
    for method in F.methods:
        out = wd / method
        if (out / "export").exists():
            print(f"train {method}: exists, skipped", flush=True)
            continue
        config, o = train_overrides(method, train_pairs=train_pairs, eval_pairs=overopt / "eval_pairs.jsonl",
                                    cache=wd / "reference_cache", model=F.model,
                                    steps=F.steps, batch=F.batch, learning_rate=F.learning_rate,
                                    max_length=F.max_length, max_prompt_length=F.max_prompt_length, seed=F.seed)
        cmd = [sys.executable, "-m", "align_jax.main", f"--config={config}", f"--workdir={out}",
               *[f"--config.{k}={v}" for k, v in o.items()]]
        out.mkdir(parents=True, exist_ok=True)
        (out / "command.txt").write_text(shlex.join(cmd) + "\n")
        print(f"train {method}:", shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)


# -- 2. judge -------------------------------------------------------------------------------------

def pair_accuracies(policy_c: Sequence[np.ndarray], policy_r: Sequence[np.ndarray], ref_c: Sequence[np.ndarray],
                    ref_r: Sequence[np.ndarray]) -> dict[str, float]:
    """Held-out accuracy of two method-independent rewards from per-token log-probs of the chosen and
    rejected replies under the policy and the reference: DPO's implicit reward (summed log-ratio) and
    the mean token log-prob (SimPO's). A tie counts a half."""
    def acc(c, r):
        c, r = np.asarray(c), np.asarray(r)
        return float(np.mean((c > r) + 0.5 * (c == r)))

    from align_jax.safety.refusal.metrics import wilson_interval

    implicit_c = [p.sum() - q.sum() for p, q in zip(policy_c, ref_c)]
    implicit_r = [p.sum() - q.sum() for p, q in zip(policy_r, ref_r)]
    n = len(implicit_c)
    out = {"implicit_reward_accuracy": acc(implicit_c, implicit_r),
           "mean_logp_accuracy": acc([p.mean() for p in policy_c], [p.mean() for p in policy_r]),
           "implicit_margin": float(np.mean(np.subtract(implicit_c, implicit_r))), "pairs": n}
    for key in ("implicit_reward_accuracy", "mean_logp_accuracy"):
        out[f"{key}_ci"] = list(wilson_interval(out[key] * n, n))
    return out


def win_rate(method_scores: np.ndarray, base_scores: np.ndarray, same_reply: np.ndarray) -> dict[str, float]:
    """Share of prompts where the method's reply outscores the base model's; a reply identical to
    the base model's (``same_reply`` [P] bool) is a tie and counts a half (its two scores may differ in
    the last bits: they come from differently padded batches). A 95% Wilson interval on the half-counted
    wins (approximate: a tie adds no variance), and the wins / ties / losses."""
    from align_jax.safety.refusal.metrics import wilson_interval

    m, b = np.asarray(method_scores, np.float64), np.asarray(base_scores, np.float64)
    tie = np.asarray(same_reply, bool) | (m == b)
    win, loss = int(np.sum(~tie & (m > b))), int(np.sum(~tie & (m < b)))
    wins = win + 0.5 * int(tie.sum())
    low, high = wilson_interval(wins, len(m))
    return {"win_rate": wins / len(m), "low": low, "high": high, "n": len(m), "wins": win, "ties": int(tie.sum()),
            "losses": loss}


def gold_folder(overopt: pathlib.Path) -> pathlib.Path:
    """The gold reward model: normalised (mean 0 / std 1 over the reference's best-of-N samples, its
    ``normalize`` stage) when that exists, so gold rewards read in the same units as its report;
    else the raw export. The win rate does not depend on which (an affine map with a positive scale)."""
    done = (overopt / "normalization.json").exists()  # written after every normalised model is complete
    return overopt / "rm_gold" / ("export_normalized" if done else "export")


class Scorer:
    """Per-token log-probs of the held-out pairs' replies, and greedy replies judged by the gold RM."""

    def __init__(self, overopt: pathlib.Path, reference):
        from align_jax.rewards.model import load_reward_model

        self.ref = reference
        self.pairs = read_jsonl(overopt / "eval_pairs.jsonl")
        self.gold_folder = gold_folder(overopt)
        self.gold = load_reward_model(self.gold_folder, batch_size=16)

    def pair_logps(self, lm, score_tokens: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        from align_jax.data.tokenization import completion_text
        from align_jax.evals import runner
        from align_jax.sampling.greedy import chat_ids

        rows = []
        for p in self.pairs:
            prompt = chat_ids(lm, p["prompt"])
            for side in ("chosen", "rejected"):
                rows.append((prompt, lm.tokenizer.encode(completion_text(p[side], lm.chat_template))[:score_tokens]))
        logps = runner.continuation_logprobs(lm, rows, batch_size=16)
        return logps[0::2], logps[1::2]

    def replies(self, lm, reply_tokens: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Greedy replies to the held-out prompts, their gold rewards [P] and lengths [P]."""
        from align_jax.sampling.greedy import chat_ids, generate_greedy

        prompts = [p["prompt"] for p in self.pairs]
        gens = generate_greedy(lm, [chat_ids(lm, p) for p in prompts], max_new_tokens=reply_tokens, batch_size=16)
        texts = [g.text for g in gens]
        return texts, np.asarray(self.gold.score(prompts, texts), np.float64), np.array([len(g.token_ids) for g in gens])


def judge_stage(wd: pathlib.Path) -> None:
    from align_jax.models import load_model

    path = wd / "judge.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    ref = load_model(F.model)
    scorer = Scorer(_overopt_dir(["judge"]), ref)
    ref_c, ref_r = scorer.pair_logps(ref, F.score_tokens)
    for name in ["base", *F.methods]:
        if name in done:
            print(f"judge {name}: exists, skipped", flush=True)
            continue
        lm = ref if name == "base" else load_model(path=str(wd / name / "export"))
        pol_c, pol_r = (ref_c, ref_r) if name == "base" else scorer.pair_logps(lm, F.score_tokens)
        texts, gold, length = scorer.replies(lm, F.reply_tokens)
        done[name] = {**pair_accuracies(pol_c, pol_r, ref_c, ref_r), "judge_model": str(scorer.gold_folder),
                      "gold_reward": float(gold.mean()),
                      "gold_reward_se": float(gold.std(ddof=1) / math.sqrt(len(gold))), "mean_length": float(length.mean()),
                      "gold_scores": gold.tolist(), "replies": texts}
        if name != "base":
            same = np.array([a == b for a, b in zip(texts, done["base"]["replies"])])
            done[name]["vs_base"] = win_rate(gold, np.asarray(done["base"]["gold_scores"]), same)
        print(f"judge {name}: " + json.dumps({k: v for k, v in done[name].items() if k not in ("gold_scores", "replies")}),
              flush=True)
        path.write_text(json.dumps(done, indent=1))


# -- 3. report ------------------------------------------------------------------------------------

def _overopt_dir(stages: Sequence[str]) -> pathlib.Path:
    """The over-optimisation run's folder, checked for what ``stages`` read: its pair splits
    (train) and also its gold reward model (judge), so training can start before the gold model exists."""
    d = work_folder(F.overopt_dir, REPO)
    need = ["proxy_pairs.jsonl", "eval_pairs.jsonl"] + (["rm_gold/export/reward_model.json"] if "judge" in stages else [])
    missing = [f for f in need if not (d / f).exists()]
    if missing:
        rerun = "data,rm" if "judge" in stages else "data"
        raise FileNotFoundError(f"{d} lacks {missing}: run `python experiments/overoptimization_hh.py "
                                f"--workdir={F.overopt_dir} --stages={rerun}` first")
    return d


def _units(judged: Mapping[str, Any]) -> str:
    folders = {r.get("judge_model", "") for r in judged.values()}
    if len(folders) > 1:
        raise ValueError(f"judge.json mixes gold reward models {sorted(folders)}: rerun the judge stage in a new workdir")
    if folders and next(iter(folders)).endswith("export_normalized"):
        return " (normalised: gold rewards in std units of the reference's best-of-N samples)"
    return " (raw scores)" if folders else ""


def plot(judged: Mapping[str, Any], path: pathlib.Path) -> None:
    """Two panels: each method's win rate against the base model with its 95% interval, and each
    policy's mean gold reward (± SE) against its mean reply length, since a reward model may favour a
    length or a style rather than better replies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    methods = [m for m, r in judged.items() if r.get("vs_base")]
    rates = [judged[m]["vs_base"] for m in methods]
    left.errorbar(range(len(methods)), [w["win_rate"] for w in rates],
                  yerr=[[w["win_rate"] - w["low"] for w in rates], [w["high"] - w["win_rate"] for w in rates]],
                  fmt="o", capsize=4)
    left.axhline(0.5, color="gray", ls="--", lw=1)
    left.set_xticks(range(len(methods)), methods)
    left.set_ylim(0, 1)
    left.set_ylabel("win rate vs base (gold RM), 95% Wilson")
    left.set_title(f"greedy replies to {rates[0]['n'] if rates else 0} held-out prompts")
    for name, r in judged.items():
        right.errorbar(r["mean_length"], r["gold_reward"], yerr=r["gold_reward_se"], fmt="o", capsize=3)
        right.annotate(name, (r["mean_length"], r["gold_reward"]), textcoords="offset points", xytext=(5, 5))
    right.set_xlabel("mean reply length (tokens)")
    right.set_ylabel("mean gold reward" + (" (reference-sample std)" if "std units" in _units(judged) else ""))
    right.set_title("gold reward against reply length")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_stage(wd: pathlib.Path) -> None:
    judged = json.loads((wd / "judge.json").read_text()) if (wd / "judge.json").exists() else {}
    own = {}
    for method in F.methods:
        metrics = wd / method / "metrics.jsonl"
        if metrics.exists():
            evals = [r for r in read_jsonl(metrics) if any(k.startswith("eval/") for k in r)]
            own[method] = evals[-1] if evals else None
    md = ["# The DPO family on HH-RLHF harmless-base, same budget each", "",
          f"{F.steps} steps x {F.batch} pairs, lr {F.learning_rate}, max length {F.max_length}, "
          "each loss's registered default options; held-out pairs and prompts from overoptimization_hh.py; "
          "judge = its gold reward model" + _units(judged) + ".", "",
          "One seed; six comparisons against the base model. The implicit reward is what DPO, IPO, cDPO and "
          "KTO optimise and the mean log-prob what SimPO and ORPO optimise: the win rate is the main comparison.", "",
          "| method | implicit-reward acc. | mean-log-prob acc. | implicit margin | win rate vs base (gold RM) [95% CI] "
          "(W/T/L) | gold reward | reply length |", "|---|---|---|---|---|---|---|"]
    for name, r in judged.items():
        w = r.get("vs_base")
        win = (f"{w['win_rate']:.3f} [{w['low']:.2f}, {w['high']:.2f}] ({w['wins']}/{w['ties']}/{w['losses']})"
               if w else "-")
        ci = {k: "[{:.2f}, {:.2f}]".format(*r[f"{k}_ci"]) for k in ("implicit_reward_accuracy", "mean_logp_accuracy")}
        md.append(f"| {name} | {r['implicit_reward_accuracy']:.3f} {ci['implicit_reward_accuracy']} | "
                  f"{r['mean_logp_accuracy']:.3f} {ci['mean_logp_accuracy']} | "
                  f"{r['implicit_margin']:+.3f} | {win} | {r['gold_reward']:+.3f} (±{r['gold_reward_se']:.3f}) | "
                  f"{r['mean_length']:.1f} |")
    if judged:
        plot(judged, wd / "dpo_family.png")
        md += ["", "![win rate and gold reward against length](dpo_family.png)"]
    (wd / "report.md").write_text("\n".join(md) + "\n")
    (wd / "results.json").write_text(json.dumps(
        {"judged": {k: {kk: (vv[:3] if kk == "replies" else vv) for kk, vv in v.items() if kk != "gold_scores"}
                    for k, v in judged.items()},
         "own_eval": own}, indent=1))
    print("\n".join(md), flush=True)


def main(argv):
    del argv
    wd = work_folder(F.workdir, REPO)
    stages = {"train": train_stage, "judge": judge_stage, "report": report_stage}
    check_names("stages", F.stages, stages)
    check_names("methods", F.methods, METHODS)
    if {"train", "judge"} & set(F.stages):
        _overopt_dir(F.stages)  # before any model loads
    check_same_settings(wd / "settings.json", {k: F[k].value for k in (
        "overopt_dir", "model", "steps", "batch", "learning_rate", "max_length", "max_prompt_length", "seed",
        "reply_tokens", "score_tokens")})
    run_stages(stages, F.stages, wd)


if __name__ == "__main__":
    define_flags()
    app.run(main)
