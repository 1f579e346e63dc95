"""Sources on small hand-written files: formats, field mapping, errors by line, HH-RLHF."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from align_jax.data import hh_rlhf, sources
from align_jax.data.records import PreferenceRecord, RankedRecord, RecordError, SFTRecord, UnpairedRecord

HH_FILE = Path(os.environ.get("ALIGN_JAX_DATA", Path(__file__).parents[3] / "shared" / "data")) / "hh_rlhf" / "harmless-base-test.jsonl.gz"
MAPPING = {"prompt": "question", "chosen": "answer_good", "rejected": "answer_bad"}
PAIRS_JSONL = (
    '{"question": "What is 2+2?", "answer_good": "4", "answer_bad": "5"}\n'
    "\n"
    '{"question": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],'
    ' "answer_good": "Hello!", "answer_bad": "Go away."}\n'
)
USER = lambda text: {"role": "user", "content": text}  # noqa: E731


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_with_field_mapping(tmp_path):
    recs, stats = sources.load_records(write(tmp_path / "p.jsonl", PAIRS_JSONL), "preference", MAPPING)
    assert recs == [
        PreferenceRecord((USER("What is 2+2?"),), "4", "5"),
        PreferenceRecord(({"role": "system", "content": "Be brief."}, USER("Hi")), "Hello!", "Go away."),
    ]
    assert (stats.rows, stats.records, stats.num_skipped) == (2, 2, 0)


def test_gzip_jsonl_equals_plain(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(PAIRS_JSONL)
    plain, _ = sources.load_records(write(tmp_path / "p.jsonl", PAIRS_JSONL), "preference", MAPPING)
    assert sources.load_records(path, "preference", MAPPING)[0] == plain


def test_csv_ranked_and_unpaired(tmp_path):
    ranked = write(tmp_path / "r.csv", 'prompt,responses,scores\nWhy?,"[""a"", ""b""]","[1, 0.5]"\n')
    assert sources.load_records(ranked, "ranked")[0] == [RankedRecord((USER("Why?"),), ("a", "b"), (1.0, 0.5))]
    unpaired = write(tmp_path / "u.csv", "q,r,ok\nx,good,true\ny,bad,0\n")
    recs, _ = sources.load_records(unpaired, "unpaired", {"prompt": "q", "response": "r", "desirable": "ok"})
    assert recs == [UnpairedRecord((USER("x"),), "good", True), UnpairedRecord((USER("y"),), "bad", False)]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"prompt": ["p1", "p2"], "responses": [["a", "b"], ["c", "d", "e"]], "scores": [[1.0, 2.0], [3.0, 2.0, 1.0]]})
    pq.write_table(table, tmp_path / "r.parquet")
    recs, _ = sources.load_records(tmp_path / "r.parquet", "ranked")
    assert recs[1] == RankedRecord((USER("p2"),), ("c", "d", "e"), (3.0, 2.0, 1.0))


def test_json_list_sft(tmp_path):
    conv = [{"messages": [USER("hi"), {"role": "assistant", "content": "hello"}]}]
    recs, _ = sources.load_records(write(tmp_path / "s.json", json.dumps(conv)), "sft")
    assert recs == [SFTRecord((USER("hi"), {"role": "assistant", "content": "hello"}))]


BAD_ROWS = [  # (line text, reason)
    ('{"question": "q", "answer_good": "a"', "bad_json"),
    ('{"question": "q", "answer_good": "a"}', "missing_field"),
    ('{"question": "q", "answer_good": 3, "answer_bad": "b"}', "wrong_type"),
    ('{"question": "  ", "answer_good": "a", "answer_bad": "b"}', "empty_text"),
]


@pytest.mark.parametrize("bad,reason", BAD_ROWS)
def test_bad_row_raises_with_file_and_line(tmp_path, bad, reason):
    good = '{"question": "q", "answer_good": "a", "answer_bad": "b"}'
    path = write(tmp_path / "p.jsonl", "\n".join([good, good, bad, good]) + "\n")
    with pytest.raises(sources.DataError) as e:
        sources.load_records(path, "preference", MAPPING)
    assert f"{path}, line 3: {reason}" in str(e.value)


def test_csv_error_line(tmp_path):
    path = write(tmp_path / "u.csv", "prompt,response,desirable\nx,a,true\ny,b,maybe\n")
    with pytest.raises(sources.DataError, match=r"u\.csv, line 3: wrong_type"):
        sources.load_records(path, "unpaired")


def test_skip_and_count(tmp_path):
    good = '{"question": "q", "answer_good": "a", "answer_bad": "b"}'
    path = write(tmp_path / "p.jsonl", "\n".join([good] + [b for b, _ in BAD_ROWS] + [BAD_ROWS[0][0], good]) + "\n")
    recs, stats = sources.load_records(path, "preference", MAPPING, on_error="skip")
    assert len(recs) == 2 and stats.rows == 7 and stats.records == 2
    assert dict(stats.skipped) == {"bad_json": 2, "missing_field": 1, "wrong_type": 1, "empty_text": 1}
    assert stats.examples[0].startswith(f"{path}, line 2: bad_json")


def test_empty_dataset_names_the_file(tmp_path):
    empty = write(tmp_path / "empty.jsonl", "\n")
    with pytest.raises(sources.DataError, match="empty.jsonl: no preference records"):
        sources.load_records(empty, "preference")
    only_bad = write(tmp_path / "bad.jsonl", "{oops\n")
    with pytest.raises(sources.DataError, match=r"bad.jsonl: no preference records .*bad_json"):
        sources.load_records(only_bad, "preference", on_error="skip")


def test_config_errors(tmp_path):
    path = write(tmp_path / "p.jsonl", PAIRS_JSONL)
    with pytest.raises(ValueError, match="unknown keys"):
        sources.load_records(path, "preference", {"answer": "x"})
    with pytest.raises(ValueError, match="on_error"):
        sources.load_records(path, "preference", MAPPING, on_error="ignore")
    with pytest.raises(sources.DataError, match="format"):
        sources.load_records(write(tmp_path / "p.txt", "x"), "preference")


# ---------------------------------------------------------------------- HH-RLHF

def test_hh_split_hand_written():
    chosen = "\n\nHuman: Hi there\n\nAssistant: Hello.\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour and water."
    rejected = "\n\nHuman: Hi there\n\nAssistant: Hello.\n\nHuman: How do I bake bread?\n\nAssistant:  No idea."
    r = hh_rlhf.pair_from_transcripts(chosen, rejected)
    assert r.prompt == (
        USER("Hi there"), {"role": "assistant", "content": "Hello."}, USER("How do I bake bread?"),
    )
    assert (r.chosen, r.rejected) == ("Mix flour and water.", " No idea.")
    assert hh_rlhf.transcript(r.prompt) + "\n\nAssistant: " + r.rejected == rejected


@pytest.mark.parametrize(
    "chosen,rejected,reason",
    [
        ("\n\nHuman: A\n\nAssistant: x", "\n\nHuman: B\n\nAssistant: y", "hh_prefix_mismatch"),
        ("\n\nHuman: A\n\nAssistant: x\n\nHuman: C\n\nAssistant: z", "\n\nHuman: A\n\nAssistant: y", "hh_prefix_mismatch"),
        ("\n\nHuman: A\n\nAssistant: ", "\n\nHuman: A\n\nAssistant: y", "empty_text"),
        ("Human: A\n\nAssistant: x", "Human: A\n\nAssistant: y", "hh_format"),
    ],
)
def test_hh_errors(chosen, rejected, reason):
    with pytest.raises(RecordError) as e:
        hh_rlhf.pair_from_transcripts(chosen, rejected)
    assert e.value.reason == reason


@pytest.mark.skipif(not HH_FILE.is_file(), reason=f"HH-RLHF test split not found at {HH_FILE}")
def test_hh_real_file():
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    assert len(raw) == 2312
    recs, stats = sources.load_records(HH_FILE, "hh_rlhf", on_error="skip")
    # 2,312 rows: 4 have an empty chosen reply, 5 continue the dialogue on one side only.
    assert stats.rows == 2312 and len(recs) == 2303
    assert dict(stats.skipped) == {"empty_text": 4, "hh_prefix_mismatch": 5}
    kept = [row for row in raw if row["chosen"][:row["chosen"].rfind("\n\nAssistant:")] ==
            row["rejected"][:row["rejected"].rfind("\n\nAssistant:")] and row["chosen"].rstrip()[-10:] != "Assistant:"]
    assert len(kept) == 2303
    for row, r in zip(kept, recs):
        prompt = hh_rlhf.transcript(r.prompt)
        assert prompt + "\n\nAssistant: " + r.chosen == row["chosen"]
        assert prompt + "\n\nAssistant: " + r.rejected == row["rejected"]
    with pytest.raises(sources.DataError, match=r"line 87: empty_text"):
        sources.load_records(HH_FILE, "hh_rlhf")


def test_group_field_keeps_the_named_groups_and_names_what_is_missing(tmp_path):
    """MaxMin-RLHF records carry a group id: rows of other groups are counted, absent groups and rows
    without the field are errors naming the file (and line)."""
    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b", "group": "AB"[i % 2]} for i in range(5)]
    path = tmp_path / "groups.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, stats = sources.load_records(path, "preference", group_field="group", groups=["B"])
    assert [r.prompt[-1]["content"] for r in records] == ["q1", "q3"] and stats.skipped["other_group"] == 3
    everything, _ = sources.load_records(path, "preference", group_field="group")
    assert len(everything) == 5
    with pytest.raises(sources.DataError, match=r"groups.jsonl: group\(s\) \['C'\] absent from field 'group' "
                                                r"\(groups present: \{'A': 3, 'B': 2\}\)"):
        sources.load_records(path, "preference", group_field="group", groups=["A", "C"])
    with pytest.raises(sources.DataError, match=r"groups.jsonl, line 1: the row has no group field 'annotator'"):
        sources.load_records(path, "preference", group_field="annotator")
    with pytest.raises(ValueError, match="without a group_field"):
        sources.load_records(path, "preference", groups=["A"])


def test_write_records_is_read_back_by_load_records(tmp_path):
    from align_jax.data.records import PromptRecord

    prompts = [PromptRecord("Is this harmful?", {"harmful": False, "kind": "plain_benign"}),
               PromptRecord([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], {"id": 3})]
    back, _ = sources.load_records(sources.write_records(prompts, tmp_path / "a" / "p.jsonl"), "prompt")
    assert back == prompts and [r.info for r in back] == [r.info for r in prompts]  # info columns -> info
    pairs = [PreferenceRecord("q", "good", "bad")]
    assert sources.load_records(sources.write_records(pairs, tmp_path / "pairs.jsonl"), "preference")[0] == pairs
    with pytest.raises(ValueError, match="one record kind a file"):
        sources.write_records(pairs + [SFTRecord([{"role": "assistant", "content": "x"}])], tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match=r"column names \['prompt'\]"):
        sources.write_records([PromptRecord("q", {"prompt": "clash"})], tmp_path / "y.jsonl")
