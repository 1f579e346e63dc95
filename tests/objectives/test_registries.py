"""Every registry is documented, and names/options fail clearly."""

import pathlib

import pytest

from align_jax.objectives import REGISTRIES, describe_all

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "objectives.md"


def test_docs_embed_every_registry_table():
    assert describe_all() in DOC.read_text(), "regenerate the 'All registries' section of docs/objectives.md"


def test_issue_objectives_are_registered():
    expected = {
        "preference": {"dpo", "cdpo", "robust_dpo", "ipo", "hinge", "exo", "nca", "bco_pair", "sppo_hard",
                       "aot_paired", "aot_unpaired", "apo_zero", "apo_down", "discopop", "f_dpo", "dpop",
                       "rpo", "rdpo", "ld_dpo", "wpo", "simpo", "cpo", "orpo"},
        "unpaired": {"kto", "bco"},
        "ranking": {"pro"},
        "policy_loss": {"ppo", "gspo"},
        "advantage": {"grpo", "dr-grpo", "rloo", "reinforce++"},
        "loss_aggregation": {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"},
        "kl_estimator": {"k1", "k2", "k3"},
        "ensemble_aggregation": {"mean", "min", "mean-minus-std"},
        "reward_transform": {"log-sigmoid", "par"},
        "calibration_loss": {"brier", "focal", "label-smoothing"},
    }
    for key, names in expected.items():
        assert names <= set(REGISTRIES[key].names()), (key, names - set(REGISTRIES[key].names()))


@pytest.mark.parametrize("key", sorted(REGISTRIES))
def test_unknown_name_lists_valid_choices(key):
    registry = REGISTRIES[key]
    with pytest.raises(KeyError, match="valid choices: " + registry.names()[0]):
        registry.build("no-such-objective")
