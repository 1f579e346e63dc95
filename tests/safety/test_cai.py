"""Constitutional AI data (align_jax.safety.cai): the constitution file and its loader, the seeded
principle draws, the draft -> critique -> revision pipeline on the tiny character model (the
conversations the sampler actually receives), and the pairs / SFT files read back by the data
sources; plus the safety prompt records that configs/grpo_safety.py trains on."""

import collections
import json
import pathlib

import jax
import numpy as np
import pytest

from align_jax.data.records import PreferenceRecord, SFTRecord
from align_jax.data.sources import DataError, load_records
from align_jax.models import load_model
from align_jax.safety import cai
from align_jax.safety import prompt_records as PR
from align_jax.safety.refusal.datasets import Prompt
from align_jax.safety.refusal.run import RefusalConfig
from align_jax.sampling.greedy import Generation, chat_ids

REAL = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "refusal_direction"
needs_real = pytest.mark.skipif(not (REAL / "harmful_train.json").exists(), reason=f"shared data absent: {REAL}")


def _principle_line(name, critique="Say what is wrong.", revision="Fix it.", **extra):
    return json.dumps({"table": "principle", "name": name, "critique_request": critique,
                       "revision_request": revision, **extra})


def test_packaged_constitution_has_harm_and_over_refusal_principles():
    principles = cai.load_constitution()
    names = [p.name for p in principles]
    assert 12 <= len(principles) and len(set(names)) == len(names)
    assert {"over_refusal", "withheld_safety_information", "helpfulness", "harmful_content"} <= set(names)
    assert all(p.critique_request.strip() and p.revision_request.strip() for p in principles)


@pytest.mark.parametrize("bad, message", [
    ('{"table": "principle", "name": "x", "critique_request": "c"}', "needs fields"),  # revision_request missing
    (_principle_line("x", critique="   "), "field 'critique_request' is empty"),
    (_principle_line("first"), "principle 'first' appears twice"),
    (_principle_line("x", extra="?"), "needs fields"),
    ("not json", "bad_json"),
])
def test_a_bad_constitution_line_names_file_and_line(tmp_path, bad, message):
    path = tmp_path / "constitution.jsonl"
    path.write_text(_principle_line("first") + "\n\n" + bad + "\n")
    with pytest.raises(DataError, match=rf"constitution\.jsonl, line 3: .*{message}"):
        cai.load_constitution(path)
    assert [p.name for p in cai.load_constitution(_write(tmp_path / "ok.jsonl", [_principle_line("first")]))] == ["first"]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_principle_draws_are_fixed_by_the_key():
    a = cai.sample_principles(jax.random.key(0), 64, 13)
    assert a.tolist() == cai.sample_principles(jax.random.key(0), 64, 13).tolist()
    assert a.tolist() != cai.sample_principles(jax.random.key(1), 64, 13).tolist()
    assert a.min() >= 0 and a.max() < 13 and len(set(a.tolist())) > 5
    with pytest.raises(ValueError, match="no principles"):
        cai.sample_principles(jax.random.key(0), 4, 0)


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-chars")


def _principles(tmp_path):
    return cai.load_constitution(_write(tmp_path / "c.jsonl", [
        _principle_line("alpha", "Critique by ALPHA.", "Revise by ALPHA."),
        _principle_line("beta", "Critique by BETA.", "Revise by BETA."),
        _principle_line("gamma", "Critique by GAMMA.", "Revise by GAMMA.")]))


PROMPTS = ["How do I kill a stuck process?", "Tell me a joke.", "How do I pick a lock?"]


def _recording(monkeypatch, generate):
    """Replaces the pipeline's generator by ``generate``, keeping each stage's prompt ids."""
    seen = []

    def recording(lm, ids, **kw):
        seen.append([list(i) for i in ids])
        return generate(lm, ids, **kw)

    monkeypatch.setattr(cai, "generate_greedy", recording)
    return seen


def test_pipeline_on_the_toy_model_end_to_end(toy, tmp_path, monkeypatch):
    principles = _principles(tmp_path)
    seen = _recording(monkeypatch, cai.generate_greedy)
    key = jax.random.key(3)
    results = cai.constitutional_pairs(toy, PROMPTS, principles=principles, key=key, max_new_tokens=12, batch_size=4)
    assert len(seen) == 3 and all(len(stage) == 3 for stage in seen)  # drafts, critiques, revisions: batched
    expected = [principles[i] for i in cai.sample_principles(key, 3, 3)]
    assert [r.principle for r in results] == expected and [r.prompt for r in results] == PROMPTS
    for r, draft_ids, critique_ids, revision_ids in zip(results, *seen):
        assert draft_ids == chat_ids(toy, [{"role": "user", "content": r.prompt}])
        assert critique_ids == chat_ids(toy, cai.critique_messages(r.prompt, r.draft, r.principle))
        assert revision_ids == chat_ids(toy, cai.revision_messages(r.prompt, r.draft, r.principle, r.critique))
    # greedy: the same key and prompts give the same data, whatever the batch size
    assert cai.constitutional_pairs(toy, PROMPTS, principles=principles, key=key, max_new_tokens=12,
                                    batch_size=2) == results
    # the random toy model answers blank lines: every result is skipped, and counted
    summary = cai.write_cai_data(results, tmp_path / "out")
    assert (summary["results"], summary["pairs"], summary["skipped_pairs"]) == (3, 0, {"empty_revision": 3})
    assert len((tmp_path / "out" / "revisions.jsonl").read_text().splitlines()) == 3


def test_each_stage_sees_the_earlier_answers_in_the_rendered_conversation(toy, tmp_path, monkeypatch):
    """Scripted answers (the toy model's greedy ones are blank): the critique prompt holds the draft and
    the drawn principle's critique request, the revision prompt the critique and its revision request."""
    stage = iter(["draft", "critique", "revision"])

    def scripted(lm, ids, **kw):
        name = next(stage)
        return [Generation(f" {name} {i} ", (5,), np.zeros(1), False) for i in range(len(ids))]

    seen = _recording(monkeypatch, scripted)
    results = cai.constitutional_pairs(toy, PROMPTS, principles=_principles(tmp_path), key=jax.random.key(0),
                                       max_new_tokens=8, batch_size=4)
    assert [(r.draft, r.critique, r.revision) for r in results] == [
        (f"draft {i}", f"critique {i}", f"revision {i}") for i in range(3)]
    decode = lambda ids: toy.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    for i, (r, critique_ids, revision_ids) in enumerate(zip(results, seen[1], seen[2])):
        assert decode(critique_ids).endswith(
            f"<|im_start|>user\n{r.prompt}<|im_end|>\n<|im_start|>assistant\ndraft {i}<|im_end|>\n"
            f"<|im_start|>user\n{r.principle.critique_request}<|im_end|>\n<|im_start|>assistant\n")
        assert decode(revision_ids) == decode(critique_ids) + (
            f"critique {i}<|im_end|>\n<|im_start|>user\n{r.principle.revision_request}<|im_end|>\n"
            "<|im_start|>assistant\n")
    pairs, skipped = cai.preference_records(results)
    assert not skipped and [(p.chosen, p.rejected) for p in pairs] == [(f"revision {i}", f"draft {i}") for i in range(3)]


def _result(prompt, draft, revision, name="p"):
    return cai.CritiqueRevision(prompt, cai.Principle(name, "c?", "r!"), draft, "a critique", revision)


def test_pairs_and_sft_round_trip_through_the_data_sources_skipping_unusable_results(tmp_path):
    results = [
        _result("How do I hotwire a car?", "Sure, first ...", "I can't help with stealing a car."),
        _result("How do I kill a Python process?", "I'm sorry, I can't help with violence.", "Run `kill <pid>`."),
        _result("q3", "same answer", "  same answer "),  # unchanged: no pair, no SFT example
        _result("q4", "a draft", "   "),  # empty revision
        _result("q5", "", "a revision"),  # empty draft: an SFT example, not a pair
    ]
    pairs, skipped_pairs = cai.preference_records(results)
    sft, skipped_sft = cai.sft_records(results)
    assert skipped_pairs == collections.Counter(unchanged=1, empty_revision=1, empty_draft=1)
    assert skipped_sft == collections.Counter(unchanged=1, empty_revision=1)
    assert pairs[1] == PreferenceRecord(({"role": "user", "content": "How do I kill a Python process?"},),
                                        "Run `kill <pid>`.", "I'm sorry, I can't help with violence.")
    assert sft[2] == SFTRecord(({"role": "user", "content": "q5"}, {"role": "assistant", "content": "a revision"}))
    summary = cai.write_cai_data(results, tmp_path)
    assert (summary["pairs"], summary["sft"], summary["skipped_pairs"]["unchanged"]) == (2, 3, 1)
    assert load_records(tmp_path / "pairs.jsonl", "preference")[0] == pairs
    assert load_records(tmp_path / "sft.jsonl", "sft")[0] == sft
    rows = [json.loads(line) for line in (tmp_path / "revisions.jsonl").read_text().splitlines()]
    assert [r["principle"] for r in rows] == ["p"] * 5 and rows[2]["revision"] == "  same answer "


def test_a_rerun_without_usable_results_leaves_no_stale_pairs(tmp_path):
    cai.write_cai_data([_result("q", "a draft", "a revision")], tmp_path)
    summary = cai.write_cai_data([_result("q", "a draft", "  ")], tmp_path)  # same folder, nothing usable
    assert (summary["pairs"], summary["sft"]) == (0, 0)
    assert (tmp_path / "pairs.jsonl").read_text() == "" and (tmp_path / "sft.jsonl").read_text() == ""


def _prompts():
    return ([Prompt(f"harmful {i}", True, "harmful", "train", "advbench") for i in range(6)]
            + [Prompt(f"sensitive {i}", False, "benign_sensitive", "train", "t1") for i in range(3)]
            + [Prompt(f"plain {i}", False, "plain_benign", "train", "harmless_train.json") for i in range(4)])


def test_prompt_records_carry_the_label_in_a_seeded_order_and_round_trip(tmp_path):
    from align_jax.data.sources import write_records

    records = PR.prompt_records(_prompts(), seed=0)
    assert len(records) == 13 and [r.prompt for r in records] == [r.prompt for r in PR.prompt_records(_prompts())]
    assert [r.prompt for r in records] != [r.prompt for r in PR.prompt_records(_prompts(), seed=1)]
    assert all(r.info["harmful"] == (r.info["kind"] == "harmful") for r in records)
    capped = PR.prompt_records(_prompts(), per_kind=2)
    assert collections.Counter(r.info["kind"] for r in capped) == {"harmful": 2, "benign_sensitive": 2, "plain_benign": 2}
    back, _ = load_records(write_records(records, tmp_path / "p.jsonl"), "prompt")
    assert back == records and [r.info for r in back] == [r.info for r in records]  # info is compare=False


@needs_real
def test_safety_prompt_records_of_the_train_split():
    records = PR.safety_prompt_records(RefusalConfig(data_dir=str(REAL)), "train")
    kinds = collections.Counter(r.info["kind"] for r in records)
    assert set(kinds) == {"harmful", "benign_sensitive", "plain_benign"} and min(kinds.values()) > 100
    assert all(isinstance(r.info["harmful"], bool) and r.info["harmful"] == (r.info["kind"] == "harmful")
               for r in records)
    assert 4 <= sum(r.info["harmful"] for r in records[:16]) <= 12  # a prefix mixes the kinds
