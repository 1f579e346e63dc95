"""The contrastive refusal benchmark: its data, splits, duplicate checks and protocol pieces."""

import collections
import json

import numpy as np
import pytest

from align_jax.data.sources import DataError
from align_jax.safety.refusal import contrast as C
from align_jax.safety.refusal import contrast_experiment as X
from align_jax.safety.refusal.metrics import wilson_interval
from align_jax.safety.refusal.probe import threshold_for_groups
from align_jax.safety.refusal.sources import normalise
from align_jax.safety.refusal.taxonomy import HAZARD_CODES


@pytest.fixture(scope="module")
def pairs():
    return C.load_pairs()


def test_benchmark_covers_14_categories_with_4200_unique_prompts(pairs):
    assert len(pairs) == 2100
    assert collections.Counter(p.category for p in pairs) == {c: 150 for c in HAZARD_CODES}
    texts = [normalise(t) for p in pairs for t in (p.harmful, p.benign)]
    assert len(set(texts)) == 4200
    # a minimal twin differs from its harmful request, and every cell has >= 3 phrasing families
    assert all(normalise(p.harmful) != normalise(p.benign) for p in pairs)
    fams = collections.defaultdict(set)
    for p in pairs:
        fams[p.category, p.phenomenon].add(p.family)
    assert min(len(v) for v in fams.values()) >= 3
    assert {p.phenomenon for p in pairs} == set(C.PHENOMENA)
    # every category has at least 7 phenomena
    per_cat = collections.defaultdict(set)
    for p in pairs:
        per_cat[p.category].add(p.phenomenon)
    assert min(len(v) for v in per_cat.values()) >= 7


def test_family_split_keeps_families_whole_and_is_seeded(pairs):
    a = C.family_split(pairs, seed=0)
    assert sum(len(v) for v in a.values()) == len(pairs) and not a["val"]
    fam = {s: {p.family for p in v} for s, v in a.items()}
    assert not fam["train"] & fam["test"]
    assert 0.2 < len(a["test"]) / len(pairs) < 0.4
    # every (category, phenomenon) cell has test and train families
    cells = {s: {(p.category, p.phenomenon) for p in v} for s, v in a.items()}
    assert cells["train"] == cells["test"]
    b = C.family_split(pairs, seed=1)
    assert {p.id for p in a["test"]} != {p.id for p in b["test"]}
    with_val = C.family_split(pairs, (0.6, 0.1, 0.3))
    assert with_val["val"] and not {p.family for p in with_val["val"]} & {p.family for p in with_val["test"]}
    with pytest.raises(ValueError, match="summing to 1"):
        C.family_split(pairs, (0.5, 0.1, 0.1))


def test_phenomenon_folds_hold_out_one_phenomenon(pairs):
    folds = C.phenomenon_folds(pairs)
    assert set(folds) == set(C.PHENOMENA)
    for ph, (rest, held) in folds.items():
        assert len(rest) + len(held) == len(pairs)
        assert {p.phenomenon for p in held} == {ph} and ph not in {p.phenomenon for p in rest}


def test_prompts_carry_labels(pairs):
    h, b = pairs[0].prompts("test")
    assert h.harmful and not b.harmful and h.hazard == pairs[0].category and b.benign_type == pairs[0].phenomenon
    assert h.template_id == b.template_id == pairs[0].family and h.source == b.source == C.SOURCE
    assert [p.text for p in C.to_prompts(pairs[:2], "x")] == [pairs[0].harmful, pairs[0].benign, pairs[1].harmful, pairs[1].benign]


def test_duplicate_checks(pairs):
    p = pairs[5]
    others = {"a": [p.benign.upper() + ".", "unrelated text"], "b": ["nothing here"]}
    assert C.duplicates_against(pairs, others) == {"a": [(p.id, p.benign)], "b": []}
    near = C.near_duplicates(pairs[:10], [p.harmful.replace("?", "") + " please"])
    assert near and near[0][0] == p.id and 0.7 <= near[0][3] < 1
    assert C.near_duplicates(pairs[:10], ["completely different words"]) == []


def test_counts_table(pairs):
    table = C.counts(pairs)
    assert sum(sum(v.values()) for v in table.values()) == 2100
    md = C.counts_markdown(pairs)
    assert md.splitlines()[-1].endswith("| 2100 |") and len(md.splitlines()) == 2 + 14 + 1


def _row(**kw):
    row = {"table": "pair", "id": "S1-hom-001", "category": "S1", "phenomenon": "homonym_figurative",
           "family": "S1-hom-f1", "harmful": "h", "benign": "b", "rationale": "r"}
    row.update(kw)
    return json.dumps(row)


@pytest.mark.parametrize("line,match", [
    (_row(phenomenon="typo"), "unknown phenomenon 'typo'"),
    (_row(category="S15"), "unknown category 'S15'"),
    (_row(id="S1-stg-001"), "must start with S1-hom-"),
    (_row(benign="  "), "empty 'benign'"),
    ('{"table": "pair", "id": "x"}', "needs fields"),
    ("not json", "bad_json"),
])
def test_malformed_pairs_name_file_and_line(tmp_path, line, match):
    f = tmp_path / "S1.jsonl"
    f.write_text(_row(id="S1-hom-000") + "\n" + line + "\n")
    with pytest.raises(DataError, match=match) as e:
        C.read_pairs(f, "S1")
    assert "S1.jsonl" in str(e.value) and ("line 2" in str(e.value) or "pair 2" in str(e.value))


def test_category_must_match_its_file(tmp_path):
    f = tmp_path / "S2.jsonl"
    f.write_text(_row() + "\n")
    with pytest.raises(DataError, match="in the file of S2"):
        C.read_pairs(f, "S2")


def test_rate_is_wilson():
    r = X.rate(np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0], bool))
    assert (r["k"], r["n"], r["point"]) == (2, 10, 0.2)
    assert (r["wilson_low"], r["wilson_high"]) == wilson_interval(2, 10)
    assert X.rate(np.zeros(0, bool)) == {"k": 0, "n": 0}


def test_lopo_threshold_leaves_out_the_held_phenomenon():
    rng = np.random.default_rng(0)
    lo = X._Lopo(heads={}, scores_h={}, scores_b={"a": rng.normal(size=50), "b": rng.normal(size=50) + 3},
                 val_benign={ph: {"benign_sensitive": rng.normal(size=20), "plain_benign": rng.normal(size=20)}
                             for ph in ("a", "b")})
    t_all = lo.threshold(0.05)
    t_wo_b = lo.threshold(0.05, without="b")
    assert t_wo_b == threshold_for_groups({"c": lo.scores_b["a"], **lo.val_benign["a"]}, 0.05)
    assert t_all > t_wo_b  # "b"'s benign twins score high, so including them raises the threshold


def test_pair_rates_group_by_field(pairs):
    sub = [p for p in pairs if p.category in ("S1", "S2")]
    fh = np.array([p.category == "S1" for p in sub])
    fb = np.zeros(len(sub), bool)
    r = X.pair_rates(fh, fb, sub, "category")
    assert r["S1"]["recall"]["point"] == 1.0 and r["S2"]["recall"]["point"] == 0.0 and r["S1"]["fpr"]["k"] == 0


def test_run_contrast_end_to_end_on_features_that_know_the_label(monkeypatch):
    """Features whose first dimension is the true label (plus noise): every stage must then
    reach recall 1 and FPR 0, which fails if pairs and feature rows are misaligned."""
    from align_jax.safety.refusal.datasets import Prompt
    from align_jax.safety.refusal.run import RefusalConfig

    rng = np.random.default_rng(0)

    def src(split, n):
        out = [Prompt(f"harm {split} {i}", True, "harmful", split, "harmful_written.json" if split != "test" else "x",
                      hazard="S1") for i in range(n)]
        out += [Prompt(f"sens {split} {i}", False, "benign_sensitive", split, "t", benign_type="homonym",
                       template_id=f"t{i % 5}") for i in range(n)]
        return out + [Prompt(f"plain {split} {i}", False, "plain_benign", split, "h.json") for i in range(n)]

    sets = {s: src(s, n) for s, n in (("train", 60), ("val", 30), ("test", 30))}
    label = {p.text: p.harmful for v in sets.values() for p in v}
    label.update({t: h for p in C.load_pairs() for t, h in ((p.harmful, True), (p.benign, False))})

    def feats(models, cfg, sets_all, log):
        def f(prompts):
            y = np.array([label[p.text] for p in prompts], np.float32)
            x = rng.normal(size=(len(prompts), 8)).astype(np.float32)
            x[:, 0] += 6 * y
            return {1: x}
        return {s: f(v) for s, v in sets_all.items()}

    monkeypatch.setattr(X, "build_source_sets", lambda cfg: ({k: list(v) for k, v in sets.items()}, {"missing_packages": []}))
    monkeypatch.setattr(X, "multi_model_prompt_features", feats)
    monkeypatch.setattr(X, "benchmark_of", lambda p: p.source)
    cfg = RefusalConfig(data_dir="unused", layers=(1,), candidates=("1", "1:mean"), steps=100, threshold_folds=2)
    r = X.run_contrast(None, "fake", cfg, log=lambda s: None, old=False)
    hp, hf = r["held_out_phenomenon"], r["held_out_family"]
    assert hp["recall"]["point"] > 0.99 and hp["fpr"]["point"] < 0.01
    assert hf["test_families"]["recall"]["point"] > 0.99 and hf["test_families"]["fpr"]["point"] < 0.01
    assert set(hp["per_phenomenon"]) == set(C.PHENOMENA) and len(hp["per_category"]) == 14
    assert r["pairs"]["train_families"] + r["pairs"]["test_families"] == 2100
    md = X.contrast_markdown(r)
    assert "held-out phenomenon" in md and "nonsense_group" in md


def test_auroc_matches_pairwise_count():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 60).round(1)  # rounding makes ties
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert X.auroc(pos, neg) == pytest.approx(pairwise)
    assert X.auroc(np.array([2.0]), np.array([1.0])) == 1.0
