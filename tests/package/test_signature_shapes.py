"""Shapes in public signatures (the core: models, objectives, sampling): every array parameter of a
public function or method says its shape in a comment on its line (``logits: jax.Array,  # [B, T, V]``),
the convention of the losses and the sampler, so a reader never has to trace a call to learn one."""

import ast
import io
import re
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "align_jax"
CORE = ("models", "objectives", "sampling")
ARRAY = re.compile(r"^(jax\.Array|jnp\.ndarray|np\.ndarray)( \| None)?$")
SHAPE = re.compile(r"\[|shape")  # "[B, T]", "[] PRNG key", "any shape", "same shape as x"


def _comments(source: str) -> dict[int, str]:
    return {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


def _public_functions(body, prefix=""):
    for node in body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from _public_functions(node.body, f"{prefix}{node.name}.")
        elif isinstance(node, ast.FunctionDef) and (not node.name.startswith("_") or node.name == "__call__"):
            yield f"{prefix}{node.name}", node


def test_array_parameters_of_public_functions_name_their_shape():
    missing = []
    for package in CORE:
        for path in sorted((PACKAGE / package).rglob("*.py")):
            source = path.read_text()
            comments = _comments(source)
            for name, fn in _public_functions(ast.parse(source).body):
                args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
                for a in args:
                    if a.annotation is None or not ARRAY.match(ast.unparse(a.annotation)):
                        continue
                    if not SHAPE.search(comments.get(a.lineno, "")):
                        missing.append(f"{path.relative_to(PACKAGE.parent)}:{a.lineno} {name}({a.arg})")
    assert not missing, "array parameters without a shape comment:\n" + "\n".join(missing)
