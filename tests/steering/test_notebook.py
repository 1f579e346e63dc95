"""notebooks/05_steering.ipynb runs top to bottom on the tiny character model (its code cells in
order, in one namespace, as a kernel would; ``ALIGN_JAX_NOTEBOOK_MODEL=toy``)."""

import json
import os
import pathlib

import matplotlib
import numpy as np

NOTEBOOK = pathlib.Path(__file__).resolve().parents[2] / "notebooks" / "05_steering.ipynb"


def test_steering_notebook_runs_on_the_toy_model(monkeypatch, tmp_path):
    matplotlib.use("Agg")
    monkeypatch.setenv("ALIGN_JAX_NOTEBOOK_MODEL", "toy")
    monkeypatch.chdir(tmp_path)
    nb = json.loads(NOTEBOOK.read_text())
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), "strip outputs before committing"
    ns: dict = {}
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}[code cell {i}]", "exec"), ns)
    assert ns["lens"].shape[0] == ns["lm"].model.cfg.num_layers + 1
    assert ns["res"].scores.shape == (ns["lm"].model.cfg.num_layers, len(ns["clean"]))
    assert np.isfinite(ns["vectors"]).all()
    assert os.environ["ALIGN_JAX_NOTEBOOK_MODEL"] == "toy"
