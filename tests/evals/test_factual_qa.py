"""Factual QA set: size, facts spot-checked by hand, splits and the answer matcher."""

import collections
import re
from fractions import Fraction

import pytest

from align_jax.data.factual_qa import (
    CATEGORIES,
    FactItem,
    build_factual_qa,
    number_words,
    split_factual_qa,
)
from align_jax.evals.factual_qa import answer_matches, normalize_answer

ITEMS = build_factual_qa()
BY_ID = {it.id: it for it in ITEMS}


def test_size_categories_and_unique_ids_and_questions():
    counts = collections.Counter(it.category for it in ITEMS)
    assert 300 <= len(ITEMS) <= 1000
    assert set(counts) == set(CATEGORIES) and len(CATEGORIES) >= 5
    assert min(counts.values()) >= 20
    assert len({it.id for it in ITEMS}) == len(ITEMS)
    assert len({it.question for it in ITEMS}) == len(ITEMS)
    assert all(it.id.startswith(it.category + "/") and it.answer.strip() for it in ITEMS)


@pytest.mark.parametrize(
    "item_id, answer",
    [
        ("capital/australia", "Canberra"),
        ("capital/canada", "Ottawa"),
        ("capital/brazil", "Brasília"),
        ("capital/nigeria", "Abuja"),
        ("capital/turkey_turkiye", "Ankara"),
        ("element_symbol/tungsten", "W"),
        ("element_symbol/potassium", "K"),
        ("element_symbol/silver", "Ag"),
        ("atomic_number/gold", "79"),
        ("atomic_number/uranium", "92"),
        ("atomic_number/iron", "26"),
        ("planet/which_3", "Earth"),
        ("planet/which_7", "Uranus"),
        ("planet/position_neptune", "8"),
        ("planet/largest", "Jupiter"),
        ("author/pride_and_prejudice", "Jane Austen"),
        ("author/one_hundred_years_of_solitude", "Gabriel García Márquez"),
        ("unit_conversion/miles_to_feet_1", "5280"),
        ("unit_conversion/inches_to_centimeters_10", "25.4"),
        ("unit_conversion/days_to_hours_7", "168"),
        ("unit_conversion/miles_to_feet_20", "105600"),
        ("capital_country/france", "France"),
        ("capital_country/the_united_kingdom", "United Kingdom"),
        ("capital_country/turkey_turkiye", "Turkey"),
        ("us_state_capital/california", "Sacramento"),
        ("us_state_capital/new_york", "Albany"),
        ("us_state_capital/illinois", "Springfield"),
        ("us_state_capital/kentucky", "Frankfort"),
        ("element_name/tungsten", "tungsten"),
    ],
)
def test_spot_checked_facts(item_id, answer):
    assert BY_ID[item_id].answer == answer


# Written out independently of the module: symbols in atomic-number order, 1..38.
PERIODIC = ("H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn "
            "Ga Ge As Se Br Kr Rb Sr").split()


def test_element_symbols_agree_with_atomic_numbers():
    symbols = {it.id.split("/")[1]: it.answer for it in ITEMS if it.category == "element_symbol"}
    numbers = {it.id.split("/")[1]: int(it.answer) for it in ITEMS if it.category == "atomic_number"}
    assert symbols.keys() == numbers.keys()
    assert len(set(symbols.values())) == len(symbols) and len(set(numbers.values())) == len(numbers)
    for name, z in numbers.items():
        if z <= len(PERIODIC):
            assert PERIODIC[z - 1] == symbols[name], name


def test_arithmetic_answers_recomputed_from_the_question():
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b,
           "÷": lambda a, b: Fraction(a, b)}
    for it in (i for i in ITEMS if i.category == "arithmetic"):
        a, op, b = re.fullmatch(r"What is (\d+) (.) (\d+)\?", it.question).groups()
        assert Fraction(it.answer) == ops[op](int(a), int(b)), it


def test_reverse_questions_invert_their_forward_questions():
    capitals = {it.id.split("/")[1]: it.answer for it in ITEMS if it.category == "capital"}
    for it in (i for i in ITEMS if i.category == "capital_country"):
        assert it.question == f"Which country has {capitals[it.id.split('/')[1]]} as its capital?"
    assert BY_ID["capital_country/turkey_turkiye"].aliases == ("Türkiye",)
    assert answer_matches("Türkiye", BY_ID["capital_country/turkey_turkiye"])
    assert answer_matches("The UK.", BY_ID["capital_country/the_united_kingdom"])
    assert not answer_matches("North Korea", BY_ID["capital_country/south_korea"], mode="contains")
    for it in (i for i in ITEMS if i.category == "element_name"):
        symbol = BY_ID[f"element_symbol/{it.answer}"].answer
        assert it.question == f"Which chemical element has the symbol {symbol}?"
    assert len({it.id for it in ITEMS if it.category == "us_state_capital"}) == 50


def test_planet_order_items_are_consistent():
    which = {BY_ID[f"planet/which_{k}"].answer: k for k in range(1, 9)}
    assert list(which) == ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
    for planet, k in which.items():
        assert BY_ID[f"planet/position_{planet.lower()}"].answer == str(k)


# --- splits ------------------------------------------------------------------------------

def test_splits_are_disjoint_complete_deterministic_and_stratified():
    splits = split_factual_qa(seed=0)
    ids = {name: {it.id for it in items} for name, items in splits.items()}
    assert set(splits) == {"train", "validation", "test"}
    assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"])
    assert not (ids["validation"] & ids["test"])
    assert set.union(*ids.values()) == {it.id for it in ITEMS}
    questions = [{it.question for it in items} for items in splits.values()]
    assert not (questions[0] & questions[1] or questions[0] & questions[2] or questions[1] & questions[2])

    assert split_factual_qa(seed=0) == splits
    assert split_factual_qa(list(reversed(ITEMS)), seed=0) == splits  # order-independent
    assert split_factual_qa(seed=1)["test"] != splits["test"]
    for reverse, forward in (("capital_country", "capital"), ("element_name", "element_symbol")):
        for name, items in splits.items():  # both directions of a fact share a split
            keys = {cat: {it.id.split("/", 1)[1] for it in items if it.category == cat} for cat in (reverse, forward)}
            assert keys[reverse] == keys[forward] and keys[reverse], (name, reverse)

    total = collections.Counter(it.category for it in ITEMS)
    for name, frac in (("train", 0.6), ("validation", 0.2), ("test", 0.2)):
        got = collections.Counter(it.category for it in splits[name])
        for category, n in total.items():
            assert abs(got[category] - frac * n) <= 1, (name, category)


def test_split_rejects_bad_fractions_and_duplicate_ids():
    with pytest.raises(ValueError, match="fractions"):
        split_factual_qa(seed=0, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="unique ids"):
        split_factual_qa([ITEMS[0], ITEMS[0]])


# --- matching ----------------------------------------------------------------------------

def test_every_item_matches_its_answer_and_aliases_in_varied_forms():
    for it in ITEMS:
        for ref in it.references:
            for form in (ref, ref.upper(), f"  {ref}. ", f"The {ref}!"):
                assert answer_matches(form, it), (it.id, form)
        assert answer_matches(f"I think the answer is {it.answer}.", it, mode="contains"), it.id


def test_references_of_different_answers_do_not_collide_within_a_category():
    seen: dict[tuple[str, str], str] = {}
    for it in ITEMS:
        for ref in it.references:
            key = (it.category, normalize_answer(ref))
            assert seen.setdefault(key, it.answer) == it.answer, (key, it.answer, seen[key])


def test_matcher_rejects_wrong_answers():
    paris = FactItem("capital/x", "capital", "Capital of France?", "Paris")
    assert not answer_matches("Rome", paris)
    assert not answer_matches("Paris, Texas", paris)  # exact mode
    assert answer_matches("It is Paris, I believe", paris, mode="contains")
    assert not answer_matches("Parisian", paris, mode="contains")  # whole words only
    num = FactItem("unit/x", "unit_conversion", "cm in 1.4 m?", "3.5")
    assert answer_matches("3.50", num) and not answer_matches("35", num)
    big = FactItem("unit/y", "unit_conversion", "ft in 5 miles?", "26400")
    assert answer_matches("26,400", big) and answer_matches("26400.0 feet", big, mode="contains")
    assert not answer_matches("264", big, mode="contains")
    with pytest.raises(ValueError, match="unknown match mode"):
        answer_matches("Paris", paris, mode="fuzzy")


def test_normalize_answer_and_number_words():
    assert normalize_answer("The  Washington, D.C.!") == "washington d c"
    assert normalize_answer("Bogotá") == "bogota"
    assert normalize_answer("1,234,567.5") == "1234567.5"
    assert number_words(0) == "zero" and number_words(42) == "forty-two"
    assert number_words(105) == "one hundred five" and number_words(990) == "nine hundred ninety"
    assert number_words(1000) is None


def test_signed_numbers_keep_their_sign():
    neg = FactItem("arithmetic/x", "arithmetic", "What is 3 - 22?", "-19")
    assert answer_matches("-19", neg) and not answer_matches("19", neg)
    assert normalize_answer("well-known 3-5") == "well known 3 5"
    assert all(not it.answer.startswith("-") for it in ITEMS if it.category == "arithmetic")
