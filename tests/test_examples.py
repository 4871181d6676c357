"""The scripts in examples/ run as a user would run them: in a fresh process, offline, on temporary directories.

Any attempt to reach the network goes to a closed local port (proxy variables), so an example that quietly
downloaded something would fail here. The quickstart runs once per session; compare_runs reads its run
history and custom_classes tiles the session's small synthetic scene.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
_OFFLINE_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused


def run_example(name: str, *args: object, cwd: Path, timeout: float = 600) -> str:
    """Run ``examples/<name>`` with ``args`` in ``cwd``; return its stdout, failing with its stderr."""
    env = {**os.environ, "MPLBACKEND": "Agg", "GEOCLF_RUNS": str(cwd / "no-runs-here"),
           **{key: _OFFLINE_PROXY for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}}
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{name} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> tuple[Path, str]:
    """The quickstart's output directory and what it printed."""
    work = tmp_path_factory.mktemp("quickstart")
    out = work / "out"
    return out, run_example("quickstart_api.py", out, cwd=work)


@pytest.mark.slow
def test_quickstart_writes_every_stage(quickstart):
    out, stdout = quickstart
    assert (out / "scene" / "naip.tif").is_file() and (out / "scene" / "nlcd.tif").is_file()
    assert (out / "chips" / "chips.parquet").is_file()
    assert json.loads((out / "features" / "features.json").read_text())["backbone"] == "efficientnet_lite0"
    for name in ("predictions.parquet", "landuse.tif", "landuse.geojson", "map.html", "map.png"):
        assert (out / "map" / name).is_file(), name
    assert (out / "map-smooth" / "landuse.tif").is_file()
    assert not (out / "map-smooth" / "map.html").exists()  # asked for without the HTML map
    assert "map vs NLCD on" in stdout and "km²" in stdout
    # the run history is the example's own, not $GEOCLF_RUNS
    assert (out / "runs" / "mlflow.db").is_file()
    assert not (out.parent / "no-runs-here").exists()


@pytest.mark.slow
def test_compare_runs_on_the_quickstart_history(quickstart, tmp_path):
    out, _ = quickstart
    stdout = run_example("compare_runs.py", out / "runs", tmp_path / "compare", "--metric", "kappa", cwd=tmp_path)
    table = pd.read_csv(tmp_path / "compare" / "runs.csv")
    assert sorted(table["name"]) == ["lr-lite0", "rf-lite0"]
    assert table["kappa"].is_monotonic_decreasing  # best first
    assert f"best by kappa: {table['name'].iloc[0]}" in stdout
    assert "confusion matrix" in stdout
    assert (tmp_path / "compare" / "confusion_matrix.png").stat().st_size > 0


def test_custom_classes_on_a_small_scene(small_scene, tmp_path):
    stdout = run_example("custom_classes.py", tmp_path / "out", "--naip", small_scene.naip, "--nlcd",
                         small_scene.nlcd, cwd=tmp_path)
    import yaml

    import tiling

    out = tmp_path / "out"
    scheme = yaml.safe_load((out / "classes.yaml").read_text())
    assert list(scheme) == ["Developed", "Vegetation", "Agriculture"]
    index = tiling.read_index(out / "chips")
    assert set(index["label"]) <= set(scheme)
    assert {"frac_Developed", "frac_Vegetation", "frac_Agriculture"} <= set(index.columns)
    assert len(list((out / "chips" / "png").glob("*/*/*.png"))) == len(index)
    assert "31 Barren Land" in stdout  # named as not land use
