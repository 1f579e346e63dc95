"""MaxMin-RLHF on a two-group synthetic preference set whose answer is known (arXiv:2402.08925).

Replies are 8-character strings of ``a``, ``b`` and other printable characters. Group A (the majority, ``--share_a`` of the pairs)
prefers the reply with more ``a``; group B prefers more ``b``. Their utilities are known: the
fraction of ``a`` (A) and of ``b`` (B) in a reply. A single reward model on the pooled pairs learns
the majority's taste, so a policy trained on it serves A and starves B; MaxMin trains one reward
model per group (``data.group_field="group"``, ``data.groups=A`` / ``B``) and maximises the worse of
the two (``rl.reward_combine="min"``), whose optimum splits the reply between ``a`` and ``b``.

    .venv/bin/python experiments/maxmin_toy.py --workdir=runs/maxmin_toy

Steps: three reward models (pooled, A, B) on the toy character trunk, their held-out accuracy per
group; GRPO from the same random toy policy against the pooled reward and against min(r_A, r_B);
then 512 samples (temperature 1) from the base and each trained policy, scored by both groups'
known utilities, both groups' reward models, and each group's win rate against the base policy
(P[utility(policy) > utility(base)] + 0.5 P[tie]). Writes ``results.json`` and ``table.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "configs"))


def define_flags():
    """The script's flags, defined only when it runs as a script: tests import its functions into
    a process whose other modules (align_jax.main) already own names like --workdir."""
    flags.DEFINE_string("workdir", "runs/maxmin_toy", "where runs and results go")
    flags.DEFINE_float("share_a", 0.8, "share of pairs labelled by group A")
    flags.DEFINE_integer("pairs", 3000, "preference pairs in all (10% held out)")
    flags.DEFINE_integer("rm_steps", 150, "reward-model steps")
    flags.DEFINE_integer("rl_steps", 40, "GRPO steps")
    flags.DEFINE_integer("samples", 512, "samples per policy for the evaluation")
    flags.DEFINE_integer("seed", 0, "data, training and sampling seed")
    flags.DEFINE_string("out", "experiments/results/maxmin_toy", "where results.json and table.md go")


FLAGS = flags.FLAGS

PROMPT = "Write some letters."
OTHER = [chr(c) for c in range(33, 127) if chr(c) not in "ab"]
LENGTH = 8


def utility(text: str, letter: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c == letter for c in chars) / len(chars) if chars else 0.0


def reply(rng: np.random.RandomState) -> str:
    """8 characters: ``a``, ``b`` or any other printable character, in proportions drawn per reply, so
    the reward models also see the characters a policy may write instead of a and b."""
    share = rng.dirichlet(np.ones(3))
    kinds = rng.choice(3, LENGTH, p=share)
    return "".join("ab"[k] if k < 2 else OTHER[rng.randint(len(OTHER))] for k in kinds)


def write_pairs(path: Path, n: int, share_a: float, rng: np.random.RandomState) -> None:
    """Pairs of random replies; the group's preferred one is chosen, ties redrawn."""
    with path.open("w") as f:
        written = 0
        while written < n:
            group = "A" if rng.rand() < share_a else "B"
            x, y = (reply(rng) for _ in range(2))
            letter = "a" if group == "A" else "b"
            if x.count(letter) == y.count(letter):
                continue
            chosen, rejected = (x, y) if x.count(letter) > y.count(letter) else (y, x)
            f.write(json.dumps({"prompt": PROMPT, "chosen": chosen, "rejected": rejected, "group": group}) + "\n")
            written += 1


def rm_config(train: Path, evals: Path, groups: str):
    from common import base_config

    c = base_config()
    c.model.name = "toy-chars"
    c.mesh = dict(data=1, fsdp=1, tensor=1)
    c.data.update(source="preference", train_path=str(train), eval_path=str(evals), max_length=48,
                  batch_size=32, max_eval_examples=256, group_field="group", groups=groups, seed=FLAGS.seed)
    c.train.update(task="reward_model", steps=FLAGS.rm_steps, eval_every=FLAGS.rm_steps, checkpoint_every=FLAGS.rm_steps,
                   export_hf=True, report=False)
    c.reference.mode = "none"
    c.loss = dict(name="bradley_terry", center_coef=0.01)
    c.optimizer.update(learning_rate=1e-3, schedule="constant", warmup_steps=0, total_steps=0)
    return c


def rl_config(prompts: Path, rewards: str, combine: str):
    import runpy

    c = runpy.run_path(str(REPO / "configs" / "grpo_toy.py"))["get_config"]()
    c.data.update(source="prompt", train_path=str(prompts), eval_path=str(prompts), seed=FLAGS.seed)
    c.train.update(steps=FLAGS.rl_steps, eval_every=FLAGS.rl_steps, checkpoint_every=FLAGS.rl_steps, export_hf=True,
                   report=False)
    c.rl.update(rewards=rewards, reward_combine=combine, max_new_tokens=LENGTH, eval_prompts=1)
    return c


def samples(model_path, n: int, seed: int) -> list[str]:
    from align_jax.models.chat import encode_chat
    from align_jax.models.registry import load_model
    from align_jax.sampling.decoding import SamplingParams
    from align_jax.sampling.sampler import sample

    lm = load_model(path=model_path)
    ids = encode_chat(lm.tokenizer, [{"role": "user", "content": PROMPT}], template=lm.chat_template,
                      add_generation_prompt=True).ids
    out = sample(lm.model, [ids], SamplingParams(n=n, max_new_tokens=LENGTH, temperature=1.0, seed=seed),
                 eos_ids=[lm.tokenizer.eos_id], pad_id=lm.tokenizer.pad_id or 0)
    tokens, mask = np.asarray(out.tokens), np.asarray(out.completion_mask)
    return [lm.tokenizer.decode([int(t) for t, m in zip(r, mr) if m], skip_special_tokens=True)
            for r, mr in zip(tokens, mask)]


def win_rate(policy: np.ndarray, base: np.ndarray) -> float:
    diff = policy[:, None] - base[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def main(argv):
    del argv
    from align_jax.models.toy import materialize
    from align_jax.rewards.model import load_reward_model
    from align_jax.training.config import parse_config
    from align_jax.training.loop import run

    work = Path(FLAGS.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(FLAGS.seed)
    train, evals, prompts = work / "pairs_train.jsonl", work / "pairs_eval.jsonl", work / "prompts.jsonl"
    write_pairs(train, FLAGS.pairs - FLAGS.pairs // 10, FLAGS.share_a, rng)
    write_pairs(evals, FLAGS.pairs // 10, 0.5, rng)  # held out: half each, to read each group's accuracy
    prompts.write_text("".join(json.dumps({"prompt": PROMPT}) + "\n" for _ in range(16)))

    rms, accuracy = {}, {}
    held = [json.loads(line) for line in evals.read_text().splitlines()]
    for name, groups in (("pooled", ""), ("A", "A"), ("B", "B")):
        result = run(parse_config(rm_config(train, evals, groups)), work / f"rm_{name}")
        rms[name] = result["export"]
        rm = load_reward_model(rms[name], batch_size=64)
        for g in ("A", "B"):
            rows = [r for r in held if r["group"] == g]
            margin = rm.score([r["prompt"] for r in rows], [r["chosen"] for r in rows]) - rm.score(
                [r["prompt"] for r in rows], [r["rejected"] for r in rows])
            accuracy[f"{name}_rm_on_{g}"] = float(np.mean(margin > 0))
        print(f"reward model {name}: held-out accuracy A {accuracy[f'{name}_rm_on_A']:.3f}, "
              f"B {accuracy[f'{name}_rm_on_B']:.3f}", flush=True)

    policies = {"base": str(materialize())}
    for name, rewards, combine in (("pooled RM", f"rm:{rms['pooled']}", "sum"),
                                   ("MaxMin (min of A, B RMs)", f"rm:{rms['A']},rm:{rms['B']}", "min")):
        tag = "pooled" if combine == "sum" else "maxmin"
        result = run(parse_config(rl_config(prompts, rewards, combine)), work / f"grpo_{tag}")
        policies[name] = result["export"]

    rm_a, rm_b = (load_reward_model(rms[g], batch_size=64) for g in ("A", "B"))
    table, texts = {}, {}
    for name, path in policies.items():
        texts[name] = samples(path, FLAGS.samples, FLAGS.seed + 1)
    base_util = {g: np.array([utility(t, g.lower()) for t in texts["base"]]) for g in ("A", "B")}
    for name, outs in texts.items():
        util = {g: np.array([utility(t, g.lower()) for t in outs]) for g in ("A", "B")}
        table[name] = {
            "utility_A": float(util["A"].mean()), "utility_B": float(util["B"].mean()),
            "rm_A": float(rm_a.score([PROMPT] * len(outs), outs).mean()),
            "rm_B": float(rm_b.score([PROMPT] * len(outs), outs).mean()),
            "win_A": win_rate(util["A"], base_util["A"]), "win_B": win_rate(util["B"], base_util["B"]),
            "examples": outs[:5],
        }
        print(name, {k: v for k, v in table[name].items() if k != "examples"}, flush=True)

    out = REPO / FLAGS.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"flags": {k: FLAGS[k].value for k in (
        "share_a", "pairs", "rm_steps", "rl_steps", "samples", "seed")}, "rm_accuracy": accuracy, "policies": table},
        indent=2))
    lines = ["| policy | utility A (frac. a) | utility B (frac. b) | min | RM_A | RM_B | win rate A vs base | "
             "win rate B vs base |", "|---|---|---|---|---|---|---|---|"]
    for name, r in table.items():
        lines.append(f"| {name} | {r['utility_A']:.3f} | {r['utility_B']:.3f} | {min(r['utility_A'], r['utility_B']):.3f} "
                     f"| {r['rm_A']:.2f} | {r['rm_B']:.2f} | {r['win_A']:.3f} | {r['win_B']:.3f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    define_flags()
    app.run(main)
