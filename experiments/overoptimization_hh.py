"""Reward-model over-optimisation on HH-RLHF: proxy and gold reward against KL (issue #23, item 4).

Gao, Schulman & Hilton (arXiv:2210.10760) train a "gold" reward model, let a policy optimise a
"proxy" one, and plot both against the policy's KL from its start: the proxy keeps rising while the
gold rises, peaks and falls (Goodhart). Coste et al. (arXiv:2310.02743) find that a conservative
ensemble (the minimum over members) delays the fall; log-sigmoid centring (arXiv:2402.00742) caps
the reward of beating the reference. The same measurement at CPU scale, on Anthropic HH-RLHF
harmless-base (``../shared/data``, 2,312 pairs), with SmolLM2-135M-Instruct everywhere:

    python experiments/overoptimization_hh.py --workdir=runs/overopt_hh

A sweep of PPO settings over one set of reward models (``--reward_models_from``: that workdir's
split, reward models, best-of-N and normalisation, same settings, are linked into a new workdir):

    python experiments/overoptimization_hh.py --workdir=runs/overopt_hh_kl01 --kl_coef=0.1 \
        --reward_models_from=runs/overopt_hh

Stages (each skipped when its outputs exist; ``--stages`` picks some):

1. ``data``: the pairs split by prompt (seeded): ``--eval_prompts`` held-out prompts (neither reward
   model sees them; the policies are measured on them), the rest halved into ``proxy_pairs.jsonl``
   and ``gold_pairs.jsonl`` (disjoint prompts; the reward models learn from every pair, a long
   prompt left-truncated), and the proxy half's prompts as the RL prompts. Held-out and RL prompts
   are those of at most ``--max_prompt_tokens`` chat-template tokens (about half of HH's).
2. ``rm``: three Bradley-Terry reward models (``configs/reward_model.py``), one pass each: ``proxy``
   (proxy half), ``proxy_ens`` (proxy half, ``--ensemble_size`` heads over one trunk, each on its own
   bootstrap) and ``gold`` (gold half). Each exports a reward-model folder.
3. ``bon``: ``--bon_max`` reference samples per held-out prompt, scored by every reward model.
   Best-of-N for each N picks by the proxy, the ensemble mean, min or mean - std, and reports the
   picked samples' proxy and gold rewards at KL = log N - (N-1)/N (arXiv:2210.10760), with Gao et
   al.'s unbiased estimator: every N uses all ``--bon_max`` samples (the one ranked i of N_max is the
   best of a random N-subset with probability C(i-1, N-1) / C(N_max, N)).
   Best-of-N is invariant to a per-prompt monotone transform, so log-sigmoid centring has no
   best-of-N curve; it shows only under RL.
   ``normalize``: as Gao et al. do, every reward model (each ensemble member on its own) is made to
   score the reference policy's samples with mean 0 and standard deviation 1: the affine head
   ``(w / std, (b - mean) / std)`` is written to ``rm_NAME/export_normalized`` beside hard links to
   the trunk, and best-of-N is recomputed from the saved rewards in those units. A short
   Bradley-Terry run leaves rewards that differ by ~0.01 between replies; in raw units the KL
   penalty and the value noise drown them (a first PPO run's proxy did not move in 20 steps),
   and log-sigmoid centring of differences that small is linear. From here on every stage uses
   the normalised models.
4. ``ppo``: ``configs/ppo_hh.py`` once per ``--variants``: ``plain`` (reward ``rm:proxy``),
   ``ensemble_min`` (``rm:proxy_ens@min``), ``log_sigmoid`` (``rm:proxy`` with
   ``rl.reward_transform=log-sigmoid``); checkpoints every ``--checkpoint_every`` steps.
5. ``measure``: the reference and every PPO checkpoint sample ``--measure_samples`` replies per
   held-out prompt; each reply's proxy and gold reward and its sequence log-ratio
   ``sum_t log pi(y_t|..) - log pi_ref(y_t|..)`` (k1; the mean is a Monte-Carlo KL(pi || pi_ref)).
6. ``report``: ``results.json``, ``report.md`` and ``overoptimization.png`` (proxy and gold, each
   minus the reference policy's, against sqrt(KL): best-of-N and PPO panels).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import runpy
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import app, flags

from align_jax.run_settings import check_names, check_same_settings, read_jsonl, run_stages, work_folder, write_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh_rlhf" / "harmless-base-test.jsonl.gz"
RMS = ("proxy", "proxy_ens", "gold")
VARIANTS = ("plain", "ensemble_min", "log_sigmoid")
SELECTORS = ("proxy", "ensemble_mean", "ensemble_min", "ensemble_mean_minus_std")
OPTIMISED = {"plain": "proxy", "ensemble_min": "ensemble_min", "log_sigmoid": "proxy"}  # before the transform
NORMALIZED = "export_normalized"  # the reward-model folders PPO and the measurement use (after `normalize`)


def define_flags():
    """Defined only when run as a script (tests import this module beside align_jax.main)."""
    flags.DEFINE_string("workdir", "runs/overopt_hh", "splits, reward models, PPO runs, samples, report")
    flags.DEFINE_list("stages", ["data", "rm", "bon", "normalize", "ppo", "measure", "report"], "which stages to run")
    flags.DEFINE_string("hh_path", str(HH), "HH-RLHF pairs (chosen / rejected transcripts)")
    flags.DEFINE_string("model", "smollm2-135m-instruct", "registered model: reward-model trunks and the policy")
    flags.DEFINE_integer("seed", 0, "split, bootstrap, sampling and training seed")
    flags.DEFINE_integer("eval_prompts", 128, "held-out prompts the policies are measured on")
    flags.DEFINE_integer("max_prompt_tokens", 128, "longest prompt kept (chat-template tokens)")
    flags.DEFINE_integer("rm_max_length", 224, "reward-model sequence length (>= max_prompt_tokens + "
                         "max_new_tokens + 1: the reply's end of turn)")
    flags.DEFINE_integer("rm_batch", 8, "reward-model pairs per step (one pass over its half)")
    flags.DEFINE_integer("rm_pairs", 0, "train pairs per reward model, the first of its half's seeded prompt order "
                         "(0: all; the held-out 10% is taken from the whole half first)")
    flags.DEFINE_float("rm_learning_rate", 2e-5, "reward-model peak learning rate")
    flags.DEFINE_integer("ensemble_size", 4, "heads of the proxy ensemble")
    flags.DEFINE_integer("max_new_tokens", 64, "reply length limit (best-of-N, PPO, measurement)")
    flags.DEFINE_integer("bon_max", 16, "reference samples per held-out prompt (largest N)")
    flags.DEFINE_integer("sample_batch", 8, "prompts per sampling batch")
    flags.DEFINE_list("variants", list(VARIANTS), "PPO reward variants")
    flags.DEFINE_integer("ppo_steps", 40, "PPO rollout batches")
    flags.DEFINE_integer("checkpoint_every", 10, "PPO policies measured every this many steps")
    flags.DEFINE_float("kl_coef", 0.01, "PPO KL coefficient (in the reward, k1)")
    flags.DEFINE_float("ppo_learning_rate", 1e-4, "PPO learning rate (LoRA, constant)")
    flags.DEFINE_integer("measure_samples", 2, "replies per held-out prompt for each measured policy")
    flags.DEFINE_string("reward_models_from", "", "an earlier workdir whose split, reward models, best-of-N and "
                        "normalisation (stages data..normalize, same settings) are linked here, to sweep PPO settings "
                        "(--kl_coef, --ppo_learning_rate, --ppo_steps) over one set of reward models")
    flags.DEFINE_list("measure_steps", [], "PPO checkpoint steps to measure on the held-out prompts (empty: every "
                      "checkpoint); the training logs hold every step's proxy, gold and KL")


F = flags.FLAGS


# -- 1. data ----------------------------------------------------------------------------------------

def prompt_key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True)


def split_pairs(pairs: Sequence[Mapping[str, Any]], *, eval_prompts: int, seed: int,
                eligible: Callable[[Any], bool] = lambda prompt: True) -> dict[str, list]:
    """Pairs (``{"prompt": messages, "chosen", "rejected"}``) split by prompt: ``eval`` holds the first
    ``eval_prompts`` ``eligible`` prompts of a seeded permutation of the distinct prompts (one pair
    each); the other prompts alternate between ``proxy`` and ``gold``, every pair of a prompt on the
    same side."""
    by_prompt: dict[str, list] = {}
    for p in pairs:
        by_prompt.setdefault(prompt_key(p["prompt"]), []).append(p)
    keys = list(by_prompt)
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    held = [k for k in order if eligible(by_prompt[k][0]["prompt"])][:eval_prompts]
    if len(held) < eval_prompts or len(keys) - len(held) < 2:
        raise ValueError(f"{len(keys)} distinct prompts ({len(held)} eligible to hold out) cannot give "
                         f"{eval_prompts} held out and two halves")
    out = {"eval": [by_prompt[k][0] for k in held], "proxy": [], "gold": []}
    held = set(held)
    for j, k in enumerate(k for k in order if k not in held):
        out["proxy" if j % 2 == 0 else "gold"].extend(by_prompt[k])
    return out


def data_stage(wd: pathlib.Path) -> None:
    if (wd / "data_summary.json").exists():
        print("data: exists, skipped", flush=True)
        return
    from align_jax.data import hh_rlhf
    from align_jax.data.records import RecordError
    from align_jax.data.sources import read_rows
    from align_jax.models import load_model
    from align_jax.sampling.greedy import chat_ids

    lm = load_model(F.model)  # its tokenizer and chat template measure the prompts
    pairs, malformed, short = [], 0, set()
    for _, row in read_rows(F.hh_path):
        try:
            rec = hh_rlhf.parse_row(row)
        except RecordError:
            malformed += 1
            continue
        pairs.append({"prompt": list(rec.prompt), "chosen": rec.chosen, "rejected": rec.rejected})
        if len(chat_ids(lm, rec.prompt)) <= F.max_prompt_tokens:
            short.add(prompt_key(pairs[-1]["prompt"]))
    split = split_pairs(pairs, eval_prompts=F.eval_prompts, seed=F.seed, eligible=lambda p: prompt_key(p) in short)
    for name in ("proxy", "gold"):
        write_jsonl(wd / f"{name}_pairs.jsonl", split[name])
    write_jsonl(wd / "eval_prompts.jsonl", [{"prompt": p["prompt"]} for p in split["eval"]])
    write_jsonl(wd / "eval_pairs.jsonl", split["eval"])  # their pairs: held-out accuracy (dpo_family_hh.py)
    seen, rl = set(), []
    for p in split["proxy"]:
        key = prompt_key(p["prompt"])
        if key in short and key not in seen:
            seen.add(key)
            rl.append({"prompt": p["prompt"]})
    write_jsonl(wd / "rl_prompts.jsonl", rl)
    summary = {"source": F.hh_path, "rows_malformed": malformed, "pairs": len(pairs),
               "distinct_prompts": len({prompt_key(p["prompt"]) for p in pairs}),
               f"prompts_of_at_most_{F.max_prompt_tokens}_tokens": len(short), "eval_prompts": len(split["eval"]),
               "proxy_pairs": len(split["proxy"]), "gold_pairs": len(split["gold"]), "rl_prompts": len(rl)}
    (wd / "data_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)


# -- 2. reward models ---------------------------------------------------------------------------------

def rm_command(wd: pathlib.Path, name: str, n_pairs: int, *, model: str, batch: int, max_length: int,
               max_prompt_length: int, learning_rate: float, seed: int, ensemble_size: int,
               max_pairs: int = 0) -> list[str]:
    """One pass over the ``n_pairs`` pairs of the reward model ``name``'s half, 10% held out for accuracy
    (of the rest, the first ``max_pairs`` when > 0)."""
    if name not in RMS:
        raise ValueError(f"unknown reward model {name!r}; valid: {RMS}")
    half = "gold" if name == "gold" else "proxy"
    train = n_pairs - n_pairs // 10
    if max_pairs > 0:
        train = min(train, max_pairs)
    steps = max(math.ceil(train / batch), 1)
    cmd = [
        sys.executable, "-m", "align_jax.main", "--config=configs/reward_model.py", f"--workdir={wd / f'rm_{name}'}",
        f"--config.model.name={model}", "--config.data.source=preference",
        f"--config.data.train_path={wd / f'{half}_pairs.jsonl'}", "--config.data.eval_fraction=0.1",
        f"--config.data.max_eval_examples={n_pairs // 10}", f"--config.data.batch_size={batch}",
        f"--config.data.max_length={max_length}", f"--config.data.max_prompt_length={max_prompt_length}",
        f"--config.data.seed={seed}", f"--config.train.steps={steps}", f"--config.train.eval_every={steps}",
        f"--config.train.checkpoint_every={steps}", f"--config.optimizer.learning_rate={learning_rate}",
        f"--config.optimizer.total_steps={steps}", "--config.optimizer.warmup_steps=5", "--config.model.remat=full",
        "--config.data.pair_layout=shared_prefix",  # each prompt once, both replies in its row
        f"--config.data.max_train_examples={max(max_pairs, 0)}",
    ]
    if name == "proxy_ens":
        cmd += [f"--config.loss.ensemble_size={ensemble_size}", "--config.loss.bootstrap=true",
                f"--config.loss.bootstrap_seed={seed}"]
    return cmd


def rm_stage(wd: pathlib.Path) -> None:
    for name in RMS:
        if (wd / f"rm_{name}" / "export" / "reward_model.json").exists():
            print(f"rm {name}: exists, skipped", flush=True)
            continue
        half = "gold" if name == "gold" else "proxy"
        n = sum(1 for _ in (wd / f"{half}_pairs.jsonl").open())
        cmd = rm_command(wd, name, n, model=F.model, batch=F.rm_batch, max_length=F.rm_max_length,
                         max_prompt_length=F.max_prompt_tokens, learning_rate=F.rm_learning_rate, seed=F.seed,
                         ensemble_size=F.ensemble_size, max_pairs=F.rm_pairs)
        print(f"rm {name}:", shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)


# -- measuring: samples, rewards, log-ratios ------------------------------------------------------------

class Judge:
    """The three reward models and the reference, loaded once: rewards and reference log-probs of replies."""

    def __init__(self, wd: pathlib.Path, ref, folder: str = NORMALIZED):
        from align_jax.rewards.model import load_reward_model

        self.ref = ref
        self.rms = {name: load_reward_model(wd / f"rm_{name}" / folder, batch_size=16) for name in RMS}

    def rewards(self, prompts: Sequence[Any], texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``proxy`` [N], ``proxy_ens`` [N, E], ``gold`` [N]."""
        return {name: np.asarray(rm.score(prompts, texts), np.float64) for name, rm in self.rms.items()}

    def ref_logps(self, prompt_ids: Sequence[Sequence[int]], reply_ids: Sequence[Sequence[int]],
                  batch: int = 16) -> list[np.ndarray]:
        """Teacher-forced reference log-probs of each reply's tokens (a list of [len(reply)] arrays)."""
        from align_jax.evals.runner import continuation_logprobs

        return continuation_logprobs(self.ref, list(zip(prompt_ids, reply_ids)), batch_size=batch, bucket=32)


def sample_and_judge(lm, judge: Judge, prompts: Sequence[Any], *, n: int, max_new_tokens: int, batch: int,
                     seed: int) -> dict[str, Any]:
    """``n`` replies per prompt from ``lm`` (temperature 1): rewards [P, n] (``proxy_ens`` [P, n, E]),
    sequence log-ratios against the reference [P, n], lengths, texts."""
    from align_jax.sampling.greedy import chat_ids, generate_sampled

    ids = [chat_ids(lm, p) for p in prompts]
    gens = generate_sampled(lm, ids, n=n, max_new_tokens=max_new_tokens, batch_size=batch, seed=seed, progress=True)
    flat = [(i, g) for i, gs in enumerate(gens) for g in gs]
    texts = [g.text for _, g in flat]
    rewards = judge.rewards([prompts[i] for i, _ in flat], texts)
    ref = judge.ref_logps([ids[i] for i, _ in flat], [g.token_ids for _, g in flat])
    log_ratio = np.array([float(np.sum(g.logprobs) - np.sum(r)) for (_, g), r in zip(flat, ref)])
    p = len(prompts)
    return {"rewards": {k: v.reshape((p, n) + v.shape[1:]) for k, v in rewards.items()},
            "log_ratio": log_ratio.reshape(p, n), "length": np.array([len(g.token_ids) for _, g in flat]).reshape(p, n),
            "texts": texts}


# -- 3. best-of-N -------------------------------------------------------------------------------------

def selector_scores(rewards: Mapping[str, np.ndarray], lam: float = 1.0) -> dict[str, np.ndarray]:
    """The score each best-of-N rule ranks by, from ``proxy`` [P, N] and ``proxy_ens`` [P, N, E]."""
    ens = rewards["proxy_ens"]
    return {"proxy": rewards["proxy"], "ensemble_mean": ens.mean(-1), "ensemble_min": ens.min(-1),
            "ensemble_mean_minus_std": ens.mean(-1) - lam * ens.std(-1)}


def best_of_n_weights(n_max: int, n: int) -> np.ndarray:  # [n_max] float64, sums to 1
    """P(the sample ranked i (ascending, 1-based) of n_max is the best of a uniformly random n-subset)
    = C(i-1, n-1) / C(n_max, n): Gao et al.'s unbiased best-of-N estimator (arXiv:2210.10760)."""
    if not 1 <= n <= n_max:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {n_max}")
    return np.array([math.comb(i - 1, n - 1) for i in range(1, n_max + 1)], np.float64) / math.comb(n_max, n)


def best_of_n(select: np.ndarray, proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> list[dict]:
    """Expected best-of-N by ``select`` [P, N_max] over random N-subsets of each prompt's samples
    (ties ranked by sample order): the picked sample's mean proxy and gold rewards with standard
    errors over prompts, and KL = log N - (N-1)/N."""
    order = np.argsort(select, axis=1, kind="stable")  # ascending rank per prompt
    ranked = {name: np.take_along_axis(r, order, axis=1) for name, r in
              (("proxy", proxy), ("gold", gold), ("select", select))}
    points = []
    for n in ns:
        w = best_of_n_weights(select.shape[1], n)
        point = {"n": int(n), "kl": float(np.log(n) - (n - 1) / n)}
        for name, r in ranked.items():
            v = r @ w  # [P] expected reward of the pick per prompt
            point[name], point[f"{name}_se"] = float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v)))
        points.append(point)
    return points


def within_prompt_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of [P, N] scores after removing each prompt's mean (how well ``a`` ranks a
    prompt's samples as ``b`` does, without the differences between prompts)."""
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def bon_stage(wd: pathlib.Path) -> None:
    if (wd / "bon.json").exists():
        print("bon: exists, skipped", flush=True)
        return
    from align_jax.models import load_model

    prompts = [r["prompt"] for r in read_jsonl(wd / "eval_prompts.jsonl")]
    ref = load_model(F.model)
    judge = Judge(wd, ref, folder="export")  # raw: the samples' rewards set the normalisation
    t = time.time()
    s = sample_and_judge(ref, judge, prompts, n=F.bon_max, max_new_tokens=F.max_new_tokens, batch=F.sample_batch,
                         seed=F.seed + 1)
    out = dict(bon_summary(s["rewards"], s["length"]), seconds=time.time() - t, examples=s["texts"][:4])
    np.savez(wd / "bon_samples.npz", log_ratio=s["log_ratio"], length=s["length"],
             **{f"reward_{k}": v for k, v in s["rewards"].items()})
    (wd / "bon.json").write_text(json.dumps(out, indent=1))
    print_bon(out)


def bon_summary(rewards: Mapping[str, np.ndarray], length: np.ndarray) -> dict[str, Any]:
    """Best-of-N curves of every selector, from ``rewards`` (``proxy`` / ``gold`` [P, N_max],
    ``proxy_ens`` [P, N_max, E]) of the reference's samples, and how the reward models agree."""
    p, n_max = rewards["proxy"].shape
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n <= n_max]
    sel = selector_scores(rewards)
    return {"n_max": int(n_max), "prompts": int(p),
            "curves": {k: best_of_n(v, rewards["proxy"], rewards["gold"], ns) for k, v in sel.items()},
            "reference": {"proxy": float(rewards["proxy"].mean()), "gold": float(rewards["gold"].mean()),
                          "mean_length": float(length.mean())},
            "proxy_gold_correlation": float(np.corrcoef(rewards["proxy"].ravel(), rewards["gold"].ravel())[0, 1]),
            "proxy_gold_correlation_within_prompt": within_prompt_correlation(rewards["proxy"], rewards["gold"]),
            # is the ensemble an ensemble? its members' spread on a sample vs the spread of its mean across samples
            "ensemble_member_std": float(rewards["proxy_ens"].std(-1).mean()),
            "ensemble_mean_std_within_prompt": float(rewards["proxy_ens"].mean(-1).std(1).mean())}


def print_bon(out: Mapping[str, Any]) -> None:
    for k, pts in out["curves"].items():
        print(f"bon {k}: " + "  ".join(f"N={p['n']} proxy {p['proxy']:+.3f} gold {p['gold']:+.3f}" for p in pts),
              flush=True)


# -- 3b. normalise ------------------------------------------------------------------------------------

def reference_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation over the reference samples of ``values`` [P, N] (one reward
    model) or [P, N, E] (an ensemble: each member its own): ``([] or [E], [] or [E])``."""
    flat = values.reshape((-1,) + values.shape[2:])
    mean, std = flat.mean(0), flat.std(0)
    if not np.all(std > 0):
        raise ValueError(f"the reference samples' rewards do not vary (std {std}); nothing to normalise by")
    return mean, std


def normalized_head(head: Mapping[str, np.ndarray], mean: np.ndarray, std: np.ndarray) -> dict[str, np.ndarray]:
    """The affine head ``(w / std, (b - mean) / std)``: it scores ``(r - mean) / std`` for the head's ``r``
    (``w [D]`` / ``b []``, or ``w [E, D]`` / ``b [E]`` with per-member ``mean`` / ``std`` [E])."""
    w, b = np.asarray(head["w"], np.float64), np.asarray(head["b"], np.float64)
    return {"w": (w / np.asarray(std)[..., None]).astype(np.float32), "b": ((b - mean) / std).astype(np.float32)}


def link_or_copy(a: pathlib.Path, b: pathlib.Path) -> None:
    """``b`` as a hard link to ``a`` (a copy where links fail, e.g. across file systems)."""
    import os
    import shutil

    try:
        os.link(a, b)
    except OSError:
        shutil.copy2(a, b)


def write_normalized(src: pathlib.Path, dst: pathlib.Path, mean: np.ndarray, std: np.ndarray) -> None:
    """``dst``: the reward model of ``src`` with its head normalised; the trunk and tokenizer files are
    hard links (copies where links fail), the metadata records the moments."""
    from align_jax.rewards.model import HEAD_FILE, META_FILE, read_head, save_head

    head, meta = read_head(src)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in (HEAD_FILE, META_FILE) and not (dst / f.name).exists():
            link_or_copy(f, dst / f.name)
    kept = {k: v for k, v in meta.items() if k not in ("hidden_size", "ensemble_size", "max_length")}
    save_head(dst, normalized_head(head, mean, std), max_length=meta["max_length"],
              normalized={"mean": np.asarray(mean).tolist(), "std": np.asarray(std).tolist(),
                          "over": "the reference policy's best-of-N samples of the held-out prompts"}, **kept)


def normalize_stage(wd: pathlib.Path) -> None:
    path = wd / "normalization.json"
    if path.exists():
        print("normalize: exists, skipped", flush=True)
        return
    s = np.load(wd / "bon_samples.npz")
    raw = {name: s[f"reward_{name}"] for name in RMS}
    moments = {name: reference_moments(v) for name, v in raw.items()}
    for name, (mean, std) in moments.items():
        write_normalized(wd / f"rm_{name}" / "export", wd / f"rm_{name}" / NORMALIZED, mean, std)
    scaled = {name: (v - moments[name][0]) / moments[name][1] for name, v in raw.items()}
    bon = json.loads((wd / "bon.json").read_text())
    if not (wd / "bon_raw.json").exists():  # an interrupted earlier try may have rewritten bon.json already
        (wd / "bon_raw.json").write_text(json.dumps(bon, indent=1))
    out = dict(bon_summary(scaled, s["length"]), units="reference-sample standard deviations",
               seconds=bon["seconds"], examples=bon["examples"])
    (wd / "bon.json").write_text(json.dumps(out, indent=1))
    path.write_text(json.dumps({k: {"mean": np.asarray(m).tolist(), "std": np.asarray(sd).tolist()}
                                for k, (m, sd) in moments.items()}, indent=1))
    print_bon(out)


# -- 4. PPO ---------------------------------------------------------------------------------------

def ppo_overrides(wd: pathlib.Path, variant: str, *, model: str, steps: int, every: int, kl_coef: float,
                  learning_rate: float, max_new_tokens: int, seed: int) -> dict[str, Any]:
    """The ``configs/ppo_hh.py`` overrides of one reward variant (dotted keys)."""
    rewards = {"plain": f"rm:{wd / 'rm_proxy' / NORMALIZED}", "ensemble_min": f"rm:{wd / 'rm_proxy_ens' / NORMALIZED}@min",
               "log_sigmoid": f"rm:{wd / 'rm_proxy' / NORMALIZED}"}
    if variant not in rewards:
        raise ValueError(f"unknown variant {variant!r}; valid: {VARIANTS}")
    return {"model.name": model, "data.train_path": str(wd / "rl_prompts.jsonl"),
            "data.eval_path": str(wd / "eval_prompts.jsonl"), "data.seed": seed,
            "train.steps": steps, "train.checkpoint_every": every, "train.eval_every": steps,
            # only the step cadence saves (a time-based save between them would push the early ones out)
            "train.keep_checkpoints": steps // every + 1, "train.checkpoint_every_seconds": 0.0,
            "optimizer.learning_rate": learning_rate,
            # the gold model scores every rollout at weight 0: logged beside the proxy, never optimised
            "rl.rewards": f"{rewards[variant]},rm:{wd / 'rm_gold' / NORMALIZED}", "rl.reward_weights": "1,0",
            "rl.kl_coef": kl_coef, "rl.max_new_tokens": max_new_tokens,
            "rl.reward_transform": "log-sigmoid" if variant == "log_sigmoid" else "identity"}


def ppo_config(overrides: Mapping[str, Any]):
    """``configs/ppo_hh.py`` with ``overrides`` applied, as the engine's command line would."""
    c = runpy.run_path(str(REPO / "configs" / "ppo_hh.py"))["get_config"]()
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = c
        for part in path:
            node = node[part]
        node[leaf] = value
    return c


def ppo_stage(wd: pathlib.Path) -> None:
    for variant in F.variants:
        out = wd / f"ppo_{variant}"
        if (out / "metrics.jsonl").exists() and (out / "report.md").exists():
            print(f"ppo {variant}: exists, skipped", flush=True)
            continue
        o = ppo_overrides(wd, variant, model=F.model, steps=F.ppo_steps, every=F.checkpoint_every, kl_coef=F.kl_coef,
                          learning_rate=F.ppo_learning_rate, max_new_tokens=F.max_new_tokens, seed=F.seed)
        cmd = [sys.executable, "-m", "align_jax.main", "--config=configs/ppo_hh.py", f"--workdir={out}",
               *[f"--config.{k}={v}" for k, v in o.items()]]
        print(f"ppo {variant}:", shlex.join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)


# -- 5. measure -----------------------------------------------------------------------------------

def summarize(s: Mapping[str, Any]) -> dict[str, float]:
    """Mean proxy and gold reward and KL (mean sequence log-ratio) of one policy's samples, with SEs."""
    out = {}
    for name, v in (("proxy", s["rewards"]["proxy"]), ("gold", s["rewards"]["gold"]),
                    ("ensemble_min", s["rewards"]["proxy_ens"].min(-1)), ("kl", s["log_ratio"])):
        per_prompt = v.mean(axis=1)
        out[name], out[f"{name}_se"] = float(per_prompt.mean()), float(per_prompt.std(ddof=1) / np.sqrt(len(per_prompt)))
    out["mean_length"] = float(s["length"].mean())
    return out


def measure_stage(wd: pathlib.Path) -> None:
    from align_jax.models import load_model
    from align_jax.training.config import parse_config
    from align_jax.training.loop import checkpoint_policies

    path = wd / "measure.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    prompts = [r["prompt"] for r in read_jsonl(wd / "eval_prompts.jsonl")]
    ref = load_model(F.model)
    judge = Judge(wd, ref)
    kw = dict(n=F.measure_samples, max_new_tokens=F.max_new_tokens, batch=F.sample_batch, seed=F.seed + 2)
    if "reference" not in done:
        done["reference"] = dict(summarize(sample_and_judge(ref, judge, prompts, **kw)), step=0)
        path.write_text(json.dumps(done, indent=1))
    for variant in F.variants:
        o = ppo_overrides(wd, variant, model=F.model, steps=F.ppo_steps, every=F.checkpoint_every, kl_coef=F.kl_coef,
                          learning_rate=F.ppo_learning_rate, max_new_tokens=F.max_new_tokens, seed=F.seed)
        cfg = parse_config(ppo_config(o))
        points = done.setdefault(variant, {})
        only = [int(k) for k in F.measure_steps] or None  # integers: checked in main
        for step, policy in checkpoint_policies(cfg, wd / f"ppo_{variant}", skip=[int(k) for k in points], only=only):
            lm = dataclasses.replace(ref, model=policy)
            points[str(step)] = dict(summarize(sample_and_judge(lm, judge, prompts, **kw)), step=step)
            p = points[str(step)]
            print(f"measure {variant} step {step}: proxy {p['proxy']:+.3f} gold {p['gold']:+.3f} KL {p['kl']:.2f}",
                  flush=True)
            path.write_text(json.dumps(done, indent=1))


# -- 6. report --------------------------------------------------------------------------------------

def training_curve(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Per PPO step, from its ``metrics.jsonl`` rows: the optimised reward (before any transform) and
    the gold reward of that step's on-policy rollouts, and their sequence KL to the reference
    (``rl/kl_to_reference`` is a per-token mean, times the mean reply length). A step with a
    non-finite value (a failed batch) is left out; a log without a watched gold reward gives []."""
    out = []
    for r in rows:
        if r.get("split", "train") != "train" or "rl/kl_to_reference" not in r:
            continue
        rewards = {k: v for k, v in r.items() if k.startswith("reward/rm:")}
        gold = [k for k in rewards if k.rstrip("/").endswith(("rm_gold/export", f"rm_gold/{NORMALIZED}"))]
        if not gold:
            return []
        if len(gold) != 1 or len(rewards) != 2:
            raise ValueError(f"step {r.get('step')}: expected one optimised and one gold reward, got {sorted(rewards)}")
        (optimised,) = set(rewards) - set(gold)
        p = {"step": int(r["step"]), "kl": float(r["rl/kl_to_reference"]) * float(r["rl/response_length"]),
             "optimised": float(rewards[optimised]), "gold": float(rewards[gold[0]])}
        if all(math.isfinite(v) for v in p.values()):
            out.append(p)
    return sorted(out, key=lambda p: p["step"])


def smooth(values: Sequence[float], window: int) -> np.ndarray:  # [len(values)]
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    v = np.asarray(values, np.float64)
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(1, len(v) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)



def plot(bon: Mapping[str, Any] | None, measured: Mapping[str, Any] | None,
         curves: Mapping[str, Sequence[Mapping[str, float]]], path: pathlib.Path, window: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    colors = dict(zip(SELECTORS + VARIANTS, ("tab:blue", "tab:green", "tab:red", "tab:purple",
                                             "tab:blue", "tab:red", "tab:orange")))
    ax = axes[0]
    if bon:
        base = {k: bon["curves"]["proxy"][0][k] for k in ("proxy", "gold")}  # N = 1: the reference's mean
        for name, pts in bon["curves"].items():
            x = [math.sqrt(p["kl"]) for p in pts]
            ax.plot(x, [p["gold"] - base["gold"] for p in pts], "-o", color=colors[name], ms=4, label=f"{name}: gold")
            ax.plot(x, [p["proxy"] - base["proxy"] for p in pts], "--", color=colors[name], alpha=0.6,
                    label=f"{name}: proxy")
        ax.set_title(f"best-of-N (N <= {bon['n_max']}), {bon['prompts']} held-out prompts")
    ax.set_xlabel("sqrt(KL), KL = log N - (N-1)/N")
    ax = axes[1]
    if measured and "reference" in measured:
        ref = measured["reference"]
        for variant in VARIANTS:
            pts = sorted(measured.get(variant, {}).values(), key=lambda p: p["step"])
            if not pts:
                continue
            pts = [ref] + pts
            x = [math.sqrt(max(p["kl"], 0.0)) for p in pts]
            ax.errorbar(x, [p["gold"] - ref["gold"] for p in pts], yerr=[p["gold_se"] for p in pts], fmt="-o",
                        color=colors[variant], ms=4, label=f"{variant}: gold")
            key = OPTIMISED[variant]
            ax.plot(x, [p[key] - ref[key] for p in pts], "--", color=colors[variant], alpha=0.6,
                    label=f"{variant}: {key} (optimised)")
        ax.set_title("PPO against the proxy (points: checkpoints)")
    ax.set_xlabel("sqrt(KL(pi || pi_ref)), Monte Carlo, nats per reply")
    ax = axes[2]
    for variant, pts in curves.items():
        if not pts:
            continue
        x = np.sqrt(np.maximum(smooth([p["kl"] for p in pts], window), 0.0))
        for key, style, alpha in (("gold", "-", 1.0), ("optimised", "--", 0.6)):
            y = smooth([p[key] for p in pts], window)  # y[window - 1]: the mean of the first `window` steps
            ax.plot(x, y - y[min(window, len(y)) - 1], style, color=colors[variant], alpha=alpha,
                    label=f"{variant}: {key if key == 'gold' else OPTIMISED[variant] + ' (optimised)'}")
    ax.set_title(f"PPO, on-policy rollouts while training (mean of {window} steps)")
    ax.set_xlabel("sqrt(KL), k1 per reply")
    for ax in axes[:2]:
        ax.set_ylabel("reward - reference policy's")
    axes[2].set_ylabel(f"reward - its mean over the first {window} steps")
    for ax in axes:
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def report_stage(wd: pathlib.Path) -> None:
    bon = json.loads((wd / "bon.json").read_text()) if (wd / "bon.json").exists() else None
    measured = json.loads((wd / "measure.json").read_text()) if (wd / "measure.json").exists() else None
    rms = {}
    for name in RMS:
        rows = read_jsonl(wd / f"rm_{name}" / "metrics.jsonl") if (wd / f"rm_{name}" / "metrics.jsonl").exists() else []
        evals = [r for r in rows if "eval/rm/accuracy" in r]
        rms[name] = evals[-1] if evals else None
    md = ["# Reward-model over-optimisation on HH-RLHF (proxy vs gold against KL)", "",
          f"Data: `{(wd / 'data_summary.json').read_text().strip() if (wd / 'data_summary.json').exists() else ''}`", "",
          "Reward models (last held-out eval): " + json.dumps({k: v for k, v in rms.items()}), ""]
    if bon:
        md += [f"## Best-of-N ({bon['prompts']} held-out prompts x {bon['n_max']} reference samples, "
               f"proxy/gold correlation {bon['proxy_gold_correlation']:.3f})", "",
               "| rule | " + " | ".join(f"N={p['n']} proxy / gold" for p in bon["curves"]["proxy"]) + " |",
               "|---|" + "---|" * len(bon["curves"]["proxy"])]
        for name, pts in bon["curves"].items():
            md.append(f"| {name} | " + " | ".join(f"{p['proxy']:+.3f} / {p['gold']:+.3f} (±{p['gold_se']:.3f})"
                                                   for p in pts) + " |")
        md.append("")
    if measured:
        md += ["## PPO checkpoints (mean over held-out samples; KL = mean sequence log-ratio)", "",
               "| policy | step | KL | proxy | gold | ensemble min | length |", "|---|---|---|---|---|---|---|"]
        ref = measured.get("reference")
        if ref:
            md.append(f"| reference | 0 | {ref['kl']:.3f} | {ref['proxy']:+.3f} | {ref['gold']:+.3f} (±{ref['gold_se']:.3f}) "
                      f"| {ref['ensemble_min']:+.3f} | {ref['mean_length']:.1f} |")
        for variant in VARIANTS:
            for p in sorted(measured.get(variant, {}).values(), key=lambda p: p["step"]):
                md.append(f"| {variant} | {p['step']} | {p['kl']:.3f} | {p['proxy']:+.3f} | {p['gold']:+.3f} "
                          f"(±{p['gold_se']:.3f}) | {p['ensemble_min']:+.3f} | {p['mean_length']:.1f} |")
        md.append("")
    curves = {v: training_curve(read_jsonl(wd / f"ppo_{v}" / "metrics.jsonl")) for v in VARIANTS
              if (wd / f"ppo_{v}" / "metrics.jsonl").exists()}
    if any(curves.values()):
        md += ["## PPO while training (on-policy rollouts of the RL prompts; first and last 5 steps)", "",
               "| variant | steps | KL first -> last | optimised first -> last | gold first -> last |",
               "|---|---|---|---|---|"]
        for v, pts in curves.items():
            if pts:
                head, tail = pts[:5], pts[-5:]
                m = {k: (np.mean([p[k] for p in head]), np.mean([p[k] for p in tail])) for k in ("kl", "optimised", "gold")}
                md.append(f"| {v} | {len(pts)} | {m['kl'][0]:.2f} -> {m['kl'][1]:.2f} | {m['optimised'][0]:+.3f} -> "
                          f"{m['optimised'][1]:+.3f} | {m['gold'][0]:+.3f} -> {m['gold'][1]:+.3f} |")
        md.append("")
    md += ["![over-optimisation](overoptimization.png)", ""]
    plot(bon, measured, curves, wd / "overoptimization.png")
    (wd / "report.md").write_text("\n".join(md))
    (wd / "results.json").write_text(json.dumps({"reward_models": rms, "best_of_n": bon, "ppo": measured,
                                                 "ppo_training": curves}, indent=1))
    print("\n".join(md), flush=True)


# the flags that decide what the stages write: a workdir holds the outputs of one setting
UPSTREAM_SETTINGS = ("hh_path", "model", "seed", "eval_prompts", "max_prompt_tokens", "rm_max_length", "rm_batch",
                     "rm_pairs", "rm_learning_rate", "ensemble_size", "max_new_tokens", "bon_max")  # data..normalize
SETTINGS = UPSTREAM_SETTINGS + ("ppo_steps", "checkpoint_every", "kl_coef", "ppo_learning_rate", "measure_samples")
UPSTREAM_FILES = ("data_summary.json", "proxy_pairs.jsonl", "gold_pairs.jsonl", "eval_pairs.jsonl", "eval_prompts.jsonl",
                  "rl_prompts.jsonl", "bon.json", "bon_raw.json", "bon_samples.npz", "normalization.json")


def check_upstream(src: pathlib.Path, settings: Mapping[str, Any]) -> None:
    """``src`` holds finished data..normalize stages written with the same upstream ``settings``;
    else ``ValueError`` / ``FileNotFoundError`` naming what differs or is missing (before any writing)."""
    if not (src / "settings.json").exists():
        raise FileNotFoundError(f"--reward_models_from={src}: no settings.json there (not a workdir of this script)")
    before = json.loads((src / "settings.json").read_text())
    changed = {k: (before.get(k), settings[k]) for k in UPSTREAM_SETTINGS if before.get(k) != settings[k]}
    if changed:
        listed = ", ".join(f"--{k}: {a!r} there, {b!r} here" for k, (a, b) in changed.items())
        raise ValueError(f"--reward_models_from={src} was written with other settings ({listed})")
    if not (src / "normalization.json").exists():
        raise FileNotFoundError(f"--reward_models_from={src} has not finished its normalize stage: run its stages "
                                "data,rm,bon,normalize first")


def link_upstream(src: pathlib.Path, wd: pathlib.Path) -> None:
    """Makes ``wd``'s data..normalize stages those of ``src`` (checked by :func:`check_upstream`): the
    small files copied, each reward model's exports (raw and normalised) hard-linked (copied where
    links fail) with its training metrics, so nothing written in ``wd`` changes ``src``. Files that
    ``wd`` already holds are kept. Its later stages then skip those."""
    import shutil

    def put(a: pathlib.Path, b: pathlib.Path, link: bool) -> None:
        if b.exists() or not a.exists():
            return
        b.parent.mkdir(parents=True, exist_ok=True)
        (link_or_copy if link else shutil.copy2)(a, b)

    for name in UPSTREAM_FILES:
        put(src / name, wd / name, link=False)
    for name in RMS:
        for f in ("metrics.jsonl", "result.json"):
            put(src / f"rm_{name}" / f, wd / f"rm_{name}" / f, link=False)
        for folder in ("export", NORMALIZED):
            for f in sorted((src / f"rm_{name}" / folder).iterdir()):
                if f.is_file():  # the model files are never rewritten after export: links are safe
                    put(f, wd / f"rm_{name}" / folder / f.name, link=True)
    (wd / "reward_models_from.txt").write_text(f"{src}\n")


def main(argv):
    del argv
    wd = work_folder(F.workdir, REPO)
    wd.mkdir(parents=True, exist_ok=True)
    stages = {"data": data_stage, "rm": rm_stage, "bon": bon_stage, "normalize": normalize_stage, "ppo": ppo_stage, "measure": measure_stage,
              "report": report_stage}
    check_names("stages", F.stages, stages)
    check_names("variants", F.variants, VARIANTS)
    bad_steps = [k for k in F.measure_steps if not k.strip().isdigit() or int(k) % F.checkpoint_every
                 or not 0 < int(k) <= F.ppo_steps]
    if bad_steps:
        raise ValueError(f"--measure_steps {bad_steps}: PPO checkpoints are the multiples of --checkpoint_every="
                         f"{F.checkpoint_every} up to --ppo_steps={F.ppo_steps}")
    if F.rm_max_length < F.max_prompt_tokens + F.max_new_tokens + 1:
        raise ValueError(f"--rm_max_length={F.rm_max_length} cannot hold a {F.max_prompt_tokens}-token prompt, a "
                         f"{F.max_new_tokens}-token reply and its end of turn (needs "
                         f"{F.max_prompt_tokens + F.max_new_tokens + 1})")
    if "data" in F.stages and not pathlib.Path(F.hh_path).exists():
        raise FileNotFoundError(f"HH-RLHF pairs not found at {F.hh_path} (see ../shared/data/README.md)")
    settings = {k: F[k].value for k in SETTINGS}
    if F.reward_models_from:
        src = work_folder(F.reward_models_from, REPO)
        if src.resolve() == wd.resolve():
            raise ValueError("--reward_models_from names the workdir itself")
        check_upstream(src, settings)
    check_same_settings(wd / "settings.json", settings)
    if F.reward_models_from:
        link_upstream(src, wd)
    run_stages(stages, F.stages, wd)


if __name__ == "__main__":
    define_flags()
    app.run(main)
