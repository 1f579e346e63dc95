"""Reward vs KL(pi || pi_ref) for DPO, PPO and best-of-N on a task with a known reward (arXiv:2305.18290, Fig. 2 left).

The DPO paper plots, on IMDb sentiment generation, the expected reward of each policy against its
KL divergence from the reference, and finds that DPO's frontier dominates PPO's, even PPO with the
ground-truth reward. This is the same measurement at toy scale, on the task of ``configs/grpo_toy.py``:

* reference and starting policy: the random character model ``toy-chars`` (seed 0, fixed);
* prompt: the ``toy_letters`` eval prompt "Write the letter a." (every prompt of that set is the same);
* reward: the verifiable ``toy_letter`` reward, the fraction of the reply's non-space characters
  that are ``a`` (the reference writes one ``a`` in ~100 characters);
* replies of at most ``--max_new_tokens`` (8) tokens at temperature 1, as in the RL runs.

    .venv/bin/python experiments/reward_kl_frontier.py --workdir=runs/reward_kl_frontier

Methods (all from the same reference):

* **best-of-N**: ``--eval_samples`` groups of ``N_max`` reference samples; best-of-N keeps the
  best of the first N of each group (ties: the first, i.e. uniformly at random among iid samples).
  Its KL in closed form is ``log N - (N-1)/N``, which holds when rewards never tie and is an upper
  bound otherwise (arXiv:2401.01879); with ties broken at random the exact log-ratio of a reply of
  reward r is ``log(q_N(r) / p(r))`` (p: the reference's reward distribution, q_N = F(r)^N - F(r-)^N),
  so its KL is measured like the others' (mean log-ratio over the selected replies), with p, q_N
  estimated from all ``eval_samples x N_max`` reference samples.
* **PPO**: ``configs/ppo.py`` (value head, GAE, the KL to the frozen reference in the reward) at
  each ``--ppo_kl_coefs``, through the project's online loop; policies at every checkpoint.
* **DPO**: pairs of reference samples ranked by the reward (chosen = higher; ties dropped, and
  pairs with a reply that does not tokenize back to its sampled tokens), the project's ``dpo``
  loss at each ``--dpo_betas``; policies at every checkpoint.

Measurement, the same for every policy: ``--eval_samples`` replies sampled from it; reward = their
mean ``toy_letter``; KL = the mean over them of ``sum_t log pi(y_t | ...) - log pi_ref(y_t | ...)``
(``k1`` summed over the reply's tokens, the stop token included), pi's log-probs from the sampler,
pi_ref's from a teacher-forced pass. Writes ``results.json`` (every point, each method's frontier
and its reward at the KL values of ``--kl_grid``) and ``frontier.png``.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "configs"))


def define_flags():
    """The script's flags, defined only when it runs as a script: tests import its functions into
    a process whose other modules (align_jax.main) already own names like --workdir."""
    flags.DEFINE_string("workdir", "runs/reward_kl_frontier", "where training runs and pair files go")
    flags.DEFINE_string("out", "experiments/results/reward_kl_frontier", "where results.json and frontier.png go")
    flags.DEFINE_integer("seed", 0, "sampling, data and training seed")
    flags.DEFINE_integer("max_new_tokens", 8, "reply length limit (tokens = characters)")
    flags.DEFINE_integer("eval_samples", 1024, "replies sampled per policy (and best-of-N groups)")
    flags.DEFINE_list("bon_n", ["1", "2", "4", "8", "16", "32", "64"], "best-of-N sizes")
    flags.DEFINE_list("ppo_kl_coefs", ["0.01", "0.02", "0.03", "0.05", "0.1"], "PPO KL coefficients (rl.kl_coef)")
    flags.DEFINE_integer("ppo_steps", 30, "PPO rollout batches (8 prompts x 8 samples each)")
    flags.DEFINE_integer("ppo_checkpoint_every", 5, "PPO policies measured every this many steps")
    flags.DEFINE_list("dpo_betas", ["0.05", "0.1", "0.3", "1.0"], "DPO betas (loss.beta)")
    flags.DEFINE_integer("pair_samples", 32768, "reference samples drawn for DPO pairs (two per pair, ties dropped)")
    flags.DEFINE_integer("dpo_steps", 60, "DPO steps (32 pairs each)")
    flags.DEFINE_integer("dpo_checkpoint_every", 10, "DPO policies measured every this many steps")
    flags.DEFINE_float("dpo_learning_rate", 1e-3, "DPO learning rate (constant)")
    flags.DEFINE_list("kl_grid", ["0.5", "1", "2", "3", "5", "9"], "KL values at which each frontier's reward is read")


# -- measuring a policy ---------------------------------------------------------------------------

class Scorer:
    """Samples replies to the toy prompt from a policy and measures them against the reference."""

    def __init__(self, ref, record, max_new_tokens: int):
        import jax
        from flax import nnx

        from align_jax import rewards as R
        from align_jax.models.chat import encode_chat

        self.ref, self.record, self.max_new_tokens = ref, record, max_new_tokens
        self.ids = encode_chat(ref.tokenizer, record.prompt, template=ref.chat_template,
                               add_generation_prompt=True).ids
        self.reward_fns = R.build(["toy_letter"])
        graphdef, self.ref_state = nnx.split(ref.model)
        self._ref_logps = jax.jit(functools.partial(_teacher_forced_logps, graphdef))

    def sample(self, model, n: int, seed: int, chunk: int = 4096) -> dict:
        """``n`` replies from ``model`` (chunks of ``chunk`` rows, seeds ``seed * 1000 + i``): their
        tokens, masks, per-token log-probs under the model, texts and rewards (numpy)."""
        from align_jax import rewards as R
        from align_jax.sampling.decoding import SamplingParams
        from align_jax.sampling.sampler import sample

        tok = self.ref.tokenizer
        parts = []
        for i, start in enumerate(range(0, n, chunk)):
            params = SamplingParams(n=min(chunk, n - start), max_new_tokens=self.max_new_tokens, temperature=1.0,
                                    seed=seed * 1000 + i)
            out = sample(model, [self.ids], params, eos_ids=sorted(tok.eos_ids), pad_id=tok.pad_id or 0,
                         new_tokens_bucket=self.max_new_tokens)
            parts.append({k: np.asarray(getattr(out, k)) for k in (
                "tokens", "completion_mask", "model_logprobs", "prompt_tokens", "prompt_mask")})
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        batch["texts"] = [tok.decode([int(t) for t, m in zip(r, mr) if m], skip_special_tokens=True)
                          for r, mr in zip(batch["tokens"], batch["completion_mask"])]
        scores = R.score(["toy_letter"], self.reward_fns, [self.record] * n, batch["texts"])
        if scores.errors:
            raise RuntimeError(scores.errors[0])
        batch["rewards"] = scores.values[:, 0].astype(np.float64)
        return batch

    def ref_logps(self, batch: dict) -> np.ndarray:  # [n, M] log pi_ref of the sampled reply tokens
        """Teacher-forced reference log-probs of ``batch``'s replies (the rollout layout of
        :mod:`align_jax.training.tasks.online`: prompt ++ reply, positions = cumsum(mask) - 1)."""
        tokens = np.concatenate([batch["prompt_tokens"], batch["tokens"]], axis=1)
        full = np.concatenate([batch["prompt_mask"], batch["completion_mask"]], axis=1)
        rows = {"tokens": tokens, "positions": np.maximum(np.cumsum(full, axis=1) - 1, 0).astype(np.int32),
                "segment_ids": full.astype(np.int32), "completion_mask": batch["completion_mask"]}
        return np.asarray(self._ref_logps(self.ref_state, rows))

    def measure(self, model, n: int, seed: int) -> dict:
        """Mean reward and Monte-Carlo KL(pi || pi_ref) (summed k1 per reply) of ``n`` replies of ``model``."""
        import jax.numpy as jnp

        from align_jax.objectives.kl import KL_ESTIMATORS

        batch = self.sample(model, n, seed)
        mask = batch["completion_mask"]
        k1 = KL_ESTIMATORS.build("k1")(jnp.asarray(batch["model_logprobs"]), jnp.asarray(self.ref_logps(batch)),
                                       jnp.asarray(mask))
        kl = np.asarray(k1, np.float64).sum(axis=1)  # [n] sequence-level log pi(y) - log pi_ref(y)
        return point(batch["rewards"], kl, batch["texts"], lengths=mask.sum(1))


def _teacher_forced_logps(graphdef, state, rows):
    from flax import nnx

    from align_jax.training.tasks.online import completion_logps

    return completion_logps(nnx.merge(graphdef, state), rows)[0]


def point(rewards: np.ndarray, log_ratios: np.ndarray, texts, lengths=None) -> dict:
    """One (reward, KL) point with standard errors, from per-reply rewards and sequence log-ratios."""
    n = len(rewards)
    out = {"reward": float(np.mean(rewards)), "reward_se": float(np.std(rewards, ddof=1) / np.sqrt(n)),
           "kl": float(np.mean(log_ratios)), "kl_se": float(np.std(log_ratios, ddof=1) / np.sqrt(n)), "samples": n,
           "examples": list(texts[:4])}
    if lengths is not None:
        out["mean_length"] = float(np.mean(lengths))
    return out


# -- best-of-N ------------------------------------------------------------------------------------

def best_of_n(rewards: np.ndarray, texts: list[str], ns) -> list[dict]:
    """Best-of-N points from ``rewards`` [G, N_max] of iid reference replies (``texts`` row-major).

    For each N: the reward of the best of the first N of each group; ``kl_closed_form`` = log N -
    (N-1)/N; ``kl`` = the mean over the selected replies of ``log(q_N(r) / p(r))``, the exact
    log-ratio of best-of-N with random tie-breaking, with the reference's reward distribution p
    (and so q_N(r) = F(r)^N - F(r-)^N) estimated from all G x N_max replies."""
    groups, n_max = rewards.shape
    if max(ns) > n_max:
        raise ValueError(f"N up to {max(ns)} needs groups of {max(ns)}, got {n_max}")
    levels, counts = np.unique(rewards, return_counts=True)
    p = counts / counts.sum()
    cdf = np.cumsum(p)
    below = cdf - p
    points = []
    for n in ns:
        best = np.argmax(rewards[:, :n], axis=1)  # first of the tied maxima
        picked = rewards[np.arange(groups), best]
        q = cdf ** n - below ** n
        level = np.searchsorted(levels, picked)
        log_ratio = np.log(q[level]) - np.log(p[level])
        row = point(picked, log_ratio, [texts[g * n_max + b] for g, b in enumerate(best)])
        row.update(n=int(n), kl_closed_form=float(np.log(n) - (n - 1) / n),
                   kl_exact_plugin=float(np.sum(np.where(q > 0, q * (np.log(np.maximum(q, 1e-300)) - np.log(p)), 0.0))))
        points.append(row)
    return points


# -- DPO pairs ------------------------------------------------------------------------------------

def usable_reply(tokenizer, template: str, ids: list[int], text: str) -> bool:
    """Whether a sampled reply can stand in a preference pair as sampled: not blank (the record
    loader rejects blank replies) and its ``text`` tokenizes back to its sampled ``ids`` (plus the end
    of turn that the chat template appends when the reply was cut at the length limit). A reply
    holding a sampled ``<pad>``, ``<|im_start|>`` or ``<unk>`` token does not: they decode to nothing
    or to the five characters ``<unk>``."""
    from align_jax.data.tokenization import completion_text

    if not text.strip():
        return False
    encoded = tokenizer.encode(completion_text(text, template))
    ended = bool(ids) and ids[-1] in tokenizer.eos_ids
    return encoded[:len(ids)] == ids and len(encoded) == len(ids) + (not ended)


def preference_pairs(texts: list[str], rewards: np.ndarray, prompt: str, usable=None) -> list[dict]:
    """Consecutive reference replies (2i, 2i+1) as pairs, the higher reward chosen; ties dropped, and
    pairs with a reply that is not ``usable`` (default: all are)."""
    pairs = []
    for i in range(0, len(texts) - 1, 2):
        a, b = rewards[i], rewards[i + 1]
        if a == b or (usable is not None and not (usable[i] and usable[i + 1])):
            continue
        chosen, rejected = (texts[i], texts[i + 1]) if a > b else (texts[i + 1], texts[i])
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                      "reward_chosen": float(max(a, b)), "reward_rejected": float(min(a, b))})
    return pairs


# -- the training runs ------------------------------------------------------------------------------

def ppo_config(kl_coef: float, steps: int, every: int, seed: int, max_new_tokens: int):
    import runpy

    c = runpy.run_path(str(REPO / "configs" / "ppo.py"))["get_config"]()
    c.data.seed = seed
    c.train.update(steps=steps, eval_every=steps, checkpoint_every=every, checkpoint_every_seconds=1e9,
                   keep_checkpoints=steps // every + 1, export_hf=False, report=False)
    c.rl.update(kl_coef=kl_coef, max_new_tokens=max_new_tokens)
    return c


def dpo_config(train: Path, evals: Path, beta: float, steps: int, every: int, seed: int, lr: float):
    from common import base_config

    c = base_config()
    c.model.name = "toy-chars"
    c.mesh = dict(data=1, fsdp=1, tensor=1)
    c.data.update(source="preference", train_path=str(train), eval_path=str(evals), max_length=64,
                  max_prompt_length=48, batch_size=32, max_eval_examples=128, seed=seed)
    c.train.update(task="preference", steps=steps, eval_every=steps, checkpoint_every=every,
                   checkpoint_every_seconds=1e9, keep_checkpoints=steps // every + 1, export_hf=False, report=False)
    c.reference.mode = "precomputed"
    c.loss = dict(name="dpo", beta=beta)
    c.optimizer.update(learning_rate=lr, schedule="constant", warmup_steps=0, total_steps=0)
    return c


# -- the frontier and the plot ----------------------------------------------------------------------

def frontier(points: list[dict], kl_key: str = "kl") -> list[dict]:
    """The points no other point beats on both counts (higher reward at lower or equal KL), by KL."""
    out, best = [], -np.inf
    for p in sorted(points, key=lambda p: (p[kl_key], -p["reward"])):
        if p["reward"] > best:
            out.append(p)
            best = p["reward"]
    return out


def reward_at_kl(front: list[dict], kl: float, kl_key: str = "kl") -> float | None:
    """The frontier's reward at ``kl``, linear between its points (None beyond its last point)."""
    xs, ys = [p[kl_key] for p in front], [p["reward"] for p in front]
    return float(np.interp(kl, xs, ys)) if xs and xs[0] <= kl <= xs[-1] else None


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    styles = {"DPO": ("tab:red", "o"), "PPO": ("tab:blue", "s")}
    for method, (color, marker) in styles.items():
        pts = results["points"][method]
        ax.errorbar([p["kl"] for p in pts], [p["reward"] for p in pts], xerr=[p["kl_se"] for p in pts],
                    yerr=[p["reward_se"] for p in pts], fmt=marker, color=color, alpha=0.45, ms=4, lw=0.8)
        f = frontier(pts + [results["reference"]])
        ax.plot([p["kl"] for p in f], [p["reward"] for p in f], "-", color=color, label=f"{method} (frontier)")
    bon = results["points"]["best-of-N"]
    ax.plot([p["kl"] for p in bon], [p["reward"] for p in bon], "-^", color="tab:green", ms=5,
            label="best-of-N, exact KL with ties")
    ax.plot([p["kl_closed_form"] for p in bon], [p["reward"] for p in bon], "--^", color="tab:green", mfc="none",
            ms=5, label="best-of-N at log N - (N-1)/N")
    for p in bon:
        ax.annotate(f"{p['n']}", (p["kl"], p["reward"]), textcoords="offset points", xytext=(3, -9), fontsize=7,
                    color="tab:green")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("KL(pi || pi_ref), nats per reply (Monte Carlo, sequence level)")
    ax.set_ylabel("mean reward (fraction of 'a')")
    ax.set_title("Reward vs KL on the toy letter task (toy-chars, 8-token replies)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# -- the run --------------------------------------------------------------------------------------

def main(argv):
    del argv
    from align_jax.data.prompt_sets import toy_letters
    from align_jax.models import load_model
    from align_jax.training.config import parse_config
    from align_jax.training.loop import checkpoint_policies, run
    from align_jax.training.metrics_logging import read_metrics

    F = flags.FLAGS
    t_start = time.time()
    work = Path(F.workdir)
    work.mkdir(parents=True, exist_ok=True)
    record = toy_letters(F.seed)[1][0]  # the held-out prompt set: "Write the letter a." throughout
    prompt = record.prompt[-1]["content"]
    ref = load_model("toy-chars")
    scorer = Scorer(ref, record, F.max_new_tokens)
    m = F.eval_samples

    results = {"flags": {k: F[k].value for k in (
        "seed", "max_new_tokens", "eval_samples", "bon_n", "ppo_kl_coefs", "ppo_steps", "ppo_checkpoint_every",
        "dpo_betas", "pair_samples", "dpo_steps", "dpo_checkpoint_every", "dpo_learning_rate")},
        "prompt": prompt, "points": {"best-of-N": [], "PPO": [], "DPO": []}, "seconds": {}}
    results["reference"] = dict(scorer.measure(ref.model, m, seed=F.seed + 1), method="reference")
    print("reference", {k: v for k, v in results["reference"].items() if k != "examples"}, flush=True)

    t = time.time()
    ns = [int(n) for n in F.bon_n]
    pool = scorer.sample(ref.model, m * max(ns), seed=F.seed + 2)
    results["points"]["best-of-N"] = [dict(p, method="best-of-N") for p in
                                      best_of_n(pool["rewards"].reshape(m, max(ns)), pool["texts"], ns)]
    levels, counts = np.unique(pool["rewards"], return_counts=True)
    results["reference_reward_distribution"] = {f"{r:.4f}": int(c) for r, c in zip(levels, counts)}
    results["seconds"]["best_of_n"] = time.time() - t
    for p in results["points"]["best-of-N"]:
        print(f"best-of-{p['n']}: reward {p['reward']:.4f}, KL {p['kl']:.3f} (closed form {p['kl_closed_form']:.3f})",
              flush=True)

    t = time.time()
    for coef in F.ppo_kl_coefs:
        cfg = parse_config(ppo_config(float(coef), F.ppo_steps, F.ppo_checkpoint_every, F.seed, F.max_new_tokens))
        run_dir = work / f"ppo_kl{coef}"
        run(cfg, run_dir)
        train_rows = {r["step"]: r for r in read_metrics(run_dir, split="train")}
        for step, policy in checkpoint_policies(cfg, run_dir):
            p = dict(scorer.measure(policy, m, seed=F.seed + 3), method="PPO", kl_coef=float(coef), step=step,
                     train_reward=train_rows[step]["reward/toy_letter"])
            results["points"]["PPO"].append(p)
            print(f"PPO kl_coef {coef} step {step}: reward {p['reward']:.4f}, KL {p['kl']:.3f}", flush=True)
    results["seconds"]["ppo"] = time.time() - t

    t = time.time()
    draws = scorer.sample(ref.model, F.pair_samples, seed=F.seed + 4)
    usable = [usable_reply(ref.tokenizer, ref.chat_template, [int(i) for i, k in zip(row, mask) if k], text)
              for row, mask, text in zip(draws["tokens"], draws["completion_mask"], draws["texts"])]
    pairs = preference_pairs(draws["texts"], draws["rewards"], prompt, usable)
    held = len(pairs) // 10
    train_path, eval_path = work / "pairs_train.jsonl", work / "pairs_eval.jsonl"
    eval_path.write_text("".join(json.dumps(r) + "\n" for r in pairs[:held]))
    train_path.write_text("".join(json.dumps(r) + "\n" for r in pairs[held:]))
    tied = int(np.sum(draws["rewards"][0::2] == draws["rewards"][1::2]))
    results["dpo_pairs"] = {"reference_samples": F.pair_samples, "replies_usable": int(sum(usable)),
                            "pairs_tied": tied, "pairs": len(pairs), "train": len(pairs) - held,
                            "eval": held, "examples": pairs[:3]}
    print(f"DPO pairs: {len(pairs)} of {F.pair_samples // 2} drawn ({held} held out)", flush=True)
    for beta in F.dpo_betas:
        cfg = parse_config(dpo_config(train_path, eval_path, float(beta), F.dpo_steps, F.dpo_checkpoint_every, F.seed,
                                      F.dpo_learning_rate))
        run_dir = work / f"dpo_beta{beta}"
        result = run(cfg, run_dir)
        if any(result["truncation"].get(k) for k in ("prompt_truncated", "completion_truncated", "dropped")):
            raise RuntimeError(f"DPO pairs were truncated: {result['truncation']}")
        evals = {r["step"]: r for r in read_metrics(run_dir, split="eval")}
        for step, policy in checkpoint_policies(cfg, run_dir):
            p = dict(scorer.measure(policy, m, seed=F.seed + 3), method="DPO", beta=float(beta), step=step)
            if step in evals:
                p["eval_accuracy"] = evals[step].get("eval/rewards/accuracies")
            results["points"]["DPO"].append(p)
            print(f"DPO beta {beta} step {step}: reward {p['reward']:.4f}, KL {p['kl']:.3f}", flush=True)
    results["seconds"]["dpo"] = time.time() - t

    for method, pts in results["points"].items():
        results.setdefault("frontier", {})[method] = [
            {k: p.get(k) for k in ("kl", "reward", "n", "kl_coef", "beta", "step") if p.get(k) is not None}
            for p in frontier(pts + ([results["reference"]] if method != "best-of-N" else []))]
    grid = [float(k) for k in F.kl_grid]
    results["reward_at_kl"] = {"kl": grid, **{method: [reward_at_kl(front, k) for k in grid]
                                              for method, front in results["frontier"].items()}}
    results["reward_at_kl"]["best-of-N, closed-form KL"] = [
        reward_at_kl(results["points"]["best-of-N"], k, "kl_closed_form") for k in grid]
    for method in ("best-of-N", "best-of-N, closed-form KL", "PPO", "DPO"):
        print(f"{method:>26}: " + "  ".join(f"{k:g}: " + ("-" if r is None else f"{r:.3f}")
                                             for k, r in zip(grid, results["reward_at_kl"][method])))
    results["seconds"]["total"] = time.time() - t_start
    out = REPO / F.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "frontier.png")
    print(f"wrote {out / 'results.json'} and {out / 'frontier.png'} ({results['seconds']['total']:.0f} s)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
