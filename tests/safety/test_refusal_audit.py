"""The refusal-judge audit: reading the labelled file and agreement statistics."""

import json

import numpy as np
import pytest

from align_jax.data.sources import DataError
from align_jax.safety.refusal import audit as A
from align_jax.safety.refusal.metrics import wilson_interval
from align_jax.safety.refusal.responses import RESPONSE_CLASSES


def _kappa_by_hand(a, b):
    classes = sorted(set(a) | set(b))
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    pe = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in classes)
    return (po - pe) / (1 - pe)


def test_kappa_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, 200)
    b = np.where(rng.random(200) < 0.7, a, rng.integers(0, 3, 200))
    assert A.cohen_kappa(a, b, 3) == pytest.approx(_kappa_by_hand(a, b))
    assert A.cohen_kappa(a, a, 3) == pytest.approx(1.0)


def test_agreement_per_class_recall_and_precision():
    human = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    judged = np.array([0, 0, 2, 1, 2, 2, 2, 2, 0, 2])
    r = A.agreement(human, judged)
    assert r["accuracy"]["k"] == 7 and r["accuracy"]["n"] == 10
    name = RESPONSE_CLASSES
    assert r["per_class"][name[0]]["recall"]["k"] == 2 and r["per_class"][name[0]]["recall"]["n"] == 3
    assert r["per_class"][name[0]]["precision"]["n"] == 3  # judged class 0 three times
    assert r["per_class"][name[2]]["recall"]["point"] == pytest.approx(4 / 5)
    lo, hi = wilson_interval(4, 5)
    assert (r["per_class"][name[2]]["recall"]["wilson_low"], r["per_class"][name[2]]["recall"]["wilson_high"]) == (lo, hi)
    assert np.array(r["confusion"]).sum() == 10 and np.trace(np.array(r["confusion"])) == 7
    with pytest.raises(ValueError, match="shapes differ"):
        A.agreement(human, judged[:3])


def _rec(**kw):
    r = {"table": "generation", "id": "m-000", "model": "m", "kind": "plain_benign", "prompt": "p",
         "source": "s", "response": "r", "truncated": False, "label": "refusal", "off_task": False}
    r.update(kw)
    return json.dumps(r)


def test_read_audit_checks_labels_and_ids(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(_rec() + "\n" + _rec(id="m-001", label="compliance") + "\n")
    rows = A.read_audit(f)
    assert [r["label"] for r in rows] == ["refusal", "compliance"]
    assert list(A.labels_of(rows)) == [RESPONSE_CLASSES.index("refusal"), RESPONSE_CLASSES.index("compliance")]
    f.write_text(_rec() + "\n" + _rec(id="m-001", label="maybe") + "\n")
    with pytest.raises(DataError, match="record 2 .*'maybe'"):
        A.read_audit(f)
    assert len(A.read_audit(f, labelled=False)) == 2
    f.write_text(_rec() + "\n" + _rec() + "\n")
    with pytest.raises(DataError, match="duplicate record ids"):
        A.read_audit(f)


def test_prompt_folds_keep_a_prompts_answers_together():
    rows = [{"prompt": f"p{i % 7}"} for i in range(40)]
    folds = A.prompt_folds(rows, 5)
    for i in range(7):
        assert len({f for r, f in zip(rows, folds) if r["prompt"] == f"p{i}"}) == 1
    assert set(folds) <= set(range(5))


def test_packaged_audit_is_labelled_and_large_enough():
    rows = A.load_audit()
    assert len(rows) >= 300
    assert {r["model"] for r in rows} == {"smollm2-135m-instruct", "gemma3-270m", "smollm2-135m-instruct+system"}
    assert all(r["label"] in RESPONSE_CLASSES for r in rows)
