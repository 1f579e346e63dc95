"""Attacks in one registry: each turns a behaviour (a harmful request) into an attack prompt.

Template attacks are data (``templates.jsonl``: name, family, template, source), filled with the
behaviour and views of it: ``{behaviour}``, ``{behaviour_lower}`` (first letter lower-cased),
``{part_a}`` / ``{part_b}`` (its two halves, for payload splitting), ``{behaviour_base64}``,
``{behaviour_rot13}``, ``{behaviour_leet}``. ``gcg`` optimises an adversarial suffix against the
attacked model itself (``redteam.gcg``; Zou et al., arXiv:2307.15043). ``pair`` has an attacker
model write and refine the prompt from the target's answers and a judge's scores (``redteam.pair``;
Chao et al., arXiv:2310.08419).

Every attack has the signature ``attack(behaviour, lm) -> prompt``; template attacks ignore ``lm``.
"""

from __future__ import annotations

import base64
import codecs
import dataclasses
import functools
import json
import pathlib
import string
from typing import Callable

from align_jax.models.registry import LoadedModel
from align_jax.redteam.gcg import GCGConfig, run_gcg
from align_jax.redteam.pair import PAIRAttack
from align_jax.registry import did_you_mean

TEMPLATES_PATH = pathlib.Path(__file__).with_name("templates.jsonl")
SEARCH_ATTACKS = {"gcg": "gcg", "pair": "lm_attacker"}  # attacks that search against the model -> family
FIELDS = ("behaviour", "behaviour_lower", "part_a", "part_b", "behaviour_base64", "behaviour_rot13", "behaviour_leet")
_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"})


class TemplateFileError(ValueError):
    """A malformed template record; the message names the file and the line."""


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    family: str
    template: str
    source: str


def load_templates(path: str | pathlib.Path = TEMPLATES_PATH) -> dict[str, Template]:
    """name -> Template, checked: every record has the four fields, known placeholders, a unique name."""
    path = pathlib.Path(path)
    out: dict[str, Template] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise TemplateFileError(f"{where}: not JSON ({e.msg})") from None
        missing = [k for k in ("name", "family", "template", "source") if not isinstance(rec.get(k), str)]
        if missing:
            raise TemplateFileError(f"{where}: missing or non-string field(s) {missing}")
        fields = {f for _, f, _, _ in string.Formatter().parse(rec["template"]) if f is not None}
        if unknown := fields - set(FIELDS):
            raise TemplateFileError(f"{where}: unknown placeholder(s) {sorted(unknown)}; known: {FIELDS}")
        if not fields:
            raise TemplateFileError(f"{where}: the template never uses the behaviour")
        if rec["name"] in out:
            raise TemplateFileError(f"{where}: duplicate template name {rec['name']!r}")
        out[rec["name"]] = Template(rec["name"], rec["family"], rec["template"], rec["source"])
    return out


def behaviour_views(behaviour: str) -> dict[str, str]:
    """The placeholders a template may use (see the module docstring)."""
    b = behaviour.strip()
    words = b.split()
    half = max(1, len(words) // 2)
    return {
        "behaviour": b,
        "behaviour_lower": b[:1].lower() + b[1:],
        "part_a": " ".join(words[:half]) + " ",
        "part_b": " ".join(words[half:]),
        "behaviour_base64": base64.b64encode(b.encode()).decode(),
        "behaviour_rot13": codecs.encode(b, "rot13"),
        "behaviour_leet": b.lower().translate(_LEET),
    }


def fill(template: Template, behaviour: str) -> str:
    return template.template.format(**behaviour_views(behaviour))


def gcg_target(behaviour: str) -> str:
    """The affirmative opening GCG optimises for: ``"Sure, here is how to <behaviour>"``."""
    b = behaviour.strip().rstrip(".?!")
    return f"Sure, here is how to {b[:1].lower() + b[1:]}"


def gcg_attack(behaviour: str, lm: LoadedModel, *, num_steps: int = 50, search_width: int = 128, topk: int = 256,
               batch_size: int = 128, seed: int = 0) -> str:
    """The behaviour plus a GCG suffix optimised on ``lm`` (arXiv:2307.15043)."""
    cfg = GCGConfig(num_steps=num_steps, search_width=search_width, topk=topk, batch_size=batch_size, seed=seed)
    result = run_gcg(lm, behaviour, gcg_target(behaviour), cfg)
    return behaviour + result.best_suffix


def attack_names(path: str | pathlib.Path = TEMPLATES_PATH) -> list[str]:
    return sorted(load_templates(path)) + list(SEARCH_ATTACKS)


def build_attack(name: str, path: str | pathlib.Path = TEMPLATES_PATH, **options) -> Callable[[str, LoadedModel], str]:
    """``attack(behaviour, lm) -> prompt`` by name; ``options`` go to ``gcg`` (its keyword arguments)
    and ``pair`` (``PAIRConfig``'s fields) only."""
    if name == "gcg":
        return functools.partial(gcg_attack, **options)
    if name == "pair":
        return PAIRAttack(**options)
    templates = load_templates(path)
    if name not in templates:
        valid = sorted(templates) + list(SEARCH_ATTACKS)
        raise KeyError(f"unknown attack {name!r}; valid: {', '.join(valid)}{did_you_mean(name, valid)}")
    if options:
        raise ValueError(f"template attack {name!r} takes no options, got {sorted(options)}")
    return lambda behaviour, lm=None: fill(templates[name], behaviour)


def attack_family(name: str, path: str | pathlib.Path = TEMPLATES_PATH) -> str:
    return SEARCH_ATTACKS[name] if name in SEARCH_ATTACKS else load_templates(path)[name].family
