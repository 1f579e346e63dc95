"""The walk-through notebooks run top to bottom on the tiny character model (their code cells in
order, in one namespace, as a kernel would; ``ALIGN_JAX_NOTEBOOK_MODEL=toy``), and what they show
is what they say: notebooks/02_dpo_quickstart.ipynb, 04_online_rl.ipynb, 06_red_team.ipynb."""

import json
import math
import pathlib

import matplotlib
import numpy as np
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"


def run_notebook(path: pathlib.Path) -> dict:
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in cells), "strip outputs before committing"
    ns: dict = {}
    for i, cell in enumerate(cells):
        exec(compile("".join(cell["source"]), f"{path.name}[code cell {i}]", "exec"), ns)
    return ns


def check_dpo(ns):
    steps = ns["cfg"].train.steps
    assert ns["cfg"].model.name is None  # the toy model, not the default one
    assert len(ns["losses"]) == steps and ns["steps"].tolist() == list(range(1, steps + 1))
    assert np.isfinite(ns["losses"]).all() and np.isfinite(ns["margins"]).all()
    before, after = ns["result"]["before"], ns["result"]["final"]
    assert before["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = reference at step 0
    assert before["eval/rewards/margins"] == 0.0
    assert after["eval/loss"] < before["eval/loss"]  # it learns, even in a few steps
    assert [r["step"] for r in ns["evals"]] == [0, *range(ns["cfg"].train.eval_every, steps + 1, ns["cfg"].train.eval_every)]


def check_online_rl(ns):
    cfg = ns["cfg"]
    assert cfg.task.name == "grpo" and cfg.model.name == "toy-chars"
    assert len(ns["rows"]) == cfg.train.steps and ns["steps"].tolist() == list(range(1, cfg.train.steps + 1))
    assert np.isfinite(ns["rewards"]).all() and ((ns["rewards"] >= 0) & (ns["rewards"] <= 1)).all()
    assert all(abs(r["rl/ratio_mean_epoch0"] - 1) < 1e-4 for r in ns["rows"] if r["rl/updated"])
    before, after = ns["result"]["before"]["eval/reward"], ns["result"]["final"]["eval/reward"]
    assert after > before  # the letter task learns within a few rollout batches
    assert len(ns["before"]) == len(ns["after"]) == cfg.rl.eval_prompts
    assert np.mean([s["reward"] for s in ns["after"]]) == pytest.approx(after)


def check_red_team(ns):
    cfg, table = ns["cfg"], ns["table"]
    assert [row["attack"] for row in table] == list(cfg.attacks)  # one row per attack run
    n = ns["summary"]["n_behaviours"]
    assert n == len(ns["behaviours"])
    for row in table:
        assert row["n"] == n and 0 <= row["asr"] <= 1 and row["asr"] == row["k"] / n
        assert row["wilson_low"] <= row["asr"] <= row["wilson_high"]
    assert len(ns["records"]) == n * len(cfg.attacks)
    assert (ns["WORKDIR"] / "asr_heatmap.png").stat().st_size > 1000


@pytest.mark.parametrize("name, check", [
    ("02_dpo_quickstart.ipynb", check_dpo),
    ("04_online_rl.ipynb", check_online_rl),
    ("06_red_team.ipynb", check_red_team),
], ids=["dpo_quickstart", "online_rl", "red_team"])
def test_notebook_runs_on_the_toy_model(name, check, monkeypatch, tmp_path):
    matplotlib.use("Agg")
    monkeypatch.setenv("ALIGN_JAX_NOTEBOOK_MODEL", "toy")
    monkeypatch.chdir(tmp_path)
    ns = run_notebook(NOTEBOOKS / name)
    check(ns)
    assert str(ns["WORKDIR"].resolve()).startswith(str(tmp_path.resolve()))  # nothing written into the repository
    import matplotlib.pyplot as plt

    plt.close("all")
