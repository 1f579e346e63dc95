"""Temperature / Platt scaling recover known maps; the bucket-token confidence read-out equals a
direct forward pass, digit by digit, and is cut exactly where training puts the digit."""

import numpy as np
import pytest

from align_jax.data.tokenization import completion_text
from align_jax.data.verbalized_confidence import confidence_token_ids, confidence_values, with_confidence
from align_jax.evals import runner
from align_jax.evals.temperature_scaling import (
    apply_platt,
    apply_temperature,
    fit_platt,
    fit_temperature,
)
from align_jax.evals.verbalized_confidence import bucket_confidence, confidence_context_ids, read_confidence
from align_jax.models import ModelConfig, init_decoder
from align_jax.models.gguf_file import smollm2_gguf_path
from align_jax.models.registry import LoadedModel
from align_jax.models.tokenizer import Tokenizer


def _synthetic(seed, n, temperature=1.0, a=None, b=None):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=n)
    true_logit = z / temperature if a is None else a * z + b
    y = rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-true_logit))
    return 1.0 / (1.0 + np.exp(-z)), y


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(temperature):
    conf, y = _synthetic(0, 20000, temperature=temperature)
    t = fit_temperature(conf, y)
    assert t == pytest.approx(temperature, rel=0.06)
    # the fitted map lowers the log loss on fresh data drawn the same way
    conf2, y2 = _synthetic(1, 20000, temperature=temperature)

    def log_loss(p):
        p = np.clip(p, 1e-9, 1 - 1e-9)
        return -np.mean(y2 * np.log(p) + (1 - y2) * np.log(1 - p))

    assert log_loss(apply_temperature(conf2, t)) < log_loss(conf2) - 0.01
    np.testing.assert_allclose(apply_temperature(conf2, 1.0), conf2, atol=1e-6)


def test_platt_scaling_recovers_slope_and_bias():
    conf, y = _synthetic(2, 20000, a=0.7, b=-1.2)
    a, b = fit_platt(conf, y)
    assert a == pytest.approx(0.7, abs=0.05) and b == pytest.approx(-1.2, abs=0.08)
    assert apply_platt(np.array([0.5]), a, b)[0] == pytest.approx(1 / (1 + np.exp(-b)), rel=1e-6)


def test_bucket_confidence_is_the_expected_stated_value():
    values = confidence_values()
    uniform, probs = bucket_confidence(np.zeros((1, 10)), values)
    assert uniform[0] == pytest.approx(0.5) and probs.sum() == pytest.approx(1.0)
    sharp, _ = bucket_confidence(np.eye(10)[[7]] * 50.0, values)
    assert sharp[0] == pytest.approx(7 / 9, abs=1e-6)
    two, _ = bucket_confidence(np.log(np.array([[3.0, 0, 0, 0, 0, 0, 0, 0, 0, 1.0]]) + 1e-30), values)
    assert two[0] == pytest.approx(0.25, abs=1e-6)  # 3/4 on "0", 1/4 on "9"


@pytest.fixture(scope="module")
def tiny_lm():
    tok = Tokenizer.from_gguf(smollm2_gguf_path())
    cfg = ModelConfig(family="llama", vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id)
    return LoadedModel(init_decoder(cfg, seed=3), tok, "chatml", "tiny")


def test_context_stops_right_before_the_trained_digit(tiny_lm):
    ids = confidence_token_ids(tiny_lm.tokenizer)
    ctx = confidence_context_ids(tiny_lm, "What is 12 + 3?", "15", ids)
    full = runner.chat_prompt_ids(tiny_lm, "What is 12 + 3?") + tiny_lm.tokenizer.encode(
        completion_text(with_confidence("15"), "chatml"))
    assert full[: len(ctx)] == ctx and full[len(ctx)] == ids[0]  # the placeholder digit "0" comes next
    assert tiny_lm.tokenizer.decode(ctx).endswith("15\nConfidence: ")


def test_read_confidence_equals_a_direct_forward(tiny_lm):
    import jax.numpy as jnp

    prompts = ["What is the capital of France?", "What is 7 × 8?", "Who wrote Hamlet?"]
    answers = ["Paris", "56", "William Shakespeare wrote it in 1600"]
    out = read_confidence(tiny_lm, prompts, answers, batch_size=2)  # padded rows, a partial batch
    ids = confidence_token_ids(tiny_lm.tokenizer)
    for k, (p, a) in enumerate(zip(prompts, answers)):
        ctx = confidence_context_ids(tiny_lm, p, a, ids)
        logits = np.asarray(tiny_lm.model(jnp.asarray([ctx])).logits[0, -1], np.float64)
        sub = np.exp(logits[ids] - logits[ids].max())
        np.testing.assert_allclose(out["probs"][k], sub / sub.sum(), atol=1e-5)
        p_full = np.exp(logits - logits.max())
        assert out["token_mass"][k] == pytest.approx(p_full[ids].sum() / p_full.sum(), rel=1e-4)
        assert out["expected"][k] == pytest.approx(float(sub / sub.sum() @ confidence_values()), abs=1e-5)
