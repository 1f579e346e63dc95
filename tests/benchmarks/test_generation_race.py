"""benchmarks/generation_race.py without starting a process: each child gets one side of one row,
and the merge takes medians over processes per side, one shared peak, the ratio and each side's own
peak RSS. (The race itself takes about half an hour: it is run by hand, see benchmarks/README.md.)"""

import math

import pytest

from bench_scripts import load_script


@pytest.fixture(scope="module")
def race():
    return load_script("generation_race")


VALUES = dict(runs_per_process=2, prompt_len=64, new_tokens=128, rollout_new_tokens=96)


def test_child_runs_one_side_of_one_row(race, tmp_path):
    args = race.child_args("64", "ours", tmp_path / "o.json", VALUES)
    assert args[:2] == ["-m", "benchmarks.generation"]
    assert {"--batch_sizes=64", "--norollout", "--nohf", "--repeats=2", "--rollout_new_tokens=96"} <= set(args)
    args = race.child_args("rollout", "hf", tmp_path / "h.json", VALUES)
    assert {"--batch_sizes=", "--rollout", "--noours"} <= set(args) and "--nohf" not in args


def _child(side, batch, rate, peak, rss, busy=False):
    nan = float("nan")
    row = dict(batch=batch, ours_tok_s=rate if side == "ours" else nan, hf_tok_s=rate if side == "hf" else nan,
               ours_first_call_s=5.0 if side == "ours" else None, other_cores=0.01, busy_machine=busy)
    return dict(side=side, params=100, matmul_peak_flops=peak, peak_rss_process_mib=rss, rows=[row])


def test_merge_takes_medians_per_side_one_peak_and_each_sides_rss(race):
    children = [_child("ours", 64, 300.0, 1000.0, 1900), _child("hf", 64, 200.0, 2000.0, 1500),
                _child("ours", 64, 280.0, 1000.0, 2000), _child("hf", 64, 150.0, 1000.0, 1400, busy=True),
                _child("ours", 64, 320.0, 1000.0, 1950), _child("hf", 64, 190.0, 1000.0, 1450),
                _child("ours", "rollout", 250.0, 1000.0, 2100), _child("hf", "rollout", float("nan"), 1000.0, 1)]
    merged = race.merge(children)
    assert merged["peak_used"] == 2000.0
    b64 = merged["rows"]["64"]
    assert b64["ours"]["tok_s"] == 300.0 and b64["ours"]["run_tok_s"] == [300.0, 280.0, 320.0]
    assert b64["hf"]["tok_s"] == 190.0 and (b64["hf"]["tok_s_min"], b64["hf"]["tok_s_max"]) == (150.0, 200.0)
    assert b64["ratio"] == pytest.approx(300 / 190)
    assert b64["ours"]["compute_fraction"] == pytest.approx(300 * 2 * 100 / 2000)
    assert (b64["ours"]["peak_rss_process_mib"], b64["hf"]["peak_rss_process_mib"]) == (2000, 1500)
    assert b64["hf"]["busy_machine"] and not b64["ours"]["busy_machine"]
    assert b64["ours"]["first_call_s"] == [5.0] * 3 and b64["hf"]["first_call_s"] is None
    assert "ratio" not in merged["rows"]["rollout"] and "hf" not in merged["rows"]["rollout"]  # its only run: NaN
    table = race.markdown(merged)
    assert "| b64 | 300.0 (280.0 - 320.0) | 190.0 (150.0 - 200.0) | 1.58x |" in table
    assert "| rollout 8x8 | 250.0 (250.0 - 250.0) | - | - |" in table
    assert not any(math.isnan(r["tok_s"]) for row in merged["rows"].values() for k, r in row.items() if k != "ratio")
