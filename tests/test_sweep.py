"""Sweeps: grids and random search, fits on a LocalCluster of real worker processes, runs under one parent.

Features directories are generated in the documented format (docs/architecture.md, Features) with
seeded numpy: one Gaussian cluster per class, chips in spatial blocks, so no CNN is needed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from geoclf import runs
from geoclf.artifact import load_model
from geoclf.sweep import best_of_sweep, candidates, grid, parse_space, run_sweep, sample, sweep_children
from tiling.errors import InputError

CLASSES = ["Developed", "Forest", "Cultivated"]


def write_features(out: Path, n: int = 240, dim: int = 12, seed: int = 0, blocks: int = 8,
                   with_blocks: bool = True, signal: float = 1.0, **meta: Any) -> Path:
    """A features directory: noisy class clusters (``signal`` scales how far apart); blocks 0-1 are validation,
    the rest train. The same seed gives the same chips, labels and blocks whatever the signal."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.2, (len(CLASSES), dim)) * signal
    codes = rng.integers(0, len(CLASSES), n)
    x = (centers[codes] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    block = rng.integers(0, blocks, n)
    table = {
        "chip_id": pa.array([f"scene:{i}_0" for i in range(n)], pa.string()),
        "label": pa.array(np.asarray(CLASSES, dtype=object)[codes].tolist(), pa.string()),
        "split": pa.array(np.where(block < 2, "val", "train").tolist(), pa.string()),
        "features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim),
    }
    if with_blocks:
        table["block"] = pa.array([f"b{b}" for b in block], pa.string())
    out.mkdir(parents=True)
    pq.write_table(pa.table(table), out / "part-00000.parquet")
    (out / "features.json").write_text(json.dumps({
        "backbone": "efficientnet_lite0", "weights": "default", "feature_layer": "global average pool",
        "feature_dim": dim, "bands": [1, 2, 3], "mean": [0.5] * 3, "std": [0.5] * 3, "input_size": 224,
        "chip_size": 224, "chips": n, "source": {"kind": "index", "path": str(out / "gone.parquet"),
                                                 "sha256": "c0ffee"}, **meta}))
    return out


def split_arrays(feats: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_parquet(feats / "part-00000.parquet")
    frame = frame[frame["split"] == split]
    return np.stack(frame["features"].to_numpy()), frame["label"].to_numpy()




@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """Two real worker processes, shared by the module's tests (a start-up costs seconds)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as local:
        yield local


def test_parse_space_grid_and_random() -> None:
    space = parse_space(["n_estimators=100,300", "max_depth=10,none", "class_weight=balanced,none"])
    assert space == {"n_estimators": [100, 300], "max_depth": [10, None], "class_weight": ["balanced", None]}
    combos = grid(space)
    assert len(combos) == 8 and combos[0] == {"n_estimators": 100, "max_depth": 10, "class_weight": "balanced"}
    assert len({json.dumps(c, sort_keys=True) for c in combos}) == 8
    drawn = sample(space, 3, seed=1)
    assert len(drawn) == 3 and all(c in combos for c in drawn)
    assert drawn == sample(space, 3, seed=1)  # seeded
    assert sample(space, 50) == combos  # more draws than combinations: the whole grid
    assert parse_space(["hidden=[64,32],[128]"]) == {"hidden": [[64, 32], [128]]}


@pytest.mark.parametrize(("args", "message"), [
    (("logistic_regression", {"Cc": [1.0]}),
     r"unknown parameter 'Cc' for logistic_regression; valid parameters:.*\bC\b"),
    (("logistic_regression", {}), r"the parameter grid is empty"),
    (("logistic_regression", {"C": []}), r"the parameter grid is empty"),
    (("random_forest", {"n_estimators": [10, -5]}), r"'n_estimators' parameter of RandomForestClassifier must be"),
    (("svm", {"C": [1]}), r"unknown classifier 'svm'"),
])
def test_bad_grids_fail_in_one_line(args: tuple[str, dict[str, Any]], message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        candidates(*args)
    assert "\n" not in str(info.value)


def test_bad_param_syntax() -> None:
    with pytest.raises(InputError, match="has no values: the grid would be empty"):
        parse_space(["C="])
    with pytest.raises(InputError, match="is not KEY=VALUE1,VALUE2"):
        parse_space(["C"])
    with pytest.raises(InputError, match="given twice"):
        parse_space(["C=1", "C=2"])


def test_sweep_on_worker_processes_records_children_under_one_parent(tmp_path: Path, runs_dir: Path,
                                                                     cluster: Any) -> None:
    feats = write_features(tmp_path / "feats")
    space = {"C": [0.001, 0.1, 10.0]}
    result = run_sweep(feats, "logistic_regression", space, name="lr-sweep", scheduler=cluster, progress=False)

    # every fit is a finished child run of the parent, with its parameters and metrics
    children = sweep_children(result.parent_id)
    assert len(children) == 3 and all(c.parent_id == result.parent_id for c in children)
    assert sorted(c.params["classifier.C"] for c in children) == [0.001, 0.1, 10.0]
    parent = runs.get_run(result.parent_id)
    assert parent.params["n_fits"] == 3 and parent.tags["geoclf.sweep"] == "parent"

    # the metrics are those of the same pipelines fitted by hand on the train split, scored on validation
    x_train, y_train = split_arrays(feats, "train")
    x_val, y_val = split_arrays(feats, "val")
    expected = {c: accuracy_score(y_val, make_pipeline(StandardScaler(), LogisticRegression(
        C=c, max_iter=1000, random_state=0)).fit(x_train, y_train).predict(x_val)) for c in space["C"]}
    for child in children:
        assert child.metrics["accuracy"] == pytest.approx(expected[child.params["classifier.C"]])
    best_c = max(expected, key=lambda c: (expected[c], -space["C"].index(c)))
    assert result.best_params == {"C": best_c}
    assert result.best_score == pytest.approx(expected[best_c])
    assert best_of_sweep("lr-sweep").run_id == result.best_run_id
    assert list(result.fits["accuracy"]) == sorted(result.fits["accuracy"], reverse=True)

    # each child saved a model artifact that loads like geoclf train's
    model = load_model(result.best_run_name)
    assert model.classes == CLASSES
    np.testing.assert_allclose(model.predict_proba_features(x_val).sum(axis=1), 1, rtol=1e-5)
    assert model.spec["provenance"]["sweep_parent"] == result.parent_id

    # the features went to the cluster once; each task carried only its parameters
    assert result.data_bytes > x_train.nbytes + x_val.nbytes
    assert result.task_bytes < 500


def test_spatial_cross_validation_chooses_by_blocks(tmp_path: Path, runs_dir: Path, cluster: Any) -> None:
    feats = write_features(tmp_path / "feats", seed=3)
    result = run_sweep(feats, "random_forest", {"n_estimators": [10], "max_depth": [1, None]}, cv_folds=3,
                       scheduler=cluster, progress=False)
    assert result.metric == "cv_accuracy"
    children = sweep_children(result.parent_id)
    assert len(children) == 2 and all("cv_accuracy" in c.metrics and "accuracy" in c.metrics for c in children)
    assert runs.get_run(result.best_run_id).metrics["cv_accuracy"] == max(c.metrics["cv_accuracy"] for c in children)

    # cv_accuracy is the mean over folds of whole spatial blocks, as scikit-learn computes it by hand
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GroupKFold, cross_val_score

    from geoclf.features import read_features

    frame = read_features(feats)[1]  # the rows in the order geoclf fits them (by chip id): GroupKFold's folds
    train = frame[frame["split"] == "train"]
    x, y, blocks = np.stack(train["features"].to_numpy()), train["label"].to_numpy(), train["block"].to_numpy()
    for child in children:
        depth = child.params["classifier.max_depth"]
        pipeline = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=10, max_depth=depth,
                                                                          random_state=0))
        by_hand = cross_val_score(pipeline, x, y, groups=blocks, cv=GroupKFold(n_splits=3)).mean()
        assert child.metrics["cv_accuracy"] == pytest.approx(by_hand)


def test_sweep_bad_input_leaves_no_runs(tmp_path: Path, runs_dir: Path) -> None:
    feats = write_features(tmp_path / "feats")
    with pytest.raises(InputError, match=r"unknown metric 'acc'; valid metrics: accuracy, balanced_accuracy"):
        run_sweep(feats, "logistic_regression", {"C": [1.0]}, metric="acc", scheduler="sync", progress=False)
    with pytest.raises(InputError, match=r"spans 6 spatial blocks, too few for 7"):
        run_sweep(feats, "logistic_regression", {"C": [1.0]}, cv_folds=7, scheduler="sync", progress=False)
    no_blocks = write_features(tmp_path / "noblocks", with_blocks=False)
    with pytest.raises(InputError, match=r"needs the chip index's blocks"):
        run_sweep(no_blocks, "logistic_regression", {"C": [1.0]}, cv_folds=2, scheduler="sync", progress=False)
    with pytest.raises(InputError, match=r"unknown parameter 'gamma'"):
        run_sweep(feats, "logistic_regression", {"gamma": [1.0]}, scheduler="sync", progress=False)
    assert runs.list_run_records(sort=None, include_unfinished=True) == []


def test_random_search_in_process(tmp_path: Path, runs_dir: Path) -> None:
    feats = write_features(tmp_path / "feats", seed=5)
    result = run_sweep(feats, "logistic_regression", {"C": [0.01, 0.1, 1.0, 10.0], "fit_intercept": [True, False]},
                       search="random", n_iter=2, seed=2, scheduler="sync", progress=False)
    assert len(result.fits) == 2
    assert len(sweep_children(result.parent_id)) == 2


def test_a_fit_of_a_sweep_is_the_model_train_would_save(tmp_path: Path, runs_dir: Path) -> None:
    """A sweep's fit and ``geoclf train`` with the same parameters record the same model: its ground chip size
    (which scoring tiles at), classes, legend and predictions."""
    from geoclf.classifiers import train_classifier

    feats = write_features(tmp_path / "feats", chip_size_m=134.4)
    result = run_sweep(feats, "logistic_regression", {"C": [0.5]}, scheduler="sync", progress=False)
    swept = load_model(result.best_run_id)
    trained = load_model(train_classifier(feats, params={"C": 0.5}, name="lr-trained").artifact_dir)
    assert swept.chip_size_m == trained.chip_size_m == 134.4
    assert (swept.classes, swept.class_groups) == (trained.classes, trained.class_groups)
    x_val, _ = split_arrays(feats, "val")
    np.testing.assert_array_equal(swept.predict_proba_features(x_val), trained.predict_proba_features(x_val))
    assert {k: v for k, v in swept.spec["provenance"].items() if k not in ("run_id", "sweep_parent")} == {
        k: v for k, v in trained.spec["provenance"].items() if k != "run_id"}


def test_cli_sweep_register_promote_and_load_by_alias(tmp_path: Path, runs_dir: Path, cluster: Any,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from geoclf.cli import main

    feats = write_features(tmp_path / "feats", seed=7)
    address = cluster.scheduler_address  # the CLI's --cluster takes a scheduler address as well
    main(["sweep", "--features", str(feats), "--classifier", "random_forest", "--param", "n_estimators=10",
          "--param", "max_depth=3,none", "--cluster", address, "--name", "rf"])
    out = capsys.readouterr().out
    assert "best by accuracy" in out and "2 fits" in out
    parent = runs.get_run("rf")
    best = best_of_sweep("rf")

    main(["models", "register", "best-of-sweep", "--run", parent.run_id[:8], "--name", "landuse-naip"])
    assert "as landuse-naip version 1" in capsys.readouterr().out
    main(["models", "promote", "landuse-naip", "--version", "1", "--stage", "production"])
    assert "landuse-naip@production -> version 1" in capsys.readouterr().out

    # NAME@ALIAS and NAME/VERSION load the best fit's artifact wherever a model is accepted
    for ref in ("landuse-naip@production", "landuse-naip/1"):
        model = load_model(ref)
        assert model.spec["provenance"]["run_id"] == best.run_id

    with pytest.raises(SystemExit) as exit_info:
        main(["models", "register", "best-of-sweep", "--run", best.run_id, "--name", "x"])
    assert exit_info.value.code == 2
    assert "is not a sweep" in capsys.readouterr().err


def test_sweep_scales_an_adaptive_cloud_cluster_from_zero(tmp_path: Path, runs_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The same recipe as scoring: an EC2Cluster (its SDK faked, see test_cluster.py) adapting 0 -> 2 workers."""
    from test_cluster import cloud_recipe, fake_aws, fake_cloud

    from geoclf.cluster import cluster_from_recipe

    feats = write_features(tmp_path / "feats", seed=11)
    recipe = cloud_recipe(tmp_path, "aws", adaptive={"minimum": 0, "maximum": 2})
    with fake_cloud() as cloud:
        fake_aws(monkeypatch, cloud)
        with cluster_from_recipe(recipe, quiet=True) as cluster:
            assert cloud.roles("worker") == []
            result = run_sweep(feats, "logistic_regression", {"C": [0.1, 1.0]}, scheduler=cluster, progress=False)
            assert 1 <= len(cloud.roles("worker")) <= 2  # worker VMs were started for the sweep
        assert cloud.machines == {}  # and deleted with the cluster
    assert len(sweep_children(result.parent_id)) == 2


@pytest.mark.slow  # a CNN featurizes and scores a synthetic scene on the CPU: tens of seconds
def test_done_when_sweep_register_promote_then_score_by_alias(tmp_path: Path, runs_dir: Path, cluster: Any,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's end state on the synthetic scene: a sweep on worker processes, its best fit registered and
    promoted, and ``geoclf score --model NAME@production`` scoring with it."""
    import geopandas as gpd

    import tiling
    from geoclf.cli import main
    from geoclf.features import featurize
    from tiling.synth import make_scene

    scene = make_scene(tmp_path / "scene", size_m=2240, seed=2)
    tiling.tile([scene.naip], scene.nlcd, tmp_path / "chips", scheduler="sync", progress=False,
                params=tiling.TileParams(min_purity=0.5, block_size_m=448))
    featurize(tmp_path / "chips", tmp_path / "feats", scheduler="sync", progress=False, record_run=False)

    result = run_sweep(tmp_path / "feats", "logistic_regression", {"C": [0.01, 1.0]}, name="scene-sweep",
                       scheduler=cluster, progress=False)
    assert {r.parent_id for r in sweep_children("scene-sweep")} == {result.parent_id}
    main(["models", "register", "best-of-sweep", "--run", "scene-sweep", "--name", "landuse-naip"])
    main(["models", "promote", "landuse-naip", "--version", "1", "--stage", "production"])
    capsys.readouterr()

    main(["score", "--model", "landuse-naip@production", "--naip", str(scene.naip), "--out", str(tmp_path / "out"),
          "--scheduler", "sync"])
    predictions = gpd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert len(predictions) > 0
    assert predictions["model"].eq(result.best_run_name).all()  # the registered best fit did the scoring


def test_sweep_compares_featurizers_and_classifiers_by_spatial_cv(tmp_path: Path, runs_dir: Path) -> None:
    """Directories of different featurizers are compared, not mixed: every classifier on each, chosen by spatial
    cross-validation; the sweep's name then loads the winner (what a recipe's score stage does)."""
    from sklearn.model_selection import GroupKFold, cross_val_score

    from geoclf.features import read_features
    from geoclf.models import resolve_model_dir

    strong = write_features(tmp_path / "strong", seed=5)
    weak = write_features(tmp_path / "weak", seed=5, signal=0.15, backbone="mobilenet_v2")
    result = run_sweep([weak, strong], ["logistic_regression", "random_forest"],
                       {"C": [0.01, 1.0], "n_estimators": [20]}, cv_folds=3, name="compare", scheduler="sync",
                       progress=False)
    fits = result.fits
    assert len(fits) == 2 * (2 + 1)  # two featurizers x (two C for LR, one forest)
    assert sorted(set(fits["features"])) == ["efficientnet_lite0", "mobilenet_v2"]
    assert sorted(set(fits["classifier"])) == ["logistic_regression", "random_forest"]
    assert fits.loc[fits["classifier"] == "random_forest", "C"].isna().all()  # each takes the keys it has
    assert result.best_features == "efficientnet_lite0" and result.metric == "cv_accuracy"
    by_featurizer = fits.groupby("features")["cv_accuracy"].max()
    assert by_featurizer["efficientnet_lite0"] > by_featurizer["mobilenet_v2"] + 0.1

    # each child's cv_accuracy is scikit-learn's over folds of whole blocks, on its own featurizer's vectors
    for child in sweep_children("compare"):
        source = strong if child.params["features"] == [str(strong.resolve())] else weak
        frame = read_features(source)[1]  # the rows in the order geoclf fits them (by chip id)
        train = frame[frame["split"] == "train"]
        x, y = np.stack(train["features"].to_numpy()), train["label"].to_numpy()
        if child.params["classifier"] == "logistic_regression":
            estimator = LogisticRegression(C=child.params["classifier.C"], max_iter=1000, random_state=0)
        else:
            from sklearn.ensemble import RandomForestClassifier

            estimator = RandomForestClassifier(n_estimators=20, random_state=0)
        by_hand = cross_val_score(make_pipeline(StandardScaler(), estimator), x, y, groups=train["block"].to_numpy(),
                                  cv=GroupKFold(n_splits=3)).mean()
        assert child.metrics["cv_accuracy"] == pytest.approx(by_hand)

    # the sweep's name is a model reference to its winner
    assert resolve_model_dir("compare") == resolve_model_dir(result.best_run_id)
    assert load_model("compare").spec["name"] == result.best_run_name

    # featurizers are compared on the same chips only
    other = write_features(tmp_path / "other", seed=6, backbone="resnet18")
    with pytest.raises(InputError, match="hold different labelled chips"):
        run_sweep([strong, other], "logistic_regression", {"C": [1.0]}, cv_folds=3, scheduler="sync",
                  progress=False)


def test_a_recipe_picks_the_best_featurizer_by_spatial_cv(quickstart, tmp_path: Path) -> None:
    """A recipe featurizes the quickstart's chips a second way, sweeps both featurizers by spatial CV and scores
    with the sweep's name: the map is the winner's (scored on 24 of the chips: which model made a map does not
    take 400 chips through the winner's network to tell)."""
    import tiling
    from geoclf.recipes import load_recipe, run_recipe

    work = quickstart[0]
    chips, features = work / "chips", work / "features"
    few = tiling.read_index(chips).sort_values("chip_id").head(24)
    scored = tiling.write_index(few, tmp_path / "few-chips" / "chips.parquet").parent
    (tmp_path / "compare.yaml").write_text(f"""name: compare
runs_dir: runs
stages:
  - featurize: {{chips: {chips}, out: features-spectral, backbone: spectral, scheduler: sync}}
  - sweep: {{features: [{features}, features-spectral], classifier: logistic_regression, cv_folds: 3,
            name: compare, scheduler: sync}}
  - score: {{model: compare, chips: {scored}, out: map, scheduler: sync, html: false}}
""")
    recipe = load_recipe(tmp_path / "compare.yaml", tmp_path)
    run_recipe(recipe, echo=lambda _: None)
    parent = runs.get_run("compare", runs_dir=tmp_path / "runs")
    children = sweep_children("compare", runs_dir=tmp_path / "runs")
    assert len(children) == 2 and parent.params["featurizers"] == ["efficientnet_lite0+spectral", "spectral"]
    best = max(children, key=lambda c: c.metrics["cv_accuracy"])
    assert parent.tags["geoclf.sweep.best_run_id"] == best.run_id
    predictions = pd.read_parquet(tmp_path / "map" / "predictions.parquet")
    assert set(predictions["model"]) == {best.name} and sorted(predictions["chip_id"]) == sorted(few["chip_id"])
