"""Our DPO-family objectives equal TRL 1.16's own loss code, in loss and in gradient with respect
to the policy's per-token log-probs, in their TRL-compatible settings (docs/objectives.md), on 16
pairs of variable length in three regimes: moderate log-ratios, DPO margins of +-300, and chosen
tokens at log p in [-1e-6, -1e-9] (ORPO's steep log(1 - p)). ``benchmarks/trl_agreement.py`` runs
both sides (TRL's trainers on a stand-in model) and prints the table; this asserts it.

Skipped when TRL (requirements-test.txt) cannot be imported. No model weights: seconds."""

import importlib
import pathlib
import sys

import pytest

pytest.importorskip("trl.trainer.dpo_trainer", reason="trl==1.16.0 (requirements-test.txt) is not importable")

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
T = importlib.import_module("benchmarks.trl_agreement")

from align_jax.objectives import REGISTRIES  # noqa: E402

# Registered losses without a TRL 1.16 counterpart (docs/objectives.md says why, loss by loss).
NO_TRL_COUNTERPART = {"cdpo", "dpop", "rdpo", "bco", "pro"}
COMPARED = [(case, regime) for case in T.CASES for regime in case.regimes]


@pytest.mark.parametrize("case,regime", COMPARED, ids=[f"{c.label}-{r}" for c, r in COMPARED])
def test_loss_and_gradient_equal_trl(case, regime):
    agreement = T.compare(case, regime)
    assert T.agrees(agreement), agreement


def test_every_loss_is_compared_or_has_no_trl_counterpart():
    compared = {case.name for case in T.CASES}
    registered = set().union(*(REGISTRIES[key].names() for key in ("preference", "unpaired", "ranking")))
    assert registered - compared == NO_TRL_COUNTERPART
    doc = (REPO / "docs" / "objectives.md").read_text()
    for case in T.CASES:
        assert case.trl_text in doc, f"docs/objectives.md does not give TRL's settings for {case.label}: {case.trl_text}"
