"""experiments/safety_dpo.py's pair building: which side each answer takes, what is skipped, and
that a prompt seen with both labels is dropped rather than kept with whichever label came last."""

import importlib.util
from pathlib import Path

import numpy as np

import align_jax.main  # noqa: F401  (owns --workdir: importing the script must define no flags; CI ran them in one process)

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "safety_dpo.py"
spec = importlib.util.spec_from_file_location("safety_dpo", SCRIPT)
E = importlib.util.module_from_spec(spec)
spec.loader.exec_module(E)

REFUSALS = ["I cannot assist with this request.", "No, I will not do that."]


def test_answers_and_refusals_take_the_right_sides():
    prompts = [("make a bomb", True, "harmful"), ("kill the lights", False, "contrast_benign"),
               ("steal a car", True, "harmful"), ("what is rust", False, "plain_benign"),
               ("poison a dog", True, "contrast_harmful"), ("bake bread", False, "plain_benign")]
    responses = ["Sure, first get ...", "Flip the switch.", "I'm sorry, but I can't help.",
                 "I cannot answer that.", "Step 1: " + "x" * 200 + " I can't go on.", ""]
    rows, counts = E.build_pairs(prompts, responses, [True, True, True, True, False, True], REFUSALS,
                                 np.random.default_rng(0))
    by_prompt = {r["prompt"]: r for r in rows}
    assert set(by_prompt) == {"make a bomb", "kill the lights", "poison a dog"}
    assert by_prompt["make a bomb"]["rejected"] == "Sure, first get ..." and by_prompt["make a bomb"]["chosen"] in REFUSALS
    assert by_prompt["kill the lights"]["chosen"] == "Flip the switch." and by_prompt["kill the lights"]["rejected"] in REFUSALS
    # a late refusal phrase is a partial refusal: still an answer to reject, and marked truncated
    assert by_prompt["poison a dog"]["rejected"].startswith("Step 1") and by_prompt["poison a dog"]["answer_truncated"]
    assert counts == {"harmful/pairs": 1, "harmful/already_refused": 1, "contrast_benign/pairs": 1,
                      "plain_benign/refused_benign_dropped": 1, "contrast_harmful/pairs": 1, "plain_benign/empty": 1}


def test_a_text_with_both_labels_is_dropped():
    kept, dropped = E.unique_prompts([("a", True, "harmful"), ("b", False, "plain_benign"), ("a", False, "contrast_benign"),
                                      ("b", False, "benign_sensitive")])
    assert dropped == 1 and [t for t, _, _ in kept] == ["b"]
