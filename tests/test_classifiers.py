"""Tests of geoclf.classifiers and ``geoclf train`` on generated features directories.

The directories follow the Features contract of docs/architecture.md (what ``geoclf featurize`` writes):
``part-NNNNN.parquet`` partitions with ``chip_id``, ``label``, ``split``, ``features`` (fixed-size float32
list) and NIR columns, plus ``features.json``. Class clusters are separable, with noise.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shapely import box
from sklearn import metrics as skm
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from geoclf import runs
from geoclf.artifact import load_model
from geoclf.classifiers import load_features, parse_params, train_classifier
from geoclf.cli import main
from tiling.errors import InputError
from tiling.index import write_index

CLASSES = ["Developed", "Forest", "Herbaceous", "Cultivated"]  # default scheme order, a subset


def write_features(out: Path, classes: list[str] = CLASSES, n: int = 160, dim: int = 16, seed: int = 0,
                   backbone: str = "efficientnet_lite0", splits: tuple[str, ...] = ("train", "val"),
                   val_only: tuple[str, ...] = (), parts: int = 2, index: Path | None = None,
                   **meta: Any) -> Path:
    """A features directory: one Gaussian cluster per class, ~30% validation chips."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (len(classes), dim))
    codes = rng.integers(0, len(classes), n)
    x = (centers[codes] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    labels = np.asarray(classes, dtype=object)[codes]
    split = np.where(rng.random(n) < 0.7, splits[0], splits[-1]).astype(object)
    split[np.isin(labels, val_only)] = "val"
    chip_id = np.array([f"m_{seed}_{backbone}:{i}_0" for i in range(n)], dtype=object)
    out.mkdir(parents=True)
    for p, rows in enumerate(np.array_split(np.arange(n), parts)):
        pq.write_table(pa.table({
            "chip_id": pa.array(chip_id[rows].tolist(), pa.string()),
            "label": pa.array(labels[rows].tolist(), pa.string()),
            "split": pa.array(split[rows].tolist(), pa.string()),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), dim),
            "ndvi_mean": pa.array(rng.random(len(rows)).astype(np.float32)),
        }), out / f"part-{p:05d}.parquet")
    (out / "features.json").write_text(json.dumps({
        "backbone": backbone, "weights": "default",
        "weights_ref": {"kind": "embedded", "weights": "default", "source": f"{backbone}-wheel", "sha256": "ab12"},
        "feature_layer": "global average pool", "feature_dim": dim, "bands": [1, 2, 3],
        "nir_columns": ["ndvi_mean"], "mean": [0.5] * 3, "std": [0.5] * 3, "input_size": 224, "chip_size": 224,
        "chips": n, "source": {"kind": "index", "path": str(index or out / "gone" / "chips.parquet"),
                               "sha256": "cafe"},
        **meta}))
    return out


def read_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows of one split, read straight from the partitions (independently of geoclf)."""
    frame = pd.concat([pd.read_parquet(p) for p in sorted(directory.glob("part-*.parquet"))])
    frame = frame[frame["split"] == split]
    return np.stack(frame["features"].to_numpy()), frame["label"].to_numpy()




@pytest.mark.parametrize(("classifier", "params", "reference"), [
    ("logistic_regression", {"C": 0.5}, LogisticRegression(C=0.5, max_iter=1000, random_state=3)),
    ("random_forest", {"n_estimators": 25}, RandomForestClassifier(n_estimators=25, random_state=3)),
])
def test_training_matches_scikit_learn_done_by_hand(tmp_path: Path, runs_dir: Path, classifier: str,
                                                     params: dict[str, Any], reference: Any) -> None:
    feats = write_features(tmp_path / "feats")
    result = train_classifier(feats, classifier, params, name="clf", seed=3)

    # the same pipeline fitted by hand on the train split only, scored on the validation split
    x_train, y_train = read_split(feats, "train")
    x_val, y_val = read_split(feats, "val")
    y_hand = make_pipeline(StandardScaler(), reference).fit(x_train, y_train).predict(x_val)
    np.testing.assert_array_equal(result.classifier.predict(x_val), y_hand)
    ev = result.evaluation
    assert ev["accuracy"] == pytest.approx(skm.accuracy_score(y_val, y_hand))
    assert ev["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_val, y_hand))
    assert ev["kappa"] == pytest.approx(skm.cohen_kappa_score(y_val, y_hand))
    np.testing.assert_allclose(ev["per_class"]["recall"],
                               skm.recall_score(y_val, y_hand, labels=CLASSES, average=None, zero_division=0))
    assert ev["accuracy"] > 0.9  # separable clusters
    assert result.metrics["accuracy"] == ev["accuracy"]
    assert (result.n_train, result.n_val) == (len(y_train), len(y_val))
    assert result.classes == CLASSES  # scheme order, not alphabetical

    recorded = runs.get_run("clf")
    assert recorded.kind == "train" and recorded.run_id == result.run_id
    assert recorded.params["classifier"] == classifier
    assert recorded.params["backbone"] == "efficientnet_lite0"
    assert recorded.metrics["accuracy"] == pytest.approx(ev["accuracy"])
    assert recorded.metrics["recall.Forest"] == pytest.approx(ev["per_class"].loc["Forest", "recall"])

    # the artifact, by directory or by run name, predicts exactly as the trained pipeline
    for ref in (result.artifact_dir, "clf"):
        model = load_model(ref)
        assert model.classes == CLASSES
        expected = result.classifier.predict_proba(x_val)[:, [list(result.classifier.classes_).index(c)
                                                              for c in CLASSES]]
        np.testing.assert_allclose(model.predict_proba_features(x_val), expected, rtol=1e-6)
    assert model.metrics["accuracy"] == pytest.approx(ev["accuracy"])
    evaluation = runs.read_json_artifact(recorded, "evaluation.json")
    assert evaluation["confusion_matrix"]["counts"] == ev["confusion_matrix"].to_numpy().tolist()
    assert (recorded.artifact_dir / "confusion_matrix.png").is_file()


def test_cli_train_then_list_and_show(tmp_path: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feats = write_features(tmp_path / "feats")
    main(["train", "--features", str(feats), "--classifier", "logistic_regression", "--name", "lr-lite0"])
    main(["train", "--features", str(feats), "--classifier", "random_forest", "--name", "rf-lite0",
          "--param", "n_estimators=5", "--param", "max_depth=1"])  # a deliberately weak forest
    captured = capsys.readouterr()
    out = captured.out
    assert "lr-lite0" in out and "accuracy" in out and "Cultivated" in out
    # the features' made-up weights give no network to export (1280 features, not 16): trained and recorded
    # all the same, on torch, with one line saying so and how to retry
    warned = [line for line in captured.err.splitlines() if "not exported" in line]
    assert len(warned) == 2 and warned[0].startswith("geoclf: warning: model 'lr-lite0' was not exported to ONNX (")
    assert warned[0].endswith("it scores on torch until `geoclf models export lr-lite0` exports it")
    assert "exported network" not in out
    assert runs.get_run("rf-lite0").tags["geoclf.export.error"] == warned[1].removeprefix("geoclf: warning: ")
    artifact_line = next(line for line in out.splitlines() if line.startswith("model artifact -> "))
    assert (Path(artifact_line.removeprefix("model artifact -> ")) / "model.json").is_file()

    main(["runs", "list", "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in listed] == ["lr-lite0", "rf-lite0"]  # best first
    assert listed[1]["parameters"]["classifier.max_depth"] == 1
    assert listed[0]["metrics"]["accuracy"] >= listed[1]["metrics"]["accuracy"]

    main(["runs", "show", "lr-lite0"])
    shown = capsys.readouterr().out
    assert "confusion matrix" in shown and "per class" in shown
    assert str(runs.artifact_path("lr-lite0")) in shown


def write_mixed(tmp_path: Path) -> list[Path]:
    return [write_features(tmp_path / "a"), write_features(tmp_path / "b", backbone="resnet50", seed=1)]


def write_short_vectors(tmp_path: Path) -> list[Path]:
    feats = write_features(tmp_path / "feats")
    other = write_features(tmp_path / "other", dim=12, seed=5, parts=1)
    shutil.copy(other / "part-00000.parquet", feats / "part-00002.parquet")
    meta = json.loads((feats / "features.json").read_text())
    (feats / "features.json").write_text(json.dumps({**meta, "chips": meta["chips"] + 160}))
    return [feats]


@pytest.mark.parametrize(("make", "args", "message"), [
    (lambda t: [write_features(t / "f", splits=("val",))], [], "no labelled chips in the train split"),
    (lambda t: [write_features(t / "f", splits=("train",))], [], "no labelled chips in the validation split"),
    (lambda t: [write_features(t / "f", val_only=("Herbaceous",))], [], "'Herbaceous' is in the validation split"),
    (write_mixed, [], "different backbones cannot be mixed: backbone is resnet50"),
    (write_short_vectors, [], "12-long features where features.json says 16"),
    (lambda t: [write_features(t / "f", chips=500)], [], "holds 160 of 500 chips"),
    (lambda t: [write_features(t / "f")] * 2, [], "appears more than once"),
    (lambda t: [write_features(t / "f")], ["--classifier", "svm"], "logistic_regression, random_forest"),
    (lambda t: [write_features(t / "f")], ["--param", "depth=3"], "unknown parameter 'depth'.*max_iter"),
    (lambda t: [write_features(t / "f")], ["--param", "C=-1"], "'C' parameter of LogisticRegression"),
    (lambda t: [write_features(t / "f")], ["--param", "C"], "not key=value"),
    (lambda t: [t / "empty"], [], "not a features directory"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, runs_dir: Path,
                                                         capsys: pytest.CaptureFixture[str], make: Any,
                                                         args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    dirs = make(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *[a for d in dirs for a in ("--features", str(d))], "--name", "bad", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert runs.list_runs(include_unfinished=True).empty
    assert not list(runs_dir.rglob("model.json"))


def test_a_single_training_class_is_refused(tmp_path: Path, runs_dir: Path) -> None:
    feats = write_features(tmp_path / "f", classes=["Forest"])
    with pytest.raises(InputError, match="single class"):
        train_classifier(feats)


def test_class_order_and_legend_come_from_the_chip_index(tmp_path: Path, runs_dir: Path) -> None:
    scheme = {"Cultivated": [81, 82], "Herbaceous": [71], "Forest": [41, 42], "Developed": [21, 22, 23, 24]}
    index = gpd.GeoDataFrame({"chip_id": ["a"], "source": ["x.tif"], "col_off": [0], "row_off": [0],
                              "width": [8], "height": [8]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:26919")
    index.attrs["geoclf"] = {"params": {"classes": scheme}, "classes": list(scheme)}
    path = write_index(index, tmp_path / "tiles" / "chips.parquet")
    result = train_classifier(write_features(tmp_path / "f", index=path), name="custom")
    assert result.classes == list(scheme)
    assert load_model(result.artifact_dir).class_groups == scheme


def test_features_of_several_directories_are_read_together(tmp_path: Path) -> None:
    first = write_features(tmp_path / "a", n=50)
    second = write_features(tmp_path / "b", n=30, seed=1)
    data = load_features([first, second])
    assert data.features.shape == (80, 16) and data.features.dtype == np.float32
    assert len(data.rows) == 80 and "ndvi_mean" in data.rows.columns
    x_val, y_val = data.split("val")
    assert len(x_val) == len(y_val) == int((data.rows["split"] == "val").sum())


def test_parse_params() -> None:
    assert parse_params(["C=0.5", "n_estimators=200", "class_weight=balanced", "max_depth=None",
                         "bootstrap=false", "solver = saga"]) == {
        "C": 0.5, "n_estimators": 200, "class_weight": "balanced", "max_depth": None, "bootstrap": False,
        "solver": "saga"}


def test_block_scaler_gives_every_block_the_same_total_variance() -> None:
    """1,280 CNN columns beside 22 spectral ones: each block standardized, then weighed to carry D/k variance."""
    from geoclf.classifiers import block_scaler, make_classifier

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(5, 3, (200, 40)), rng.normal(-2, 0.1, (200, 4))], axis=1)
    scaled = block_scaler({"cnn": [0, 40], "spectral": [40, 44]}).fit_transform(x)
    variance = scaled.var(axis=0)
    assert variance[:40].sum() == pytest.approx(22.0) and variance[40:].sum() == pytest.approx(22.0)
    assert np.allclose(scaled.mean(axis=0), 0, atol=1e-9)
    with pytest.raises(InputError, match="do not tile the vector"):
        block_scaler({"cnn": [0, 40], "spectral": [41, 44]})
    pipeline = make_classifier("logistic_regression", blocks={"cnn": [0, 40], "spectral": [40, 44]})
    assert type(pipeline.named_steps["scale"]).__name__ == "ColumnTransformer"
    assert type(make_classifier("logistic_regression").named_steps["scale"]).__name__ == "StandardScaler"
