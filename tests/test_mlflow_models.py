"""geoclf models as MLflow models (pyfunc, signature, input example, served by ``mlflow models serve``), the
experiment kind MLflow 3's UI reads, and a run history that still works -- on its own -- once copied."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from geoclf import registry, runs
from geoclf.models import load_model

CLASSES = ["Developed", "Forest", "Water"]
SIZE = 32


def small_model(directory: Path) -> Path:
    """A ``features`` artifact that scores 32-pixel chips fast: MobileNetV3-small (seeded weights) + LR."""
    from sklearn.linear_model import LogisticRegression

    from geoclf.backbones import load_backbone
    from geoclf.features_model import save_features_model

    backbone = load_backbone("mobilenet_v3_small", "none")
    rng = np.random.default_rng(0)
    chips = rng.integers(0, 256, (12, 3, SIZE, SIZE), dtype=np.uint8)
    chips[:4] //= 4  # dark, bright and mid chips: three classes the classifier tells apart
    chips[4:8] = 128 + chips[4:8] // 2
    features = backbone.extract_features(chips, batch_size=12)
    classifier = LogisticRegression(max_iter=200).fit(features, np.repeat(CLASSES, 4))
    return save_features_model(
        directory, classifier=classifier, classes=CLASSES, backbone="mobilenet_v3_small", weights="none",
        weights_ref=backbone.weights_ref, feature_layer=backbone.feature_layer, feature_dim=backbone.feature_dim,
        mean=backbone.mean, std=backbone.std, input_size=SIZE, bands=[1, 2, 3], chip_size=SIZE, name="chips")


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run history with one run holding the small model, registered as ``chips`` version 1."""
    directory = tmp_path_factory.mktemp("mlflow-history")
    model = small_model(directory.parent / f"{directory.name}-model")
    with runs.start_run("chips-lr", "train", runs_dir=directory) as run:
        run.log_artifact_dir(model)
    registry.register_model("chips-lr", "chips", runs_dir=directory)
    return directory


def chips(n: int = 5, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8)


def test_a_recorded_model_is_an_mlflow_pyfunc_model_with_signature_and_example(registered: Path) -> None:
    import mlflow.pyfunc
    from mlflow.models import Model

    directory = runs.artifact_path("chips-lr", runs_dir=registered)
    description = Model.load(directory / "MLmodel")
    flavor = description.flavors["python_function"]
    assert flavor["loader_module"] == "geoclf.pyfunc" and flavor["data"] == "."
    tensor = description.signature.inputs.inputs[0]
    assert tensor.type == np.dtype(np.uint8) and tensor.shape == (-1, 3, SIZE, SIZE)
    assert description.signature.outputs.input_names() == ["pred", *(f"prob_{c}" for c in CLASSES)]
    example = np.asarray(json.loads((directory / "serving_input_example.json").read_text())["inputs"])
    assert example.shape == (1, 3, SIZE, SIZE)

    # MLflow loads the registered version by itself and gives what geoclf's own loader gives
    os.environ["MLFLOW_TRACKING_URI"] = runs.tracking_uri(registered)
    try:
        served = mlflow.pyfunc.load_model("models:/chips/1")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    table = served.predict(chips())
    expected = load_model("chips/1", runs_dir=registered).predict_proba(chips())
    np.testing.assert_allclose(table[[f"prob_{c}" for c in CLASSES]].to_numpy(), expected, rtol=1e-5)
    assert table["pred"].tolist() == np.asarray(CLASSES)[expected.argmax(axis=1)].tolist()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_mlflow_models_serve_scores_a_chip_array(registered: Path, tmp_path: Path) -> None:
    # MLflow's own scoring server, from the registry, in this environment (--env-manager local), on loopback.
    port = _free_port()
    bin_dir = Path(sys.executable).parent  # mlflow starts uvicorn by name: this environment's, first on PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": runs.tracking_uri(registered), "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    mlflow = bin_dir / "mlflow"
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(mlflow), "models", "serve", "-m", "models:/chips/1", "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow models serve did not start:\n" + (tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(0.5)
        batch = chips()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": batch.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            predictions = json.loads(reply.read())["predictions"]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)  # the server and its uvicorn worker, started in their own session
        server.wait(timeout=30)
        log.close()
    expected = load_model("chips@latest", runs_dir=registered).predict_proba(batch)
    assert [row["pred"] for row in predictions] == np.asarray(CLASSES)[expected.argmax(axis=1)].tolist()
    np.testing.assert_allclose([[row[f"prob_{c}"] for c in CLASSES] for row in predictions], expected, rtol=1e-4)


def test_the_experiment_is_a_model_training_experiment(registered: Path) -> None:
    experiment = runs.mlflow_client(registered).get_experiment_by_name(runs.EXPERIMENT)
    assert experiment.tags[runs.EXPERIMENT_KIND_TAG] == "custom_model_development"


def _tree(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_copied_runs_directory_stands_alone(registered: Path, tmp_path: Path) -> None:
    original = tmp_path / "original"
    shutil.copytree(registered, original)
    runs.relocate(original)  # the original's own place (the module's fixture lives elsewhere)
    before = _tree(original)
    copy = tmp_path / "moved" / "history"
    shutil.copytree(original, copy)

    # Reading, recording a new run with a model, registering it and loading by every kind of reference:
    # all in the copy, nothing into the original.
    record = runs.get_run("chips-lr", runs_dir=copy)
    assert record.artifact_dir is not None and record.artifact_dir.is_relative_to(copy)
    with runs.start_run("chips-lr-2", "train", runs_dir=copy) as run:
        run.log_artifact_dir(runs.artifact_path(record))
        run.log_metrics({"accuracy": 0.5})
        run.log_json({"note": "copied"}, "note.json")
    assert runs.get_run("chips-lr-2", runs_dir=copy).artifact_dir.is_relative_to(copy)
    version = registry.register_model("chips-lr-2", "chips", runs_dir=copy)
    assert runs.local_path(version.source).is_relative_to(copy)
    assert runs.local_path(registry.get_version("chips", 1, runs_dir=copy).source).is_relative_to(copy)
    for ref in ("chips/1", "chips/2", "chips-lr"):
        load_model(ref, runs_dir=copy).predict_proba(chips(2))
    assert _tree(original) == before
    assert not list(original.rglob("note.json"))
    assert len(list((copy / runs.ARTIFACTS_DIRNAME).rglob("note.json"))) == 1
    assert runs.relocate(copy) is None  # done once, on first open
