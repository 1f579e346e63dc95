"""benchmarks/dpo_race.py without starting a process: the running order alternates rows, and the
merge takes medians over processes, one shared peak, ratios against TRL's default and best rows, and
each row's largest peak RSS. (The race itself starts a process per row and round and takes about
half an hour: it is run by hand, see benchmarks/README.md.)"""

import pytest

from bench_scripts import load_script


@pytest.fixture(scope="module")
def race():
    return load_script("dpo_race")


def test_schedule_alternates_rows_round_by_round(race):
    assert race.schedule(["ours", "trl"], 3) == [(0, "ours"), (0, "trl"), (1, "ours"), (1, "trl"),
                                                 (2, "ours"), (2, "trl")]
    assert race.framework_of("trl_precomputed") == "trl" and race.framework_of("packed") == "align_jax"


def _row(row, tps, steps, other=0.01, busy=False):
    return dict(row=row, tokens_per_s=tps, step_s=steps, model_flops_per_s=tps * 1e9, computed_flops_per_s=tps * 2e9,
                counted_tokens_per_step=1000, computed_tokens_per_step=1200, first_call_s=9.0,
                other_cores=other, busy_machine=busy)


def _child(row, tps, steps, peak, rss, other=0.01, busy=False):
    """A dpo_step JSON of a process that ran ``row``, plus a full row of another variant (as a process
    running several would report) that the merge must not count for this one."""
    foreign = _row("trl" if row != "trl" else "packed", 1e6, [1e-3])
    return dict(row=row, matmul_peak_flops={"jax_start": peak, "jax_end": peak / 2}, peak_rss_process_mib=rss,
                results={"fixed": [_row(row, tps, steps, other, busy), foreign]})


def test_merge_takes_medians_one_peak_and_both_trl_ratios(race):
    children = [
        _child("ours", 300.0, [3.0, 3.2], 100e9, 8000),
        _child("trl", 100.0, [9.0, 9.5], 150e9, 12000),
        _child("trl_precomputed", 150.0, [6.0], 120e9, 11000),
        _child("ours", 200.0, [4.0], 100e9, 8500, busy=True),
        _child("trl", 110.0, [8.0], 100e9, 12500),
        _child("trl_precomputed", 140.0, [7.0], 100e9, 10000),
        _child("ours", 250.0, [3.5], 100e9, 8200),
    ]
    merged = race.merge(children)
    assert merged["peak_used"] == 150e9  # the largest any process measured
    fixed = merged["workloads"]["fixed"]
    assert set(fixed) == {"ours", "trl", "trl_precomputed"}  # "packed" only ever came from foreign rows
    assert fixed["trl"]["processes"] == 2  # not the foreign trl rows of the other processes
    ours, trl, pre = fixed["ours"], fixed["trl"], fixed["trl_precomputed"]
    assert ours["processes"] == 3 and ours["run_tokens_per_s"] == [300.0, 200.0, 250.0]
    assert ours["tokens_per_s"] == 250.0 and (ours["tokens_per_s_min"], ours["tokens_per_s_max"]) == (200.0, 300.0)
    assert ours["spread"] == pytest.approx(100 / 250)
    assert ours["step_s_median"] == pytest.approx(3.35)  # over every timed step: 3.0, 3.2, 4.0, 3.5
    assert ours["mfu"] == pytest.approx(250e9 / 150e9) and ours["hardware_utilisation"] == pytest.approx(500e9 / 150e9)
    assert trl["tokens_per_s"] == 105.0 and pre["tokens_per_s"] == 145.0
    assert ours["vs_trl"] == pytest.approx(250 / 105) and ours["vs_best_trl"] == pytest.approx(250 / 145)
    assert pre["vs_best_trl"] == 1.0
    assert (ours["peak_rss_process_mib"], trl["peak_rss_process_mib"]) == (8500, 12500)
    assert ours["busy_machine"] and not trl["busy_machine"]
    table = race.markdown(merged, "fp32")
    assert "| fixed | ours | 250.0 | 200.0 - 300.0 | 2.38x | 1.72x |" in table and "BUSY" in table


def test_child_arguments_name_the_row_its_framework_and_every_passed_flag(race, tmp_path):
    passed = dict(workload=["fixed", "realistic"], steps=3, precision="fp32")
    args = race.child_args("trl_precomputed", tmp_path / "c.json", passed)
    assert args[:2] == ["-m", "benchmarks.dpo_step"]
    assert {"--variants=trl_precomputed", "--frameworks=trl", "--workload=fixed,realistic", "--steps=3",
            "--precision=fp32", f"--output_json={tmp_path / 'c.json'}"} == set(args[2:])
    assert "--frameworks=align_jax" in race.child_args("packed", tmp_path / "d.json", passed)
