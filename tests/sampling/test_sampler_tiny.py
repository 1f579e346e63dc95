"""The KV-cache sampler on a tiny random model: log-probs vs a teacher-forced pass, sampling
statistics, truncation, stopping, padding and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from align_jax.models.config import ModelConfig
from align_jax.models.decoder import init_decoder
from align_jax.sampling import SamplingParams, sample
from test_sampling_params import reference_logprobs

CFG = ModelConfig(family="llama", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=96,
                  tie_embeddings=False)
PROMPTS = [[5, 9, 11], [7, 3, 2, 8, 21, 40, 13], [30]]


@pytest.fixture(scope="module")
def model():
    m = init_decoder(CFG, seed=3)
    m.lm_head[...] = m.lm_head[...] * 25.0  # std 0.5: peaked, varied next-token distributions
    return m


def teacher_forced(model, out):
    """log_softmax of a cache-free forward over prompt + completion; [R, M, V] for each new token."""
    seq = jnp.concatenate([out.prompt_tokens, out.tokens], axis=1)
    mask = jnp.concatenate([out.prompt_mask, out.completion_mask], axis=1)
    pos = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    logits = model(seq, pos, mask).logits.astype(jnp.float32)
    p, m = out.prompt_tokens.shape[1], out.tokens.shape[1]
    return np.asarray(logits[:, p - 1 : p - 1 + m])


CONFIGS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=7),
    dict(temperature=1.3, top_k=20, top_p=0.8, min_p=0.1),
]


@pytest.mark.parametrize("kw", CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_logprobs_equal_teacher_forced_and_truncation_holds(model, kw):
    params = SamplingParams(**kw, n=8, max_new_tokens=12, seed=1)
    out = sample(model, PROMPTS, params, eos_ids=[0])
    assert out.tokens.shape == (len(PROMPTS) * 8, 12)
    logits = teacher_forced(model, out)
    mask = np.asarray(out.completion_mask).astype(bool)
    toks = np.asarray(out.tokens)
    model_ref = np.take_along_axis(jax.nn.log_softmax(logits, -1), toks[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.model_logprobs)[mask], model_ref[mask], atol=1e-4)
    samp = np.asarray(out.sampling_logprobs)
    for r, t in zip(*np.nonzero(mask)):
        ref = reference_logprobs(logits[r, t], kw["temperature"], kw.get("top_k", 0),
                                 kw.get("top_p", 1.0), kw.get("min_p", 0.0))
        assert np.isfinite(ref[toks[r, t]]), f"emitted excluded token {toks[r, t]} ({kw})"
        assert abs(samp[r, t] - ref[toks[r, t]]) < 1e-4
    assert (np.asarray(out.model_logprobs)[~mask] == 0).all() and (samp[~mask] == 0).all()
    # Samples of one prompt differ (not copies), and the same seed gives the same samples.
    assert len({tuple(row) for row in toks[:8]}) > 1
    again = sample(model, PROMPTS, params, eos_ids=[0])
    np.testing.assert_array_equal(np.asarray(again.tokens), toks)


def test_first_token_frequencies_match_softmax(model):
    """Chi-square goodness of fit of 4000 first tokens to softmax(logits / T)."""
    temperature, n = 0.8, 4000
    out = sample(model, [PROMPTS[1]], SamplingParams(temperature=temperature, n=n, max_new_tokens=1, seed=7))
    tok = np.asarray(out.tokens[:, 0])
    logits = np.asarray(model(jnp.asarray([PROMPTS[1]])).logits[0, -1], np.float64)
    probs = np.exp(reference_logprobs(logits, temperature))
    expected = probs * n
    big = expected >= 5  # pool rare tokens into one bin
    observed = np.bincount(tok, minlength=CFG.vocab_size)
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    assert big.sum() >= 5, "the test model should spread mass over several tokens"
    p_value = stats.chisquare(obs, exp).pvalue
    assert p_value > 1e-3, (p_value, obs, exp)
    # And a wrong temperature is rejected by the same test (so it can fail).
    wrong = np.exp(reference_logprobs(logits, 1.3)) * n
    assert stats.chisquare(obs, np.append(wrong[big], wrong[~big].sum()) * n / wrong.sum()).pvalue < 1e-3


def test_greedy_batched_with_left_padding_equals_one_at_a_time(model):
    params = SamplingParams(temperature=0, max_new_tokens=10)
    batched = sample(model, PROMPTS, params)
    logits = teacher_forced(model, batched)
    np.testing.assert_array_equal(np.asarray(batched.tokens), logits.argmax(-1))
    for i, p in enumerate(PROMPTS):
        alone = sample(model, [p], params)
        np.testing.assert_array_equal(np.asarray(alone.tokens[0]), np.asarray(batched.tokens[i]))
    assert (np.asarray(batched.sampling_logprobs) == 0).all()
    np.testing.assert_array_equal(np.asarray(batched.prompt_mask).sum(1), [len(p) for p in PROMPTS])


@pytest.mark.parametrize("gemma_like", [False, True], ids=["llama", "tied+sliding"])
def test_hoisted_weights_equal_stacked_decode(model, gemma_like):
    """Decoding with per-layer weights hoisted out of the loop equals slicing the stacked ones."""
    if gemma_like:  # tied unembedding, softcap, and a sliding layer whose window the decode crosses
        cfg = CFG.replace(tie_embeddings=True, layer_types=("sliding", "full"), sliding_window=4,
                          final_logit_softcap=30.0)
        model = init_decoder(cfg, seed=4)
        model.embed[...] = model.embed[...] * 25.0
    params = SamplingParams(temperature=0.9, top_k=10, n=2, max_new_tokens=9, seed=2)
    ref, new = (sample(model, PROMPTS, params, hoist_weights=h) for h in (False, True))
    np.testing.assert_array_equal(np.asarray(new.tokens), np.asarray(ref.tokens))
    np.testing.assert_allclose(np.asarray(new.model_logprobs), np.asarray(ref.model_logprobs), atol=1e-5)
    np.testing.assert_allclose(np.asarray(new.sampling_logprobs), np.asarray(ref.sampling_logprobs), atol=1e-5)


def test_bf16_matmuls_over_fp32_weights_sample_what_the_trainer_scores(model):
    """``matmul_dtype="bfloat16"`` over fp32 weights: the hoisted decode casts the matmul weights once
    (the loop then reads bf16 copies) and still equals the stacked decode, and its log-probs equal a
    teacher-forced forward of the same mixed-precision model (the RL trainer's view), not the fp32 one."""
    mixed = init_decoder(CFG.replace(matmul_dtype="bfloat16"), seed=3)
    nnx.update(mixed, nnx.state(model))  # the same fp32 weights
    params = SamplingParams(temperature=1.0, n=2, max_new_tokens=10, seed=5)
    ref, new = (sample(mixed, PROMPTS, params, hoist_weights=h) for h in (False, True))
    np.testing.assert_array_equal(np.asarray(new.tokens), np.asarray(ref.tokens))
    np.testing.assert_allclose(np.asarray(new.model_logprobs), np.asarray(ref.model_logprobs), atol=1e-5)
    mask = np.asarray(new.completion_mask).astype(bool)
    toks = np.asarray(new.tokens)

    def scored(m):
        lp = jax.nn.log_softmax(teacher_forced(m, new), -1)
        return np.take_along_axis(np.asarray(lp), toks[..., None], -1)[..., 0][mask]

    got = np.asarray(new.model_logprobs)[mask]
    np.testing.assert_allclose(got, scored(mixed), atol=1e-4)
    assert np.abs(got - scored(model)).max() > 1e-4  # bf16 operands really were used


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_a_remat_model_samples_what_the_plain_one_does(model, remat):
    """A model configured with layer remat (training's setting, e.g. the demo's) decodes through the
    same per-layer cache path: the layer index must stay static under jax.checkpoint."""
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    remat_model = init_decoder(CFG.replace(remat=remat, scan_layers=False), seed=3)
    remat_model.lm_head[...] = remat_model.lm_head[...] * 25.0
    ref, new = (sample(m, PROMPTS, params, hoist_weights=True) for m in (model, remat_model))
    np.testing.assert_array_equal(np.asarray(new.tokens), np.asarray(ref.tokens))
    np.testing.assert_allclose(np.asarray(new.model_logprobs), np.asarray(ref.model_logprobs), atol=1e-5)


def test_sliding_window_logprobs_equal_teacher_forced():
    """Gemma-style sliding layers: decoding far past the window (4) through the KV cache gives the
    log-probs of a cache-free forward, whose sliding mask is checked against transformers."""
    cfg = CFG.replace(tie_embeddings=True, layer_types=("sliding", "full"), sliding_window=4,
                      final_logit_softcap=30.0, sandwich_norm=True, qk_norm=True)
    model = init_decoder(cfg, seed=5)
    model.embed[...] = model.embed[...] * 25.0
    out = sample(model, PROMPTS, SamplingParams(temperature=1.0, n=2, max_new_tokens=14, seed=3))
    logits = teacher_forced(model, out)
    mask = np.asarray(out.completion_mask).astype(bool)
    assert mask.sum(1).max() > cfg.sliding_window + 5  # the decode really crosses the window
    ref = np.take_along_axis(jax.nn.log_softmax(logits, -1), np.asarray(out.tokens)[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.model_logprobs)[mask], ref[mask], atol=1e-4)
    # The window matters: a model without it would give other log-probs.
    full = init_decoder(cfg.replace(layer_types=None, sliding_window=None), seed=0)
    nnx.update(full, nnx.state(model))  # same weights, every layer global
    assert np.abs(teacher_forced(full, out) - logits)[mask].max() > 1e-3


def test_stops_on_eos_and_stop_sequences(model):
    base = sample(model, PROMPTS, SamplingParams(temperature=0, max_new_tokens=10))
    free = np.asarray(base.tokens)
    row = free[1]
    eos = int(row[3])
    stop_at = int(np.argmax(row == eos))  # first occurrence
    out = sample(model, PROMPTS, SamplingParams(temperature=0, max_new_tokens=10), eos_ids=[eos], pad_id=0)
    got, mask = np.asarray(out.tokens), np.asarray(out.completion_mask)
    for r in range(len(PROMPTS)):
        hits = np.nonzero(free[r] == eos)[0]
        length = hits[0] + 1 if hits.size else 10
        assert mask[r].sum() == length and mask[r, :length].all()
        np.testing.assert_array_equal(got[r, :length], free[r, :length])
        assert (got[r, length:] == 0).all()
    assert mask[1].sum() == stop_at + 1
    # A two-token stop sequence taken from row 0 ends row 0 right after it.
    seq = (int(free[0][4]), int(free[0][5]))
    out = sample(model, PROMPTS, SamplingParams(temperature=0, max_new_tokens=10, stop_sequences=(seq,)))
    first = next(i for i in range(1, 10) if (free[0][i - 1], free[0][i]) == seq)
    assert int(np.asarray(out.completion_mask)[0].sum()) == first + 1


@pytest.mark.parametrize(
    "prompts, kw, match",
    [
        ([], {}, "no prompts"),
        ([[1, 2], []], {}, "empty"),
        ([list(range(1, 60)) + [1] * 30], dict(max_new_tokens=10), "maximum length"),
        ([[1, 2, 500]], {}, "token ids"),
    ],
)
def test_bad_input_raises(model, prompts, kw, match):
    with pytest.raises(ValueError, match=match):
        sample(model, prompts, SamplingParams(**kw))
