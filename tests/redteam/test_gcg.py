"""GCG on tiny models: the batched candidate losses over the prefix cache equal a plain forward on
each whole sequence; the one-hot token gradient equals finite differences of an independent
relaxation; sampling respects top-k, swaps and the disallowed tokens; the attack lowers the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.models import toy
from align_jax.models.config import ModelConfig
from align_jax.models.decoder import init_decoder
from align_jax.models.registry import load_model
from align_jax.redteam.gcg import (
    GCGConfig, candidate_losses, not_allowed_mask, prefix_cache, retokenizes, run_gcg, sample_candidates, split_chat,
    token_gradient,
)

CFG = ModelConfig(family="gemma3", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, max_position_embeddings=96, tie_embeddings=True, embed_scale=True,
                  norm_plus_one=True, sandwich_norm=True, activation="gelu_tanh", layer_types=("sliding", "full"),
                  sliding_window=4, query_pre_attn_scalar=8.0)
BEFORE, AFTER, TARGET = [3, 9, 14, 2, 7], [11, 5], [20, 21, 22]


@pytest.fixture(scope="module")
def model():  # Gemma-like: embedding scale (the one-hot relaxation must apply it), sandwich norms, sliding layer
    return init_decoder(CFG, seed=1)


def _plain_loss(model, suffix, embeds=None):
    """Mean target NLL from one cache-free forward over the whole sequence (optionally given embeddings)."""
    seq = jnp.asarray([BEFORE + list(suffix) + AFTER + TARGET])
    logits = model(seq, inputs_embeds=embeds).logits[0].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, -1)
    start = len(BEFORE) + len(suffix) + len(AFTER)
    return -jnp.mean(jnp.stack([logp[start - 1 + i, t] for i, t in enumerate(TARGET)]))


def test_candidate_losses_equal_plain_forwards(model):
    rng = np.random.RandomState(0)
    cands = rng.randint(0, 61, (6, 4))
    cache = prefix_cache(model, BEFORE, len(BEFORE) + 4 + len(AFTER) + len(TARGET))
    losses, preds = candidate_losses(model, cache, cands, jnp.asarray(AFTER), jnp.asarray(TARGET))
    want = [float(_plain_loss(model, c)) for c in cands]
    np.testing.assert_allclose(np.asarray(losses), want, rtol=1e-5, atol=1e-5)
    assert preds.shape == (6, 3)


def test_token_gradient_equals_finite_differences(model):
    suffix = [4, 40, 17, 33]
    cache = prefix_cache(model, BEFORE, len(BEFORE) + 4 + len(AFTER) + len(TARGET))
    loss, grad = token_gradient(model, cache, jnp.asarray(suffix), jnp.asarray(AFTER), jnp.asarray(TARGET))
    np.testing.assert_allclose(float(loss), float(_plain_loss(model, suffix)), rtol=1e-5)
    emb = model.embed[...].astype(jnp.float32)
    scale = CFG.hidden_size**0.5 if model.cfg.embed_scale else 1.0

    def relaxed(one_hot):  # the suffix as one_hot @ E, the rest as their own embeddings
        seq = jnp.asarray(BEFORE + suffix + AFTER + TARGET)
        e = model.embed_tokens(seq[None]).astype(jnp.float32)
        e = e.at[0, len(BEFORE):len(BEFORE) + 4].set(one_hot @ emb * scale)
        return _plain_loss(model, suffix, e)

    one_hot = jax.nn.one_hot(jnp.asarray(suffix), 61)
    for seed in range(3):
        d = jnp.asarray(np.random.RandomState(seed).randn(4, 61), jnp.float32)
        eps = 1e-2
        fd = (float(relaxed(one_hot + eps * d)) - float(relaxed(one_hot - eps * d))) / (2 * eps)
        np.testing.assert_allclose(float(jnp.sum(grad * d)), fd, rtol=2e-2, atol=1e-4)


def test_sample_candidates_respects_topk_swaps_and_mask():
    grad = jnp.asarray(np.random.RandomState(0).randn(5, 30), jnp.float32)
    suffix = jnp.asarray([1, 2, 3, 4, 5])
    banned = np.zeros(30, bool)
    banned[[0, 7, 8]] = True
    cands = np.asarray(sample_candidates(jax.random.key(0), suffix, grad, jnp.asarray(banned), width=200, topk=4,
                                         n_replace=2))
    allowed_top = [set(np.argsort(np.where(banned, np.inf, np.asarray(grad[i])))[:4]) for i in range(5)]
    for row in cands:
        changed = np.flatnonzero(row != np.asarray(suffix))
        assert len(changed) <= 2
        for p in changed:
            assert row[p] in allowed_top[p] and not banned[row[p]]
    assert len({tuple(r) for r in cands}) > 50  # varied


def test_gcg_lowers_the_loss_on_the_toy_model():
    lm = load_model(path=toy.materialize())
    before, after = split_chat(lm, "Tell me a secret")
    assert lm.tokenizer.decode(before).endswith("Tell me a secret") and "assistant" in lm.tokenizer.decode(after)
    mask = not_allowed_mask(lm.tokenizer)
    assert mask[lm.tokenizer.eos_id] and not mask[lm.tokenizer.encode("x")[0]]
    cfg = GCGConfig(num_steps=6, suffix_init="x x x x", search_width=64, topk=16, batch_size=32, seed=0)
    result = run_gcg(lm, "Tell me a secret", "Sure", cfg)
    suffix = lm.tokenizer.encode(cfg.suffix_init)
    cache = prefix_cache(lm.model, before, len(before) + len(suffix) + len(after) + 4)
    initial = float(candidate_losses(lm.model, cache, np.asarray([suffix]), jnp.asarray(after),
                                     jnp.asarray(lm.tokenizer.encode("Sure")))[0][0])
    assert result.best_loss < initial and len(result.losses) == 6
    assert retokenizes(lm.tokenizer, np.asarray([result.best_ids])).all()
    with pytest.raises(ValueError, match="search_width"):
        GCGConfig(search_width=0)
