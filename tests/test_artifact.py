"""Tests of geoclf.artifact: save/load round trips, skops refusing untrusted types, atomic writes, kinds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline

from geoclf import artifact
from geoclf.artifact import FeaturesModel, LandUseModel, load_model, save_features_model, write_model_dir
from geoclf.classifiers import make_classifier
from tiling.errors import InputError

# scheme order, deliberately not alphabetical: the artifact must keep it
CLASSES = ["Developed", "Forest", "Cultivated"]
DIM = 8


def training_data(seed: int = 0, n: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """Separable clusters, one per class, plus noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (len(CLASSES), DIM))
    labels = rng.integers(0, len(CLASSES), n)
    x = (centers[labels] + rng.normal(0, 1, (n, DIM))).astype(np.float32)
    return x, np.asarray(CLASSES, dtype=object)[labels]


def save(directory: Path, classifier: Any, **overrides: Any) -> Path:
    options: dict[str, Any] = dict(
        classifier=classifier, classes=CLASSES, backbone="resnet18", weights="default", feature_layer="pool",
        feature_dim=DIM, mean=[0.5] * 3, std=[0.25] * 3, bands=[1, 2, 3], chip_size=32, input_size=None,
        name="lr-test", metrics={"accuracy": 0.9})
    options.update(overrides)
    return save_features_model(directory, **options)


@pytest.mark.parametrize("kind", ["logistic_regression", "random_forest"])
def test_round_trip_gives_identical_predictions(tmp_path: Path, kind: str) -> None:
    x, y = training_data()
    pipeline = make_classifier(kind, {"n_estimators": 10} if kind == "random_forest" else None).fit(x, y)
    directory = save(tmp_path / "model", pipeline)

    model = load_model(directory)
    assert isinstance(model, FeaturesModel)
    assert model.classes == CLASSES
    assert (model.bands, model.chip_size) == ([1, 2, 3], 32)
    probs = model.predict_proba_features(x)
    expected = pipeline.predict_proba(x)[:, [list(pipeline.classes_).index(c) for c in CLASSES]]
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    assert probs.dtype == np.float32
    np.testing.assert_array_equal(model.predict_features(x), pipeline.predict(x))


def test_model_json_states_what_scoring_needs(tmp_path: Path) -> None:
    x, y = training_data()
    directory = save(tmp_path / "model", make_classifier().fit(x, y), weights_ref={"kind": "file", "sha256": "ab"},
                     class_groups={"Developed": [21, 22], "Forest": [41], "Cultivated": [81, 82]})
    spec = json.loads((directory / "model.json").read_text())
    assert spec["kind"] == "features"
    assert spec["classes"] == CLASSES
    assert spec["backbone"] == "resnet18" and spec["weights"] == "default" and spec["feature_layer"] == "pool"
    assert spec["normalization"]["mean"] == [0.5] * 3
    assert spec["metrics"] == {"accuracy": 0.9}
    assert spec["geoclf_version"] and spec["format_version"] == artifact.FORMAT_VERSION
    assert spec["classifier"]["file"] == "classifier.skops"
    assert load_model(directory).class_groups == {"Developed": [21, 22], "Forest": [41], "Cultivated": [81, 82]}
    assert sorted(p.name for p in directory.iterdir()) == ["classifier.skops", "model.json"]


class HomeMadeClassifier(ClassifierMixin, BaseEstimator):
    """A classifier type skops does not know: loading it means running this module's code."""

    def fit(self, x: np.ndarray, y: np.ndarray) -> HomeMadeClassifier:
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.full((len(x), len(self.classes_)), 1 / len(self.classes_))


def smuggle(directory: Path, estimator: Any) -> None:
    """Replace an artifact's classifier file, keeping model.json consistent (checksum updated)."""
    path = directory / "classifier.skops"
    sio.dump(estimator, path)
    spec = json.loads((directory / "model.json").read_text())
    spec["classifier"]["sha256"] = artifact.file_checksum(path)
    (directory / "model.json").write_text(json.dumps(spec))


def test_untrusted_types_are_refused_unless_the_user_trusts_the_file(tmp_path: Path) -> None:
    x, y = training_data()
    directory = save(tmp_path / "model", make_classifier().fit(x, y))
    smuggle(directory, Pipeline([("classifier", HomeMadeClassifier().fit(x, y))]))

    with pytest.raises(InputError, match=r"HomeMadeClassifier.*trusted=True"):
        load_model(directory)
    model = load_model(directory, trusted=True)
    assert model.predict_proba_features(x).shape == (len(x), 3)


def test_the_recorded_skops_defaults_are_skops_own() -> None:
    """geoclf imports skops with its default trusted scikit-learn names from a record (no estimator walk): the
    record must be what this skops computes from this scikit-learn, or loading would trust other types."""
    import os
    from importlib.metadata import version

    installed = {"scikit-learn": version("scikit-learn"), "skops": version("skops")}
    names = list(sio._trusted_types.SKLEARN_ESTIMATOR_TYPE_NAMES)  # imported here the usual way: walked
    if os.environ.get("GEOCLF_UPDATE_SKOPS_TYPES"):
        artifact.SKOPS_SKLEARN_TYPES.write_text(json.dumps({"versions": installed, "names": names}, indent=1) + "\n")
    record = json.loads(artifact.SKOPS_SKLEARN_TYPES.read_text())
    assert record["versions"] == installed, "rewrite geoclf/skops_sklearn_types.json: GEOCLF_UPDATE_SKOPS_TYPES=1"
    assert record["names"] == names


def test_reading_a_classifier_walks_no_estimators_and_still_refuses_others(tmp_path: Path) -> None:
    import subprocess
    import sys

    x, y = training_data()
    good = save(tmp_path / "model", make_classifier().fit(x, y))
    bad = save(tmp_path / "smuggled", make_classifier().fit(x, y))
    smuggle(bad, Pipeline([("classifier", HomeMadeClassifier().fit(x, y))]))
    program = f"""
import json, sys
import sklearn.utils

def walk(*args, **kwargs):
    raise AssertionError("sklearn.utils.all_estimators() was called")

sklearn.utils.all_estimators = walk
from geoclf.artifact import import_skops_io, load_model
from tiling.errors import InputError
model = load_model({str(good)!r})
try:
    load_model({str(bad)!r})
    refused = ""
except InputError as exc:
    refused = str(exc)
print(json.dumps({{"trusted": import_skops_io()._general.SKLEARN_ESTIMATOR_TYPE_NAMES, "refused": refused,
                  "classes": model.classes, "torch": "torch" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["trusted"] == list(sio._trusted_types.SKLEARN_ESTIMATOR_TYPE_NAMES)  # what skops would trust
    assert seen["classes"] == CLASSES
    assert "HomeMadeClassifier" in seen["refused"] and "trusted=True" in seen["refused"]
    assert not seen["torch"]  # reading a classifier imports no torch


def test_saving_refuses_a_classifier_that_could_not_be_loaded_safely(tmp_path: Path) -> None:
    x, y = training_data()
    with pytest.raises(InputError, match="HomeMadeClassifier"):
        save(tmp_path / "model", HomeMadeClassifier().fit(x, y))
    assert list(tmp_path.iterdir()) == []  # no artifact, no temporary directory left behind


def test_a_changed_classifier_file_fails_its_checksum(tmp_path: Path) -> None:
    x, y = training_data()
    directory = save(tmp_path / "model", make_classifier().fit(x, y))
    sio.dump(make_classifier().fit(x[:60], y[:60]), directory / "classifier.skops")
    with pytest.raises(InputError, match="checksum"):
        load_model(directory)


def test_writes_are_atomic_and_never_clobber(tmp_path: Path) -> None:
    x, y = training_data()
    directory = save(tmp_path / "model", make_classifier().fit(x, y))
    before = (directory / "model.json").read_text()
    with pytest.raises(InputError, match="already exists"):
        save(directory, make_classifier().fit(x, y))
    assert (directory / "model.json").read_text() == before

    def crash(staging: Path) -> None:
        (staging / "weights.pt").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_model_dir(tmp_path / "other", "features", {"classes": CLASSES, "bands": [1], "chip_size": 8}, crash)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    replaced = save(directory, make_classifier(params={"C": 0.1}).fit(x, y), overwrite=True, name="again")
    assert load_model(replaced).name == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda spec: spec.update(format_version=99), "newer geoclf"),
    (lambda spec: spec.update(kind="hologram"), "hologram.*known: features"),
    (lambda spec: spec.pop("classes"), "lacks classes"),
])
def test_damaged_or_foreign_model_json_is_a_one_line_error(tmp_path: Path, edit: Any, message: str) -> None:
    x, y = training_data()
    directory = save(tmp_path / "model", make_classifier().fit(x, y))
    spec = json.loads((directory / "model.json").read_text())
    edit(spec)
    (directory / "model.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match=message):
        load_model(directory)


def test_references_that_are_not_artifacts(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no model.json"):
        load_model(tmp_path)
    with pytest.raises(InputError, match="no such model directory"):
        load_model(str(tmp_path / "missing"))


class ConstantModel(LandUseModel):
    """A model of another kind, loaded through the LOADERS registry as fine-tuned CNNs will be."""

    kind = "constant"

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        chips = self.check_chips(chips)
        return np.tile(np.asarray(self.spec["probs"], dtype=np.float32), (len(chips), 1))


def load_constant(directory: Path, spec: dict[str, Any], trusted: bool) -> ConstantModel:
    return ConstantModel(spec, directory)


def test_other_kinds_load_through_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(artifact.LOADERS, "constant", f"{__name__}:load_constant")
    directory = write_model_dir(tmp_path / "cnn", "constant", {"classes": CLASSES, "bands": [1, 2, 3, 4],
                                                               "chip_size": 16, "probs": [0.1, 0.7, 0.2]},
                                lambda staging: None)
    model = load_model(directory)
    chips = np.zeros((5, 4, 16, 16), dtype=np.uint8)
    assert model.predict(chips).tolist() == ["Forest"] * 5
    with pytest.raises(InputError, match=r"shape \(N, 4, 16, 16\)"):
        model.predict(np.zeros((5, 3, 16, 16), dtype=np.uint8))
    with pytest.raises(InputError, match="uint8"):
        model.predict(np.zeros((5, 4, 16, 16), dtype=np.float32))


def test_chips_go_through_the_same_backbone_and_preprocessing_as_featurization(tmp_path: Path) -> None:
    """predict_proba(chips) == classifier(features the backbone module computes for featurization)."""
    from geoclf.backbones import load_backbone
    from geoclf.featurizers.cnn import CNNFeaturizer

    # a small torchvision network keeps this quick; its weights go through a file like a user's would
    weights = tmp_path / "net.pth"
    torch.save(load_backbone("mobilenet_v3_small", "none").model.state_dict(), weights)
    backbone = load_backbone("mobilenet_v3_small", str(weights))
    rng = np.random.default_rng(1)
    chips = rng.integers(0, 256, (9, 3, 32, 32), dtype=np.uint8)
    features = backbone.extract_features(chips, batch_size=4)
    labels = np.asarray(CLASSES, dtype=object)[np.arange(9) % 3]
    pipeline = make_classifier().fit(features, labels)
    directory = save(tmp_path / "model", pipeline, backbone="mobilenet_v3_small", weights=str(weights),
                     weights_ref=backbone.weights_ref, feature_dim=backbone.feature_dim, mean=backbone.mean,
                     std=backbone.std, input_size=backbone.input_size)

    # the artifact carries its own copy of the weights, named beside model.json: the user's file may go
    spec = json.loads((directory / "model.json").read_text())
    assert spec["weights"] == spec["weights_ref"]["weights"] == "backbone-weights.pth"
    assert spec["weights_ref"]["sha256"] == backbone.weights_ref["sha256"]
    weights.unlink()

    model = load_model(directory, device="cpu", batch_size=4)  # 9 chips: batches of 4, 4 and 1
    probs = model.predict_proba(chips)
    np.testing.assert_allclose(probs, model.predict_proba_features(features), atol=1e-4)
    np.testing.assert_allclose(model.featurize(chips), features, rtol=1e-4, atol=1e-4)
    # as features.json described them (the user's file), they are the same weights, wherever they lie
    described = CNNFeaturizer.from_meta({**model.featurizer.to_meta(), "weights": str(weights),
                                         "weights_ref": backbone.weights_ref})
    assert model.featurizer == described and model.featurizer.weights != described.weights

    other = load_backbone("mobilenet_v3_small", "none").model.state_dict()  # the same seeded network...
    first = next(k for k, v in other.items() if v.is_floating_point())
    other[first] = other[first] + 1.0  # ...with one tensor changed: another file
    torch.save(other, directory / "backbone-weights.pth")
    with pytest.raises(InputError, match="another file"):
        load_model(directory).predict_proba(chips[:2])
