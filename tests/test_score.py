"""Scoring whole areas: predictions, a map on the exact chip grid, killed workers, reruns, bad input."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine

import tiling
from geoclf.cli import main
from geoclf.score import score
from tiling.parallel import dask_client


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A scene, and a logistic regression on EfficientNet-Lite0 features of its chips."""
    from geoclf.classifiers import train_classifier
    from geoclf.features import featurize
    from tiling.synth import make_scene

    root = tmp_path_factory.mktemp("score")
    scene = make_scene(root / "scene", size_m=2240, seed=2)
    tiling.tile([scene.naip], scene.nlcd, root / "chips", scheduler="sync", progress=False,
                params=tiling.TileParams(min_purity=0.5, block_size_m=448))
    featurize(root / "chips", root / "feats", scheduler="sync", progress=False)
    result = train_classifier(root / "feats", "logistic_regression", name="score-test-lr")
    return scene, result


def test_score_writes_predictions_and_a_map_on_the_chip_grid(trained, tmp_path):
    scene, model = trained
    written = score(str(model.artifact_dir), tmp_path / "out", naip=[scene.naip], scheduler="sync",
                    progress=False, chips_per_partition=40)
    predictions = gpd.read_parquet(written["predictions"])
    chips = tiling.read_index(tmp_path / "out" / "chips.parquet")
    assert sorted(predictions["chip_id"]) == sorted(chips["chip_id"]) and predictions["chip_id"].is_unique
    probs = predictions[[f"prob_{c}" for c in model.classes]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert (predictions["pred"] == np.asarray(model.classes)[probs.argmax(axis=1)]).all()
    assert predictions["model"].eq("score-test-lr").all() and predictions["date"].notna().all()
    with rasterio.open(written["landuse"]) as ds:
        codes = ds.read(1)
        # the map's grid is the chip grid: 224 m pixels whose corners are the cells' corners
        assert ds.crs.to_string() == "EPSG:26919"
        assert ds.transform == Affine(224, 0, chips["ix"].min() * 224, 0, -224, (chips["iy"].max() + 1) * 224)
        assert ds.shape == (chips["iy"].max() - chips["iy"].min() + 1, chips["ix"].max() - chips["ix"].min() + 1)
        names = json.loads(ds.tags()["CLASS_NAMES"]) if "CLASS_NAMES" in ds.tags() else None
    row, col = chips["iy"].max() - predictions["iy"], predictions["ix"] - chips["ix"].min()
    expected = predictions["pred"].map({c: i + 1 for i, c in enumerate(model.classes)})
    assert (codes[row, col] == expected.to_numpy()).all()
    if names is not None:
        assert names == model.classes
    assert {"html", "png"} <= set(written)
    # agreement with NLCD where the scene was labeled: the map means something
    labeled = tiling.read_index(scene.naip.parent.parent / "chips")
    joined = predictions.merge(labeled[["cell", "label"]], on="cell")
    assert (joined["pred"] == joined["label"]).mean() > 0.75


def test_killed_worker_and_rerun_score_every_chip_once(trained, tmp_path):
    scene, model = trained
    out = tmp_path / "out"
    errors: list[BaseException] = []
    with dask_client("local", n_workers=2) as client:
        pids = list(client.run(os.getpid).values())

        def run() -> None:
            try:
                score(str(model.artifact_dir), out, naip=[scene.naip], scheduler=client, progress=False,
                      chips_per_partition=4, html_map=False)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.time() + 300
        while not list((out / "partitions").glob("part-*.parquet")) and time.time() < deadline:
            time.sleep(0.2)
        os.kill(pids[1], signal.SIGKILL)
        thread.join(600)
    assert not errors, errors
    first = gpd.read_parquet(out / "predictions.parquet")
    chips = tiling.read_index(out / "chips.parquet")
    assert first["chip_id"].is_unique and sorted(first["chip_id"]) == sorted(chips["chip_id"])
    parts = {p: p.stat().st_mtime_ns for p in (out / "partitions").glob("part-*.parquet")}
    score(str(model.artifact_dir), out, naip=[scene.naip], scheduler="sync", progress=False, chips_per_partition=4,
          html_map=False)
    again = gpd.read_parquet(out / "predictions.parquet")
    assert {p: p.stat().st_mtime_ns for p in parts} == parts  # nothing scored twice
    assert sorted(again["chip_id"]) == sorted(first["chip_id"])


def _cli_error(capsys, args) -> str:
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    return err


def test_bad_inputs_are_one_line(trained, tmp_path, capsys):
    scene, model = trained
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    assert "broken" in _cli_error(capsys, ["score", "--model", str(broken), "--naip", str(scene.naip), "--out",
                                           str(tmp_path / "o1")])
    aoi = tmp_path / "aoi.geojson"
    from shapely import box

    gpd.GeoDataFrame(geometry=[box(-100, 40, -99.9, 40.1)], crs="EPSG:4326").to_file(aoi)
    assert "misses" in _cli_error(capsys, ["score", "--model", str(model.artifact_dir), "--naip", str(scene.naip),
                                           "--aoi", str(aoi), "--out", str(tmp_path / "o2")])
    assert "cannot reach the Dask scheduler" in _cli_error(capsys, [
        "score", "--model", str(model.artifact_dir), "--naip", str(scene.naip), "--out", str(tmp_path / "o3"),
        "--scheduler", "tcp://127.0.0.1:9"])
    two_band = tmp_path / "two.tif"
    with rasterio.open(scene.naip) as src:
        profile = src.profile | {"count": 2}
        with rasterio.open(two_band, "w", **profile) as dst:
            dst.write(src.read([1, 2]))
    assert "two.tif" in _cli_error(capsys, ["score", "--model", str(model.artifact_dir), "--naip", str(two_band),
                                            "--out", str(tmp_path / "o4")])
    assert not (tmp_path / "o4" / "predictions.parquet").exists()
