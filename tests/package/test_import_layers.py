"""Imports run one way: a module never imports a package of a higher layer (function-level
imports included), so each layer can be read, tested and reused without the ones above it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "align_jax"

# Lowest first. Packages of one layer may import each other.
LAYERS = (
    ("registry", "parallel", "models", "bootstrap", "run_settings"),
    ("objectives",),
    ("data", "instructions", "rewards"),
    ("sampling", "training", "steering"),
    ("safety",),  # classifiers trained on the engine; evals load them
    ("evals", "redteam"),  # evaluations; attacks and the red-team runner (which judge with evals)
    ("main", "evaluate", "generate", "chat_demo", "report", "cli"),  # entry points, their flags, the end-of-run report
)
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "align_jax" and len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            if node.module == "align_jax":
                out += [(node.lineno, f"align_jax.{a.name}") for a in node.names]
    return out


def test_every_package_has_a_layer():
    packages = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert packages - set(LAYER_OF) == set(), "give the new package a layer in LAYERS"


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        if rel.name == "__main__.py":  # ``python -m align_jax.<package>``: an entry point
            own = "main"
        for line, module in _imports(path):
            target = _top(module)
            if target is not None and target in LAYER_OF and LAYER_OF[target] > LAYER_OF[own]:
                violations.append(f"align_jax/{rel}:{line} ({own}, layer {LAYER_OF[own]}) imports {module} "
                                  f"(layer {LAYER_OF[target]})")
    assert not violations, "\n".join(violations)
