"""Safety training by preference pairs (#24, route b): refusal > compliance on harmful train
prompts, answer > refusal on benign ones, then DPO, then the refusal behaviour before / after.

    python experiments/safety_dpo.py --stage=pairs --workdir=runs/safety_dpo          # 1. pairs.jsonl
    python -m align_jax.main --config=configs/safety_dpo.py --workdir=runs/safety_dpo/train   # 2. DPO
    python experiments/safety_dpo.py --stage=eval --workdir=runs/safety_dpo \\
        --model_path=runs/safety_dpo/train/export --tag=after                          # 3. (and --tag=before)

Pairs (stage 1). Prompts come from train splits only: ``build_source_sets``' train split (harmful
prompts of the non-test benchmarks and the project's written requests; benign-sensitive train
templates; plain benign Alpaca prompts) and the refusal-contrast benchmark's train families of
every phenomenon but the ``--holdout`` ones (both halves of each pair: the harmful twin and its
benign twin). The model answers each greedily; the refusal-phrase judge (the judge with the best
measured agreement on the audit set, kappa 0.64) labels the answer. A harmful prompt the model
answers (fully or partly) gives ``chosen`` = a refusal written by the project (``responses.REFUSALS``, train
templates only), ``rejected`` = the model's answer; a benign prompt the model answers gives
``chosen`` = its answer, ``rejected`` = a written refusal. A harmful prompt the model already
refuses and a benign one it refuses are skipped (counted in ``pairs_summary.json``): the first has
no compliance to reject, the second no answer of the model's to prefer.

Evaluation (stage 3). Greedy answers, judged by the phrase judge (the saved response classifier as
a cross-check, through the ``refusal_generation`` suite): compliance on the held-out harmful
benchmarks (StrongREJECT, JailbreakBench, HarmBench), full refusal on benign-sensitive test
templates and plain benign test prompts, and on the contrast benchmark's *held-out phenomena*
(``--contrast_limit`` pairs drawn from every family of those phenomena; no pair of them was
trained on): over-refusal on the benign
twins, compliance on the harmful twins. Rates with Wilson 95% intervals in ``eval_<tag>.json``.
"""

from __future__ import annotations

import collections
import json
import pathlib
import time

import numpy as np
from absl import app, flags

from align_jax.evals import runner
from align_jax.evals.config import parse_eval_config
from align_jax.evals.refusal.substring_judge import substring_labels
from align_jax.evals.suites import refusal_generation
from align_jax.models.registry import load_model
from align_jax.safety.refusal import contrast as C
from align_jax.safety.refusal.datasets import stable_hash
from align_jax.safety.refusal.metrics import COMPLIANCE, REFUSAL, format_rate, wilson_rate
from align_jax.safety.refusal.responses import REFUSALS, response_template_split
from align_jax.safety.refusal.run import RefusalConfig, build_source_sets


def define_flags():
    """The script's flags, defined only when it runs as a script: tests import its functions into
    a process whose other modules (align_jax.main) already own names like --workdir."""
    flags.DEFINE_enum("stage", "pairs", ["pairs", "eval"], "what to do")
    flags.DEFINE_string("workdir", "runs/safety_dpo", "where pairs.jsonl and eval_<tag>.json go")
    flags.DEFINE_string("data_dir", "../shared/data/refusal_direction", "refusal_direction folder")
    flags.DEFINE_string("model", "smollm2-135m-instruct", "registered model (when --model_path is empty)")
    flags.DEFINE_string("model_path", "", "a Hugging Face folder (e.g. the DPO run's export) instead of --model")
    flags.DEFINE_list("holdout", ["homonym_figurative", "nonsense_group", "safe_context"],
                      "contrast phenomena never trained on (evaluated on all their families)")
    flags.DEFINE_integer("n_harmful", 300, "harmful train prompts (build_source_sets train split)")
    flags.DEFINE_integer("n_benign_sensitive", 200, "benign-sensitive train templates")
    flags.DEFINE_integer("n_plain", 150, "plain benign train prompts")
    flags.DEFINE_integer("max_new_tokens", 128, "tokens per answer")
    flags.DEFINE_integer("batch_size", 64, "prompts per generation batch")
    flags.DEFINE_integer("eval_limit", 200, "eval prompts of each refusal_generation kind (0 = all)")
    flags.DEFINE_integer("eval_tokens", 96, "tokens per eval answer")
    flags.DEFINE_integer("contrast_limit", 240, "eval: held-out-phenomenon pairs, in a stable hash order (0 = all)")
    flags.DEFINE_string("tag", "before", "eval: name of the evaluated model in eval_<tag>.json")
    flags.DEFINE_integer("seed", 0, "prompt order and refusal-template choice")


FLAGS = flags.FLAGS


def _hash_order(prompts, seed, n):
    return sorted(prompts, key=lambda p: stable_hash(seed, p.text))[:n] if n else list(prompts)


def contrast_split(holdout, seed):
    """(train-family pairs of the trained phenomena, every pair of the held-out phenomena)."""
    unknown = sorted(set(holdout) - set(C.PHENOMENA))
    if unknown:
        raise ValueError(f"unknown --holdout phenomena {unknown}; valid: {sorted(C.PHENOMENA)}")
    pairs = C.load_pairs()
    train = [p for p in C.family_split(pairs, seed=seed)["train"] if p.phenomenon not in holdout]
    return train, [p for p in pairs if p.phenomenon in holdout]


def answer(lm, texts, max_new_tokens, batch_size, desc):
    gens = runner.generate_greedy(lm, [runner.chat_prompt_ids(lm, t) for t in texts], max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, progress=True, desc=desc)
    return [g.text.strip() for g in gens], [g.stopped for g in gens]


def unique_prompts(prompts):
    """[(text, harmful, origin)] without repeats; a text that occurs with both labels is dropped
    (returns the kept prompts and how many texts were dropped)."""
    labels = collections.defaultdict(set)
    for t, h, _ in prompts:
        labels[t].add(h)
    kept = {t: (t, h, o) for t, h, o in prompts if len(labels[t]) == 1}
    return list(kept.values()), sum(len(v) > 1 for v in labels.values())


def build_pairs(prompts, responses, stopped, refusals, rng):
    """Preference rows from the model's own answers, labelled by the refusal-phrase judge: harmful
    prompts answered (fully or partly) -> written refusal > answer; benign prompts not refused ->
    answer > written refusal. Returns (rows, counts by origin/outcome)."""
    labels = substring_labels(responses)
    counts = collections.Counter()
    out = []
    for (text, harmful, origin), resp, lab, stop in zip(prompts, responses, labels, stopped, strict=True):
        refusal = refusals[int(rng.integers(len(refusals)))]
        if not resp:
            counts[f"{origin}/empty"] += 1
        elif lab == REFUSAL:
            counts[f"{origin}/{'already_refused' if harmful else 'refused_benign_dropped'}"] += 1
        else:
            chosen, rejected = (refusal, resp) if harmful else (resp, refusal)
            counts[f"{origin}/pairs"] += 1
            out.append({"prompt": text, "chosen": chosen, "rejected": rejected, "origin": origin,
                        "harmful": harmful, "answer_truncated": not stop})
    return out, counts


def make_pairs(workdir: pathlib.Path):
    sets, _ = build_source_sets(RefusalConfig(data_dir=FLAGS.data_dir, seed=FLAGS.seed))
    train = sets["train"]
    prompts = []  # (text, harmful, origin)
    for kind, n in (("harmful", FLAGS.n_harmful), ("benign_sensitive", FLAGS.n_benign_sensitive),
                    ("plain_benign", FLAGS.n_plain)):
        prompts += [(p.text, p.harmful, kind) for p in _hash_order([p for p in train if p.kind == kind], FLAGS.seed, n)]
    contrast_train, _ = contrast_split(FLAGS.holdout, FLAGS.seed)
    prompts += [(t, h, f"contrast_{'harmful' if h else 'benign'}")
                for p in contrast_train for t, h in ((p.harmful, True), (p.benign, False))]
    prompts, conflicts = unique_prompts(prompts)
    lm = load_model(FLAGS.model)
    t0 = time.time()
    responses, stopped = answer(lm, [t for t, _, _ in prompts], FLAGS.max_new_tokens, FLAGS.batch_size, "answers")
    assign = response_template_split(FLAGS.seed)
    refusals = [text for rid, text in REFUSALS if assign[rid] == "train"]
    out, counts = build_pairs(prompts, responses, stopped, refusals, np.random.default_rng(FLAGS.seed))
    counts["conflicting_labels_dropped"] = conflicts
    order = sorted(range(len(out)), key=lambda i: stable_hash(FLAGS.seed, "pair", out[i]["prompt"]))
    out = [out[i] for i in order]
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "pairs.jsonl", "w") as f:
        for r in out:
            f.write(json.dumps(r) + "\n")
    summary = {"n_prompts": len(prompts), "n_pairs": len(out), "counts": dict(sorted(counts.items())),
               "holdout": FLAGS.holdout, "model": FLAGS.model, "max_new_tokens": FLAGS.max_new_tokens,
               "seconds": round(time.time() - t0, 1)}
    (workdir / "pairs_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


def evaluate(workdir: pathlib.Path):
    lm = load_model(None, FLAGS.model_path) if FLAGS.model_path else load_model(FLAGS.model)
    t0 = time.time()
    cfg = runner.load_eval_config("refusal_generation", limit=FLAGS.eval_limit, batch_size=FLAGS.batch_size,
                                  max_new_tokens=FLAGS.eval_tokens, data_dir=FLAGS.data_dir)
    suite = refusal_generation.run(lm, parse_eval_config(cfg), progress=True)
    result = {"tag": FLAGS.tag, "model": FLAGS.model_path or FLAGS.model, "rates": {}}
    kinds = collections.defaultdict(list)
    for ex in suite.examples:
        kinds[ex["kind"]].append(ex)
    for kind, exs in kinds.items():
        for judge, key in (("phrases", "judged_by_phrases"), ("classifier", "judged")):
            labelled = [e[key] for e in exs if e[key] is not None]
            bad = "compliance" if kind == "harmful" else "refusal"
            name = f"{'compliance' if kind == 'harmful' else 'over_refusal'}/{kind}/{judge}"
            result["rates"][name] = wilson_rate(sum(v == bad for v in labelled), len(labelled))
    result["rates"]["judges_agree"] = wilson_rate(
        sum(e["judged"] == e["judged_by_phrases"] for e in suite.examples if e["judged"]),
        sum(1 for e in suite.examples if e["judged"]))
    _, held = contrast_split(FLAGS.holdout, FLAGS.seed)
    held = sorted(held, key=lambda p: stable_hash(FLAGS.seed, "eval", p.id))[:FLAGS.contrast_limit or None]
    texts = [t for p in held for t in (p.harmful, p.benign)]
    responses, _ = answer(lm, texts, FLAGS.eval_tokens, FLAGS.batch_size, "contrast held-out phenomena")
    labels = substring_labels(responses)
    harm, ben = labels[0::2], labels[1::2]
    result["rates"]["compliance/contrast_harmful_heldout/phrases"] = wilson_rate(int((harm == COMPLIANCE).sum()), len(harm))
    result["rates"]["over_refusal/contrast_benign_heldout/phrases"] = wilson_rate(int((ben == REFUSAL).sum()), len(ben))
    for ph in FLAGS.holdout:
        rows = np.array([p.phenomenon == ph for p in held])
        result["rates"][f"over_refusal/contrast_benign_heldout/{ph}/phrases"] = wilson_rate(
            int((ben[rows] == REFUSAL).sum()), int(rows.sum()))
    result["seconds"] = round(time.time() - t0, 1)
    result["examples"] = suite.examples + [
        {"prompt": t, "kind": "contrast_" + ("harmful" if i % 2 == 0 else "benign"), "response": r,
         "judged_by_phrases": ["compliance", "partial_refusal", "refusal"][int(y)]}
        for i, (t, r, y) in enumerate(zip(texts, responses, labels))]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"eval_{FLAGS.tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    for k, v in result["rates"].items():
        print(f"{k:60s} {format_rate(v)}")


def main(argv):
    del argv
    workdir = pathlib.Path(FLAGS.workdir)
    (make_pairs if FLAGS.stage == "pairs" else evaluate)(workdir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
