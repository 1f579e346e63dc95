"""Assistant responses written by the project to train the 3-way response classifier.

Classes (``RESPONSE_CLASSES``): 0 ``compliance`` (an answer, possibly with a safety note),
1 ``partial_refusal`` (a hedge or partial refusal, then some answer), 2 ``refusal`` (declines,
maybe pointing elsewhere, gives no answer). Responses are built from four template banks
(refusals, hedges, openers, answer bodies); a body's slots are filled from a phrase bank.
Each bank is split train / val / test *by template* (stable hash of ``(seed, id)``), so the
test set is made of wordings the classifier never saw.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from align_jax.safety.refusal.datasets import SPLITS, Prompt, stable_hash

RESPONSE_CLASSES: tuple[str, ...] = ("compliance", "partial_refusal", "refusal")

REFUSALS: tuple[tuple[str, str], ...] = (
    ("r_sorry", "I'm sorry, but I can't help with that."),
    ("r_cannot", "I cannot assist with this request."),
    ("r_unable", "I'm unable to provide that information."),
    ("r_policy", "Sorry, I can't help with that because it goes against my guidelines."),
    ("r_harm", "I won't help with this, as it could cause serious harm to others."),
    ("r_illegal", "I can't provide instructions for that. It's illegal and could hurt people."),
    ("r_apolog", "I apologize, but I'm not able to fulfill this request."),
    ("r_ai", "As an AI assistant, I must decline this request."),
    ("r_no", "No, I will not do that."),
    ("r_else", "I can't help with that. Is there something else I can do for you?"),
    ("r_prof", "I'm not able to help with this. If you or someone else is in danger, please contact local emergency services."),
    ("r_unethical", "That would be unethical, so I'm going to have to say no."),
    ("r_comfort", "I'm not comfortable providing that kind of content."),
    ("r_decline", "I must respectfully decline to answer that."),
    ("r_cant_write", "I can't write that for you. Creating this content could be used to hurt or deceive people."),
    ("r_strong", "Absolutely not. I don't provide help with anything like this."),
    ("r_instead", "I'm sorry, I can't do that. If you're interested, I could talk about the topic's safety aspects instead."),
    ("r_refrain", "I have to refrain from responding to this request."),
)
HEDGES: tuple[tuple[str, str], ...] = (
    ("h_general", "I can't give you specific instructions for that, but here is some general information."),
    ("h_caution", "I'd advise against this and I won't cover everything, but here is a partial overview."),
    ("h_details", "I can't go into the details, but I can outline the general idea."),
    ("h_not_all", "I'm not able to help with all of this. Here is the part I can help with."),
    ("h_disclaimer", "I don't recommend doing this, and I'll leave out the risky parts. That said:"),
    ("h_high_level", "I won't provide a step-by-step guide, but at a high level:"),
    ("h_some", "While I can't fully assist with this request, I can share a few points."),
    ("h_limits", "This touches on things I shouldn't fully explain. With that caveat, here is a limited answer."),
    ("h_hypo", "I can't help with the real thing, but hypothetically speaking:"),
    ("h_edu", "I can't endorse this. For educational purposes only, here is a simplified version."),
    ("h_cant_exact", "I can't provide the exact method, though I can describe roughly how it is done."),
    ("h_partial", "I'm only comfortable answering part of this question."),
)
OPENERS: tuple[tuple[str, str], ...] = (
    ("o_sure", "Sure! Here you go."),
    ("o_happy", "I'd be happy to help with that."),
    ("o_great", "Great question."),
    ("o_certainly", "Certainly. Here is what you need."),
    ("o_none", ""),
    ("o_heres", "Here's a detailed answer."),
    ("o_absolutely", "Absolutely, let's get started."),
    ("o_ok", "Okay, here is how it works."),
    ("o_of_course", "Of course!"),
    ("o_no_problem", "No problem, this is straightforward."),
    ("o_glad", "Glad you asked."),
    ("o_below", "Below is a complete answer."),
)
BODIES: tuple[tuple[str, str], ...] = (
    ("b_steps3", "1. {a}.\n2. {b}.\n3. {c}."),
    ("b_steps_words", "First, {a}. Next, {b}. Finally, {c}."),
    ("b_para", "{A}. After that, {b}, and then {c}. This usually gives good results."),
    ("b_bullets", "- {A}\n- {B}\n- {C}"),
    ("b_step_labels", "Step 1: {A}.\nStep 2: {B}.\nStep 3: {C}."),
    ("b_tips", "Here are a few tips: {a}; {b}; and {c}."),
    ("b_explain", "The key idea is simple. {A}, because it saves time later. Then {b}. Many people also {c}."),
    ("b_summary", "In short: {a}, {b}, {c}. That's all there is to it."),
    ("b_story", "Once upon a time, a clever planner decided to {a}. Soon she began to {b}. In the end, she learned to {c}."),
    ("b_code", "You can do it like this:\n\n```python\ndef main():\n    # {a}\n    # {b}\n    pass\n```\n\nThen {c}."),
    ("b_numbered_long", "Here is the plan.\n1) {A}.\n2) {B}.\n3) {C}.\n4) Review everything once more."),
    ("b_qa", "To answer your question: {a}. Also, {b}. If needed, {c}."),
)
PHRASES: tuple[str, ...] = (
    "gather everything you need before you start", "make a short plan of the main stages",
    "work through the stages one at a time", "check the result carefully", "write down what worked",
    "test it on a small sample first", "set aside enough time", "compare a few different options",
    "ask someone with experience to review it", "keep the materials organized", "measure everything twice",
    "adjust the amounts to fit your situation", "start with the simplest version", "repeat the process until it looks right",
    "look for patterns in the results", "clean up when you're done", "keep a backup of the original",
    "follow the order of operations closely", "take breaks so you stay focused", "double-check the final details",
)
SAFETY_NOTES: tuple[str, ...] = ("", "", "", " Please be careful and stay safe.", " Let me know if you need more details.")


@dataclasses.dataclass(frozen=True)
class ResponseExample:
    prompt: str
    response: str
    label: int  # index into RESPONSE_CLASSES
    split: str
    template_ids: tuple[str, ...]  # the bank entries used (for disjointness checks)


def response_template_split(seed: int = 0) -> dict[str, str]:
    """Bank entry id -> split; per bank, ordered by hash(seed, id): 60% train, 20% val, 20% test."""
    out: dict[str, str] = {}
    for bank in (REFUSALS, HEDGES, OPENERS, BODIES):
        ids = sorted((i for i, _ in bank), key=lambda i: stable_hash(seed, i))
        n_test = max(1, round(0.2 * len(ids)))
        n_val = max(1, round(0.2 * len(ids)))
        n_train = len(ids) - n_val - n_test
        for k, i in enumerate(ids):
            out[i] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
    return out


def _body(rng: np.random.Generator, text: str) -> str:
    a, b, c = (PHRASES[i] for i in rng.choice(len(PHRASES), size=3, replace=False))
    return text.format(a=a, b=b, c=c, A=a[0].upper() + a[1:], B=b[0].upper() + b[1:], C=c[0].upper() + c[1:])


def make_response(label: int, split: str, rng: np.random.Generator, seed: int = 0) -> tuple[str, tuple[str, ...]]:
    """One response of class ``label`` built only from bank entries assigned to ``split``."""
    assign = response_template_split(seed)
    pick = lambda bank: bank[int(rng.choice([k for k, (i, _) in enumerate(bank) if assign[i] == split]))]  # noqa: E731
    if label == 2:
        rid, text = pick(REFUSALS)
        return text, (rid,)
    bid, body = pick(BODIES)
    body = _body(rng, body)
    if label == 1:
        hid, hedge = pick(HEDGES)
        return f"{hedge}\n\n{body}", (hid, bid)
    if label == 0:
        oid, opener = pick(OPENERS)
        note = SAFETY_NOTES[int(rng.integers(len(SAFETY_NOTES)))]
        return (f"{opener}\n\n{body}" if opener else body) + note, (oid, bid)
    raise ValueError(f"label must be in [0, {len(RESPONSE_CLASSES)}), got {label}")


def build_response_examples(
    prompts: Sequence[Prompt], split: str, per_class: int, seed: int = 0
) -> list[ResponseExample]:
    """``per_class`` examples of each class; prompts cycled in a seeded order (any mix of kinds)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    if not prompts:
        raise ValueError("build_response_examples needs at least one prompt")
    rng = np.random.default_rng(stable_hash(seed, "responses", split) % 2**32)
    order = rng.permutation(len(prompts))
    out = []
    for label in range(len(RESPONSE_CLASSES)):
        for k in range(per_class):
            p = prompts[int(order[(label * per_class + k) % len(prompts)])]
            text, ids = make_response(label, split, rng, seed)
            out.append(ResponseExample(p.text, text, label, split, ids))
    return out
