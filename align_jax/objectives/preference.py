"""Paired preference losses (the DPO family and its reference-free cousins).

Every loss is ``fn(inputs: PreferenceInputs, *, options...) -> (loss [], metrics)``,
registered in ``PREFERENCE_LOSSES`` with its arXiv id; options are the keyword-only
parameters, and value constraints are checked by ``PREFERENCE_LOSSES.build``.

Notation: ``ratio_w = log pi(y_w|x) - log pi_ref(y_w|x)`` (summed over tokens), likewise
``ratio_l``; ``margin = ratio_w - ratio_l``; ``sigma`` is the logistic function. The loss is
the weighted mean over examples (see ``types``); every loss logs
``rewards/{chosen,rejected,margins,accuracies}`` (implicit rewards, ``beta * ratio`` unless
the docstring says otherwise), ``logps/{chosen,rejected}`` (summed policy log-probs) and
``num_examples``. Formulas follow the papers; where TRL (1.16) follows another convention, the
loss has an option that reproduces TRL exactly, with our default stated in its docstring
(``ipo(normalize=)``, ``nll_reduction=``, ``wpo(cap=)``, ``bco_pair(shift=)``); docs/objectives.md
tables each loss's TRL name and settings, and tests/objectives/test_trl_agreement.py checks them
against TRL's own code.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from align_jax.objectives.types import (
    LossNeeds,
    Metrics,
    PreferenceInputs,
    SequenceLogps,
    declare_needs,
    example_weights,
    loss_needs,
    reduce_metrics,
    weighted_mean,
)
from align_jax.registry import Registry

PREFERENCE_LOSSES = Registry("preference loss")

LossOutput = tuple[jax.Array, Metrics]  # (loss [], metrics)
_EXP_CAP = 50.0  # exponents are capped here so that exp() stays finite in float32


# ---------------------------------------------------------------- option validation


class Rule(NamedTuple):
    """A constraint on one option value, with the requirement spelled out for errors."""

    check: Callable[[Any], bool]
    requirement: str


POSITIVE = Rule(lambda v: v > 0, "must be > 0")
NON_NEGATIVE = Rule(lambda v: v >= 0, "must be >= 0")


def interval(low: float, high: float, brackets: str = "[)") -> Rule:
    """Rule for ``low <= v < high`` (brackets ``"[)"``), ``low < v < high`` (``"()"``), ..."""

    def check(v: float) -> bool:
        above = v >= low if brackets[0] == "[" else v > low
        below = v <= high if brackets[1] == "]" else v < high
        return above and below

    return Rule(check, f"must be in {brackets[0]}{low}, {high}{brackets[1]}")


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, f"must be one of {', '.join(map(repr, choices))}")


NLL_REDUCTION = one_of("sequence", "token")  # see chosen_nll
BCO_SHIFT = one_of("running", "batch", "none")  # see bco_reward_shift


def option_rules(what: str, **rules: Rule) -> Callable[..., None]:
    """A ``validate=`` hook for ``Registry.register`` that checks each named option
    (``beta`` must be positive wherever a loss has it)."""
    rules = {"beta": POSITIVE, **rules}

    def validate(**options: Any) -> None:
        bad = [
            f"{name}={options[name]!r} {rule.requirement}"
            for name, rule in rules.items()
            if name in options and not rule.check(options[name])
        ]
        if bad:
            raise ValueError(f"{what}: invalid option(s): {'; '.join(bad)}")

    return validate


def _register(name: str, paper: str | None, **rules: Rule):
    return PREFERENCE_LOSSES.register(
        name, paper=paper, validate=option_rules(f"preference loss {name!r}", **rules)
    )


# ---------------------------------------------------------------- shared pieces


class LogRatios(NamedTuple):
    chosen: jax.Array  # [B] log pi(y_w) - log pi_ref(y_w)
    rejected: jax.Array  # [B]

    @property
    def margin(self) -> jax.Array:  # [B]
        return self.chosen - self.rejected


def reference_sums(inputs: PreferenceInputs) -> tuple[jax.Array, jax.Array]:  # [B], [B]
    """Summed reference log-probs, from the precomputed sums or the per-token form."""
    if inputs.reference_chosen_logps is not None and inputs.reference_rejected_logps is not None:
        return inputs.reference_chosen_logps, inputs.reference_rejected_logps
    if inputs.reference_chosen is not None and inputs.reference_rejected is not None:
        return inputs.reference_chosen.sum, inputs.reference_rejected.sum
    raise ValueError(
        "this loss needs reference log-probs: set PreferenceInputs.reference_chosen_logps and "
        "reference_rejected_logps (sums [B]) or reference_chosen and reference_rejected (per token)"
    )


def log_ratios(inputs: PreferenceInputs) -> LogRatios:
    ref_chosen, ref_rejected = reference_sums(inputs)
    return LogRatios(
        inputs.policy_chosen.sum - ref_chosen.astype(jnp.float32),
        inputs.policy_rejected.sum - ref_rejected.astype(jnp.float32),
    )


def reward_metrics(
    inputs: PreferenceInputs,
    chosen_rewards: jax.Array,  # [B]
    rejected_rewards: jax.Array,  # [B]
) -> Metrics:  # name -> [B]
    chosen_rewards = jax.lax.stop_gradient(chosen_rewards)
    rejected_rewards = jax.lax.stop_gradient(rejected_rewards)
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(jnp.float32),
        "logps/chosen": inputs.policy_chosen.sum,
        "logps/rejected": inputs.policy_rejected.sum,
    }


def _finish(
    inputs: PreferenceInputs,
    losses: jax.Array,  # [B]
    per_example: Metrics,  # name -> [B]
    extra: Metrics | None = None,
) -> LossOutput:
    weight = example_weights(inputs.example_weight, losses)
    return weighted_mean(losses, weight), reduce_metrics(per_example, weight, extra)


def _reference_loss(
    inputs: PreferenceInputs,
    beta: float,
    losses_of: Callable[[LogRatios], jax.Array],  # ratios -> [B] losses
    ratios: LogRatios | None = None,
    extra_per_example: Metrics | None = None,
) -> LossOutput:
    """The common shape of a reference-based loss: per-example losses from the log-ratios,
    DPO reward metrics (``beta * ratio``), weighted reduction."""
    ratios = log_ratios(inputs) if ratios is None else ratios
    metrics = reward_metrics(inputs, beta * ratios.chosen, beta * ratios.rejected)
    return _finish(inputs, losses_of(ratios), {**metrics, **(extra_per_example or {})})


def smoothed_sigmoid_loss(logits: jax.Array, label_smoothing: float = 0.0) -> jax.Array:  # [B]
    """``-(1-eps) log sigma(z) - eps log sigma(-z)``: the pair's BCE with label-flip rate eps."""
    eps = label_smoothing
    return -(1.0 - eps) * jax.nn.log_sigmoid(logits) - eps * jax.nn.log_sigmoid(-logits)


def chosen_nll(inputs: PreferenceInputs, reduction: str = "sequence") -> jax.Array:  # [B]
    """Negative log-likelihood of the chosen responses, per example, for the loss's weighted mean.

    ``"sequence"`` (our default; RPO's form, arXiv:2405.16436): each response's per-token mean, so
    that every example counts equally. ``"token"`` (TRL's ``sft`` loss type and the NLL of its CPO
    and ORPO trainers): every chosen token of the batch counts equally; each example's summed NLL
    is scaled by ``sum(w) / sum(w * length)``, so that the weighted mean over examples is the
    token mean. The token mean is per batch: micro-batches with different token counts do not
    add up exactly (as in TRL).
    """
    seq = inputs.policy_chosen
    if reduction == "sequence":
        return -seq.mean
    weight = example_weights(inputs.example_weight, seq.sum)
    tokens = jnp.sum(jnp.where(weight > 0, weight * seq.length, 0.0))
    return -seq.sum * jnp.sum(weight) / jnp.maximum(tokens, 1.0)


def bco_reward_shift(
    rewards: jax.Array,  # [N] implicit rewards beta * ratio
    weight: jax.Array,  # [N]
    given: jax.Array | None,  # [] the caller's running mean, or None
    shift: str = "running",
) -> tuple[jax.Array, Metrics]:
    """BCO's reward shift delta (arXiv:2404.04656), by ``shift``:

    * ``"running"`` (our default; the paper's form): a running mean of the rewards over training.
      Losses stay pure by taking it as an input, ``reward_shift``: the training engine keeps the
      running mean of the logged ``bco/batch_reward_mean`` over past steps in the train state and
      passes it (:func:`bco_needs`). When it is None (a direct call) the batch mean is used.
    * ``"batch"``: the current batch mean, always (no state).
    * ``"none"``: delta = 0 (TRL 1.16's ``bco_pair``).

    No gradient flows through delta.
    """
    batch_mean = jax.lax.stop_gradient(weighted_mean(rewards, weight))
    if shift == "none":
        delta = jnp.zeros((), jnp.float32)
    elif shift == "batch" or given is None:
        delta = batch_mean
    else:
        delta = jax.lax.stop_gradient(jnp.asarray(given, jnp.float32))
    return delta, {"bco/delta": delta, "bco/batch_reward_mean": batch_mean}


BCO_NEEDS = LossNeeds(reward_shift="bco/batch_reward_mean")  # delta = running mean of this metric


def bco_needs(shift: str) -> LossNeeds:
    """What a BCO loss reads: the engine's running reward mean only with ``shift="running"``."""
    return BCO_NEEDS if shift == "running" else LossNeeds()


def length_normalized(ratios: LogRatios, inputs: PreferenceInputs) -> LogRatios:  # [B] each
    """Each log-ratio divided by its response's scored-token count (at least 1), as TRL's ``ipo``
    and ``sigmoid_norm`` do."""
    return LogRatios(
        ratios.chosen / jnp.maximum(inputs.policy_chosen.length, 1.0),
        ratios.rejected / jnp.maximum(inputs.policy_rejected.length, 1.0),
    )


def _sorted_difference(
    a: jax.Array,  # [B]
    b: jax.Array,  # [B]
    weight: jax.Array,  # [B]
) -> tuple[jax.Array, jax.Array]:  # ([B] sort(a) - sort(b), [B] 1 where both are real)
    """Differences of the order statistics of ``a`` and ``b`` over examples with weight > 0
    (padding examples sort last and are dropped); AOT's optimal-transport coupling."""
    valid = weight > 0
    a_sorted = jnp.sort(jnp.where(valid, a, jnp.inf))
    b_sorted = jnp.sort(jnp.where(valid, b, jnp.inf))
    keep = jnp.arange(a.shape[0]) < jnp.sum(valid)
    return jnp.where(keep, a_sorted - b_sorted, 0.0), keep.astype(jnp.float32)


def _aot(
    inputs: PreferenceInputs,
    beta: float,
    label_smoothing: float,
    a: jax.Array,  # [B] sorted against b
    b: jax.Array,  # [B]
) -> LossOutput:
    ratios = log_ratios(inputs)
    weight = example_weights(inputs.example_weight, ratios.chosen)
    delta, keep = _sorted_difference(a, b, weight)
    loss = weighted_mean(smoothed_sigmoid_loss(beta * delta, label_smoothing), keep)
    rewards = reward_metrics(inputs, beta * ratios.chosen, beta * ratios.rejected)
    return loss, reduce_metrics(rewards, weight)


# ---------------------------------------------------------------- reference-based losses


@_register("dpo", paper="2305.18290")
def dpo_loss(inputs: PreferenceInputs, *, beta: float = 0.1) -> LossOutput:
    """DPO: -log sigmoid(beta * margin).

    arXiv:2305.18290 (TRL: ``sigmoid``). ``cdpo`` adds label smoothing, which TRL 1.16's
    ``sigmoid`` no longer reads."""
    return _reference_loss(inputs, beta, lambda r: smoothed_sigmoid_loss(beta * r.margin))


@_register("cdpo", paper="2305.18290", label_smoothing=interval(0.0, 0.5, "[]"))
def conservative_dpo_loss(
    inputs: PreferenceInputs, *, beta: float = 0.1, label_smoothing: float = 0.1
) -> LossOutput:
    """Conservative DPO (cDPO): DPO under label noise of rate label_smoothing.

    arXiv:2305.18290. DPO assuming labels are flipped with probability ``label_smoothing``."""
    return _reference_loss(
        inputs, beta, lambda r: smoothed_sigmoid_loss(beta * r.margin, label_smoothing)
    )


@_register("robust_dpo", paper="2403.00409", label_smoothing=interval(0.0, 0.5))
def robust_dpo_loss(
    inputs: PreferenceInputs, *, beta: float = 0.1, label_smoothing: float = 0.1
) -> LossOutput:
    """Robust DPO: unbiased DPO under label-flip rate label_smoothing < 0.5.

    arXiv:2403.00409. Unbiased loss under label-flip rate eps:
    ``[-(1-eps) log sigma(z) + eps log sigma(-z)] / (1 - 2 eps)``, ``z = beta * margin``.
    """

    def losses_of(r: LogRatios) -> jax.Array:
        z = beta * r.margin
        eps = label_smoothing
        flipped = -jax.nn.log_sigmoid(-z)  # the loss if the labels were swapped
        return ((1.0 - eps) * -jax.nn.log_sigmoid(z) - eps * flipped) / (1.0 - 2.0 * eps)

    return _reference_loss(inputs, beta, losses_of)


@_register("ipo", paper="2310.12036", normalize=one_of("sum", "length"))
def ipo_loss(inputs: PreferenceInputs, *, beta: float = 0.1, normalize: str = "sum") -> LossOutput:
    """IPO: squared distance of the margin to 1/(2 beta).

    arXiv:2310.12036. ``(margin - 1/(2 beta))^2`` (beta is the paper's tau), minimal at
    margin 1/(2 beta). ``normalize="sum"`` (our default; the paper's equation as written) uses the
    summed log-ratios; ``"length"`` divides each log-ratio by its response's token count before the
    difference (TRL's ``ipo``, which its authors confirmed with the IPO authors). The two differ by
    orders of magnitude on long responses: with ``"sum"`` choose beta accordingly.
    """

    def losses_of(r: LogRatios) -> jax.Array:
        r = length_normalized(r, inputs) if normalize == "length" else r
        return (r.margin - 1.0 / (2.0 * beta)) ** 2

    return _reference_loss(inputs, beta, losses_of)


@_register("sigmoid_norm", paper="2411.15124")
def sigmoid_norm_loss(inputs: PreferenceInputs, *, beta: float = 0.1) -> LossOutput:
    """Length-normalised DPO: DPO on per-token mean log-ratios.

    arXiv:2411.15124 (Tulu 3's length-normalised DPO). ``-log sigma(beta (ratio_w / |y_w| -
    ratio_l / |y_l|))``, ``|y|`` the response's scored tokens. TRL: ``sigmoid_norm``. Rewards are
    DPO's ``beta * ratio`` (summed), as TRL logs them.
    """
    return _reference_loss(
        inputs, beta, lambda r: smoothed_sigmoid_loss(beta * length_normalized(r, inputs).margin)
    )


@_register("hinge", paper="2305.10425")
def hinge_loss(inputs: PreferenceInputs, *, beta: float = 0.1) -> LossOutput:
    """SLiC-HF hinge: max(0, 1 - beta * margin).

    arXiv:2305.10425 (TRL: ``hinge``)."""
    return _reference_loss(inputs, beta, lambda r: jax.nn.relu(1.0 - beta * r.margin))


@_register("exo", paper="2402.00856", label_smoothing=interval(0.0, 1.0, "()"))
def exo_loss(
    inputs: PreferenceInputs, *, beta: float = 0.1, label_smoothing: float = 1e-3
) -> LossOutput:
    """EXO: reverse-KL pair loss toward smoothed labels (needs label_smoothing > 0).

    arXiv:2402.00856. Reverse KL from the model's pair distribution ``sigma(+-z)`` to the
    smoothed labels ``(1-eps, eps)``; needs ``label_smoothing`` (eps) > 0. TRL: ``exo_pair``.
    """

    def losses_of(r: LogRatios) -> jax.Array:
        z = beta * r.margin
        eps = label_smoothing
        win = jax.nn.sigmoid(z) * (jax.nn.log_sigmoid(z) - jnp.log1p(-eps))
        lose = jax.nn.sigmoid(-z) * (jax.nn.log_sigmoid(-z) - jnp.log(eps))
        return win + lose

    return _reference_loss(inputs, beta, losses_of)


@_register("nca", paper="2402.05369")
def nca_loss(inputs: PreferenceInputs, *, beta: float = 0.1) -> LossOutput:
    """NCA: noise-contrastive loss on absolute implicit rewards.

    arXiv:2402.05369. ``-log sigma(r_w) - 0.5 log sigma(-r_w) - 0.5 log sigma(-r_l)``,
    ``r = beta * ratio``; optimises absolute, not relative, likelihoods. TRL: ``nca_pair``.
    """

    def losses_of(r: LogRatios) -> jax.Array:
        rw, rl = beta * r.chosen, beta * r.rejected
        noise = jax.nn.log_sigmoid(-rw) + jax.nn.log_sigmoid(-rl)
        return -jax.nn.log_sigmoid(rw) - 0.5 * noise

    return _reference_loss(inputs, beta, losses_of)


@_register("bco_pair", paper="2404.04656", shift=BCO_SHIFT)
@declare_needs(bco_needs)
def bco_pair_loss(inputs: PreferenceInputs, *, beta: float = 0.1, shift: str = "running") -> LossOutput:
    """BCO on pairs: logistic classifier of chosen vs rejected rewards shifted by delta.

    arXiv:2404.04656. ``-log sigma(r_w - delta) - log sigma(-(r_l - delta))``, ``r = beta * ratio``.
    delta by ``shift`` (see ``bco_reward_shift``): ``"running"`` (default; the paper's running mean,
    ``inputs.reward_shift``, or the batch mean of all rewards when that is None), ``"batch"``, or
    ``"none"`` (delta = 0: TRL 1.16's ``bco_pair``).
    """
    ratios = log_ratios(inputs)
    weight = example_weights(inputs.example_weight, ratios.chosen)
    rw, rl = beta * ratios.chosen, beta * ratios.rejected
    delta, shift_metrics = bco_reward_shift(
        jnp.concatenate([rw, rl]), jnp.concatenate([weight, weight]), inputs.reward_shift, shift
    )
    losses = -jax.nn.log_sigmoid(rw - delta) - jax.nn.log_sigmoid(-(rl - delta))
    return _finish(inputs, losses, reward_metrics(inputs, rw, rl), shift_metrics)


@_register("sppo_hard", paper="2405.00675")
def sppo_hard_loss(inputs: PreferenceInputs, *, beta: float = 0.1) -> LossOutput:
    """SPPO (hard labels): squared log-ratios pushed toward +-1/(2 beta).

    arXiv:2405.00675. SPPO with hard win probabilities (1 for chosen, 0 for rejected):
    ``(ratio_w - 1/(2 beta))^2 + (ratio_l + 1/(2 beta))^2``.
    """
    half = 0.5 / beta
    return _reference_loss(
        inputs, beta, lambda r: (r.chosen - half) ** 2 + (r.rejected + half) ** 2
    )


@_register("aot_paired", paper="2406.05882", label_smoothing=interval(0.0, 0.5, "[]"))
def aot_paired_loss(
    inputs: PreferenceInputs, *, beta: float = 0.1, label_smoothing: float = 0.0
) -> LossOutput:
    """AOT (paired): sigmoid loss on sorted policy margins minus sorted reference margins.

    arXiv:2406.05882. Sigmoid loss on ``sort(policy margins) - sort(reference margins)`` across
    the batch (first-order stochastic dominance of the margins). TRL: ``aot``.

    Examples with weight > 0 count equally (sorting decouples losses from examples).
    """
    ref_chosen, ref_rejected = reference_sums(inputs)
    policy_margin = inputs.policy_chosen.sum - inputs.policy_rejected.sum
    return _aot(inputs, beta, label_smoothing, policy_margin, ref_chosen - ref_rejected)


@_register("aot_unpaired", paper="2406.05882", label_smoothing=interval(0.0, 0.5, "[]"))
def aot_unpaired_loss(
    inputs: PreferenceInputs, *, beta: float = 0.1, label_smoothing: float = 0.0
) -> LossOutput:
    """AOT (unpaired): sigmoid loss on sorted chosen minus sorted rejected log-ratios.

    arXiv:2406.05882. Sigmoid loss on ``sort(ratio_w) - sort(ratio_l)`` across the batch, so
    chosen and rejected need not share prompts. TRL: ``aot_unpaired``.
    """
    ratios = log_ratios(inputs)
    return _aot(inputs, beta, label_smoothing, ratios.chosen, ratios.rejected)


@_register("apo_zero", paper="2408.06266")
def apo_zero_loss(inputs: PreferenceInputs, *, beta: float = 0.1) -> LossOutput:
    """APO-zero: raise the chosen and lower the rejected likelihood, each against the reference.

    arXiv:2408.06266. ``1 - sigma(beta ratio_w) + sigma(beta ratio_l)``: raise chosen, lower
    rejected likelihood (use when the chosen outputs beat the model's own).
    """
    def losses_of(r: LogRatios) -> jax.Array:
        return 1.0 - jax.nn.sigmoid(beta * r.chosen) + jax.nn.sigmoid(beta * r.rejected)

    return _reference_loss(inputs, beta, losses_of)


@_register("apo_down", paper="2408.06266")
def apo_down_loss(inputs: PreferenceInputs, *, beta: float = 0.1) -> LossOutput:
    """APO-down: lower both likelihoods, the rejected one more.

    arXiv:2408.06266. ``sigma(beta ratio_w) + 1 - sigma(beta margin)``: lower both likelihoods,
    the rejected more (use when the chosen outputs are worse than the model's own).
    """
    def losses_of(r: LogRatios) -> jax.Array:
        return jax.nn.sigmoid(beta * r.chosen) + 1.0 - jax.nn.sigmoid(beta * r.margin)

    return _reference_loss(inputs, beta, losses_of)


@_register("discopop", paper="2406.08414", tau=POSITIVE)
def discopop_loss(inputs: PreferenceInputs, *, beta: float = 0.1, tau: float = 0.05) -> LossOutput:
    """DiscoPOP: logistic/exponential blend modulated by the scaled margin.

    arXiv:2406.08414. ``(1 - m) * -log sigma(z) + m * exp(-z)``,
    ``z = beta * margin``, ``m = sigma(z / tau)``.
    """

    def losses_of(r: LogRatios) -> jax.Array:
        z = beta * r.margin
        # m * exp(-z) evaluated as one exponent, finite for any z.
        return -jax.nn.log_sigmoid(z) * jax.nn.sigmoid(-z / tau) + jnp.exp(
            jnp.minimum(jax.nn.log_sigmoid(z / tau) - z, _EXP_CAP)
        )

    return _reference_loss(inputs, beta, losses_of)


def f_derivative(
    log_ratio: jax.Array,  # any shape: log pi - log pi_ref
    divergence: str,
    alpha: float,
) -> jax.Array:  # log_ratio's shape
    """``f'(u)`` of the f-divergence at ``u = pi/pi_ref = exp(log_ratio)``, up to constants."""
    if divergence == "reverse_kl":  # f(u) = u log u
        return log_ratio
    if divergence == "forward_kl":  # f(u) = -log u
        return -jnp.exp(jnp.minimum(-log_ratio, _EXP_CAP))
    if divergence == "js":  # f'(u) = log(2u / (1 + u))
        return log_ratio - jax.nn.softplus(log_ratio)
    if divergence == "alpha":  # f'(u) = (1 - u^-alpha) / alpha
        return (1.0 - jnp.exp(jnp.minimum(-alpha * log_ratio, _EXP_CAP))) / alpha
    raise ValueError(f"unknown divergence {divergence!r}")


@_register(
    "f_dpo",
    paper="2309.16240",
    divergence=one_of("reverse_kl", "forward_kl", "js", "alpha"),
    alpha=interval(0.0, 1.0, "(]"),
)
def f_dpo_loss(
    inputs: PreferenceInputs,
    *,
    beta: float = 0.1,
    divergence: str = "reverse_kl",
    alpha: float = 0.5,
) -> LossOutput:
    """f-DPO: DPO with the reverse KL replaced by another f-divergence.

    arXiv:2309.16240. ``-log sigma(beta (f'(u_w) - f'(u_l)))`` with ``u = pi/pi_ref``; the
    reverse KL gives DPO. ``f'`` up to additive constants, which cancel in the difference:

    * ``reverse_kl``: ``log u`` (DPO);  ``forward_kl``: ``-1/u``;  ``js``: ``log(2u / (1 + u))``;
    * ``alpha``: ``(1 - u^-alpha) / alpha`` with ``alpha`` in (0, 1] (read by this divergence only;
      alpha -> 0 tends to the reverse KL, alpha = 1 is the forward KL).

    TRL: ``sigmoid`` with ``f_divergence_type`` = ``reverse_kl`` / ``forward_kl`` /
    ``js_divergence`` / ``alpha_divergence``; TRL writes the alpha-divergence's
    ``f'(u) = (u^(a-1) - 1) / (a - 1)`` with ``a = f_alpha_divergence_coef``, so TRL's ``a`` is our
    ``1 - alpha`` (the two agree at 0.5 only). Exponents are capped at 50 for float32 (TRL: no cap for
    ``forward_kl``, 80 for ``alpha_divergence``), so the two differ only where a log-ratio is beyond
    -50 (forward KL) or -50 / alpha.
    """

    def losses_of(r: LogRatios) -> jax.Array:
        chosen = f_derivative(r.chosen, divergence, alpha)
        return smoothed_sigmoid_loss(beta * (chosen - f_derivative(r.rejected, divergence, alpha)))

    return _reference_loss(inputs, beta, losses_of)


@_register("dpop", paper="2402.13228", dpop_lambda=NON_NEGATIVE)
def dpo_positive_loss(
    inputs: PreferenceInputs, *, beta: float = 0.1, dpop_lambda: float = 50.0
) -> LossOutput:
    """DPO-Positive: DPO plus a penalty when the chosen likelihood falls below the reference's.

    arXiv:2402.13228. ``-log sigma(beta (margin - lambda * max(0, -ratio_w)))``: penalises
    the chosen likelihood falling below the reference's (likelihood displacement).
    """
    ratios = log_ratios(inputs)
    penalty = jax.nn.relu(-ratios.chosen)
    return _reference_loss(
        inputs,
        beta,
        lambda r: smoothed_sigmoid_loss(beta * (r.margin - dpop_lambda * penalty)),
        ratios,
        {"dpop/penalty": penalty},
    )


@_register("rpo", paper="2405.16436", sft_weight=NON_NEGATIVE, nll_reduction=NLL_REDUCTION)
def rpo_loss(
    inputs: PreferenceInputs,
    *,
    beta: float = 0.1,
    sft_weight: float = 1.0,
    nll_reduction: str = "sequence",
) -> LossOutput:
    """RPO: DPO plus an SFT (NLL) term on the chosen response.

    arXiv:2405.16436. DPO plus ``sft_weight`` times the chosen response's per-token NLL
    (the SFT term acts as an implicit adversarial regulariser against over-optimisation).
    ``nll_reduction`` (``chosen_nll``): ``"sequence"`` (default; the paper's per-sequence mean) or
    ``"token"`` (TRL: ``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, sft_weight]``).
    """
    nll = chosen_nll(inputs, nll_reduction)
    return _reference_loss(
        inputs,
        beta,
        lambda r: smoothed_sigmoid_loss(beta * r.margin) + sft_weight * nll,
        extra_per_example={"nll/chosen": nll},
    )


@_register("rdpo", paper="2403.19159", length_alpha=NON_NEGATIVE)
def rdpo_loss(
    inputs: PreferenceInputs, *, beta: float = 0.1, length_alpha: float = 0.01
) -> LossOutput:
    """R-DPO: DPO with a length-difference margin against verbosity.

    arXiv:2403.19159. ``-log sigma(beta margin + alpha (|y_w| - |y_l|))``: the length term explains
    away length in the preference, so the policy is not rewarded for verbosity.
    """
    length_gap = inputs.policy_chosen.length - inputs.policy_rejected.length
    return _reference_loss(
        inputs, beta, lambda r: smoothed_sigmoid_loss(beta * r.margin + length_alpha * length_gap)
    )


def desensitized_sum(
    seq: SequenceLogps,  # [B, T]
    public_length: jax.Array,  # [B] tokens shared by both responses' lengths
    alpha: float,
) -> jax.Array:  # [B]
    """LD-DPO's log-likelihood: the first ``public_length`` scored tokens count fully, the
    excess tokens of the longer response are scaled by ``alpha``."""
    rank = jnp.cumsum(seq.valid, axis=-1)  # 1-based position among scored tokens
    token = seq.masked(seq.token_logps)
    return jnp.sum(jnp.where(rank <= public_length[:, None], token, alpha * token), axis=-1)


@_register("ld_dpo", paper="2409.06411", ld_alpha=interval(0.0, 1.0, "[]"))
@declare_needs(LossNeeds(per_token_reference=True))
def ld_dpo_loss(
    inputs: PreferenceInputs, *, beta: float = 0.1, ld_alpha: float = 0.5
) -> LossOutput:
    """LD-DPO: DPO on length-desensitised likelihoods (needs per-token reference log-probs).

    arXiv:2409.06411. DPO on length-desensitised log-likelihoods (excess tokens of the longer
    response weighted by ``ld_alpha``) for policy and reference. Needs per-token reference
    log-probs (``reference_chosen``/``reference_rejected``); rewards use these likelihoods.
    """
    if inputs.reference_chosen is None or inputs.reference_rejected is None:
        raise ValueError(
            "ld_dpo needs per-token reference log-probs: set PreferenceInputs.reference_chosen "
            "and reference_rejected (SequenceLogps)"
        )
    public = jnp.minimum(inputs.policy_chosen.length, inputs.policy_rejected.length)

    def ld_ratio(policy: SequenceLogps, reference: SequenceLogps) -> jax.Array:
        policy_sum = desensitized_sum(policy, public, ld_alpha)
        return policy_sum - desensitized_sum(reference, public, ld_alpha)

    ratios = LogRatios(
        ld_ratio(inputs.policy_chosen, inputs.reference_chosen),
        ld_ratio(inputs.policy_rejected, inputs.reference_rejected),
    )
    return _reference_loss(inputs, beta, lambda r: smoothed_sigmoid_loss(beta * r.margin), ratios)


def wpo_log_weight(seq: SequenceLogps, aligned: bool) -> jax.Array:  # [B]
    """Mean over tokens of ``log p(y_t)`` (``aligned``: minus ``log sum_v p_v^2``, i.e. the
    probability relative to the model's own sampling distribution; WPO eq. 2)."""
    if not aligned:
        return seq.mean
    if seq.token_log_sq_norm is None:
        raise ValueError(
            "wpo with aligned=True needs sequence_logps(..., with_sq_norm=True) for the policy"
        )
    aligned_logps = seq.masked(seq.token_logps - seq.token_log_sq_norm)
    return jnp.sum(aligned_logps, axis=-1) / jnp.maximum(seq.length, 1.0)


@_register("wpo", paper="2406.11827")
@declare_needs(lambda aligned: LossNeeds(policy_sq_norm=aligned))
def wpo_loss(
    inputs: PreferenceInputs, *, beta: float = 0.1, aligned: bool = True, cap: bool = True
) -> LossOutput:
    """WPO: DPO with each pair weighted by its probability under the policy.

    arXiv:2406.11827. DPO with each pair weighted by ``exp(w_w + w_l)`` (no gradient), where ``w``
    is the length-normalised policy log-prob of the response (``aligned``: relative to the
    policy's own sampling distribution, eq. 2), so off-policy pairs count less. ``cap=True`` (our
    default) bounds the weight by 1 (aligned weights can exceed 1), so that WPO only ever
    down-weights DPO's pairs; ``cap=False`` is the weight as written in eq. 2 and TRL's
    (``loss_type="sigmoid"``, ``use_weighting=True``; TRL's weights are always aligned).
    """
    log_weight = wpo_log_weight(inputs.policy_chosen, aligned)
    log_weight += wpo_log_weight(inputs.policy_rejected, aligned)
    pair_weight = jax.lax.stop_gradient(jnp.exp(jnp.minimum(log_weight, 0.0 if cap else _EXP_CAP)))
    return _reference_loss(
        inputs,
        beta,
        lambda r: pair_weight * smoothed_sigmoid_loss(beta * r.margin),
        extra_per_example={"wpo/weight": pair_weight},
    )


# ---------------------------------------------------------------- reference-free losses


@_register("simpo", paper="2405.14734")
def simpo_loss(inputs: PreferenceInputs, *, beta: float = 2.0, gamma: float = 1.0) -> LossOutput:
    """SimPO: reference-free sigmoid loss on mean log-probs with target margin gamma.

    arXiv:2405.14734. ``-log sigma(beta (mean_w - mean_l) - gamma)`` on per-token mean log-probs;
    no reference. Rewards are ``beta * mean log-prob``.
    """
    rw, rl = beta * inputs.policy_chosen.mean, beta * inputs.policy_rejected.mean
    return _finish(inputs, smoothed_sigmoid_loss(rw - rl - gamma), reward_metrics(inputs, rw, rl))


def cpo_pair_losses(
    pair_loss: str,
    beta: float,
    chosen: jax.Array,  # [B] policy log-probs of the chosen responses (summed, or mean for "ipo")
    rejected: jax.Array,  # [B]
) -> jax.Array:  # [B]
    """CPO's preference term on the reference-free margin ``h = chosen - rejected``: ``"sigmoid"``
    ``-log sigma(beta h)``, ``"hinge"`` ``max(0, 1 - beta h)`` (SLiC, arXiv:2305.10425), ``"ipo"``
    ``(h - 1/(2 beta))^2`` (arXiv:2310.12036)."""
    margin = chosen - rejected
    if pair_loss == "hinge":
        return jax.nn.relu(1.0 - beta * margin)
    if pair_loss == "ipo":
        return (margin - 1.0 / (2.0 * beta)) ** 2
    return smoothed_sigmoid_loss(beta * margin)


@_register(
    "cpo",
    paper="2401.08417",
    sft_weight=NON_NEGATIVE,
    pair_loss=one_of("sigmoid", "hinge", "ipo"),
    nll_reduction=NLL_REDUCTION,
)
def cpo_loss(
    inputs: PreferenceInputs,
    *,
    beta: float = 0.1,
    sft_weight: float = 1.0,
    pair_loss: str = "sigmoid",
    nll_reduction: str = "sequence",
) -> LossOutput:
    """CPO: reference-free sigmoid loss on summed log-probs plus the chosen NLL.

    arXiv:2401.08417. ``-log sigma(beta (logp_w - logp_l))`` (summed, no reference) plus
    ``sft_weight`` times the chosen NLL (``chosen_nll``: ``nll_reduction="sequence"``, our default,
    or ``"token"``, TRL's). ``pair_loss`` swaps the preference term as TRL's ``CPOTrainer``
    ``loss_type`` does (``cpo_pair_losses``): ``"hinge"`` on summed log-probs, ``"ipo"`` on per-token
    mean log-probs. Rewards are ``beta`` times those log-probs. TRL: ``CPOTrainer`` with
    ``loss_type=pair_loss``, ``cpo_alpha=sft_weight`` and ``nll_reduction="token"``.
    """
    logps = (lambda seq: seq.mean) if pair_loss == "ipo" else (lambda seq: seq.sum)
    rw, rl = beta * logps(inputs.policy_chosen), beta * logps(inputs.policy_rejected)
    nll = chosen_nll(inputs, nll_reduction)
    pair = cpo_pair_losses(pair_loss, beta, logps(inputs.policy_chosen), logps(inputs.policy_rejected))
    losses = pair + sft_weight * nll
    return _finish(inputs, losses, {**reward_metrics(inputs, rw, rl), "nll/chosen": nll})


_LN2 = 0.6931471805599453


def log1m_exp(x: jax.Array) -> jax.Array:  # x: any shape, <= 0 -> x's shape, float32
    """``log(1 - exp(x))`` for ``x <= 0``, exact to float rounding everywhere (Maechler 2012):
    ``log(-expm1(x))`` for ``x > -ln 2``, ``log1p(-exp(x))`` below. Each branch is evaluated on
    inputs where it is finite, so neither leaks NaN into the other's gradient. ``x = 0`` (p = 1,
    where the value is -inf) is evaluated at the largest float32 below 0 instead, so the value
    stays finite (-87.3) there."""
    x = jnp.minimum(x.astype(jnp.float32), -jnp.finfo(jnp.float32).tiny)
    near_zero = x > -_LN2
    small = jnp.log(-jnp.expm1(jnp.where(near_zero, x, -_LN2)))
    large = jnp.log1p(-jnp.exp(jnp.where(near_zero, -_LN2, x)))
    return jnp.where(near_zero, small, large)


@_register("orpo", paper="2403.07691", nll_reduction=NLL_REDUCTION)
def orpo_loss(
    inputs: PreferenceInputs, *, beta: float = 0.1, nll_reduction: str = "sequence"
) -> LossOutput:
    """ORPO: chosen NLL minus beta * log sigmoid(log odds ratio); reference-free.

    arXiv:2403.07691. Chosen NLL ``- beta * log sigma(log odds_w - log odds_l)`` with
    ``odds = p / (1 - p)`` of the per-token mean log-prob; no reference (beta is lambda).
    ``nll_reduction`` (``chosen_nll``): ``"sequence"`` (default) or ``"token"`` (TRL's
    ``ORPOTrainer``, whose NLL also counts the prompt tokens: equal to ours when the prompt
    contributes no scored token, i.e. is one token long).
    """
    mw, ml = inputs.policy_chosen.mean, inputs.policy_rejected.mean
    log_odds = (mw - ml) - (log1m_exp(mw) - log1m_exp(ml))
    ratio = jax.nn.log_sigmoid(log_odds)
    nll = chosen_nll(inputs, nll_reduction)
    per_example = {
        **reward_metrics(inputs, beta * mw, beta * ml),
        "nll/chosen": nll,
        "orpo/log_odds_ratio": ratio,
        "orpo/log_odds_chosen": log_odds,
    }
    return _finish(inputs, nll - beta * ratio, per_example)


@_register("sft", paper=None, nll_reduction=NLL_REDUCTION)
def sft_loss(inputs: PreferenceInputs, *, nll_reduction: str = "sequence") -> LossOutput:
    """SFT: per-token NLL of the chosen response (a component for combine_losses).

    MPO (arXiv:2411.10442), for example, is DPO + BCO + SFT. ``nll_reduction`` (``chosen_nll``):
    ``"sequence"`` (default) or ``"token"`` (TRL's ``sft`` loss type).
    """
    nll = chosen_nll(inputs, nll_reduction)
    return _finish(inputs, nll, {"nll/chosen": nll, "logps/chosen": inputs.policy_chosen.sum})


# ---------------------------------------------------------------- weighted sums of losses

MPO_COMPONENTS = {"dpo": {"weight": 0.8}, "bco_pair": {"weight": 0.2}, "sft": {"weight": 1.0}}


def combine_losses(
    components: Mapping[str, Mapping[str, Any]],
    registry: Registry = PREFERENCE_LOSSES,
) -> Callable[[Any], LossOutput]:
    """A weighted sum of registered losses, e.g. MPO (arXiv:2411.10442)::

        combine_losses({"dpo": {"weight": 0.8, "beta": 0.1}, "bco_pair": {"weight": 0.2},
                        "sft": {"weight": 1.0}})

    Each value holds ``weight`` (a number >= 0, default 1) and the loss's options (validated by
    ``registry.build``). Metrics are prefixed by the loss name (``dpo/rewards/margins``,
    ``dpo/loss``); ``num_examples`` is shared. The result declares the union of the parts'
    :class:`LossNeeds` (a part's reward-shift metric prefixed like its metrics).
    """
    if not isinstance(components, Mapping) or not components:
        raise ValueError(f"components must be a non-empty mapping loss name -> {{weight, options}}, got {components!r}")
    built, needs = {}, LossNeeds()
    for name, spec in components.items():
        if name == "combined":
            raise ValueError("components: a combined loss cannot contain 'combined'")
        options = dict(spec or {})
        weight = options.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"components: {name}.weight={weight!r} must be a number >= 0")
        fn = registry.build(name, **options)
        built[name] = (float(weight), fn)
        needs = needs | loss_needs(fn).prefixed(name)

    def combined(inputs: Any) -> LossOutput:
        total = jnp.zeros((), jnp.float32)
        metrics: Metrics = {}
        for name, (weight, fn) in built.items():
            loss, parts = fn(inputs)
            total = total + weight * loss
            metrics[f"{name}/loss"] = loss
            metrics.update({f"{name}/{k}": v for k, v in parts.items() if k != "num_examples"})
            metrics["num_examples"] = parts["num_examples"]
        return total, metrics

    combined.loss_needs = needs
    return combined


def _check_components(components: Mapping[str, Mapping[str, Any]]) -> None:
    """Names, weights and every part's options (checked by the registry against its signature)."""
    try:
        combine_losses(components)
    except (KeyError, ValueError) as e:
        raise type(e)(f"preference loss 'combined': {e.args[0]}") from None


@PREFERENCE_LOSSES.register("combined", paper="2411.10442", validate=_check_components)
@declare_needs(lambda components: loss_needs(combine_losses(components)))
def combined_loss(
    inputs: PreferenceInputs, *, components: Mapping[str, Mapping[str, Any]] = MPO_COMPONENTS
) -> LossOutput:
    """Combined: a weighted sum of registered preference losses (default: MPO's DPO + BCO + SFT).

    arXiv:2411.10442 (MPO). ``components`` maps each part's name to ``{"weight": w, **options}``
    (``loss.components = {"dpo": {"weight": 0.8, "beta": 0.1}, "sft": {}}``); every part's
    options are checked against its own signature. Metrics are the parts' metrics prefixed by
    their names (``dpo/loss``, ``bco_pair/bco/delta``); see ``combine_losses``.
    """
    return combine_losses(components)(inputs)
