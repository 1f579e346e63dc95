"""The work-folder helpers every staged experiment script shares (align_jax/run_settings.py)."""

import json
import pathlib

import pytest

from align_jax.run_settings import check_names, check_same_settings, read_jsonl, run_stages, work_folder, write_jsonl


def test_a_workdir_refuses_other_settings(tmp_path):
    check_same_settings(tmp_path / "settings.json", {"kl_coef": 0.01, "seed": 0})
    check_same_settings(tmp_path / "settings.json", {"kl_coef": 0.01, "seed": 0})
    with pytest.raises(ValueError, match="--kl_coef: 0.01 then, 0.05 now"):
        check_same_settings(tmp_path / "settings.json", {"kl_coef": 0.05, "seed": 0})


def test_a_relative_work_folder_is_taken_from_the_repository_root(tmp_path):
    assert work_folder("runs/x", tmp_path) == tmp_path / "runs" / "x"
    assert work_folder("/abs/y", tmp_path) == pathlib.Path("/abs/y")


def test_jsonl_round_trips_and_skips_blank_lines(tmp_path):
    rows = [{"prompt": "héllo", "n": 1}, {"prompt": [{"role": "user", "content": "x"}], "n": 2}]
    path = tmp_path / "deep" / "rows.jsonl"
    write_jsonl(path, rows)
    assert path.read_text(encoding="utf-8").splitlines()[0] == json.dumps(rows[0], ensure_ascii=False)
    path.write_text(path.read_text(encoding="utf-8") + "\n  \n", encoding="utf-8")
    assert read_jsonl(path) == rows


def test_stages_run_in_the_order_named_after_every_name_is_checked(tmp_path):
    ran = []
    stages = {"a": lambda wd: ran.append(("a", wd)), "b": lambda wd: ran.append(("b", wd))}
    run_stages(stages, ["b", "a"], tmp_path)
    assert ran == [("b", tmp_path), ("a", tmp_path)]
    with pytest.raises(ValueError, match=r"unknown stages \['c'\]; valid: \['a', 'b'\]"):
        run_stages(stages, ["a", "c"], tmp_path)
    assert len(ran) == 2  # "a" did not run before the bad name was seen
    with pytest.raises(ValueError, match=r"unknown methods \['x', 'y'\]"):
        check_names("methods", ["y", "dpo", "x"], ("dpo", "ipo"))
