"""The calibration task: tokenized Brier on the confidence digit (hand-computed), SFT label
smoothing, the config, and a few engine steps on a tiny model with the real SmolLM2 tokenizer."""

import importlib.util
import json
import sys
import types
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.data.verbalized_confidence import (
    CONFIDENCE_PREFIX,
    calibration_records,
    confidence_token_ids,
    confidence_values,
    with_confidence,
)
from align_jax.data.records import UnpairedRecord
from align_jax.models import ModelConfig, init_decoder, save_hf_dir
from align_jax.models.gguf_file import smollm2_gguf_path
from align_jax.models.tokenizer import Tokenizer
from align_jax.training.config import parse_config
from align_jax.training.loop import build_task_loss, run
from align_jax.training.tasks import calibration_log_loss, calibration_loss, confidence_positions, sft_loss

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from engine_config import make_config  # noqa: E402

pytestmark = pytest.mark.slow  # an engine training run (~15 s)


class FixedLogits:
    """A stand-in model returning given logits [B, L, V]."""

    def __init__(self, logits):
        self.logits = jnp.asarray(logits, jnp.float32)

    def __call__(self, tokens, positions, segment_ids):
        return types.SimpleNamespace(logits=self.logits)


def _hand_batch():
    # vocabulary of 6; the confidence "digits" are ids 3, 4, 5 stating 0, 0.5, 1.
    tokens = np.array([[1, 5, 2, 4, 0], [1, 2, 3, 0, 0], [1, 2, 2, 0, 0]], np.int32)
    mask = np.array([[0, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0]], np.int32)
    logits = np.zeros((3, 5, 6), np.float32)
    logits[0, 2, 3:] = [0.0, 0.0, np.log(2.0)]  # predicts the LAST digit (position 3): p = .25, .25, .5
    logits[0, 0, 3:] = [5.0, 0.0, 0.0]  # predicts the answer digit at position 1: must be ignored
    logits[1, 1, 3:] = [np.log(3.0), 0.0, 0.0]  # p = .6, .2, .2
    batch = {
        "completion_tokens": tokens, "completion_loss_mask": mask,
        "completion_positions": np.tile(np.arange(5), (3, 1)), "completion_segment_ids": np.ones((3, 5), np.int32),
        "desirable": np.array([1, 0, 1], np.int32),
    }
    return FixedLogits(logits), batch, logits, tokens, mask


def test_confidence_position_is_the_last_digit_of_the_completion():
    _, _, _, tokens, mask = _hand_batch()
    pos, found = confidence_positions(jnp.asarray(tokens), jnp.asarray(mask), jnp.array([3, 4, 5]))
    np.testing.assert_array_equal(np.asarray(found), [True, True, False])
    np.testing.assert_array_equal(np.asarray(pos)[:2], [3, 2])


def test_tokenized_brier_on_a_hand_computed_batch():
    model, batch, _, _, _ = _hand_batch()
    loss, metrics, weight = calibration_loss(
        model, batch, conf_token_ids=jnp.array([3, 4, 5]), conf_values=jnp.array([0.0, 0.5, 1.0])
    )
    # row 0 (correct): .25 * 1 + .25 * .25 + .5 * 0 = .3125; row 1 (wrong): .6 * 0 + .2 * .25 + .2 * 1 = .25;
    # row 2 has no digit: weight 0.
    assert float(weight) == 2.0
    assert float(loss) == pytest.approx((0.3125 + 0.25) / 2, abs=1e-6)
    assert float(metrics["conf/expected_confidence"]) == pytest.approx((0.625 + 0.3) / 2, abs=1e-6)


def test_log_score_on_the_same_hand_computed_batch():
    model, batch, _, _, _ = _hand_batch()
    loss, metrics, weight = calibration_log_loss(
        model, batch, conf_token_ids=jnp.array([3, 4, 5]), conf_values=jnp.array([0.0, 0.5, 1.0])
    )
    # expected confidences .625 (row 0, correct) and .3 (row 1, wrong): -(log .625 + log .7) / 2
    assert float(weight) == 2.0
    assert float(loss) == pytest.approx(-(np.log(0.625) + np.log(0.7)) / 2, rel=1e-5)
    assert float(metrics["conf/brier"]) == pytest.approx((0.3125 + 0.25) / 2, abs=1e-6)


@pytest.mark.parametrize("prefix_len", [0, 1])
def test_answer_nll_term_covers_only_the_answer(prefix_len):
    model, batch, logits, tokens, mask = _hand_batch()
    kw = dict(conf_token_ids=jnp.array([3, 4, 5]), conf_values=jnp.array([0.0, 0.5, 1.0]))
    base, _, _ = calibration_loss(model, batch, **kw)
    loss, metrics, _ = calibration_loss(model, batch, answer_nll_coef=0.5, confidence_prefix_len=prefix_len, **kw)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    digit = {0: 3, 1: 2}
    nll = []
    for b in (0, 1):  # the answer: completion tokens before the prefix (and never the digit or after it)
        ts = [t for t in range(1, 5) if mask[b, t] and t < digit[b] - prefix_len]
        nll.append(-np.mean([logp[b, t - 1, tokens[b, t]] for t in ts]) if ts else 0.0)
    assert float(metrics["conf/answer_nll"]) == pytest.approx(np.mean(nll), rel=1e-5)
    assert float(loss) == pytest.approx(float(base) + 0.5 * np.mean(nll), rel=1e-5)


def test_sft_label_smoothing_matches_the_formula():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, size=(2, 4)).astype(np.int32)
    mask = np.array([[0, 1, 1, 1], [0, 0, 1, 0]], np.int32)
    batch = {"tokens": tokens, "loss_mask": mask, "positions": np.tile(np.arange(4), (2, 1)),
             "segment_ids": np.ones((2, 4), np.int32)}
    eps = 0.2
    loss, metrics, n = sft_loss(FixedLogits(logits), batch, label_smoothing=eps)
    plain, plain_metrics, _ = sft_loss(FixedLogits(logits), batch)
    logp = logits[:, :-1] - np.log(np.exp(logits[:, :-1]).sum(-1, keepdims=True))
    sel = mask[:, 1:] > 0
    picked = np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    expected = np.mean(((1 - eps) * -picked - eps * logp.mean(-1))[sel])
    assert float(n) == 4.0
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["sft/nll"]) == pytest.approx(float(plain), rel=1e-5)
    assert float(loss) != pytest.approx(float(plain), rel=1e-3)


# --------------------------------------------------------------------------- real tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_gguf(smollm2_gguf_path())


def test_smollm2_digits_are_single_tokens(tokenizer):
    ids = confidence_token_ids(tokenizer)
    assert len(set(ids.tolist())) == 10
    assert [tokenizer.decode([int(i)]) for i in ids] == [str(d) for d in range(10)]
    np.testing.assert_allclose(confidence_values(), np.arange(10) / 9)
    assert with_confidence("Paris. ", "7") == "Paris." + CONFIDENCE_PREFIX + "7"
    with pytest.raises(ValueError, match="one of"):
        with_confidence("Paris", "10")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny_model")
    cfg = ModelConfig(family="llama", vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, eos_token_id=tokenizer.eos_id,
                      bos_token_id=tokenizer.bos_id)
    save_hf_dir(init_decoder(cfg, seed=0), folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "calibration.jsonl"
    rng = np.random.RandomState(0)
    with path.open("w") as f:
        for i in range(40):
            a, b = rng.randint(0, 50, 2)
            easy = i % 2 == 0  # "correct" depends on the question, so a model can learn it
            q = f"What is {a} plus {b}?" if easy else f"What is {a} to the power {b}?"
            f.write(json.dumps({"prompt": q, "answer": f"{a + b}", "correct": int(easy)}) + "\n")
    return path


def _calibration_config(model_dir, data_file, **overrides):
    c = make_config(model_dir, data_file, data__source="unpaired", train__task="calibration",
                    reference__mode="none", **overrides)
    c.data.fields = {"response": "answer", "desirable": "correct"}
    c.loss = dict(name="confidence_brier", answer_nll_coef=0.1)
    return c


def test_calibration_config_file_builds():
    spec = importlib.util.spec_from_file_location("calibration_config", REPO / "configs" / "calibration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = parse_config(module.get_config())
    assert cfg.train.task == "calibration" and cfg.loss_name == "confidence_brier"
    assert dict(cfg.data.fields) == {"desirable": "correct", "response": "answer"}


def test_calibration_task_rejects_bad_losses(tiny_model_dir, calibration_file, tokenizer):
    c = _calibration_config(tiny_model_dir, calibration_file)
    c.loss = dict(name="confidence_brier", gamma=1.0)
    with pytest.raises(ValueError, match="answer_nll_coef"):
        build_task_loss(parse_config(c), tokenizer)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        build_task_loss(parse_config(_calibration_config(tiny_model_dir, calibration_file)))
    with pytest.raises(TypeError, match="unpaired records"):
        calibration_records([object()])
    assert calibration_records([UnpairedRecord("q", "4", True)])[0].response.endswith("Confidence: 0")


@pytest.mark.parametrize("loss_name", ["confidence_brier", "confidence_log"])
def test_engine_steps_lower_the_held_out_tokenized_brier(tiny_model_dir, calibration_file, tmp_path, loss_name):
    c = _calibration_config(tiny_model_dir, calibration_file, train__steps=16, optimizer__total_steps=16,
                            train__eval_every=16)
    c.loss.name = loss_name
    cfg = parse_config(c)
    result = run(cfg, tmp_path / "run")
    before, after = result["before"], result["final"]
    # a random tiny model spreads its digit probability evenly: expected confidence 0.5
    assert before["eval/conf/expected_confidence"] == pytest.approx(0.5, abs=0.05)
    assert np.isfinite(after["eval/loss"])
    assert after["eval/conf/brier"] < before["eval/conf/brier"] - 0.01
