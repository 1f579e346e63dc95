"""Generated multi-constraint prompts: splits, determinism, verifier compatibility, rewards."""

import itertools
import re

import pytest

from align_jax.instructions import (
    SPLITS,
    VERIFIERS,
    InstructionExample,
    build_verifier,
    evaluate_responses,
    generate,
    preference_pairs,
    reward,
)
from align_jax.instructions import constraints, tasks

N = 300


@pytest.fixture(scope="module")
def generated():
    return {split: generate(split, N, seed=0) for split in SPLITS}


def _pairs(example):
    return {frozenset(p) for p in itertools.combinations(example.instruction_id_list, 2)}


def _mentions(prompt, topic):
    return re.search(r"\b" + re.escape(topic.lower()) + r"\b", prompt.lower()) is not None


def test_constraint_tables_are_consistent():
    assert set(constraints.SPECS) <= set(VERIFIERS.names())
    assert all(a in constraints.SPECS and b in constraints.SPECS for a, b in constraints.CONFLICTS)
    seen, unseen = set(constraints.SEEN_PAIRS), set(constraints.UNSEEN_PAIRS)
    assert unseen and not seen & unseen
    assert all(constraints.compatible(p) for p in seen | unseen)
    # every constraint type is trained in some pair
    assert {i for p in seen for i in p} == set(constraints.CONSTRAINT_IDS)
    assert not set(tasks.SEEN_TOPICS) & set(tasks.UNSEEN_TOPICS)
    assert len(tasks.TASK_TEMPLATES) >= 20


def test_deterministic_by_seed():
    for split in SPLITS:
        assert generate(split, 20, seed=7) == generate(split, 20, seed=7)
        assert generate(split, 20, seed=7) != generate(split, 20, seed=8)
    assert generate("train", 20, seed=0) != generate("in_distribution", 20, seed=0)
    with pytest.raises(ValueError, match="unknown split"):
        generate("test", 1)


def test_examples_have_ifeval_structure_and_valid_kwargs(generated):
    for split, examples in generated.items():
        assert len({e.key for e in examples}) == N
        for example in examples:
            assert set(example.to_json()) == {"key", "prompt", "instruction_id_list", "kwargs"}
            assert constraints.compatible(example.instruction_id_list)
            for instruction_id, kwargs in zip(example.instruction_id_list, example.kwargs):
                build_verifier(instruction_id, kwargs)  # accepted by its verifier
                assert constraints.SPECS[instruction_id].phrase(kwargs) in example.prompt


def test_constraint_counts_per_split(generated):
    for split in ("train", "in_distribution", "ood_unseen_topics"):
        counts = {len(e.instruction_id_list) for e in generated[split]}
        assert counts == {1, 2}, split
    assert {len(e.instruction_id_list) for e in generated["ood_unseen_combinations"]} == {2}
    assert {len(e.instruction_id_list) for e in generated["ood_more_constraints"]} == {3, 4}


def test_unseen_combinations_never_occur_in_training(generated):
    unseen = {frozenset(p) for p in constraints.UNSEEN_PAIRS}
    train_pairs = set().union(*(_pairs(e) for s in ("train", "in_distribution", "ood_unseen_topics") for e in generated[s]))
    ood_pairs = set().union(*(_pairs(e) for e in generated["ood_unseen_combinations"]))
    assert ood_pairs <= unseen
    assert not train_pairs & ood_pairs
    assert len(ood_pairs) > 10  # the split actually covers many unseen pairs


def test_unseen_topics_split_uses_only_unseen_topics(generated):
    for split, examples in generated.items():
        for example in examples:
            seen = [t for t in tasks.SEEN_TOPICS if _mentions(example.prompt, t)]
            unseen = [t for t in tasks.UNSEEN_TOPICS if _mentions(example.prompt, t)]
            if split == "ood_unseen_topics":
                assert unseen and not seen, example.prompt
            else:
                assert seen and not unseen, example.prompt


def test_repeat_prompt_repeats_the_request_before_it():
    example = next(
        e for e in generate("train", 2000, seed=1) if "combination:repeat_prompt" in e.instruction_id_list
    )
    assert example.instruction_id_list[-1] == "combination:repeat_prompt"
    request = example.kwargs[-1]["prompt_to_repeat"]
    assert request and example.prompt.startswith(request)
    assert reward(example, request + "\nHere is my answer.") > reward(example, "Here is my answer.")


# --- rewards and preference pairs --------------------------------------------------------

EXAMPLE = InstructionExample(
    "k", "Write a poem about coffee. Do not use any commas. Wrap your entire response in double quotation marks.",
    ("punctuation:no_comma", "startend:quotation"), ({}, {}),
)


@pytest.mark.parametrize(
    "response,expected",
    [('"Dark and warm."', 1.0), ("Dark and warm.", 0.5), ('"Dark, warm."', 0.5), ("Dark, warm.", 0.0), ("", 0.0)],
)
def test_reward_is_fraction_of_constraints_followed(response, expected):
    assert reward(EXAMPLE, response) == expected


def test_preference_pairs_prefer_more_constraints_and_drop_ties():
    responses = ['"Dark and warm."', "Dark and warm.", '"Dark, warm."', "Dark, warm."]
    pairs = preference_pairs(EXAMPLE, responses)
    assert len(pairs) == 5  # 6 pairs minus the 0.5 vs 0.5 tie
    assert all(p.chosen_reward > p.rejected_reward for p in pairs)
    assert all(p.prompt == EXAMPLE.prompt for p in pairs)
    assert {(p.chosen, p.rejected) for p in pairs if p.chosen_reward == 1.0} == {
        ('"Dark and warm."', r) for r in responses[1:]
    }
    assert preference_pairs(EXAMPLE, ["same", "same"]) == []


def test_generated_examples_are_scored_by_the_ifeval_evaluator(generated):
    examples = generated["ood_more_constraints"][:20]
    report = evaluate_responses(examples, [e.prompt for e in examples])
    assert report.num_instructions == sum(len(e.instruction_id_list) for e in examples)
    assert 0.0 <= report.instruction_level_strict <= report.instruction_level_loose <= 1.0
