"""A model's export made where the model is made or published: ``geoclf train`` (by default) and
``geoclf models register --export``; the version or run then scores on OpenVINO with no separate step.

Both tests work on a copy of the quickstart's run history (its EfficientNet-Lite0 features and lr-lite0 run), so
the session's quickstart, which other tests read as torch made it, keeps its unexported artifacts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from geoclf import registry, runs
from geoclf.cli import main
from geoclf.export import EXPORT_ERROR_TAG, EXPORT_TAG
from geoclf.models import resolve_model_dir
from geoclf.runtime import ONNX_FILE, verified_onnx


@pytest.fixture
def history(quickstart, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the quickstart's run history (it points itself at its own artifacts when opened)."""
    workdir, _, _ = quickstart
    copy = tmp_path / "runs"
    shutil.copytree(workdir / "runs", copy)
    monkeypatch.setenv(runs.RUNS_ENV, str(copy))
    return copy


def _export_of(artifact: Path) -> dict:
    """The artifact's export record, after checking its file against the recorded SHA-256."""
    record = json.loads((artifact / "model.json").read_text())["export"]
    verified_onnx(artifact, record)
    return record


def test_register_export_gives_a_version_that_scores_on_openvino(quickstart, history, small_scene, tmp_path,
                                                                 capsys):
    workdir, _, _ = quickstart
    original = resolve_model_dir("lr-lite0", workdir / "runs")
    assert not (original / ONNX_FILE).exists()  # the quickstart trains through the library: no export

    main(["models", "register", "--run", "lr-lite0", "--name", "landuse", "--export"])
    out = capsys.readouterr().out
    artifact = registry.resolve_model_ref("landuse/1")
    record = _export_of(artifact)  # into the artifact the version loads: the run's own
    assert artifact == resolve_model_dir("lr-lite0") and artifact.is_relative_to(history)
    assert f"exported network sha256 {record['sha256'][:12]}..." in out
    assert registry.get_version("landuse", 1).tags[registry.EXPORT_TAG] == record["sha256"]
    assert runs.get_run("lr-lite0").tags[EXPORT_TAG] == record["sha256"]
    assert not (original / ONNX_FILE).exists()  # the copy's artifact was exported, not the quickstart's

    # a second registration keeps the valid export (same file), a plain one records it all the same
    main(["models", "register", "--run", "lr-lite0", "--name", "landuse", "--export"])
    main(["models", "register", "--run", "lr-lite0", "--name", "landuse"])
    assert {registry.get_version("landuse", v).tags[registry.EXPORT_TAG] for v in (2, 3)} == {record["sha256"]}
    assert _export_of(artifact) == record
    capsys.readouterr()

    main(["score", "--model", "landuse/1", "--naip", str(small_scene.naip), "--out", str(tmp_path / "map"),
          "--runtime", "openvino", "--scheduler", "sync", "--no-probabilities"])
    captured = capsys.readouterr()
    assert "predictions" in captured.out and "error" not in captured.err
    assert (tmp_path / "map" / "predictions.parquet").is_file()


def test_train_exports_its_model_unless_told_not_to(quickstart, history, capsys):
    workdir, _, _ = quickstart
    features = str(workdir / "features")
    main(["train", "--features", features, "--name", "lr-exported"])
    out = capsys.readouterr().out
    artifact = resolve_model_dir("lr-exported")
    record = _export_of(artifact)
    assert record["input_shape"] == [None, 3, 224, 224]  # the combined featurizer's CNN block, over RGB
    assert f"exported network -> {artifact / ONNX_FILE}  sha256 {record['sha256'][:12]}..." in out
    run = runs.get_run("lr-exported")
    assert run.tags[EXPORT_TAG] == record["sha256"] and EXPORT_ERROR_TAG not in run.tags
    assert (artifact / "MLmodel").is_file()  # recorded as an MLflow model as before, network.onnx beside it

    main(["train", "--features", features, "--name", "lr-plain", "--no-export", "--classifier", "random_forest",
          "--param", "n_estimators=5"])
    assert "exported network" not in capsys.readouterr().out
    plain = resolve_model_dir("lr-plain")
    assert not (plain / ONNX_FILE).exists() and "export" not in json.loads((plain / "model.json").read_text())
    assert not {EXPORT_TAG, EXPORT_ERROR_TAG} & set(runs.get_run("lr-plain").tags)


#: A sitecustomize hiding onnxscript (what torch's exporter needs), as on an install without it.
NO_EXPORTER = """
import importlib.abc
import sys


class NoExporter(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "onnxscript":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, NoExporter())
"""


def test_without_the_exporter_train_refuses_export_and_by_default_skips_it(quickstart, tmp_path):
    workdir, _, _ = quickstart
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_EXPORTER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}

    def train(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "geoclf", "train", "--features", str(workdir / "features"),
                               "--runs-dir", str(tmp_path / "runs"), *args], env=env, capture_output=True, text=True,
                              timeout=300)

    asked = train("--name", "lr-asked", "--export")  # refused in one line, before fitting: no run recorded
    assert asked.returncode == 2 and asked.stderr.strip() == (
        "geoclf: error: exporting needs torch's ONNX exporter (torch, onnx and onnxscript), which is not installed "
        "here; train with --no-export")
    default = train("--name", "lr-default")  # trained and recorded as before, without an export or a warning
    assert default.returncode == 0, default.stderr[-2000:]
    assert "exported network" not in default.stdout and "warning" not in default.stderr
    assert [r.name for r in runs.list_run_records(runs_dir=tmp_path / "runs")] == ["lr-default"]
    assert not (resolve_model_dir("lr-default", tmp_path / "runs") / ONNX_FILE).exists()
