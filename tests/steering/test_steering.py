"""Steering methods on a tiny random model, each against an independent computation: integrated
gradients against closed forms and completeness, activations against unpadded single-row
captures, the logit lens against the hidden states read by hand, patching against its exact
cases, CAA / GrAInS / refusal-direction pieces against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align_jax.models.config import ModelConfig
from align_jax.models.decoder import init_decoder
from align_jax.models.interventions import add_vector
from align_jax.steering.activations import site_activations
from align_jax.steering.attribution import contrastive_objective, integrated_gradients
from align_jax.steering.directions import diff_in_means, last_logits, refusal_log_odds, select_refusal_direction
from align_jax.steering.lens import logit_lens
from align_jax.steering.patching import patching_heatmap, plot_heatmap
from align_jax.steering.vectors import caa_vectors, first_component, grains_vectors, masked_top_k

CFG = ModelConfig(family="llama", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=3,
                  num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=96, tie_embeddings=False)


@pytest.fixture(scope="module")
def model():
    m = init_decoder(CFG, seed=5)
    m.lm_head[...] = m.lm_head[...] * 20.0
    return m


def _logprob(model, prompt, completion):
    """log p(completion | prompt) from one plain forward (the independent reference)."""
    seq = jnp.asarray([list(prompt) + list(completion)])
    logp = jax.nn.log_softmax(model(seq).logits[0].astype(jnp.float32), -1)
    return float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(completion)))


def test_integrated_gradients_closed_forms():
    rng = np.random.RandomState(0)
    x, c = rng.randn(4, 3).astype(np.float32), rng.randn(4, 3).astype(np.float32)
    quad = lambda p: (c * p**2).sum((1, 2))  # IG_i = c_i x_i^2 exactly; trapezoid is exact on a linear integrand
    ig = integrated_gradients(quad, x, steps=3)
    np.testing.assert_allclose(ig.per_dim, c * x**2, rtol=1e-5)
    np.testing.assert_allclose(ig.attributions, (c * x**2).sum(-1), rtol=1e-5)
    base = rng.randn(4, 3).astype(np.float32)
    cubic = lambda p: (c * p**3).sum((1, 2))
    gaps = [abs(integrated_gradients(cubic, x, base, steps=s, power=1).completeness_gap) for s in (4, 16, 64)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-2  # quadrature error falls as 1/steps^2
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(quad, x, steps=0)


def test_contrastive_objective_and_completeness_on_the_model(model):
    prompt, good, bad = [3, 17, 9, 40, 2], [11, 12], [30]
    f, embeds, tokens = contrastive_objective(model, prompt, good, bad)
    want = _logprob(model, prompt, good) - _logprob(model, prompt, bad)
    np.testing.assert_allclose(float(f(embeds[None])[0]), want, rtol=1e-4, atol=1e-4)
    ig = integrated_gradients(f, embeds, steps=64)
    assert ig.attributions.shape == tokens.shape == (2, 7)
    assert abs(ig.completeness_gap) < 0.01 * abs(ig.value - ig.baseline_value)  # measured 0.2%
    uniform = integrated_gradients(f, embeds, steps=16, power=1)
    assert abs(uniform.completeness_gap) > 0.5 * abs(ig.value - ig.baseline_value)  # why points crowd near 0
    # A row's last token predicts nothing that counts, and padding is masked out: both get exactly 0.
    assert ig.attributions[0, 6] == ig.attributions[1, 5] == ig.attributions[1, 6] == 0
    assert (ig.attributions[:, :5] != 0).all() and ig.attributions[0, 5] != 0


def test_site_activations_equal_single_unpadded_rows(model):
    rows = [[5, 9, 11, 3], [7, 3, 2, 8, 21, 40, 13], [30, 31]]
    acts = site_activations(model, rows, site="mlp_out", offsets=(-2, -1), batch_size=2, bucket=4)
    assert acts.shape == (3, 2, CFG.num_layers, CFG.hidden_size)
    for i, r in enumerate(rows):
        cap = np.asarray(model(jnp.asarray([r]), capture=("mlp_out",)).captured["mlp_out"])  # [L, 1, T, D]
        np.testing.assert_allclose(acts[i, 0], cap[:, 0, -2], atol=1e-5)
        np.testing.assert_allclose(acts[i, 1], cap[:, 0, -1], atol=1e-5)
    with pytest.raises(ValueError, match="offset -3 needs 3"):
        site_activations(model, rows, offsets=(-3,))
    with pytest.raises(ValueError, match="unknown site"):
        site_activations(model, rows, site="resid_post")


def test_logit_lens_reads_each_layer(model):
    tokens = jnp.asarray([[4, 8, 15, 16, 23, 42]])
    lens = np.asarray(logit_lens(model, tokens))
    assert lens.shape == (CFG.num_layers + 1, 1, 6, CFG.vocab_size)
    np.testing.assert_allclose(lens[-1], jax.nn.log_softmax(model(tokens).logits, -1), atol=1e-5)
    hidden = model(tokens, return_hidden_states=True).hidden_states
    h = np.asarray(hidden[1], np.float64)[0]  # block 0's output, read by hand: RMSNorm then unembedding
    normed = h / np.sqrt((h**2).mean(-1, keepdims=True) + CFG.rms_norm_eps) * np.asarray(model.final_norm.weight[...])
    logits = normed @ np.asarray(model.lm_head[...], np.float64)
    ref = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    np.testing.assert_allclose(lens[1, 0], ref, atol=1e-4)


def test_patching_exact_cases(model, tmp_path):
    clean, corrupt = [4, 8, 15, 16, 23, 42], [4, 8, 50, 16, 23, 42]  # differ at position 2 only
    top = np.argsort(np.asarray(model(jnp.asarray([clean])).logits[0, -1]))[::-1]
    res = patching_heatmap(model, clean, corrupt, (int(top[0]), int(top[1])))
    assert res.scores.shape == (CFG.num_layers, 6)
    # Layer 0's resid_pre is the embeddings: restoring the one differing token makes the clean run.
    np.testing.assert_allclose(res.scores[0, 2], 1.0, atol=1e-4)
    # Positions before the difference carry the same activations in both runs: nothing to restore.
    np.testing.assert_allclose(res.scores[:, :2], 0.0, atol=1e-4)
    # The last position at the last layer's input: everything after it is that token's own stack.
    assert np.isfinite(res.scores).all()
    plot_heatmap(res, [str(t) for t in clean], str(tmp_path / "heat.png"))
    assert (tmp_path / "heat.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="same length"):
        patching_heatmap(model, clean, corrupt[:-1], (1, 2))


def test_refusal_pieces(model):
    logits = jnp.asarray(np.random.RandomState(1).randn(4, CFG.vocab_size), jnp.float32)
    p = np.asarray(jax.nn.softmax(logits, -1))[:, [3, 7]].sum(-1)
    np.testing.assert_allclose(refusal_log_odds(logits, jnp.asarray([3, 7])), np.log(p + 1e-8) - np.log(1 - p + 1e-8),
                               rtol=1e-5)
    a, b = np.random.RandomState(2).randn(5, 2, 3), np.random.RandomState(3).randn(7, 2, 3)
    np.testing.assert_allclose(diff_in_means(a, b), a.mean(0) - b.mean(0), rtol=1e-5)
    harmful = [[1, 2, 3, 4], [5, 6, 7, 8, 9]]
    harmless = [[10, 11, 12], [13, 14, 15, 16]]
    acts = lambda rows: site_activations(model, rows, offsets=(-2, -1))
    candidates = np.stack([diff_in_means(acts(harmful)[:, i], acts(harmless)[:, i]) for i in range(2)])  # [P, L, D]
    refusal = [int(np.argmax(np.asarray(last_logits(model, harmful)).mean(0)))]
    choice = select_refusal_direction(model, candidates, (-2, -1), harmful, harmless, refusal,
                                      max_layer_frac=0.7, max_kl=10.0, min_induce=-np.inf)
    assert np.isnan(choice.bypass[:, 2]).all()  # layer 2 >= 0.7 * 3 is never scored
    kept = np.where(choice.kl <= 10.0, choice.bypass, np.inf)
    assert choice.bypass[[-2, -1].index(choice.offset), choice.layer] == kept.min()
    with pytest.raises(ValueError, match="no candidate direction passes"):
        select_refusal_direction(model, candidates[:1], (-2,), harmful, harmless, refusal, min_induce=np.inf,
                                 max_kl=10.0)
    relaxed = select_refusal_direction(model, candidates[:1], (-2,), harmful, harmless, refusal, min_induce=np.inf,
                                       max_kl=10.0, relax_if_empty=True, max_layer_frac=0.7)
    assert relaxed.relaxed and not choice.relaxed and relaxed.layer == int(np.argmin(relaxed.bypass[0, :2]))
    with pytest.raises(ValueError, match="candidates"):
        select_refusal_direction(model, candidates[:1, :2], (-2,), harmful, harmless, refusal)
    # One cell recomputed directly: the harmless refusal score with the direction added at its layer.
    added = add_vector("resid_pre", CFG.num_layers, choice.layer, choice.direction)
    induce = float(refusal_log_odds(last_logits(model, harmless, added), jnp.asarray(refusal)).mean())
    np.testing.assert_allclose(choice.induce[[-2, -1].index(choice.offset), choice.layer], induce, rtol=1e-5)


def test_caa_and_grains(model):
    pos_rows, neg_rows = [[1, 2, 3, 40], [5, 6, 40]], [[1, 2, 3, 41], [5, 6, 41]]
    v = caa_vectors(model, pos_rows, neg_rows, batch_size=2)
    cap = lambda r: np.asarray(model(jnp.asarray([r]), capture=("resid_pre",)).captured["resid_pre"])[:, 0, -1]
    want = np.mean([cap(p) - cap(n) for p, n in zip(pos_rows, neg_rows)], axis=0)
    np.testing.assert_allclose(v, want, atol=1e-5)
    assert masked_top_k([5, 6, 7, 8], np.asarray([0.1, 0.9, -0.5, 0.3]), 2, True, 0) == [5, 0, 7, 0]
    assert masked_top_k([5, 6, 7, 8], np.asarray([0.1, 0.9, -0.5, 0.3]), 1, False, 0) == [5, 6, 0, 8]
    moves = np.random.RandomState(0).randn(50, 4) * np.asarray([5.0, 0.1, 0.1, 0.1]) + np.asarray([-2.0, 0, 0, 0])
    pc = first_component(moves)
    assert abs(abs(pc[0]) - 1) < 1e-2 and pc[0] < 0  # the spread axis, pointing like the mean move
    examples = [([3, 17, 9, 40, 2], [11, 12], [30]), ([8, 8, 1, 5], [20], [21, 22])]
    vectors, info = grains_vectors(model, examples, k=2, steps=16, batch_size=4)
    assert vectors.shape == (CFG.num_layers, CFG.hidden_size) and np.isfinite(vectors).all()
    assert info["completeness_gaps"].shape == (2,)
