"""The refusal-judge audit (#22): real generations to label, then each judge against the labels.

    python experiments/refusal_audit.py --models=smollm2-135m-instruct,gemma3-270m \
        --out=align_jax/data/prompt_data/refusal_audit.jsonl        # 1. generate (unlabelled)
    # 2. label every record by hand (align_jax/safety/refusal/audit.py: LABEL_GUIDE)
    python experiments/refusal_audit.py --score --out_dir=experiments/results/refusal_audit   # 3. judges

For each model, ``--per_kind`` prompts of each kind, in a stable hash order: harmful prompts of
the held-out benchmarks (StrongREJECT, JailbreakBench, HarmBench), harmful and benign halves of the
contrastive pairs' test families, benign-sensitive test templates and plain benign prompts. Each
answer is written with ``"label": ""``: people (or a careful reader) fill in ``refusal`` /
``partial_refusal`` / ``compliance`` before any judge is scored or tuned on them
(``align_jax.safety.refusal.audit`` reads the file).

``--score`` compares with the labels: the refusal-phrase judge; the response classifier trained on
the project's response templates (``run.train_response_judge``); the same head retrained on real
generations (5-fold cross-fitted by prompt: each answer judged by a head that never saw its
prompt; the layer picked inside the training folds), alone and with the templates; and an LM judge
(``audit.LM_JUDGE_PROMPT``, the option letter of highest log-prob) with each model. It writes
``audit.json`` / ``audit.md`` to ``--out_dir`` and, with ``--save_judge``, the best learned judge
refitted on every audit answer (and the templates) for the refusal_generation suite.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from absl import app, flags

from align_jax.evals import runner
from align_jax.models.chat import encode_chat
from align_jax.models.registry import MODELS, load_model
from align_jax.evals.refusal.substring_judge import substring_labels
from align_jax.safety.refusal import audit as A
from align_jax.safety.refusal import contrast as C
from align_jax.safety.refusal.classifiers import ResponseClassifier, featurize, save_response_judge
from align_jax.safety.refusal.datasets import stable_hash
from align_jax.safety.refusal.metrics import format_rate
from align_jax.safety.refusal.probe import train_head
from align_jax.safety.refusal.responses import RESPONSE_CLASSES, build_response_examples
from align_jax.safety.refusal.run import RefusalConfig, build_prompt_sets, build_source_sets, train_response_judge


def define_flags():
    """The script's flags, defined only when it runs as a script: tests import its functions into
    a process whose other modules (align_jax.main) already own names like --workdir."""
    flags.DEFINE_string("data_dir", "../shared/data/refusal_direction", "refusal_direction folder")
    flags.DEFINE_list("models", ["smollm2-135m-instruct", "gemma3-270m"], "registered models that answer "
                      "(with --score: the models asked as LM judges)")
    flags.DEFINE_string("out", "/tmp/refusal_audit.jsonl", "where the unlabelled records go")
    flags.DEFINE_integer("per_kind", 32, "prompts of each of the five kinds per model")
    flags.DEFINE_integer("max_new_tokens", 96, "tokens per answer")
    flags.DEFINE_integer("batch_size", 16, "prompts per generation batch")
    flags.DEFINE_integer("seed", 0, "seed of the prompt order")
    flags.DEFINE_string("system", None, "a system message for every prompt (e.g. a safety instruction: more "
                        "refusals to audit); records are then tagged model '<name>+system'")
    flags.DEFINE_integer("block", 0, "which block of each kind's hash order to start from (0 = first)")
    flags.DEFINE_bool("score", False, "score the judges against the labelled --audit file instead of generating")
    flags.DEFINE_string("audit", None, "labelled audit file (default: the packaged refusal_audit.jsonl)")
    flags.DEFINE_string("out_dir", "/tmp/refusal_audit", "--score: where audit.json / audit.md go")
    flags.DEFINE_string("judge_model", "smollm2-135m-instruct", "--score: model whose features the learned judges read")
    flags.DEFINE_list("judge_layers", ["10", "14", "18"], "--score: layers the learned judges may read")
    flags.DEFINE_string("save_judge", None, "--score: write the best learned judge (refitted on all answers) here")
    flags.DEFINE_integer("folds", 5, "--score: cross-fitting folds (by prompt)")


def audit_prompts(data_dir: str, per_kind: int, seed: int, model_index: int) -> list[dict]:
    """``per_kind`` prompts of each kind; model k takes the k-th block of the hash order, so the
    models answer different prompts (more prompts audited) of the same kinds."""
    sets, _ = build_source_sets(RefusalConfig(data_dir=data_dir, seed=seed))
    test_pairs = C.family_split(C.load_pairs(), seed=seed)["test"]
    pools = {
        "benchmark_harmful": [(p.text, p.source) for p in sets["test"] if p.kind == "harmful"],
        "contrast_harmful": [(p.harmful, p.id) for p in test_pairs],
        "contrast_benign": [(p.benign, p.id) for p in test_pairs],
        "benign_sensitive": [(p.text, p.template_id) for p in sets["test"] if p.kind == "benign_sensitive"],
        "plain_benign": [(p.text, p.source) for p in sets["test"] if p.kind == "plain_benign"],
    }
    out = []
    for kind, pool in pools.items():
        pool = sorted(pool, key=lambda t: stable_hash(seed, "audit", t[0]))
        block = pool[model_index * per_kind:(model_index + 1) * per_kind]
        if len(block) < per_kind:
            raise ValueError(f"only {len(block)} {kind} prompts left for model {model_index}")
        out += [{"kind": kind, "prompt": text, "source": source} for text, source in block]
    return out


def chat_ids(lm, text: str, system: str | None) -> list[int]:
    if system is None:
        return runner.chat_prompt_ids(lm, text)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    return encode_chat(lm.tokenizer, messages, template=lm.chat_template, add_generation_prompt=True).ids


def lm_judge_labels(lm, prompts, responses, batch_size: int = 16, max_response_chars: int = 600) -> np.ndarray:
    """[N] RESPONSE_CLASSES labels from ``lm`` asked ``audit.LM_JUDGE_PROMPT``."""
    option_ids = [lm.tokenizer.encode(o) for o in A.LM_JUDGE_OPTIONS]
    pairs = []
    for p, r in zip(prompts, responses):
        ids = runner.chat_prompt_ids(lm, A.LM_JUDGE_PROMPT.format(prompt=p, response=r[:max_response_chars]))
        pairs += [(ids, o) for o in option_ids]
    lp = runner.continuation_logprobs(lm, pairs, batch_size=batch_size, progress=True, desc="LM judge")
    scores = np.array([x.sum() for x in lp]).reshape(len(prompts), len(A.LM_JUDGE_OPTIONS))
    return np.array(A.OPTION_CLASS)[scores.argmax(-1)]


def _fit_pick_layer(feats, y, idx, layers, cfg, folds, extra=None):
    """A head on rows ``idx`` (plus ``extra`` = (layer -> x, y) template rows), its layer picked by
    cross-validation inside ``idx``."""
    def fit(layer, rows):
        x, yy = feats[layer][rows], y[rows]
        if extra is not None:
            x, yy = np.concatenate([x, extra[0][layer]]), np.concatenate([yy, extra[1]])
        head, _ = train_head(x, yy, len(RESPONSE_CLASSES), steps=cfg.steps, lr=cfg.lr, l2=cfg.l2, seed=cfg.seed)
        return ResponseClassifier(layer, head)

    inner = folds[idx]
    best = max(layers, key=lambda layer: np.mean([
        (fit(layer, idx[inner != f]).predict(feats[layer][idx[inner == f]]) == y[idx[inner == f]]).mean()
        for f in np.unique(inner)]))
    return fit(best, idx)


def score(F) -> None:
    rows = A.read_audit(pathlib.Path(F.audit)) if F.audit else A.load_audit()
    y = A.labels_of(rows)
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    models = np.array([str(r["model"]) for r in rows], dtype=object)
    cfg = RefusalConfig(data_dir=F.data_dir, seed=F.seed, layers=tuple(int(x) for x in F.judge_layers))
    judged: dict[str, np.ndarray] = {"phrases": substring_labels(responses)}
    lm = load_model(F.judge_model)
    template_clf, template_report = train_response_judge(lm, F.judge_model, cfg, log=print)
    layers = cfg.layers
    feats = featurize(lm.model, lm.tokenizer, lm.chat_template, prompts, responses, layers=layers)
    judged["classifier_templates"] = template_clf.predict(feats[template_clf.layer])
    ex = build_response_examples(build_prompt_sets(cfg)["train"], "train", cfg.response_per_class[0], seed=cfg.seed)
    tfeats = featurize(lm.model, lm.tokenizer, lm.chat_template, [e.prompt for e in ex], [e.response for e in ex],
                       layers=layers)
    templates = (tfeats, np.array([e.label for e in ex]))
    folds = A.prompt_folds(rows, F.folds, F.seed)
    for name, extra in (("classifier_real", None), ("classifier_real+templates", templates)):
        pred = np.zeros_like(y)
        for f in range(F.folds):
            clf = _fit_pick_layer(feats, y, np.flatnonzero(folds != f), layers, cfg, folds, extra)
            pred[folds == f] = clf.predict(feats[clf.layer][folds == f])
        judged[name] = pred
    for name in F.models:
        judge_lm = lm if name == F.judge_model else load_model(name)
        judged[f"lm_judge_{name}"] = lm_judge_labels(judge_lm, prompts, responses)
    report = {"n": len(rows), "label_counts": {c: int((y == i).sum()) for i, c in enumerate(RESPONSE_CLASSES)},
              "per_model_label_counts": {m: {c: int(((y == i) & (models == m)).sum()) for i, c in enumerate(RESPONSE_CLASSES)}
                                         for m in dict.fromkeys(models)},
              "judges": {k: A.agreement(y, v) for k, v in judged.items()},
              "per_answering_model": {m: {k: A.agreement(y[models == m], v[models == m])["accuracy"]
                                          for k, v in judged.items()} for m in dict.fromkeys(models)},
              "template_judge_report": template_report, "judge_model": F.judge_model}
    learned = [k for k in judged if k.startswith("classifier_real")]
    best = max(learned, key=lambda k: report["judges"][k]["kappa"])
    report["best_learned"] = best
    if F.save_judge:
        clf = _fit_pick_layer(feats, y, np.arange(len(y)), layers, cfg, folds,
                              templates if best.endswith("+templates") else None)
        save_response_judge(F.save_judge, clf, model_id=F.judge_model, source=lm.source, report={
            "accuracy": report["judges"][best]["accuracy"], "n_test": len(rows), "kind": best,
            "per_class_accuracy": {c: v["recall"] for c, v in report["judges"][best]["per_class"].items()},
            "note": "cross-fitted agreement with the hand-labelled audit set (experiments/refusal_audit.py)"})
    out = pathlib.Path(F.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(report, indent=1))
    md = audit_markdown(report)
    (out / "audit.md").write_text(md)
    print(md)


def audit_markdown(r: dict) -> str:
    lines = [f"# Refusal judges vs hand labels ({r['n']} real answers)", "",
             f"Labels: {r['label_counts']}; per answering model: {r['per_model_label_counts']}.", "",
             "| judge | accuracy | kappa | " + " | ".join(f"recall {c}" for c in RESPONSE_CLASSES) + " |",
             "|---|---|---|" + "---|" * len(RESPONSE_CLASSES)]
    for k, v in r["judges"].items():
        lines.append(f"| {k} | {format_rate(v['accuracy'], 0)} | {v['kappa']:.2f} | "
                     + " | ".join(format_rate(v["per_class"][c]["recall"], 0) for c in RESPONSE_CLASSES) + " |")
    lines += ["", "Precision per class:", "", "| judge | " + " | ".join(RESPONSE_CLASSES) + " |",
              "|---|" + "---|" * len(RESPONSE_CLASSES)]
    for k, v in r["judges"].items():
        lines.append(f"| {k} | " + " | ".join(format_rate(v["per_class"][c]["precision"], 0) for c in RESPONSE_CLASSES) + " |")
    lines += ["", f"Best learned judge (kappa): {r['best_learned']}."]
    return "\n".join(lines)


def main(argv):
    del argv
    F = flags.FLAGS
    if F.score:
        return score(F)
    unknown = [m for m in F.models if m not in MODELS]
    if unknown:
        raise app.UsageError(f"unknown --models {unknown}; registered: {sorted(MODELS)}")
    records = []
    for k, name in enumerate(F.models):
        prompts = audit_prompts(F.data_dir, F.per_kind, F.seed, F.block + k)
        lm = load_model(name)
        gens = runner.generate_greedy(lm, [chat_ids(lm, p["prompt"], F.system) for p in prompts],
                                      max_new_tokens=F.max_new_tokens, batch_size=F.batch_size, progress=True,
                                      desc=name)
        for i, (p, g) in enumerate(zip(prompts, gens)):
            tag = f"{name}+system" if F.system else name
            records.append({"table": "generation", "id": f"{tag}-{i:03d}", "model": tag, **p,
                            "response": g.text.strip(), "truncated": not g.stopped, "label": "", "off_task": False})
        del lm
    out = pathlib.Path(F.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"{len(records)} generations -> {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
