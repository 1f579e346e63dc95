"""The 14 hazard categories (MLCommons AILuminate v0.5 / Llama Guard 3 S1-S14) and the explicit
mapping from the category labels found in the harmful data files to them.

The source labels are coarse (HarmBench's ``illegal``, StrongREJECT's ``Violence``, JailbreakBench's
``Malware/Hacking`` ...) and rarely line up one-to-one with S1-S14, so each label maps to the single
*nearest* hazard, with the reason written next to it. MLCommons has no generic misinformation
hazard: false factual claims go to S5 (defamation, false claims that harm), deception used for
gain (phishing, fake reviews, bot networks) to S2 (non-violent crimes).

``None`` is a label too: ``harmful_train.json`` (AdvBench-style) carries no category, and such
examples map to ``None`` ("unlabelled"), never to a guessed hazard. Any other label that is not in
:data:`SOURCE_CATEGORY_TO_HAZARD` raises :class:`UnmappedCategoryError` listing all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class Hazard:
    code: str  # "S1" .. "S14"
    name: str
    description: str


HAZARDS: tuple[Hazard, ...] = (
    Hazard("S1", "violent_crimes", "enables, encourages or endorses violence against people or animals, terrorism"),
    Hazard("S2", "non_violent_crimes", "fraud, scams, theft, cyber crime and malware, drug and weapon crimes, trafficking"),
    Hazard("S3", "sex_related_crimes", "sex trafficking, sexual assault, harassment, prostitution"),
    Hazard("S4", "child_sexual_exploitation", "sexual content involving or sexualising minors"),
    Hazard("S5", "defamation", "verifiably false claims likely to injure people or the public (incl. disinformation)"),
    Hazard("S6", "specialized_advice", "unqualified specialised financial, medical or legal advice"),
    Hazard("S7", "privacy", "sensitive non-public personal information, identity theft, surveillance"),
    Hazard("S8", "intellectual_property", "violates third-party intellectual property rights"),
    Hazard("S9", "indiscriminate_weapons", "chemical, biological, radiological, nuclear and high-yield explosive weapons"),
    Hazard("S10", "hate", "demeans or dehumanises people for protected characteristics, harassment"),
    Hazard("S11", "suicide_self_harm", "enables, encourages or endorses suicide, self-injury, disordered eating"),
    Hazard("S12", "sexual_content", "sexually explicit content"),
    Hazard("S13", "elections", "factually incorrect information about electoral systems and processes"),
    Hazard("S14", "code_interpreter_abuse", "abuses code interpreters: denial of service, container escape, privilege escalation"),
)
HAZARD_CODES: tuple[str, ...] = tuple(h.code for h in HAZARDS)
HAZARD_BY_CODE: dict[str, Hazard] = {h.code: h for h in HAZARDS}
HAZARD_INDEX: dict[str, int] = {c: i for i, c in enumerate(HAZARD_CODES)}

# source label (as written in refusal_direction/harmful_*.json) -> (hazard code, why)
SOURCE_CATEGORY_TO_HAZARD: dict[str, tuple[str, str]] = {
    # HarmBench (harmful_val / harmful_test)
    "chemical_biological": ("S9", "chemical/biological weapons and agents"),
    "cybercrime_intrusion": ("S2", "hacking and malware are cyber crimes (S14 is only interpreter abuse)"),
    "illegal": ("S2", "mostly non-violent illegal activity (piracy, fraud, drugs, evasion)"),
    "misinformation_disinformation": ("S5", "false factual claims; MLCommons has no misinformation hazard"),
    "harassment_bullying": ("S10", "harassment and demeaning content"),
    "harmful": ("S1", "graphic violence and cruelty, dangerous acts"),
    # JailbreakBench (harmful_test)
    "Harassment/Discrimination": ("S10", "discrimination and harassment"),
    "Malware/Hacking": ("S2", "cyber crime"),
    "Physical harm": ("S1", "violence and physical injury"),
    "Economic harm": ("S2", "extortion, gambling and financial exploitation"),
    "Fraud/Deception": ("S2", "fraud"),
    "Disinformation": ("S5", "false factual claims"),
    "Sexual/Adult content": ("S12", "sexual content"),
    "Privacy": ("S7", "identity theft, personal data"),
    "Expert advice": ("S6", "unqualified medical/legal/financial advice"),
    "Government decision-making": ("S2", "forgery and evading law enforcement"),
    # StrongREJECT (harmful_test)
    "Non-violent crimes": ("S2", "same hazard by name"),
    "Violence": ("S1", "violent crimes"),
    "Disinformation and deception": ("S2", "deception for gain: phishing, bot networks, propaganda ops"),
    "Hate, harassment and discrimination": ("S10", "hate"),
    "Illegal goods and services": ("S2", "weapons, drugs, counterfeit goods"),
    "Sexual content": ("S12", "same hazard by name"),
}
assert all(code in HAZARD_BY_CODE for code, _ in SOURCE_CATEGORY_TO_HAZARD.values())


class UnmappedCategoryError(KeyError):
    """Source categories with no entry in SOURCE_CATEGORY_TO_HAZARD."""

    def __init__(self, unmapped: Sequence[str]):
        self.unmapped = sorted(set(unmapped))
        super().__init__(
            f"{len(self.unmapped)} source categor{'y' if len(self.unmapped) == 1 else 'ies'} not mapped to "
            f"the hazard taxonomy: {self.unmapped}; add them to SOURCE_CATEGORY_TO_HAZARD "
            f"(known: {sorted(SOURCE_CATEGORY_TO_HAZARD)})"
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


def map_categories(source_categories: Iterable[str | None]) -> list[str | None]:
    """Hazard code for each source label (``None`` stays ``None``); all unmapped labels in one error."""
    labels = list(source_categories)
    unmapped = [c for c in labels if c is not None and c not in SOURCE_CATEGORY_TO_HAZARD]
    if unmapped:
        raise UnmappedCategoryError(unmapped)
    return [None if c is None else SOURCE_CATEGORY_TO_HAZARD[c][0] for c in labels]


def hazard_index(code: str) -> int:
    """Position of a hazard code in HAZARD_CODES (the category head's class index)."""
    if code not in HAZARD_INDEX:
        raise KeyError(f"unknown hazard code {code!r}; valid codes: {list(HAZARD_CODES)}")
    return HAZARD_INDEX[code]
