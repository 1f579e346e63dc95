"""The defaults a config file starts from (configs/common.py) are the typed sections' defaults:
one set of defaults, whichever way a run is configured (a config file or parse_config on a dict)."""

import dataclasses
import runpy
from pathlib import Path

import pytest

from align_jax.rewards.model import RewardModelError
from align_jax.training.config import _SECTIONS, parse_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
base_config = runpy.run_path(str(CONFIGS / "common.py"))["base_config"]


@pytest.mark.parametrize("name", sorted(_SECTIONS))
def test_common_defaults_equal_the_dataclass_defaults(name):
    section = base_config().to_dict()[name]
    fields = {f.name: f.default for f in dataclasses.fields(_SECTIONS[name])}
    assert set(section) == set(fields), f"configs/common.py's {name} section and its dataclass declare different keys"
    if name == "data":  # a mapping in the file, sorted (field, column) pairs in the dataclass
        section["fields"] = tuple(sorted(section["fields"].items()))
    assert section == fields


def test_every_shipped_config_parses():
    """Every configs/*.py (training) builds a RunConfig: names, options and combinations valid."""
    for path in sorted(CONFIGS.glob("*.py")):
        if path.name == "common.py":
            continue
        config = runpy.run_path(str(path))["get_config"]()
        if str(config.rl.rewards).startswith("rm:"):  # a reward model an experiment writes first (ppo_hh)
            folder = config.rl.rewards[3:].split("@")[0]
            if not Path(folder).is_dir():
                with pytest.raises(RewardModelError, match=folder):  # named before any model loads
                    parse_config(config)
                config.rl.rewards = "toy_letter"  # the rest of the config must still parse
        cfg = parse_config(config)
        assert cfg.optimizer.total_steps >= cfg.train.steps, path.name


def test_configs_readme_names_every_config_and_only_those():
    import re

    text = (CONFIGS / "README.md").read_text()
    named = set(re.findall(r"`((?:eval/|redteam/)?[a-z_0-9]+\.py)`", text))
    files = {p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.py")}
    assert named - files == set(), "configs/README.md names configs that do not exist"
    assert files - named == set(), "configs/README.md does not list every config"
