"""Our DPO-family objectives against TRL 1.16's own loss code, on the same per-token log-probs.

    python -m benchmarks.trl_agreement [--out benchmarks/results/trl_agreement.md] [--seed 0]

For every objective TRL shares, TRL's trainer method runs on a stand-in model that returns given
per-token log-probs (``DPOTrainer._compute_loss``, ``KTOTrainer._compute_loss``, and
``get_batch_loss_metrics`` of the experimental ``CPOTrainer`` / ``ORPOTrainer``, which read
logits: the stand-in returns two-entry logits ``[log p, log(1 - p)]`` whose log-softmax is
``log p``), and ours runs with the settings docs/objectives.md names for TRL. Reported: the loss
and its gradient with respect to the policy's per-token log-probs (chosen and rejected), TRL in
float64 (float32 where TRL allows no other: its ``alpha_divergence``), ours in float32 as always.

Data (``make_batch``): 16 pairs, responses of 1 to 32 tokens, in three regimes: ``moderate``
(log-ratios of a few nats), ``extreme`` (summed log-ratios of +-150 per response, so DPO margins of
+-300) and ``confident`` (the chosen responses' tokens at log p in [-1e-6, -1e-9], where ORPO's
log(1 - p) is steep). ORPO's prompts are one token long (TRL's ORPO NLL also counts prompt tokens).

``tests/objectives/test_trl_agreement.py`` asserts the same comparisons; this script prints the
table of the largest differences (docs/objectives.md and the closing note of issue 27 quote it).
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from collections import defaultdict
from types import SimpleNamespace
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

with warnings.catch_warnings():  # TRL's experimental trainers warn on import
    warnings.simplefilter("ignore")
    from trl.experimental.cpo.cpo_trainer import CPOTrainer
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer, log1mexp
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.kto_trainer import KTOTrainer

from align_jax.objectives import REGISTRIES
from align_jax.objectives.types import PreferenceInputs, SequenceLogps, UnpairedInputs

REGIMES = ("moderate", "extreme", "confident")


# ---------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Batch:
    """Per-token log-probs of B pairs, right-padded to T tokens (0 at padding), float64."""

    chosen: np.ndarray  # [B, T] policy
    rejected: np.ndarray  # [B, T]
    ref_chosen: np.ndarray  # [B, T] reference
    ref_rejected: np.ndarray  # [B, T]
    mask_chosen: np.ndarray  # [B, T] 1 = scored token
    mask_rejected: np.ndarray  # [B, T]
    sq_chosen: np.ndarray  # [B, T] the policy's log sum_v p_v^2 (WPO)
    sq_rejected: np.ndarray  # [B, T]
    desirable: np.ndarray  # [B] bool: labels when the chosen rows are read as unpaired examples


def _side(rng: np.random.Generator, b: int, t: int, regime: str, sign: np.ndarray):
    """(policy, reference, mask, sq) of one side; ``sign [B]``: the sign of the extreme log-ratio."""
    lengths = rng.integers(1, t + 1, b)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float64)
    policy = -rng.uniform(0.01, 3.0, (b, t))
    reference = np.minimum(policy + rng.normal(0.0, 0.3, (b, t)), -1e-3)
    if regime == "extreme":  # summed log-ratio sign * 150: the lower side gets 150 / length per token
        step = 150.0 / lengths[:, None]
        policy = -rng.uniform(0.01, 0.5, (b, t)) - np.where(sign[:, None] < 0, step, 0.0)
        reference = -rng.uniform(0.01, 0.5, (b, t)) - np.where(sign[:, None] > 0, step, 0.0)
    sq = policy + rng.uniform(-0.3, 0.3, (b, t))  # aligned WPO weights on both sides of 1
    return policy * mask, reference * mask, mask, sq * mask


def make_batch(seed: int, regime: str, b: int = 16, t: int = 32) -> Batch:
    rng = np.random.default_rng(seed)
    sign = np.where(np.arange(b) % 2 == 0, 1.0, -1.0)
    chosen, ref_chosen, mask_chosen, sq_chosen = _side(rng, b, t, regime, sign)
    rejected, ref_rejected, mask_rejected, sq_rejected = _side(rng, b, t, regime, -sign)
    if regime == "confident":
        chosen = -10.0 ** rng.uniform(-9.0, -6.0, (b, t)) * mask_chosen
    desirable = np.arange(b) % 3 != 0
    return Batch(chosen, rejected, ref_chosen, ref_rejected, mask_chosen, mask_rejected,
                 sq_chosen, sq_rejected, desirable)  # fmt: skip


# ---------------------------------------------------------------- ours


def _preference_inputs(batch: Batch, chosen: jax.Array, rejected: jax.Array) -> PreferenceInputs:
    def seq(tokens, mask, sq=None):
        return SequenceLogps(tokens, jnp.asarray(mask, jnp.float32), None if sq is None else jnp.asarray(sq, jnp.float32))

    return PreferenceInputs(
        policy_chosen=seq(chosen, batch.mask_chosen, batch.sq_chosen),
        policy_rejected=seq(rejected, batch.mask_rejected, batch.sq_rejected),
        reference_chosen=seq(jnp.asarray(batch.ref_chosen, jnp.float32), batch.mask_chosen),
        reference_rejected=seq(jnp.asarray(batch.ref_rejected, jnp.float32), batch.mask_rejected),
    )


def _unpaired_inputs(batch: Batch, chosen: jax.Array, rejected: jax.Array) -> UnpairedInputs:
    """The chosen rows as unpaired examples; the rejected rows as KTO's mismatched KL completions."""
    mask_c = jnp.asarray(batch.mask_chosen, jnp.float32)
    mask_r = jnp.asarray(batch.mask_rejected, jnp.float32)
    return UnpairedInputs(
        policy=SequenceLogps(chosen, mask_c),
        reference_logps=jnp.asarray(batch.ref_chosen.sum(1), jnp.float32),
        desirable=jnp.asarray(batch.desirable),
        kl_policy_logps=SequenceLogps(rejected, mask_r).sum,
        kl_reference_logps=jnp.asarray(batch.ref_rejected.sum(1), jnp.float32),
    )


def ours(batch: Batch, registry: str, name: str, options: dict) -> tuple[float, np.ndarray, np.ndarray]:
    """(loss, d loss / d chosen tokens [B, T], d loss / d rejected tokens [B, T]) of our loss."""
    fn = REGISTRIES[registry].build(name, **options)
    to_inputs = _preference_inputs if registry == "preference" else _unpaired_inputs

    def loss_of(chosen, rejected):
        return fn(to_inputs(batch, chosen, rejected))[0]

    args = (jnp.asarray(batch.chosen, jnp.float32), jnp.asarray(batch.rejected, jnp.float32))
    loss, (grad_c, grad_r) = jax.value_and_grad(loss_of, argnums=(0, 1))(*args)
    return float(loss), np.asarray(grad_c, np.float64), np.asarray(grad_r, np.float64)


# ---------------------------------------------------------------- TRL: stand-in models and trainers


class StandInModel:
    """A causal LM as TRL's trainers call it: sequence ``i`` is row ``input_ids[i, 0]`` of
    ``rows [R, T]`` (its per-token log-probs; the ids after position 0 are all token 0). With
    ``logits=True`` it returns ``[N, T + 1, 2]`` logits whose log-softmax at token 0 is the row
    (for trainers that read logits); otherwise the fused-head outputs ``DPOTrainer`` and
    ``KTOTrainer`` read."""

    training = True
    is_gradient_checkpointing = False

    def __init__(self, rows: torch.Tensor, log_sum_sq: torch.Tensor | None = None, logits: bool = False):
        self.rows, self.log_sum_sq, self.logits = rows, log_sum_sq, logits

    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> SimpleNamespace:
        index = input_ids[:, 0]
        logps = self.rows[index]
        if self.logits:
            pairs = torch.stack([logps, log1mexp(logps)], dim=-1)  # [N, T, 2]
            return SimpleNamespace(logits=torch.cat([pairs, torch.zeros_like(pairs[:, :1])], dim=1))
        zeros = torch.zeros_like(logps)
        sq = None if self.log_sum_sq is None else self.log_sum_sq[index]
        return SimpleNamespace(log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(),
                               log_sum_sq_probs=sq)  # fmt: skip


def _trainer(cls: type, **attrs: Any) -> Any:
    """An instance of TRL's trainer ``cls`` without its ``__init__`` (no model, data or
    accelerate state): only the attributes its loss methods read, on one CPU process."""
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x, unwrap_model=lambda m: m
    )
    trainer = object.__new__(cls)
    trainer.__dict__.update(
        accelerator=accelerator, aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1, args=SimpleNamespace(gradient_checkpointing_kwargs=None), **attrs,
    )  # fmt: skip
    return trainer


class Leaves:
    """The policy's per-token log-probs as torch leaves (the gradient's variables)."""

    def __init__(self, batch: Batch, dtype: torch.dtype):
        self.chosen = torch.tensor(batch.chosen, dtype=dtype, requires_grad=True)
        self.rejected = torch.tensor(batch.rejected, dtype=dtype, requires_grad=True)

    def grads(self) -> tuple[np.ndarray, np.ndarray]:
        def of(x):
            return np.zeros(tuple(x.shape)) if x.grad is None else x.grad.double().numpy()

        return of(self.chosen), of(self.rejected)


def _ids(n: int, t: int, offset: int = 0) -> torch.Tensor:  # [n, t + 1]: row index, then token 0
    ids = torch.zeros((n, t + 1), dtype=torch.long)
    ids[:, 0] = torch.arange(offset, offset + n)
    return ids


def _with_prompt(mask: np.ndarray) -> torch.Tensor:  # [N, T] -> [N, T + 1]: a one-token prompt first
    return torch.tensor(np.concatenate([np.zeros((len(mask), 1)), mask], axis=1), dtype=torch.long)


def trl_dpo(batch: Batch, dtype: torch.dtype, loss_type: list[str], **config: Any):
    """``DPOTrainer._compute_loss`` with ``loss_type`` and DPOConfig ``config`` (``loss_weights``,
    ``label_smoothing``, ``ld_alpha``, ``use_weighting``, ``f_divergence_type``, ...)."""
    leaves = Leaves(batch, dtype)
    mask = np.concatenate([batch.mask_chosen, batch.mask_rejected])
    mask_t = torch.tensor(mask, dtype=dtype)
    policy = torch.cat([leaves.chosen, leaves.rejected]) * mask_t
    sq = torch.tensor(np.concatenate([batch.sq_chosen, batch.sq_rejected]), dtype=dtype)
    reference = torch.tensor(np.concatenate([batch.ref_chosen, batch.ref_rejected]), dtype=dtype) * mask_t
    model = StandInModel(policy, log_sum_sq=sq)
    defaults = dict(beta=0.1, label_smoothing=0.0, ld_alpha=None, use_weighting=False, loss_weights=None,
                    f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, discopop_tau=0.05)  # fmt: skip
    settings = {**defaults, **config}
    trainer = _trainer(
        DPOTrainer, model=model, ref_model=StandInModel(reference), precompute_ref_logps=False,
        loss_types=loss_type, loss_weights=settings.pop("loss_weights") or [1.0] * len(loss_type), **settings,
    )  # fmt: skip
    trainer.args.discopop_tau = settings["discopop_tau"]
    completion_mask = _with_prompt(mask)
    inputs = {"input_ids": _ids(len(mask), mask.shape[1]), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask}  # fmt: skip
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    loss.backward()
    return (float(loss.detach()), *leaves.grads())


def trl_kto(batch: Batch, dtype: torch.dtype, loss_type: str, **config: Any):
    """``KTOTrainer._compute_loss``: the chosen rows labelled ``batch.desirable``; for ``kto`` the
    rejected rows are the KL completions (KTOTrainer computes the KL term only for ``kto``)."""
    leaves = Leaves(batch, dtype)
    masks = np.concatenate([batch.mask_chosen, batch.mask_rejected])
    policy = torch.cat([leaves.chosen, leaves.rejected]) * torch.tensor(masks, dtype=dtype)
    reference = torch.tensor(np.concatenate([batch.ref_chosen, batch.ref_rejected]), dtype=dtype)
    b, t = batch.chosen.shape
    model = StandInModel(policy)
    trainer = _trainer(
        KTOTrainer, model=model, ref_model=StandInModel(reference), precompute_ref_logps=False,
        loss_type=loss_type, calculate_KL=loss_type == "kto",
        **{"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0, **config},
    )  # fmt: skip
    inputs = {
        "input_ids": _ids(b, t), "attention_mask": torch.ones((b, t + 1), dtype=torch.long),
        "completion_mask": _with_prompt(batch.mask_chosen), "label": torch.tensor(batch.desirable),
        "KL_input_ids": _ids(b, t, offset=b), "KL_attention_mask": torch.ones((b, t + 1), dtype=torch.long),
        "KL_completion_mask": _with_prompt(batch.mask_rejected),
    }  # fmt: skip
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    loss.backward()
    return (float(loss.detach()), *leaves.grads())


def _logits_batch(batch: Batch) -> dict[str, torch.Tensor]:
    """``concatenated_forward``'s batch: one-token prompts (labels -100), then the response."""
    b, t = batch.chosen.shape
    out = {}
    for offset, (side, mask) in enumerate((("chosen", batch.mask_chosen), ("rejected", batch.mask_rejected))):
        attention = _with_prompt(mask)
        attention[:, 0] = 1
        labels = torch.where(_with_prompt(mask) > 0, 0, -100)
        out.update({f"{side}_input_ids": _ids(b, t, offset * b), f"{side}_attention_mask": attention,
                    f"{side}_labels": labels})  # fmt: skip
    return out


def _logits_trainer(cls: type, batch: Batch, dtype: torch.dtype, **attrs: Any):
    """(trainer, stand-in model, leaves) for the logits-reading CPO / ORPO trainers. Padding
    positions hold log p = -1 (never a label) so that log(1 - p) stays finite there."""
    leaves = Leaves(batch, dtype)
    masks = torch.tensor(np.concatenate([batch.mask_chosen, batch.mask_rejected]), dtype=dtype)
    policy = torch.where(masks > 0, torch.cat([leaves.chosen, leaves.rejected]), -1.0)
    trainer = _trainer(cls, is_encoder_decoder=False, padding_value=0, pad_token_id=0, **attrs)
    return trainer, StandInModel(policy, logits=True), leaves


def trl_cpo(batch: Batch, dtype: torch.dtype, loss_type: str, **config: Any):
    """``CPOTrainer.get_batch_loss_metrics`` (its ``cpo_loss`` plus ``cpo_alpha`` times the chosen NLL)."""
    settings = {"beta": 0.1, "cpo_alpha": 1.0, "simpo_gamma": 0.5, **config}
    trainer, model, leaves = _logits_trainer(CPOTrainer, batch, dtype, loss_type=loss_type, alpha=0.0,
                                             label_smoothing=0.0, **settings)  # fmt: skip
    loss, _ = trainer.get_batch_loss_metrics(model, _logits_batch(batch))
    loss.backward()
    return (float(loss.detach()), *leaves.grads())


def trl_orpo(batch: Batch, dtype: torch.dtype, **config: Any):
    """``ORPOTrainer.get_batch_loss_metrics`` (chosen NLL minus beta * log sigma(log odds ratio))."""
    trainer, model, leaves = _logits_trainer(ORPOTrainer, batch, dtype, **{"beta": 0.1, **config})
    loss, _ = trainer.get_batch_loss_metrics(model, _logits_batch(batch))
    loss.backward()
    return (float(loss.detach()), *leaves.grads())


# ---------------------------------------------------------------- the shared objectives


@dataclasses.dataclass(frozen=True)
class Case:
    """One objective both sides have: ours (registry, name, options) and TRL's call."""

    label: str
    registry: str
    name: str
    options: dict
    trl: Callable[..., tuple[float, np.ndarray, np.ndarray]]
    trl_options: dict
    trl_dtype: torch.dtype = torch.float64
    regimes: tuple[str, ...] = REGIMES
    note: str = ""

    @property
    def ours_text(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"`{self.name}`" + (f" ({opts})" if opts else "")

    @property
    def trl_text(self) -> str:
        trainer = {trl_dpo: "DPOTrainer", trl_kto: "KTOTrainer", trl_cpo: "CPOTrainer", trl_orpo: "ORPOTrainer"}
        opts = ", ".join(f"{k}={v!r}" for k, v in self.trl_options.items())
        return f"{trainer[self.trl]}({opts})"


def _dpo(label, name, loss_type, options=None, **trl_options):
    return Case(label, "preference", name, options or {}, trl_dpo, {"loss_type": loss_type, **trl_options})


MPO = {"dpo": {"weight": 0.8}, "bco_pair": {"weight": 0.2, "shift": "none"}, "sft": {"weight": 1.0, "nll_reduction": "token"}}
CASES = [
    _dpo("dpo", "dpo", ["sigmoid"]),
    _dpo("hinge", "hinge", ["hinge"]),
    _dpo("ipo", "ipo", ["ipo"], {"normalize": "length"}),
    _dpo("exo", "exo", ["exo_pair"], label_smoothing=1e-3),
    _dpo("nca", "nca", ["nca_pair"]),
    _dpo("robust_dpo", "robust_dpo", ["robust"], label_smoothing=0.1),
    _dpo("bco_pair", "bco_pair", ["bco_pair"], {"shift": "none"}),
    _dpo("sppo_hard", "sppo_hard", ["sppo_hard"]),
    _dpo("aot_paired", "aot_paired", ["aot"]),
    _dpo("aot_unpaired", "aot_unpaired", ["aot_unpaired"]),
    _dpo("apo_zero", "apo_zero", ["apo_zero"]),
    _dpo("apo_down", "apo_down", ["apo_down"]),
    _dpo("discopop", "discopop", ["discopop"], discopop_tau=0.05),
    _dpo("sigmoid_norm", "sigmoid_norm", ["sigmoid_norm"]),
    _dpo("sft", "sft", ["sft"], {"nll_reduction": "token"}),
    _dpo("rpo", "rpo", ["sigmoid", "sft"], {"nll_reduction": "token"}, loss_weights=[1.0, 1.0]),
    _dpo("ld_dpo", "ld_dpo", ["sigmoid"], ld_alpha=0.5),
    _dpo("wpo", "wpo", ["sigmoid"], {"cap": False}, use_weighting=True),
    dataclasses.replace(
        _dpo("f_dpo forward KL", "f_dpo", ["sigmoid"], {"divergence": "forward_kl"}, f_divergence_type="forward_kl"),
        regimes=("moderate", "confident"),
        note="extreme regime not compared: our exponent cap (50) vs none in TRL, exp(150) there",
    ),
    _dpo("f_dpo JS", "f_dpo", ["sigmoid"], {"divergence": "js"}, f_divergence_type="js_divergence"),
    dataclasses.replace(
        _dpo("f_dpo alpha", "f_dpo", ["sigmoid"], {"divergence": "alpha", "alpha": 0.3},
             f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.7),
        trl_dtype=torch.float32, note="TRL's alpha_divergence runs in float32 only",
    ),  # fmt: skip
    _dpo("combined (MPO)", "combined", ["sigmoid", "bco_pair", "sft"], {"components": MPO}, loss_weights=[0.8, 0.2, 1.0]),
    Case("kto", "unpaired", "kto", {}, trl_kto, {"loss_type": "kto"}),
    Case("apo_zero_unpaired", "unpaired", "apo_zero_unpaired", {}, trl_kto, {"loss_type": "apo_zero_unpaired"}),
    Case("cpo", "preference", "cpo", {"nll_reduction": "token"}, trl_cpo, {"loss_type": "sigmoid", "cpo_alpha": 1.0}),
    Case("cpo hinge", "preference", "cpo", {"pair_loss": "hinge", "nll_reduction": "token"}, trl_cpo,
         {"loss_type": "hinge", "cpo_alpha": 1.0}),
    Case("cpo ipo", "preference", "cpo", {"pair_loss": "ipo", "nll_reduction": "token"}, trl_cpo,
         {"loss_type": "ipo", "cpo_alpha": 1.0}),
    Case("simpo", "preference", "simpo", {"beta": 2.0, "gamma": 1.0}, trl_cpo,
         {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0, "cpo_alpha": 0.0}),
    Case("orpo", "preference", "orpo", {"nll_reduction": "token"}, trl_orpo, {"beta": 0.1},
         note="one-token prompts: TRL's ORPO NLL also counts prompt tokens"),
]  # fmt: skip


# ---------------------------------------------------------------- comparison


@dataclasses.dataclass(frozen=True)
class Agreement:
    case: Case
    regime: str
    loss_ours: float
    loss_trl: float
    loss_diff: float  # |ours - TRL|
    grad_diff: float  # max over tokens of |ours - TRL|, where TRL's gradient is finite
    grad_scale: float  # max over tokens of |TRL|, where finite
    ours_nonfinite: int  # gradient entries that are NaN or inf
    trl_nonfinite: int


def compare(case: Case, regime: str, seed: int = 0) -> Agreement:
    batch = make_batch(seed, regime)
    loss_o, *grads_o = ours(batch, case.registry, case.name, case.options)
    loss_t, *grads_t = case.trl(batch, case.trl_dtype, **case.trl_options)
    grad_o, grad_t = np.concatenate(grads_o), np.concatenate(grads_t)
    finite = np.isfinite(grad_t)
    return Agreement(
        case, regime, loss_o, loss_t, abs(loss_o - loss_t),
        grad_diff=float(np.abs(grad_o - grad_t)[finite].max()), grad_scale=float(np.abs(grad_t[finite]).max()),
        ours_nonfinite=int((~np.isfinite(grad_o)).sum()), trl_nonfinite=int((~finite).sum()),
    )  # fmt: skip


def agrees(a: Agreement, rtol: float = 2e-5, atol: float = 1e-6) -> bool:
    """Within float32 rounding: the loss relative to its size, the gradient relative to its largest
    entry (compared where TRL's is finite; ours must be finite everywhere)."""
    loss_ok = a.loss_diff <= rtol * abs(a.loss_trl) + atol
    return loss_ok and a.grad_diff <= rtol * a.grad_scale + atol and a.ours_nonfinite == 0


def table(agreements: list[Agreement]) -> str:
    """Markdown: per objective, ours and TRL's settings, and the largest differences over the regimes."""
    rows = ["| objective | ours | TRL 1.16 | max \\|loss diff\\| (max \\|loss\\|) | max \\|grad diff\\| (max \\|grad\\|) | agrees | note |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for case in CASES:
        mine = [a for a in agreements if a.case is case]
        if not mine:
            continue
        loss = max(a.loss_diff for a in mine), max(abs(a.loss_trl) for a in mine)
        grad = max(a.grad_diff for a in mine), max(a.grad_scale for a in mine)
        ok = "yes" if all(agrees(a) for a in mine) else "NO"
        regimes = "" if case.regimes == REGIMES else f"regimes: {', '.join(case.regimes)}. "
        nonfinite = "".join(f"TRL's gradient is NaN/inf in {a.trl_nonfinite} entries ({a.regime}); ours finite. "
                            for a in mine if a.trl_nonfinite)  # fmt: skip
        rows.append(f"| {case.label} | {case.ours_text} | {case.trl_text} | {loss[0]:.2e} ({loss[1]:.3g}) | "
                    f"{grad[0]:.2e} ({grad[1]:.3g}) | {ok} | {regimes}{nonfinite}{case.note} |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the table (Markdown) here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    agreements = [compare(case, regime, args.seed) for case in CASES for regime in case.regimes]
    text = table(agreements)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
