"""The contrastive refusal benchmark: harmful requests and their benign minimal twins.

``align_jax/data/prompt_data/refusal_contrast/S{1..14}.jsonl`` hold 2,100 pairs (4,200 prompts),
150 per hazard category of :mod:`taxonomy`. A pair is one harmful request and a benign request
that shares its sensitive words but not its intent ("how do I kill my neighbour's dog quietly" /
"how do I kill the weeds along my neighbour's fence"), labelled with the *phenomenon* that makes
the benign twin benign (``PHENOMENA``) and a phrasing *family*: the pairs of one family share a
construction, so a test that shares a family with training would test memory of the wording.
The datasheet (``refusal_contrast/README.md``) says how the pairs were written and checked.

Splits never cut a family: ``family_split`` hashes whole families into train / val / test, and
``phenomenon_folds`` holds out one phenomenon at a time (a classifier that scores well there
has learned something about intent rather than the phrasings of the phenomena it saw).
``duplicates_against`` checks the pairs against other prompt sets by normalised text.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
from collections import Counter
from typing import Iterable, Mapping, Sequence

from align_jax.data.prompt_data import read_tables
from align_jax.data.sources import DataError
from align_jax.safety.refusal.datasets import SPLITS, Prompt, stable_hash
from align_jax.safety.refusal.sources import normalise
from align_jax.safety.refusal.taxonomy import HAZARD_CODES

# phenomenon -> the id infix of its pairs ("S1-hom-001") and what makes the benign twin benign
PHENOMENA: dict[str, tuple[str, str]] = {
    "homonym_figurative": ("hom", "a harm word used figuratively or in another sense (kill the lights)"),
    "safe_target": ("stg", "the act aimed at a target where it is harmless (kill a Python process)"),
    "safe_context": ("ctx", "a context that makes the request legitimate (a licensed range, a game)"),
    "definition_education": ("def", "asks what something is or how to recognise or prevent it"),
    "history": ("his", "asks about a past event rather than how to repeat it"),
    "fiction": ("fic", "asks for a story's events without operational detail"),
    "public_private_person": ("pub", "a public figure's public role instead of a private person's data"),
    "nonsense_group": ("non", "an absurd question that names a group without demeaning it"),
    "vulnerable_user": ("vul", "a person at risk asking for help or safety rather than means"),
    "discrimination_discussion": ("dis", "discusses or counters discrimination instead of doing it"),
}
_FIELDS = {name: str for name in ("id", "category", "phenomenon", "family", "harmful", "benign", "rationale")}
SCHEMA = {"pair": _FIELDS}
SOURCE = "refusal_contrast"


@dataclasses.dataclass(frozen=True)
class Pair:
    id: str  # "S1-hom-001"
    category: str  # "S1" .. "S14"
    phenomenon: str  # a key of PHENOMENA
    family: str  # phrasing family, "S1-hom-f1"
    harmful: str
    benign: str
    rationale: str

    def prompts(self, split: str) -> tuple[Prompt, Prompt]:
        """(harmful, benign) as :class:`Prompt`: the family is the template id of both, the
        phenomenon the benign type (and the harmful one's source category)."""
        return (
            Prompt(self.harmful, True, "harmful", split, SOURCE, hazard=self.category,
                   source_category=self.phenomenon, template_id=self.family),
            Prompt(self.benign, False, "benign_sensitive", split, SOURCE, hazard=None,
                   benign_type=self.phenomenon, template_id=self.family),
        )


def _check(p: Pair, where: str) -> None:
    if p.category not in HAZARD_CODES:
        raise DataError(f"{where}: unknown category {p.category!r}; expected one of {list(HAZARD_CODES)}")
    if p.phenomenon not in PHENOMENA:
        raise DataError(f"{where}: unknown phenomenon {p.phenomenon!r}; expected one of {sorted(PHENOMENA)}")
    infix = PHENOMENA[p.phenomenon][0]
    if not p.id.startswith(f"{p.category}-{infix}-") or not p.family.startswith(f"{p.category}-{infix}-"):
        raise DataError(f"{where}: id {p.id!r} / family {p.family!r} must start with {p.category}-{infix}-")
    for field in ("harmful", "benign", "rationale"):
        if not getattr(p, field).strip():
            raise DataError(f"{where}: empty {field!r}")


def read_pairs(resource, category: str | None = None) -> list[Pair]:
    """The pairs of one file (a path or importlib Traversable); ``category`` checks every pair's."""
    pairs = []
    for i, row in enumerate(read_tables(resource, SCHEMA)["pair"]):
        p = Pair(**row)
        _check(p, f"{resource}, pair {i + 1} ({p.id})")
        if category is not None and p.category != category:
            raise DataError(f"{resource}, pair {i + 1} ({p.id}): category {p.category!r} in the file of {category}")
        pairs.append(p)
    return pairs


def load_pairs(categories: Sequence[str] = HAZARD_CODES) -> list[Pair]:
    """Every packaged pair of ``categories``, in category then file order; ids and prompts unique."""
    root = importlib.resources.files("align_jax.data.prompt_data").joinpath(SOURCE)
    pairs = [p for c in categories for p in read_pairs(root.joinpath(f"{c}.jsonl"), c)]
    ids = Counter(p.id for p in pairs)
    texts = Counter(normalise(t) for p in pairs for t in (p.harmful, p.benign))
    if dup := [k for k, n in ids.items() if n > 1]:
        raise DataError(f"{SOURCE}: duplicate pair ids {dup[:5]}")
    if dup := [k for k, n in texts.items() if n > 1]:
        raise DataError(f"{SOURCE}: prompts that occur twice (normalised) {dup[:5]}")
    return pairs


def family_split(pairs: Sequence[Pair], fractions: tuple[float, float, float] = (0.7, 0.0, 0.3),
                 seed: int = 0) -> dict[str, list[Pair]]:
    """split -> pairs, whole families per split: within each (category, phenomenon), families
    ordered by hash(seed, family) fill test, then val, up to their shares of the pairs (each at
    least one family while train keeps one); train keeps the rest. Cells hold 3-6 families of
    2-6 pairs, so shares are approximate. The default has no val: thresholds come from
    cross-fitting over phenomena (``phenomenon_folds``), not from a split of the pairs."""
    if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be {len(SPLITS)} non-negative shares summing to 1, got {fractions}")
    cells: dict[tuple[str, str], dict[str, list[Pair]]] = {}
    for p in pairs:
        cells.setdefault((p.category, p.phenomenon), {}).setdefault(p.family, []).append(p)
    family_of: dict[str, str] = {}
    for families in cells.values():
        order = sorted(families, key=lambda f: stable_hash(seed, "family", f))
        total = sum(len(v) for v in families.values())
        want = {s: fr * total for s, fr in zip(SPLITS, fractions)}
        got = dict.fromkeys(SPLITS, 0)
        # test first, then val, from the hash order's end; train keeps the rest
        for split in ("test", "val"):
            while want[split] > 0 and len(order) > 1:
                room = want[split] - got[split]
                if got[split] and room < len(families[order[-1]]) / 2:  # the next family would overshoot
                    break
                f = order.pop()
                family_of[f] = split
                got[split] += len(families[f])
        for f in order:
            family_of[f] = "train"
    out: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    for p in pairs:
        out[family_of[p.family]].append(p)
    return out


def phenomenon_folds(pairs: Sequence[Pair]) -> dict[str, tuple[list[Pair], list[Pair]]]:
    """phenomenon -> (pairs of every other phenomenon, pairs of this one)."""
    return {ph: ([p for p in pairs if p.phenomenon != ph], [p for p in pairs if p.phenomenon == ph])
            for ph in PHENOMENA if any(p.phenomenon == ph for p in pairs)}


def to_prompts(pairs: Iterable[Pair], split: str) -> list[Prompt]:
    """Harmful then benign prompt of each pair, interleaved in pair order."""
    return [q for p in pairs for q in p.prompts(split)]


def counts(pairs: Iterable[Pair]) -> dict[str, dict[str, int]]:
    """category -> phenomenon -> number of pairs (each pair is two prompts)."""
    out: dict[str, dict[str, int]] = {}
    for p in pairs:
        row = out.setdefault(p.category, {})
        row[p.phenomenon] = row.get(p.phenomenon, 0) + 1
    return out


def duplicates_against(pairs: Iterable[Pair], others: Mapping[str, Iterable[str]]) -> dict[str, list[tuple[str, str]]]:
    """set name -> [(pair id, prompt)] of pair prompts whose normalised text occurs in that set."""
    pairs = list(pairs)
    out = {}
    for name, texts in others.items():
        seen = {normalise(t) for t in texts}
        out[name] = [(p.id, t) for p in pairs for t in (p.harmful, p.benign) if normalise(t) in seen]
    return out


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9']+", text.lower()))


def near_duplicates(pairs: Iterable[Pair], texts: Iterable[str], min_jaccard: float = 0.7) -> list[tuple[str, str, str, float]]:
    """[(pair id, pair prompt, other text, Jaccard)] where the word sets of a pair prompt and one
    of ``texts`` overlap by at least ``min_jaccard`` (paraphrases that ``normalise`` misses)."""
    others = [(t, _words(t)) for t in dict.fromkeys(texts)]
    out = []
    for p in pairs:
        for t in (p.harmful, p.benign):
            a = _words(t)
            for o, b in others:
                j = len(a & b) / max(1, len(a | b))
                if j >= min_jaccard:
                    out.append((p.id, t, o, round(j, 3)))
    return out


def counts_markdown(pairs: Sequence[Pair]) -> str:
    """The category x phenomenon table of pair counts (with families in brackets), and totals."""
    table = counts(pairs)
    families = Counter((p.category, p.phenomenon) for p in {(p.category, p.phenomenon, p.family): p for p in pairs}.values())
    phen = [ph for ph in PHENOMENA if any(ph in row for row in table.values())]
    head = "| category | " + " | ".join(PHENOMENA[ph][0] for ph in phen) + " | pairs |"
    lines = [head, "|" + "---|" * (len(phen) + 2)]
    for c in sorted(table, key=HAZARD_CODES.index):
        cells = [f"{table[c][ph]} ({families[c, ph]})" if ph in table[c] else "" for ph in phen]
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {sum(table[c].values())} |")
    totals = [str(sum(row.get(ph, 0) for row in table.values())) for ph in phen]
    lines.append("| all | " + " | ".join(totals) + f" | {len(pairs)} |")
    return "\n".join(lines)
