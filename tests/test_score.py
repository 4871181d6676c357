"""Scoring whole areas: predictions, a map on the exact chip grid, killed workers, reruns, bad input."""

from __future__ import annotations

import os
import signal
import threading
import time

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from shapely import box

import tiling
from geoclf.cli import main
from geoclf.score import score
from tiling.parallel import dask_client


@pytest.fixture(scope="module")
def trained(quickstart):
    """The quickstart's 2016 scene and its logistic regression on EfficientNet-Lite0 features."""
    from geoclf import runs
    from geoclf.artifact import load_model

    workdir = quickstart[0]
    model = load_model(runs.artifact_path(runs.get_run("lr-lite0", runs_dir=workdir / "runs")))
    return workdir, model


def test_score_writes_predictions_and_a_map_on_the_chip_grid(trained):
    workdir, model = trained
    out = workdir / "map-2016"  # scored by the recipe with a LocalCluster
    predictions = gpd.read_parquet(out / "predictions.parquet")
    chips = tiling.read_index(out / "chips.parquet")
    assert sorted(predictions["chip_id"]) == sorted(chips["chip_id"]) and predictions["chip_id"].is_unique
    probs = predictions[[f"prob_{c}" for c in model.classes]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert (predictions["pred"] == np.asarray(model.classes)[probs.argmax(axis=1)]).all()
    assert predictions["model"].eq("lr-lite0").all()
    assert (pd.to_datetime(predictions["date"]).dt.year == 2016).all()
    with rasterio.open(out / "landuse.tif") as ds:
        codes = ds.read(1)
        # the map's grid is the chip grid: 224 m pixels whose corners are the cells' corners
        assert ds.crs.to_string() == "EPSG:26919"
        assert ds.transform == Affine(224, 0, chips["ix"].min() * 224, 0, -224, (chips["iy"].max() + 1) * 224)
        assert ds.shape == (chips["iy"].max() - chips["iy"].min() + 1, chips["ix"].max() - chips["ix"].min() + 1)
    row, col = chips["iy"].max() - predictions["iy"], predictions["ix"] - chips["ix"].min()
    expected = predictions["pred"].map({c: i + 1 for i, c in enumerate(model.classes)})
    assert (codes[row, col] == expected.to_numpy()).all()
    assert (codes > 0).sum() == len(predictions)  # nodata outside the scored chips
    # against NLCD (2010 land cover; ~5% converted since) where the scene was labeled: the map means something
    labeled = tiling.read_index(workdir / "chips")
    joined = predictions.merge(labeled[["cell", "label"]], on="cell")
    assert (joined["pred"] == joined["label"]).mean() > 0.8


def test_killed_worker_and_rerun_score_every_chip_once(trained, tmp_path):
    workdir, model = trained
    naip = workdir / "scene" / "naip_2016.tif"
    out = tmp_path / "out"
    with rasterio.open(naip) as ds:  # a quarter of the scene keeps the test quick
        left, bottom, right, top = ds.bounds
        aoi = tmp_path / "aoi.geojson"
        gpd.GeoDataFrame(geometry=[box(left, bottom, (left + right) / 2, (bottom + top) / 2)],
                         crs=ds.crs).to_file(aoi)
    errors: list[BaseException] = []
    with dask_client("local", n_workers=2) as client:
        pids = list(client.run(os.getpid).values())

        def run() -> None:
            try:
                score(str(model.path), out, naip=[naip], aoi=aoi, scheduler=client, progress=False,
                      chips_per_partition=8, html_map=False)
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
    score(str(model.path), out, naip=[naip], aoi=aoi, scheduler="sync", progress=False, chips_per_partition=8,
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
    workdir, model = trained
    naip = workdir / "scene" / "naip_2016.tif"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    assert "broken" in _cli_error(capsys, ["score", "--model", str(broken), "--naip", str(naip), "--out",
                                           str(tmp_path / "o1")])
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[box(-100, 40, -99.9, 40.1)], crs="EPSG:4326").to_file(aoi)
    assert "misses" in _cli_error(capsys, ["score", "--model", str(model.path), "--naip", str(naip),
                                           "--aoi", str(aoi), "--out", str(tmp_path / "o2")])
    assert "cannot reach the Dask scheduler" in _cli_error(capsys, [
        "score", "--model", str(model.path), "--naip", str(naip), "--out", str(tmp_path / "o3"),
        "--scheduler", "tcp://127.0.0.1:9"])
    two_band = tmp_path / "two.tif"
    with rasterio.open(naip) as src:
        profile = src.profile | {"count": 2}
        with rasterio.open(two_band, "w", **profile) as dst:
            dst.write(src.read([1, 2]))
    assert "two.tif" in _cli_error(capsys, ["score", "--model", str(model.path), "--naip", str(two_band),
                                            "--out", str(tmp_path / "o4")])
    assert not (tmp_path / "o4" / "predictions.parquet").exists()
