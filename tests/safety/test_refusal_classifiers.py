"""Heads, thresholds, metrics and features on synthetic data and a tiny random decoder."""

import dataclasses

import numpy as np
import pytest

from align_jax.models.decoder import init_decoder
from align_jax.safety.refusal import metrics as M
from align_jax.safety.refusal.classifiers import (
    PromptClassifier, ResponseClassifier, featurize, load_response_judge, make_response_judge, save_response_judge,
)
from align_jax.safety.refusal.features import (
    cached_features, encode_for_features, extract_features, left_pad, pool_hidden, truncated_decoder,
)
from align_jax.safety.refusal.probe import (
    class_balanced_weights, group_weights, positive_score, predict_logits, threshold_for_fpr, threshold_for_groups,
    train_head, weighted_xent,
)
from refusal_tiny import TINY, CharTokenizer


# -- heads ---------------------------------------------------------------------------------------


def _blobs(n, d, n_classes, seed, sep=4.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, d)) * sep
    y = rng.integers(0, n_classes, size=n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


@pytest.mark.parametrize("hidden", [0, 16])
def test_head_learns_a_separable_problem(hidden):
    x, y = _blobs(400, 10, 3, seed=0)
    xt, yt = _blobs(200, 10, 3, seed=0)  # same centres (same seed), fresh noise below
    xt = xt + np.random.default_rng(5).normal(size=xt.shape).astype(np.float32) * 0.1
    head, losses = train_head(x, y, 3, hidden=hidden, steps=200, lr=0.05)
    assert losses[-1] < 0.2 * losses[0]
    acc = (np.asarray(predict_logits(head, xt)).argmax(-1) == yt).mean()
    assert acc > 0.95


def test_binary_score_orders_classes_and_imbalance_is_weighted():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (950, 4)), rng.normal(1.5, 1, (50, 4))]).astype(np.float32)
    y = np.array([0] * 950 + [1] * 50)
    balanced, _ = train_head(x, y, 2, steps=300, lr=0.05)
    plain, _ = train_head(x, y, 2, steps=300, lr=0.05, weights=np.ones(1000))
    # with balanced weights the minority class is recalled far more often at the default cut (score > 0)
    assert (positive_score(balanced, x[y == 1]) > 0).mean() > (positive_score(plain, x[y == 1]) > 0).mean() + 0.2


def test_class_balanced_and_group_weights_by_hand():
    w = class_balanced_weights(np.array([0, 0, 0, 1]), 2)
    np.testing.assert_allclose(w, [4 / 6, 4 / 6, 4 / 6, 2.0])  # N / (C * count)
    assert w[:3].sum() == pytest.approx(w[3:].sum())
    with pytest.raises(ValueError, match="labels must be in"):
        class_balanced_weights(np.array([0, 2]), 2)
    g = group_weights(["a", "a", "b", "c"], {"a": 0.5, "b": 0.25, "c": 0.25})
    np.testing.assert_allclose(g, [1.0, 1.0, 1.0, 1.0])
    g = group_weights(["a", "b", "b", "b"], {"a": 0.5, "b": 0.5})
    np.testing.assert_allclose(g, [2.0, 2 / 3, 2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="without a share"):
        group_weights(["z"], {"a": 1.0})


def test_weighted_xent_matches_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0])
    w = np.array([1.0, 2.0, 0.5, 1.0, 3.0], np.float32)
    p = {"w": rng.normal(size=(3, 3)).astype(np.float32), "b": np.array([0.1, -0.2, 0.3], np.float32)}
    z = x @ p["w"] + p["b"]
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    expect = (w * -logp[np.arange(5), y]).sum() / w.sum() + 0.1 * (p["w"] ** 2).sum()
    assert float(weighted_xent(p, x, y, w, 0.1)) == pytest.approx(expect, rel=1e-5)


# -- thresholds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, target", [(1000, 0.03), (97, 0.03), (10, 0.05), (333, 0.0), (50, 0.5)])
def test_threshold_achieves_target_fpr_on_its_own_data(n, target):
    s = np.random.default_rng(n).normal(size=n)
    t = threshold_for_fpr(s, target)
    fpr = np.mean(s > t)
    assert fpr <= target + 1e-12
    # and it is the smallest such threshold among observed scores: one lower score would exceed the target
    lower = np.sort(s)[np.sort(s) < t]
    if lower.size:
        assert np.mean(s > lower[-1]) > target
    assert fpr == np.floor(target * n + 1e-9) / n  # distinct scores: exactly floor(target * n) flagged


def test_threshold_with_ties_and_groups():
    s = np.array([1.0, 1.0, 1.0, 0.0])
    t = threshold_for_fpr(s, 0.5)
    assert np.mean(s > t) <= 0.5
    a, b = np.linspace(0, 1, 101), np.linspace(0, 5, 101)
    t = threshold_for_groups({"a": a, "b": b}, 0.03)
    assert np.mean(a > t) <= 0.03 and np.mean(b > t) <= 0.03
    with pytest.raises(ValueError, match="needs at least one negative score"):
        threshold_for_fpr(np.array([]), 0.03)


# -- metrics ---------------------------------------------------------------------------------------------


def test_rates_and_breakdowns_by_hand():
    flags = np.array([1, 0, 0, 1, 1, 0, 0, 0])
    ci = M.rate_ci(flags, n_resamples=200)
    assert ci.point == pytest.approx(3 / 8) and ci.low <= 3 / 8 <= ci.high and ci.high - ci.low > 0
    assert M.rate_ci(np.ones(20)) == (1.0, 1.0, 1.0)
    groups = ["S1", "S1", "S2", "S2", "S2", None, "S9", "S9"]
    per = M.per_group_rate(flags, groups, n_resamples=50)
    assert list(per) == ["S1", "S2", "S9"]
    assert per["S1"][0].point == 0.5 and per["S1"][1] == 2
    assert per["S2"][0].point == pytest.approx(2 / 3) and per["S9"][0].point == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        M.rate_ci([])


def test_recall_at_fpr_ceiling_by_hand():
    harmful = np.array([0.5, 1.5, 2.5, 3.5, 4.5])
    a = np.arange(10.0)  # group a: 0..9; FPR 10% lets one negative (9) above -> threshold 8
    b = np.array([-1.0, 0.0, 1.0, 2.0])  # FPR 10% of 4 lets none above -> threshold 2
    out = M.recall_at_fpr_ceiling(harmful, {"a": a, "b": b}, [0.1, 0.5])
    assert out[0.1] == pytest.approx(0.0)  # max(8, 2) = 8: no harmful score above it
    # FPR 50%: a lets 5 above -> threshold 4; b lets 2 above -> threshold 0; max 4 -> only 4.5 counts
    assert out[0.5] == pytest.approx(1 / 5)
    assert M.recall_at_fpr_ceiling(harmful, {"b": b}, [0.5])[0.5] == pytest.approx(1.0)  # threshold 0
    with pytest.raises(ValueError, match="positive scores"):
        M.recall_at_fpr_ceiling([], {"a": a}, [0.1])


def test_confusion_and_per_class_accuracy_by_hand():
    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(M.confusion_matrix(y, p, 3), [[1, 1, 0], [0, 2, 1], [0, 0, 1]])
    np.testing.assert_allclose(M.per_class_accuracy(y, p, 3), [0.5, 2 / 3, 1.0])
    assert np.isnan(M.per_class_accuracy(np.array([0]), np.array([0]), 2)[1])


def test_generation_rates_with_a_fake_judge():
    prompts = ["b1", "b2", "b3", "b4", "h1", "h2", "h3"]
    harmful = [False] * 4 + [True] * 3
    verdict = {"b1": M.REFUSAL, "b2": M.PARTIAL, "b3": M.COMPLIANCE, "b4": M.COMPLIANCE,
               "h1": M.COMPLIANCE, "h2": M.REFUSAL, "h3": M.PARTIAL}
    judge = lambda ps, rs: np.array([verdict[p] for p in ps])  # noqa: E731
    r = M.generation_rates(prompts, ["x"] * 7, harmful, judge, n_resamples=50)
    assert r["over_refusal"].point == pytest.approx(1 / 4)
    assert r["over_refusal_any"].point == pytest.approx(2 / 4)
    assert r["compliance"].point == pytest.approx(1 / 3)
    assert r["compliance_any"].point == pytest.approx(2 / 3)
    only_benign = M.generation_rates(prompts[:4], ["x"] * 4, harmful[:4], judge)
    assert only_benign["compliance"] is None
    with pytest.raises(ValueError, match="lengths differ"):
        M.generation_rates(prompts, ["x"], harmful, judge)


# -- features on a tiny random decoder ---------------------------------------------------------------


def test_encode_marks_only_the_content_and_rejects_empty():
    tok = CharTokenizer()
    e = encode_for_features(tok, "chatml", "Hi there")
    assert sum(e.content_mask) == len("Hi there")
    assert e.ids[-1] == ord("\n")  # generation prompt ends the text
    r = encode_for_features(tok, "chatml", "Hi there", "Sure thing")
    assert sum(r.content_mask) == len("Sure thing")
    with pytest.raises(ValueError, match="empty prompt"):
        encode_for_features(tok, "chatml", "  ")
    with pytest.raises(ValueError, match="empty response"):
        encode_for_features(tok, "chatml", "Hi", "")


def test_pool_hidden_by_hand():
    h = np.arange(2 * 1 * 3 * 2, dtype=np.float32).reshape(2, 1, 3, 2)  # [K, B, T, D]
    mask = np.array([[0, 1, 1]])
    out = np.asarray(pool_hidden(h, mask))
    np.testing.assert_allclose(out[0, 0], np.concatenate([h[0, 0, 1:].mean(0), h[0, 0, -1]]))
    np.testing.assert_allclose(out[1, 0], np.concatenate([h[1, 0, 1:].mean(0), h[1, 0, -1]]))


TEXTS = ["short", "a much longer prompt than the first one, with more words", "mid length text", "bake bread"]


@pytest.fixture(scope="module")
def tiny():
    model, tok = init_decoder(TINY, seed=0), CharTokenizer()
    enc = [encode_for_features(tok, "chatml_plain", t) for t in TEXTS]
    return model, tok, enc, extract_features(model, enc, [1, 2, 3], batch_size=4, bucket=64)


def test_features_do_not_depend_on_batch_padding(tiny):
    model, _, enc, together = tiny
    assert together[1].shape == (4, 2 * TINY.hidden_size)
    alone = extract_features(model, enc[:1] + enc[3:], [1, 3], batch_size=4, bucket=128)  # more left padding
    for layer in (1, 3):
        np.testing.assert_allclose(alone[layer][0], together[layer][0], atol=1e-4)
        np.testing.assert_allclose(alone[layer][1], together[layer][3], atol=1e-4)
    assert not np.allclose(together[1], together[3])
    tokens, positions, segments, content = left_pad(enc[:1], 64)
    assert segments[0].tolist() == [0] * (64 - len(enc[0].ids)) + [1] * len(enc[0].ids)
    assert positions[0, -1] == len(enc[0].ids) - 1


def test_classifier_wrappers_use_an_exact_truncated_model(tiny):
    model, tok, _, full = tiny
    feats = featurize(model, tok, "chatml_plain", TEXTS, layers=[2], bucket=64)[2]  # 2 of 3 layers
    np.testing.assert_allclose(feats, full[2], atol=1e-5)
    y = np.array([0, 1, 0, 1])
    head, _ = train_head(feats, y, 2, steps=200, lr=0.05)
    clf = PromptClassifier(2, head, threshold=0.0)
    np.testing.assert_array_equal(clf.flags(feats), y.astype(bool))  # memorises 4 points
    rhead, _ = train_head(feats[:3], np.array([0, 1, 2]), 3, steps=200, lr=0.05)
    judge = make_response_judge(ResponseClassifier(2, rhead), model, tok, "chatml_plain", bucket=128)
    labels = judge(TEXTS[:2], ["Sure, here it is.", "I can't help with that."])
    assert labels.shape == (2,) and set(labels.tolist()) <= {0, 1, 2}


def test_saved_response_judge_round_trips(tmp_path):
    """What the eval suite loads is the trained judge: same layer, same arrays, same predictions."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    head, _ = train_head(x, np.arange(30) % 3, 3, hidden=4, steps=20)
    clf = ResponseClassifier(5, head)
    report = {"layer": 5, "n_test": 30, "accuracy": {"point": 0.5}, "per_layer_val": {5: {"val_accuracy": 0.4}}}
    path = save_response_judge(tmp_path / "a" / "judge", clf, model_id="m", source="/w/m.gguf", report=report)
    assert path == tmp_path / "a" / "judge"  # no suffix appended
    saved = load_response_judge(path)
    assert (saved.classifier.layer, saved.model_id, saved.source) == (5, "m", "/w/m.gguf")
    assert saved.report["accuracy"] == {"point": 0.5} and saved.report["per_layer_val"] == {"5": {"val_accuracy": 0.4}}
    assert sorted(saved.classifier.head.params) == sorted(head.params)
    np.testing.assert_array_equal(saved.classifier.predict(x), clf.predict(x))
    with pytest.raises(FileNotFoundError, match="no saved response judge at .*missing.npz"):
        load_response_judge(tmp_path / "missing.npz")


def test_cached_features_compute_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {4: np.ones((2, 3), np.float32)}

    items = [("p", None), ("q", "r")]
    a = cached_features(tmp_path, "m", "chatml", [4], items, compute)
    b = cached_features(tmp_path, "m", "chatml", [4], items, compute)
    np.testing.assert_array_equal(a[4], b[4])
    assert len(calls) == 1
    cached_features(tmp_path, "m", "chatml", [4], items[:1], compute)  # different texts: new key
    assert len(calls) == 2


# -- feature views, Wilson intervals, leave-one-benchmark-out ------------------------------------

from align_jax.safety.refusal.datasets import Prompt  # noqa: E402
from align_jax.safety.refusal.features import parse_feature_spec, select_features  # noqa: E402


def test_feature_spec_and_selection_by_hand():
    assert parse_feature_spec("14") == ((14,), "mean_last")
    assert parse_feature_spec("10+18:last") == ((10, 18), "last")
    with pytest.raises(ValueError, match="unknown pooling"):
        parse_feature_spec("10:max")
    with pytest.raises(ValueError, match="bad layers"):
        parse_feature_spec("ten")
    feats = {1: np.array([[1.0, 2.0, 3.0, 4.0]]), 2: np.array([[5.0, 6.0, 7.0, 8.0]])}
    np.testing.assert_array_equal(select_features(feats, (1,), "mean"), [[1, 2]])
    np.testing.assert_array_equal(select_features(feats, (2, 1), "last"), [[7, 8, 3, 4]])
    np.testing.assert_array_equal(select_features(feats, (1, 2)), [[1, 2, 3, 4, 5, 6, 7, 8]])
    with pytest.raises(KeyError, match="layer 3 was not extracted"):
        select_features(feats, (3,))
    head, _ = train_head(np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 2, 2, steps=5)
    clf = PromptClassifier(1, head, 0.0, layers=(2, 1), pooling="last")
    np.testing.assert_array_equal(clf.view(feats), [[7, 8, 3, 4]])
    assert PromptClassifier(2, head, 0.0).feature_layers == (2,)


def test_wilson_interval_by_hand():
    lo, hi = M.wilson_interval(0, 99)
    assert lo == 0.0 and hi == pytest.approx(0.0374, abs=2e-4)  # bootstrap would say [0, 0]
    lo, hi = M.wilson_interval(10, 20)
    assert lo == pytest.approx(0.2993, abs=2e-4) and hi == pytest.approx(0.7007, abs=2e-4)
    with pytest.raises(ValueError, match="need 0 <= k <= n and n > 0, got k=3, n=2"):
        M.wilson_interval(3, 2)
    d = M.ci_dict(M.rate_ci([0, 0, 1, 1]), np.array([0, 0, 1, 1]))
    assert d["wilson_low"] < 0.5 < d["wilson_high"]


def _prompt(kind, source, i):
    return Prompt(f"{source} {i}", kind == "harmful", kind, "train", source)


def test_leave_one_benchmark_out_scores_an_unseen_benchmark():
    """Benchmark "near" shares the harmful direction of "base"; "far" lies on the benign side, so a
    head trained without it misses it even though in-distribution recall is perfect."""
    from align_jax.safety.refusal.run import RefusalConfig, leave_one_benchmark_out

    rng = np.random.default_rng(0)
    d = 6
    centres = {"base": np.eye(d)[0] * 4, "near": np.eye(d)[0] * 4 + np.eye(d)[1], "far": -np.eye(d)[0] * 4,
               "benign_sensitive": -np.eye(d)[2] * 4, "plain_benign": -np.eye(d)[3] * 4}

    def make(spec):
        ps, xs = [], []
        for source, n in spec:
            kind = source if source in ("benign_sensitive", "plain_benign") else "harmful"
            for i in range(n):
                ps.append(_prompt(kind, source, i))
                xs.append(centres[source] + rng.normal(size=d) * 0.5)
        return ps, np.array(xs, np.float32)

    tr, x_tr = make([("base", 60), ("near", 40), ("far", 40), ("benign_sensitive", 60), ("plain_benign", 60)])
    val, x_val = make([("base", 10), ("benign_sensitive", 40), ("plain_benign", 40)])
    cfg = RefusalConfig(data_dir="unused", threshold_fpr=0.05, steps=200)
    out = leave_one_benchmark_out(x_tr, x_val, {"train": tr, "val": val}, cfg)
    assert set(out) == {"base", "near", "far"}
    assert out["near"] > 0.9 and out["base"] > 0.9
    assert out["far"] < 0.2


def test_cross_fitted_benign_scores_hold_out_whole_templates_and_feed_the_threshold():
    """Template "odd" sits on the harmful side of the benign cluster. Val never sees it, so a
    val-only threshold ignores it; its cross-fitted scores (from heads that never trained on it)
    stay high and raise the threshold until the pooled FPR is within the target."""
    from align_jax.safety.refusal import run as R
    from align_jax.safety.refusal.probe import positive_score

    rng = np.random.default_rng(1)
    d = 4
    harm, benign, odd = np.eye(d)[0] * 3, -np.eye(d)[0] * 3, np.eye(d)[0] * 1.5 + np.eye(d)[1] * 3

    def prompts(kind, centre, n, template=None):
        ps = [dataclasses.replace(_prompt(kind, template or kind, i), template_id=template) for i in range(n)]
        return ps, centre + rng.normal(size=(n, d)).astype(np.float32) * 0.3

    parts = [prompts("harmful", harm, 80)] + [prompts("benign_sensitive", benign, 8, f"t{j}") for j in range(9)]
    parts += [prompts("benign_sensitive", odd, 8, "odd"), prompts("plain_benign", benign, 80)]
    tr = [p for ps, _ in parts for p in ps]
    x_tr = np.concatenate([x for _, x in parts])
    val_parts = [prompts("benign_sensitive", benign, 40, "v"), prompts("plain_benign", benign, 40)]
    val, x_val = [p for ps, _ in val_parts for p in ps], np.concatenate([x for _, x in val_parts])
    cfg = R.RefusalConfig(data_dir="unused", threshold_fpr=0.02, threshold_folds=5, steps=200)

    cf = R.cross_fitted_benign_scores(x_tr, tr, cfg)
    kinds = np.array([p.kind for p in tr])
    assert len(cf["benign_sensitive"]) == (kinds == "benign_sensitive").sum()
    assert len(cf["plain_benign"]) == (kinds == "plain_benign").sum()
    # recompute the odd template's fold by hand: its scores come from a head fitted without it
    fold = np.array([R.stable_hash(cfg.seed, "threshold_fold", p.template_id or p.text) % 5 for p in tr])
    odd_idx = np.flatnonzero([p.template_id == "odd" for p in tr])
    assert len(set(fold[odd_idx])) == 1
    keep = np.flatnonzero(fold != fold[odd_idx[0]])
    head, _ = R.fit_binary(x_tr[keep], [tr[i] for i in keep], cfg)
    odd_scores = np.asarray(positive_score(head, x_tr[odd_idx]))
    assert np.abs(odd_scores[:, None] - cf["benign_sensitive"][None, :]).min(axis=1).max() < 1e-4

    full, _ = R.fit_binary(x_tr, tr, cfg)
    t_val, s_val = R.val_threshold(full, x_val, val, cfg)
    t_cf, _ = R.val_threshold(full, x_val, val, cfg, cf)
    assert (odd_scores > t_val).mean() > 0.5  # the val-only threshold would flag the odd template
    pooled = np.concatenate([s_val[np.array([p.kind for p in val]) == "benign_sensitive"], cf["benign_sensitive"]])
    assert t_cf > t_val and (pooled > t_cf).mean() <= cfg.threshold_fpr
    assert R.cross_fitted_benign_scores(x_tr, tr, dataclasses.replace(cfg, threshold_folds=0))["benign_sensitive"].size == 0


def test_category_head_learns_from_labelled_train_prompts():
    """Labelled train prompts (the project-written requests carry hazard codes) join val and the
    first test half in the category head's training set; the other test half is scored."""
    from align_jax.safety.refusal import run as R
    from align_jax.safety.refusal.classifiers import PromptClassifier

    rng = np.random.default_rng(2)
    d, layer = 6, 3
    centre = {"S1": np.eye(d)[0] * 3, "S9": np.eye(d)[1] * 3, "S11": np.eye(d)[2] * 3}

    def make(split, hazards, n):
        ps = [dataclasses.replace(_prompt("harmful", f"{split}{h}", i), split=split, hazard=h)
              for h in hazards for i in range(n)]
        x = np.stack([centre[p.hazard] + rng.normal(size=d) * 0.3 for p in ps]).astype(np.float32)
        return ps, x

    tr, x_tr = make("train", ["S9", "S11"], 30)
    val, x_val = make("val", ["S1"], 10)
    te, x_te = make("test", ["S1", "S9", "S11"], 40)
    sets = {"train": tr, "val": val, "test": te}
    feats = {"train": {layer: x_tr}, "val": {layer: x_val}, "test": {layer: x_te}}
    clf = PromptClassifier(layer, head=None, threshold=0.0)
    cfg = R.RefusalConfig(data_dir="unused", steps=200)
    clf, report = R.fit_category_head(clf, feats, sets, cfg)
    n_test_fold0 = 120 - report["n_eval"]
    assert report["n_train"] == 60 + 10 + n_test_fold0
    assert report["accuracy"]["point"] > 0.95
    assert {"S1", "S9", "S11"} <= set(report["per_hazard_accuracy"]) and clf.category_head is not None


def test_features_of_several_models_merge_under_offset_keys():
    import align_jax.safety.refusal.run as R

    rng = np.random.default_rng(0)
    a = {"train": {6: rng.normal(size=(5, 8)), 12: rng.normal(size=(5, 8))}, "val": {6: rng.normal(size=(2, 8)), 12: rng.normal(size=(2, 8))}}
    b = {"train": {14: rng.normal(size=(5, 4))}, "val": {14: rng.normal(size=(2, 4))}}
    merged = R.merge_model_features([a, b])
    assert sorted(merged["train"]) == [6, 12, R.MODEL_STRIDE + 14]
    np.testing.assert_array_equal(merged["val"][R.MODEL_STRIDE + 14], b["val"][14])
    # a spec across both models concatenates their pooled halves in spec order
    x = select_features(merged["train"], (12, R.MODEL_STRIDE + 14), "mean")
    np.testing.assert_array_equal(x, np.concatenate([a["train"][12][:, :4], b["train"][14][:, :2]], axis=1))
    with pytest.raises(ValueError, match="row counts differ"):
        R.merge_model_features([a, {"train": {14: rng.normal(size=(4, 4))}}])
    with pytest.raises(ValueError, match=r"layers must be in \[0, 100\)"):
        R.merge_model_features([a, {"train": {100: rng.normal(size=(5, 4))}}])
