"""Featurization end to end: pretrained features that separate land use, Dask workers that die, resumption."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import tiling
from geoclf.cli import main
from geoclf.features import featurize, read_features
from tiling.parallel import dask_client


@pytest.fixture(scope="module")
def chips(quickstart):
    """The quickstart's chip index (a 4,480 m synthetic scene)."""
    return quickstart[0] / "chips"


@pytest.fixture(scope="module")
def few_chips(chips):
    """30 chips of the index: enough partitions for the Dask and resume tests, quick to featurize."""
    index = tiling.read_index(chips)
    return tiling.write_index(index.sort_values("chip_id").head(30), chips.parent / "few" / "chips.parquet")


@pytest.fixture(scope="module")
def pretrained(quickstart):
    """The quickstart's EfficientNet-Lite0 features (embedded offline ImageNet weights)."""
    return quickstart[0] / "features"


def test_pretrained_features_are_one_row_per_chip(chips, pretrained):
    """The default featurization: EfficientNet-Lite0's 1,280 features of RGB, then 22 spectral statistics of RGBN."""
    meta, table = read_features(pretrained)
    index = tiling.read_index(chips)
    assert meta["featurizer"] == "combined" and meta["backbone"] == "efficientnet_lite0"
    assert meta["feature_dim"] == 1302 and meta["blocks"] == {"cnn": [0, 1280], "spectral": [1280, 1302]}
    assert meta["bands"] == [1, 2, 3, 4] and meta["spectral"]["bands"] == [1, 2, 3, 4]  # NIR used: it is there
    assert meta["weights_ref"]["kind"] == "embedded"
    assert sorted(table["chip_id"]) == sorted(index["chip_id"])  # one row per chip, no more
    assert table["features"].map(len).eq(1302).all()
    # the spectral block is the spectral featurizer's vector of the same chip
    vectors = np.stack(table["features"])
    np.testing.assert_array_equal(vectors[:, 1280:], np.stack(table["baseline"]))
    labels = index.set_index("chip_id")["label"]
    assert (table.set_index("chip_id")["label"] == labels.loc[table["chip_id"]]).all()


def test_pretrained_features_carry_over_to_another_year_and_random_ones_do_not(quickstart, pretrained, tmp_path):
    """Train on 2010 chips, predict the 2016 flight (other light, crops, lawns): ImageNet features hold up.

    The synthetic classes differ in colour enough that even random-init features separate them within one
    flight; across flights the random network makes several times the errors of the pretrained one.
    """
    from geoclf.classifiers import make_classifier

    workdir = quickstart[0]
    tiling.tile([workdir / "scene" / "naip_2016.tif"], workdir / "scene" / "nlcd.tif", tmp_path / "chips16",
                scheduler="sync", progress=False)
    errors = {}
    for weights, train_dir in (("default", pretrained), ("none", None)):
        if train_dir is None:
            train_dir = featurize(workdir / "chips", tmp_path / "f10-none", weights=weights, scheduler="sync",
                                  progress=False, record_run=False, spectral=False)
        test_dir = featurize(tmp_path / "chips16", tmp_path / f"f16-{weights}", weights=weights,
                             scheduler="sync", progress=False, record_run=False, spectral=False)
        _, train = read_features(train_dir)
        _, test = read_features(test_dir)
        train = train[train["split"] == "train"]
        cnn = slice(0, 1280)  # the CNN's block of the default (combined) features: the weights are compared
        model = make_classifier("logistic_regression").fit(np.stack(train["features"])[:, cnn], train["label"])
        errors[weights] = float((model.predict(np.stack(test["features"])[:, cnn]) != test["label"]).mean())
    # 2016 labels come from the 2010 NLCD, so the ~5% converted since count as errors for both
    assert errors["default"] <= 0.1, errors
    assert errors["none"] >= 2 * errors["default"], errors


def test_forest_is_greener_than_developed_in_nir_statistics(pretrained):
    _, table = read_features(pretrained)
    ndvi = table.groupby("label")["ndvi_mean"].mean()
    assert ndvi["Forest"] > ndvi["Developed"] + 0.1


def test_a_killed_worker_loses_nothing(few_chips, pretrained, tmp_path):
    """SIGKILL one worker process mid-run: the run finishes with exactly one row per chip."""
    out = tmp_path / "killed"
    errors: list[BaseException] = []
    with dask_client("local", n_workers=2) as client:
        pids = list(client.run(os.getpid).values())

        def run() -> None:
            try:
                featurize(few_chips, out, scheduler=client, progress=False, chips_per_partition=3,
                          record_run=False)
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.time() + 300
        while not list(out.glob("part-*.parquet")) and time.time() < deadline:
            time.sleep(0.2)
        os.kill(pids[0], signal.SIGKILL)
        worker.join(600)
    assert not errors, errors
    _, table = read_features(out)
    _, reference = read_features(pretrained)
    assert table["chip_id"].is_unique
    assert sorted(table["chip_id"]) == sorted(tiling.read_index(few_chips)["chip_id"])
    merged = table.merge(reference, on="chip_id", suffixes=("", "_ref"))
    assert np.allclose(np.stack(merged["features"]), np.stack(merged["features_ref"]), atol=1e-4)


def test_a_rerun_resumes_and_refuses_other_inputs(few_chips, tmp_path):
    out = featurize(few_chips, tmp_path / "f", scheduler="sync", progress=False, chips_per_partition=10,
                    record_run=False)
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) >= 2
    kept = {p: p.stat().st_mtime_ns for p in parts[1:]}
    parts[0].unlink()
    featurize(few_chips, out, scheduler="sync", progress=False, chips_per_partition=10, record_run=False)
    assert parts[0].exists()
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished partitions were not redone
    with pytest.raises(tiling.InputError, match="other chips or settings"):
        featurize(few_chips, out, backbone="mobilenet_v2", scheduler="sync", progress=False,
                  chips_per_partition=10, record_run=False)


def test_png_folder_gives_the_same_chips(chips, pretrained, tmp_path):
    from tiling.materialize import materialize_chips

    index = tiling.read_index(chips).head(12)
    materialize_chips(index, tmp_path / "png", "png", progress=False)
    out = featurize(tmp_path / "png", tmp_path / "f", scheduler="sync", progress=False, record_run=False)
    _, table = read_features(out)
    _, reference = read_features(pretrained)
    merged = table.merge(reference, on="chip_id", suffixes=("", "_ref"))
    assert len(merged) == 12 and (merged["label"] == merged["label_ref"]).all()
    # PNG chips hold the same RGB pixels, so the CNN features agree closely; their spectral block is RGB only
    meta, _ = read_features(out)
    assert meta["bands"] == [1, 2, 3] and meta["feature_dim"] == 1280 + 15
    cos = [a[:1280] @ b[:1280] / np.linalg.norm(a[:1280]) / np.linalg.norm(b[:1280])
           for a, b in zip(merged["features"], merged["features_ref"], strict=True)]
    assert min(cos) > 0.99


@pytest.mark.parametrize(("args", "needle"), [
    (["--backbone", "resnet17"], "resnet17"),
    (["--backbone", "resnet18", "--weights", "imagenet"], "efficientnet_lite0"),
])
def test_bad_backbones_are_one_line(chips, tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as exited:
        main(["featurize", "--chips", str(chips), "--out", str(tmp_path / "f"), "--scheduler", "sync", *args])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "f").exists() or not list((tmp_path / "f").glob("part-*"))


def test_runs_list_shows_featurize_runs(quickstart, capsys):
    # the quickstart's run history, named: a recipe's runs_dir holds for its own stages only
    main(["runs", "list", "--json", "--runs-dir", str(quickstart[0] / "runs")])
    import json

    runs = json.loads(capsys.readouterr().out)
    assert any(r["kind"] == "featurize" and r["parameters"].get("backbone") == "efficientnet_lite0" for r in runs)


def test_a_model_featurizes_chips_as_featurization_did(quickstart, chips, pretrained):
    """Scoring rebuilds the featurizer features.json describes, and computes the vectors training read."""
    from geoclf.featurizers import featurizer_from_meta
    from geoclf.models import load_model

    meta, table = read_features(pretrained)
    model = load_model("lr-lite0", runs_dir=quickstart[0] / "runs")
    assert model.featurizer == featurizer_from_meta(meta)  # one description, one code path
    rows = tiling.read_index(chips).set_index("chip_id").loc[table["chip_id"].iloc[:40:5]]
    with tiling.ChipReader(bands=model.bands, size=model.chip_size) as reader:
        batch = np.stack([reader.read(r.source, (r.col_off, r.row_off, r.width, r.height))
                          for r in rows.itertuples()])
    np.testing.assert_array_equal(model.featurize(batch), np.stack(table["features"].iloc[:40:5]))
