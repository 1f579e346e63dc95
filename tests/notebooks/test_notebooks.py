"""The walk-through notebooks run top to bottom on the tiny character model (their code cells in
order, in one namespace, as a kernel would; ``ALIGN_JAX_NOTEBOOK_MODEL=toy``), and what they show
is what they say: notebooks/02_dpo_quickstart.ipynb, 03_calibration.ipynb, 04_online_rl.ipynb,
06_red_team.ipynb."""

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


def check_calibration(ns):
    reports, floors, test_idx = ns["reports"], ns["floors"], ns["test_idx"]
    assert ns["n"] == 2_000 and len(test_idx) == len(ns["fit_idx"]) == 1_000  # the toy size
    assert not set(test_idx.tolist()) & set(ns["fit_idx"].tolist())  # fitted on one half, scored on the other
    assert list(reports) == ["none", "temperature", "platt"]
    for k, r in reports.items():
        assert r.n == len(test_idx) and 0 <= r.ece <= 1 and 0 <= floors[k] <= 1
        assert r.accuracy == reports["none"].accuracy  # recalibration changes confidences, not answers
        assert r.auroc == pytest.approx(reports["none"].auroc)  # both maps are monotone: same ranking
    before = reports["none"]
    assert before.mean_confidence > before.accuracy + 0.1  # the synthetic model is over-confident
    assert before.ece > 3 * floors["none"]  # ... measurably, not binning noise
    assert ns["T"] > 1  # temperature scaling flattens it
    assert ns["ece_before"] == before.ece and ns["ece_after"] == reports["temperature"].ece
    assert ns["ece_after"] < ns["ece_before"]  # lower held-out ECE after temperature scaling
    assert reports["platt"].ece < reports["temperature"].ece  # what the markdown says
    assert isinstance(ns["fig"], matplotlib.figure.Figure) and len(ns["fig"].axes) == 3
    assert set(ns["paths"]) == {"none", "temperature", "platt"}
    for path in ns["paths"].values():
        path = pathlib.Path(path)
        assert path.parent == ns["WORKDIR"] and path.stat().st_size > 1000


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
    ("03_calibration.ipynb", check_calibration),
    ("04_online_rl.ipynb", check_online_rl),
    ("06_red_team.ipynb", check_red_team),
], ids=["dpo_quickstart", "calibration", "online_rl", "red_team"])
def test_notebook_runs_on_the_toy_model(name, check, monkeypatch, tmp_path):
    matplotlib.use("Agg")
    monkeypatch.setenv("ALIGN_JAX_NOTEBOOK_MODEL", "toy")
    monkeypatch.chdir(tmp_path)
    ns = run_notebook(NOTEBOOKS / name)
    check(ns)
    assert str(ns["WORKDIR"].resolve()).startswith(str(tmp_path.resolve()))  # nothing written into the repository
    import matplotlib.pyplot as plt

    plt.close("all")
