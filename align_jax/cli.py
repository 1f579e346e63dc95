"""Flag parsing shared by the entry points (align_jax.main, align_jax.evaluate): an override of a
config key that does not exist exits with one line naming the valid keys, not a traceback."""

from __future__ import annotations

import re
import sys

from absl import app, flags
from ml_collections import config_dict

from align_jax.registry import did_you_mean


def unknown_keys_message(config: config_dict.ConfigDict, paths: list[str]) -> str | None:
    """One line naming the override paths that a locked section does not have, or None."""
    for path in paths:
        holder, where = config, "config"
        for key in path.split("."):
            if not isinstance(holder, config_dict.ConfigDict):
                break
            if key not in holder:
                if not holder.is_locked:
                    break  # an open section (loss options, data.fields): parse_config checks it
                valid = sorted(holder.keys())
                return f"{where} has unknown key(s) {[key]}; valid keys: {valid}{did_you_mean(key, valid)}"
            holder, where = holder[key], f"{where}.{key}"
    return None


def _config_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the --config file, the paths of the --config.<path>=... overrides) in argv."""
    file, paths = None, []
    for i, arg in enumerate(argv):
        if m := re.match(r"--?config(=(.*))?$", arg):
            file = m.group(2) if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
        elif m := re.match(r"--?config\.([^=]+)", arg):
            paths.append(m.group(1))
    return file, paths


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (a bad flag value: absl's two lines); an override of a config key that does
    not exist exits with one line."""
    try:
        return app.parse_flags_with_usage(argv)
    except (KeyError, AttributeError, ValueError) as e:  # a locked ConfigDict refusing a key
        file, paths = _config_args(argv)
        message = None
        if file is not None:
            message = unknown_keys_message(flags.FLAGS["config"].parser.parse(file), paths)
        sys.exit(message or one_line(e))


def one_line(e: BaseException) -> str:
    return str(e.args[0]) if len(e.args) == 1 else str(e)
