"""The fine-tuned prompt classifier (LoRA + head through the training engine) on a tiny random decoder."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from align_jax.models.decoder import init_decoder
from align_jax.safety.refusal.features import encode_for_features, truncated_decoder
from align_jax.safety.refusal.finetune import (
    FinetuneConfig, classifier_logits, classifier_scores, encode_prompts, make_batch, train_classifier,
    training_batches, weighted_logistic_loss,
)
from align_jax.training import step as S
from refusal_tiny import TINY, CharTokenizer

pytestmark = pytest.mark.slow  # a classifier trained through the engine (~20 s)


def test_weighted_logistic_loss_matches_numpy():
    rng = np.random.default_rng(0)
    z, y, w = rng.normal(size=7) * 3, rng.integers(0, 2, 7), rng.uniform(0, 2, 7)
    p = 1 / (1 + np.exp(-z))
    ref = -(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum()
    np.testing.assert_allclose(float(weighted_logistic_loss(z, y, w)), ref, rtol=1e-5)
    assert float(weighted_logistic_loss(np.array([50.0]), np.array([0]), np.array([1.0]))) == pytest.approx(50.0)
    assert float(weighted_logistic_loss(z, y, np.zeros(7))) == 0.0


def test_make_batch_pads_rows_with_zero_weight():
    enc = encode_prompts(CharTokenizer(), "chatml_plain", ["abc", "a longer one"], max_len=256)
    b = make_batch(enc, [1, 0], [2.0, 0.5], batch_size=4, bucket=16)
    longest = max(len(e.ids) for e in enc)
    assert b["tokens"].shape == (1, 4, -(-longest // 16) * 16)  # longest chat rounded up to 16
    assert b["example_weight"].tolist() == [[2.0, 0.5, 0.0, 0.0]]
    assert b["segment_ids"][0, 2:].sum() == 0 and b["content_mask"][0, 0].sum() == 3
    cut = encode_prompts(CharTokenizer(), "chatml_plain", ["x" * 100], max_len=20)[0]
    assert len(cut.ids) == 20 and cut.ids[-1] == ord("\n")  # the end (generation prompt) is kept
    with pytest.raises(ValueError, match="rows"):
        make_batch(enc, [1, 0], [1, 1], batch_size=1, bucket=16)


def test_training_batches_cover_every_row_once_per_epoch_within_a_bucket():
    texts = ["a" * n for n in (1, 2, 3, 60, 61, 62, 63)]
    enc = encode_prompts(CharTokenizer(), "chatml_plain", texts, max_len=256)
    cfg = FinetuneConfig(batch_size=2, bucket=32)
    assert len({-(-len(e.ids) // 32) for e in enc}) == 2
    it = training_batches(enc, np.arange(7) % 2, np.arange(1, 8, dtype=np.float32), cfg)
    # an epoch: 2 buckets (3 + 4 rows) -> 2 + 2 batches; each row's weight appears once
    seen = [w for _ in range(4) for w in next(it)["example_weight"][0] if w > 0]
    assert sorted(seen) == list(range(1, 8))


WORDS_BAD = ["zzq", "qzz", "zqq", "qqz"]  # the label is which letters the prompt's word uses
WORDS_OK = ["abc", "bca", "cab", "acb"]


def _synthetic_sets(seed):
    """Train / val / test prompts of every kind; the label is which letters the prompt's word uses."""
    from align_jax.safety.refusal.datasets import Prompt

    rng = np.random.default_rng(seed)

    def prompts(split, n):
        out = []
        for i in range(n):
            kind = ("harmful", "benign_sensitive", "plain_benign")[i % 3]
            words = WORDS_BAD if kind == "harmful" else WORDS_OK
            text = f"help {rng.choice(words)} {i} " + "x" * int(rng.integers(0, 8))
            out.append(Prompt(text, kind == "harmful", kind, split, "bench_a" if kind == "harmful" else kind,
                              hazard="S2" if kind == "harmful" else None,
                              benign_type="fiction" if kind == "benign_sensitive" else None))
        return out

    return {"train": prompts("train", 48), "val": prompts("val", 30), "test": prompts("test", 30)}


@pytest.fixture(scope="module")
def experiment():
    """One fine-tuning run shared by the tests below: the experiment on synthetic prompts, with the
    trained classifier captured on its way out of ``train_classifier``."""
    from types import SimpleNamespace

    from align_jax.safety.refusal import finetuned_experiment
    from align_jax.safety.refusal.run import RefusalConfig

    lm = SimpleNamespace(model=init_decoder(TINY, seed=0), tokenizer=CharTokenizer(), chat_template="chatml_plain")
    before = jax.tree.map(np.asarray, nnx.state(truncated_decoder(lm.model, 2)))
    ft = FinetuneConfig(n_layers=2, lora_rank=4, lora_alpha=8.0, steps=80, batch_size=16, learning_rate=1e-2,
                        warmup_steps=5, bucket=128, max_len=60)  # one length bucket; some chats are cut, and counted
    # lr 2e-2 diverged mid-run under the fast-compile flags (float rounding, chaotic at that rate): 1e-2
    # ends at a loss of ~0.04 under -O0, -O2, 1 and 8 devices alike
    cfg = RefusalConfig(data_dir="unused", shares=(0.5, 0.25, 0.25), n_resamples=50)
    captured = []

    def capture(*args, **kw):
        captured.append(train_classifier(*args, **kw))
        return captured[-1]

    sets = _synthetic_sets(3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(finetuned_experiment, "train_classifier", capture)
        report = finetuned_experiment.run_finetuned_experiment(lm, "tiny", cfg, ft, log=lambda s: None, sets=sets)
    return SimpleNamespace(lm=lm, before=before, clf=captured[0], report=report, cfg=cfg, sets=sets)


def test_only_adapters_and_head_train_and_the_model_is_left_intact(experiment):
    lm, clf, before = experiment.lm, experiment.clf, experiment.before
    assert clf.losses.shape == (80,) and np.isfinite(clf.losses).all()
    frozen = jax.tree.map(np.asarray, clf.state.frozen["model"])
    jax.tree.map(np.testing.assert_array_equal, frozen, before)
    after = jax.tree.map(np.asarray, nnx.state(truncated_decoder(lm.model, 2)))  # the step donated a copy, not the model
    jax.tree.map(np.testing.assert_array_equal, after, before)
    lora_b = [np.asarray(v) for k, v in nnx.to_flat_state(clf.state.params["lora"]) if k[-1] == "lora_b"]
    assert lora_b and all(np.abs(b).sum() > 0 for b in lora_b)  # B starts at 0: it moved


def test_scores_match_the_merged_model_and_ignore_batch_padding(experiment):
    tok, clf = experiment.lm.tokenizer, experiment.clf
    texts = ["please help with poison", "please help with garden " + "y" * 50, "steal"]
    enc = encode_prompts(tok, "chatml_plain", texts, max_len=128)
    together = classifier_scores(clf, enc, batch_size=4)
    alone = np.array([classifier_scores(clf, [e], batch_size=4)[0] for e in enc])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    merged = nnx.merge(clf.spec.graphdef, S.policy_state(clf.spec, clf.state.params, clf.state.frozen))
    b = make_batch(enc[:1], [0], [1.0], batch_size=1, bucket=32)
    direct = classifier_logits(merged, clf.state.params["reward_head"], {k: v[0] for k, v in b.items()})
    np.testing.assert_allclose(float(direct[0]), together[0], atol=1e-4)


def test_bad_labels_are_rejected():
    model, tok = init_decoder(TINY, seed=0), CharTokenizer()
    enc = encode_prompts(tok, "chatml_plain", ["a", "b"], max_len=64)
    with pytest.raises(ValueError, match="both labels"):
        train_classifier(model, enc, [1, 1], [1, 1], dataclasses.replace(FinetuneConfig(), n_layers=2, steps=1))
    with pytest.raises(ValueError, match="labels"):
        train_classifier(model, enc, [1], [1, 1], dataclasses.replace(FinetuneConfig(), n_layers=2, steps=1))


def test_finetuned_experiment_end_to_end_on_synthetic_prompts(experiment):
    """The report: val-chosen threshold, test rates, the ceiling diagnostic, cut counts, Markdown."""
    from align_jax.safety.refusal.finetuned_experiment import finetuned_report_markdown

    r, cfg, sets, lm = experiment.report, experiment.cfg, experiment.sets, experiment.lm
    pc = r["prompt_classifier"]
    assert pc["train_loss"]["last_10"] < 0.5 * pc["train_loss"]["first_10"]
    assert pc["val"]["fpr_benign_sensitive"] <= cfg.threshold_fpr and pc["val"]["fpr_plain_benign"] <= cfg.threshold_fpr
    assert pc["test"]["n"] == {"harmful": 10, "benign_sensitive": 10, "plain_benign": 10}
    assert pc["test"]["recall_harmful"]["point"] >= 0.8  # the word rule transfers to new prompts
    assert set(pc["test"]["recall_at_fpr_ceiling"]) == {cfg.threshold_fpr, cfg.target_fpr}
    assert len(r["scores"]["test"]) == 30
    longer = {s: sum(len(encode_for_features(lm.tokenizer, "chatml_plain", p.text).ids) > 60 for p in v)
              for s, v in sets.items()}
    assert r["prompts_cut_to_max_len"] == longer and sum(longer.values()) > 0
    md = finetuned_report_markdown(r)
    assert "Fine-tuned refusal prompt classifier on tiny" in md and "| recall, harmful |" in md
    assert f"keep their last 60: train {longer['train']}" in md
