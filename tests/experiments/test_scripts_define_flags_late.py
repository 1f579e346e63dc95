"""No experiment script defines absl flags at import: tests import them beside align_jax.main,
which owns --workdir, and a module-level DEFINE raised DuplicateFlagError in CI (one xdist worker)."""

import ast
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.py"))


def _module_level_defines(tree: ast.Module) -> list[int]:
    lines = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.If)):
            continue  # function bodies and the `if __name__ == "__main__":` block run later
        for sub in ast.walk(node):
            if (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute)
                    and sub.func.attr.startswith("DEFINE")):
                lines.append(sub.lineno)
    return lines


def test_the_check_sees_a_module_level_define():
    assert _module_level_defines(ast.parse("from absl import flags\nflags.DEFINE_string('x', '', '')\n")) == [2]
    assert _module_level_defines(ast.parse("def define_flags():\n    flags.DEFINE_string('x', '', '')\n")) == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_flags_are_defined_only_when_run(script):
    lines = _module_level_defines(ast.parse(script.read_text()))
    assert not lines, f"{script.name}:{lines[0]} defines a flag at import; move it into define_flags()"
