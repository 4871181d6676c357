"""Scoring an area of many scenes block by block: exactly-once output, one dataset, the mosaic (issue 16).

The path of the scale benchmark (benchmarks/scale_benchmark.py) at 2,000 chips: 25 virtual scenes (VRTs that
read one synthetic scene at other places), a spectral model, a LocalCluster with a worker killed mid-run. The
workers tile, score and write their own GeoParquet partitions and map tiles; the client writes the VRT
mosaic and copies it to ``landuse.tif``. Checked: every chip of the area exactly once (against
:func:`tiling.tile` of the same rasters), no partition written twice by the rerun, the dataset read as one
table by pyarrow, geopandas, dask-geopandas and DuckDB, and every map pixel the class of its chip.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import geopandas as gpd
import numpy as np
import pyarrow.dataset as ds
import pytest
import rasterio

import tiling
from geoclf.landuse import ScoreOutput
from geoclf.partitions import read_summary
from geoclf.score import score
from tiling.parallel import dask_client
from tiling.synth import virtual_scenes

SCENES = 25


@pytest.fixture(scope="module")
def spectral_model(small_scene, tmp_path_factory):
    """A logistic regression on spectral features of small_scene's chips: cheap per chip, a real model."""
    from geoclf.classifiers import train_classifier
    from geoclf.features import featurize

    work = tmp_path_factory.mktemp("spectral-model")
    tiling.tile([small_scene.naip], small_scene.nlcd, work / "chips", params=tiling.TileParams(min_purity=0.4),
                progress=False)
    featurize(work / "chips", work / "features", backbone="spectral", scheduler="sync", record_run=False,
              progress=False)
    result = train_classifier(work / "features", "logistic_regression", runs_dir=work / "runs")
    return result.artifact_dir


@pytest.fixture(scope="module")
def area(small_scene, tmp_path_factory):
    """25 scenes side by side (5 x 5), each a VRT reading small_scene's pixels: ~2,000 chips."""
    scenes = virtual_scenes(small_scene.naip, tmp_path_factory.mktemp("area"), SCENES, columns=5)
    expected = tiling.tile(scenes, None, params=tiling.TileParams(max_nodata=0.5), progress=False)
    assert len(expected) >= 2000 and expected["scene"].nunique() == SCENES
    return scenes, expected


def test_an_area_of_25_scenes_is_scored_exactly_once_into_one_dataset_and_one_map(spectral_model, area,
                                                                                       tmp_path):
    scenes, expected = area
    out = tmp_path / "out"
    output = ScoreOutput(out)
    errors: list[BaseException] = []
    with dask_client("local", n_workers=2) as client:
        pids = list(client.run(os.getpid).values())

        def run() -> None:
            try:
                score(str(spectral_model), out, naip=scenes, scheduler=client, progress=False,
                      chips_per_partition=64, html_map=False)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.time() + 300
        while not output.dataset_files() and time.time() < deadline:
            time.sleep(0.1)
        os.kill(pids[1], signal.SIGKILL)  # a worker dies mid-run: Dask reruns its task elsewhere
        thread.join(600)
    assert not errors, errors
    files = output.dataset_files()
    assert len(files) >= 2 * SCENES  # partitions by scene: predictions/<scene>/part-NNNNN.parquet
    assert {f.parent.name for f in files} == set(expected["scene"])

    # exactly once: the chips of tile() over the same rasters, each in one row of one partition
    table = ds.dataset(output.dataset, format="parquet").to_table()
    ids = table.column("chip_id").to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == set(expected["chip_id"])
    assert sum(read_summary(f)["rows"] for f in files) == len(ids)

    # one dataset for geopandas, dask-geopandas and DuckDB (when installed)
    frame = gpd.read_parquet(output.dataset)
    assert len(frame) == len(ids) and frame.crs == expected.crs
    assert frame.set_index("chip_id").geometry.geom_equals_exact(
        expected.set_index("chip_id").geometry.loc[frame["chip_id"]], tolerance=1e-6).all()
    dask_geopandas = pytest.importorskip("dask_geopandas")
    assert len(dask_geopandas.read_parquet(f"{output.dataset}/*/part-*.parquet")) == len(ids)
    duckdb = pytest.importorskip("duckdb")
    counted = duckdb.sql(f"select count(*), count(distinct chip_id) from "
                         f"read_parquet('{output.dataset}/*/part-*.parquet')").fetchall()[0]
    assert counted == (len(ids), len(ids))

    # the map: the VRT mosaic of the blocks' tiles, copied to landuse.tif; each chip's pixel holds its class
    classes = output.classes
    with rasterio.open(out / "landuse.tif") as dataset:
        codes, transform = dataset.read(1), dataset.transform
    assert (out / "landuse.vrt").is_file() and (out / "landuse_probs.vrt").is_file()
    assert (codes > 0).sum() == len(frame)
    size = 224.0
    col = np.rint((frame["ix"].to_numpy() * size - transform.c) / transform.a).astype(int)
    row = np.rint((transform.f - (frame["iy"].to_numpy() + 1) * size) / -transform.e).astype(int)
    lookup = {name: i + 1 for i, name in enumerate(classes.names)}
    assert (codes[row, col] == frame["pred"].map(lookup).to_numpy()).all()

    # a rerun resumes: nothing is scored or written again
    stamps = {f: f.stat().st_mtime_ns for f in files}
    score(str(spectral_model), out, naip=scenes, scheduler="sync", progress=False, chips_per_partition=64,
          html_map=False)
    assert {f: f.stat().st_mtime_ns for f in output.dataset_files()} == stamps

    # past SINGLE_FILE_CHIPS there is no predictions.parquet: the dataset is the table that stages read
    whole = output.read_predictions()
    (out / "predictions.parquet").unlink()
    from_dataset = ScoreOutput(out).read_predictions()
    assert sorted(from_dataset["chip_id"]) == sorted(whole["chip_id"])
    assert set(whole.columns) <= set(from_dataset.columns)
