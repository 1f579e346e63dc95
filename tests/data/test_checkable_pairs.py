"""Offline verifiable preference pairs: verifier separation, splits, determinism, JSONL."""

import collections

import pytest

from align_jax.data import checkable_pairs as cp
from align_jax.data.factual_qa import build_factual_qa
from align_jax.data.records import PreferenceRecord
from align_jax.data.sources import SourceConfig, load_source
from align_jax.evals.factual_qa import answer_matches
from align_jax.instructions import check, evaluate_responses

FACTS = {f.id: f for f in build_factual_qa()}


@pytest.fixture(scope="module")
def splits():
    return {s: cp.build_checkable_pairs(s) for s in cp.SPLITS}


def test_every_chosen_passes_and_every_rejected_fails(splits):
    for pairs in splits.values():
        for p in pairs:
            assert check(p.instruction_id, p.chosen, p.kwargs), p
            assert not check(p.instruction_id, p.rejected, p.kwargs), p


def test_same_verdicts_through_the_instruction_example(splits):
    pairs = splits["test"] + splits["test_ood"]
    examples = [p.example for p in pairs]
    assert evaluate_responses(examples, [p.chosen for p in pairs]).prompt_level_strict == 1.0
    assert evaluate_responses(examples, [p.rejected for p in pairs]).prompt_level_strict == 0.0


def test_both_replies_state_the_answer(splits):
    for p in (p for pairs in splits.values() for p in pairs):
        fact = FACTS[p.fact_id]
        for reply in (p.chosen, p.rejected):
            assert answer_matches(reply, fact, mode="contains"), (reply, fact)


def test_splits_are_disjoint_by_fact_and_ood_constraints_are_held_out(splits):
    facts = {s: {p.fact_id for p in pairs} for s, pairs in splits.items()}
    assert not facts["train"] & facts["test"]
    assert not facts["train"] & facts["validation"]
    assert not facts["validation"] & facts["test"]
    assert facts["test_ood"] <= facts["test"]
    train_ids = {p.instruction_id for p in splits["train"]}
    assert train_ids == set(cp.TRAIN_CONSTRAINTS) and len(train_ids) >= 8
    assert {p.instruction_id for p in splits["test_ood"]} == set(cp.OOD_CONSTRAINTS)
    assert not train_ids & set(cp.OOD_CONSTRAINTS)
    # a different shuffling seed must not move facts across splits
    other = {p.fact_id for p in cp.build_checkable_pairs("train", seed=7)}
    assert other == facts["train"]


def test_each_split_is_balanced_and_prompts_carry_question_and_instruction(splits):
    counts = collections.Counter(p.instruction_id for p in splits["train"])
    assert len(set(counts.values())) == 1
    for p in splits["train"][:50]:
        assert p.prompt.startswith(FACTS[p.fact_id].question + " ")
        assert p.chosen != p.rejected
    assert len({p.key for p in splits["train"]}) == len(splits["train"])


def test_determinism_by_seed():
    a = cp.build_checkable_pairs("train", seed=3, max_pairs=200)
    b = cp.build_checkable_pairs("train", seed=3, max_pairs=200)
    c = cp.build_checkable_pairs("train", seed=4, max_pairs=200)
    assert a == b
    assert [p.key for p in a] != [p.key for p in c]
    assert len(a) == 200 and cp.build_checkable_pairs("train", seed=3, max_pairs=0) == []


def test_unseparated_pair_raises():
    pair = cp.build_checkable_pairs("test", max_pairs=1)[0]
    bad = cp.CheckablePair(**{**pair.__dict__, "rejected": pair.chosen})
    with pytest.raises(cp.CheckablePairError, match="not separated"):
        cp.verify(bad)
    with pytest.raises(ValueError, match="unknown split"):
        cp.build_checkable_pairs("dev")


def test_jsonl_round_trip(tmp_path, splits):
    pairs = splits["test"][:40] + splits["test_ood"][:10]
    path = tmp_path / "pairs.jsonl"
    cp.write_jsonl(pairs, path)
    assert cp.read_jsonl(path) == pairs
    records, stats = load_source(SourceConfig(str(path), "preference"))
    assert stats.records == len(pairs) and stats.num_skipped == 0
    assert all(isinstance(r, PreferenceRecord) for r in records)
    assert records == [p.record for p in pairs]
