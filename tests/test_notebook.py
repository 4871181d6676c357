"""examples/analysis.ipynb runs top to bottom on the quickstart's outputs (nbclient, a real kernel), and is
kept in git without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "analysis.ipynb"


def test_the_notebook_is_stored_without_outputs():
    document = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in document["cells"] if cell["cell_type"] == "code"]
    assert code and all(not cell["outputs"] and cell["execution_count"] is None for cell in code)


@pytest.mark.slow
def test_the_notebook_runs_on_the_quickstart(quickstart, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    workdir, _, _ = quickstart
    monkeypatch.setenv("GEOCLF_DEMO", str(workdir))  # the kernel inherits this process's environment
    # figures shown inline, as in Jupyter (the suite's Agg backend would make plt.show() show nothing)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "chips scored by lr-lite0" in text and "95% CI" in text and "misclassified chips in all" in text
    tables = [o["data"]["text/plain"] for o in outputs if o.output_type == "execute_result"]
    assert any("lr-lite0" in t and "rf-lite0" in t for t in tables)  # the two runs compared
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the map, the misclassified chips, the F1 comparison
