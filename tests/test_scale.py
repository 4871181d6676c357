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


def test_featurize_reads_an_index_of_25_scenes_by_slices_and_writes_every_chip_once(area, tmp_path):
    import pickle

    import pyarrow.parquet as pq

    from geoclf.features import featurize, read_features
    from tiling.errors import InputError
    from tiling.slices import plan_index_slices

    _, expected = area
    # an index in row groups of 700 rows (another tool's writer): slices never straddle two of them
    tiling.write_index(expected, tmp_path / "whole.parquet")
    index = tmp_path / "chips" / "chips.parquet"
    index.parent.mkdir()
    pq.write_table(pq.read_table(tmp_path / "whole.parquet"), index, row_group_size=700)
    plan = plan_index_slices(index, 64)
    # the client's plan: a few numbers per slice, whatever the index holds
    assert sum(s.cells for s in plan) == len(expected) and max(s.cells for s in plan) <= 64
    assert all(s.stop <= 700 for s in plan) and len(pickle.dumps(plan)) / len(plan) < 120
    out = tmp_path / "features"
    with dask_client("local", n_workers=2) as client:
        featurize(index.parent, out, backbone="spectral", scheduler=client, chips_per_partition=64,
                  record_run=False, progress=False)
        files = sorted(out.glob("part-*.parquet"))
        assert len(files) == len(plan)
        table = ds.dataset(files, format="parquet").to_table()
        # exactly once, one partition per slice: the slice's chips, by chip id
        assert [pq.read_table(f, columns=["chip_id"]).column(0).to_pylist() for f in files] == [
            sorted(expected["chip_id"].iloc[s.first_row:s.first_row + s.cells]) for s in plan]
        assert table.num_rows == len(expected)
        meta, frame = read_features(out)
        assert meta["chips"] == len(expected) and frame["chip_id"].is_monotonic_increasing

        # a rerun resumes: only the partitions that went missing are computed again
        for lost in files[3:5]:
            lost.unlink()
        stamps = {f: f.stat().st_mtime_ns for f in files if f.exists()}
        featurize(index.parent, out, backbone="spectral", scheduler=client, chips_per_partition=64,
                  record_run=False, progress=False)
    assert {f: f.stat().st_mtime_ns for f in files if f in stamps} == stamps
    again = ds.dataset(sorted(out.glob("part-*.parquet")), format="parquet").to_table()
    assert again.column("chip_id").to_pylist() == table.column("chip_id").to_pylist()

    # a bad row in a later row group is refused before any work, by its row number in the whole file
    good = pq.read_table(index)
    width = good.column("width").to_numpy().copy()
    width[1500] = 0
    column = good.schema.get_field_index("width")
    pq.write_table(good.set_column(column, good.schema.field(column), [width]), index, row_group_size=700)
    with pytest.raises(InputError, match=r"row 1500 .*window width is 0"):
        featurize(index.parent, tmp_path / "refused", backbone="spectral", scheduler="sync", record_run=False,
                  progress=False)
    assert not (tmp_path / "refused").exists()


@pytest.fixture(scope="module")
def two_dates(small_scene, spectral_model, tmp_path_factory):
    """Score outputs of two years over 6 virtual scenes (3 x 2), 32 cells per partition: ~25 partitions a date."""
    from tiling.synth import make_scene

    work = tmp_path_factory.mktemp("two-dates")
    earlier = make_scene(work / "scene-2010", size_m=2240, seed=0, year=2010, nlcd=False)
    outputs = []
    for base, name in ((earlier.naip, "y2010"), (small_scene.naip, "y2016")):
        scenes = virtual_scenes(base, work / f"scenes-{name}", 6, columns=3, name=name)
        score(str(spectral_model), work / name, naip=scenes, scheduler="sync", progress=False,
              chips_per_partition=32, html_map=False)
        outputs.append(work / name)
    return outputs


def test_change_over_a_dataset_of_6_scenes_reads_a_partition_and_its_neighbours_at_a_time(two_dates, tmp_path,
                                                                                              monkeypatch):
    import json

    import pandas as pd
    from shapely import box

    from geoclf.change import partitioned, run_change

    before, after = two_dates
    before_files, after_files = ScoreOutput(before).dataset_files(), ScoreOutput(after).dataset_files()
    assert len(before_files) >= 12 and len(after_files) >= 12
    west, south, east, north = gpd.read_parquet(before / "predictions.parquet").to_crs(4326).total_bounds
    middle = (west + east) / 2
    zones = gpd.GeoDataFrame({"name": ["west", "east"]}, geometry=[box(west, south, middle, north),
                                                                   box(middle, south, east, north)], crs=4326)
    zones.to_file(tmp_path / "zones.geojson")

    # the whole-table path: the predictions files, one table a date
    whole = tmp_path / "whole"
    run_change(before / "predictions.parquet", after / "predictions.parquet", whole, zones=tmp_path / "zones.geojson",
               html_map=False)

    reads: list[tuple[str | None, int]] = []
    real = partitioned.read_partition

    def watched(partition):
        table = real(partition)
        reads.append((None if partition.path is None else str(partition.path), len(table)))
        return table

    monkeypatch.setattr(partitioned, "read_partition", watched)
    parts = tmp_path / "parts"
    run_change(before, after, parts, zones=tmp_path / "zones.geojson", html_map=False)

    # partition by partition: no whole table, each read one dataset file, each file read a few times at most
    assert reads and all(path is not None for path, _ in reads)
    assert max(rows for _, rows in reads) <= 32
    counts = pd.Series([path for path, _ in reads]).value_counts()
    assert set(counts.index) <= {str(f) for f in before_files + after_files}
    assert counts[[str(f) for f in after_files]].eq(1).all() and counts.max() <= 4
    assert len(reads) < 3 * (len(before_files) + len(after_files))

    # the same products as the whole table gives
    for name in ("transitions.csv", "classes.csv", "urbanization.csv", "zones.csv"):
        a, b = pd.read_csv(whole / name), pd.read_csv(parts / name)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9)
    transitions = pd.read_csv(parts / "transitions.csv")
    assert transitions.loc[transitions["changed"], "chips"].sum() > 0  # two years apart: some land changed
    a, b = gpd.read_parquet(whole / "changes.parquet"), gpd.read_parquet(parts / "changes.parquet")
    assert list(a["chip_id_after"]) == list(b["chip_id_after"]) and list(a["cell"]) == list(b["cell"])
    pd.testing.assert_frame_equal(pd.DataFrame(a.drop(columns="geometry")), pd.DataFrame(b.drop(columns="geometry")),
                                  check_exact=False, rtol=1e-9)
    with rasterio.open(whole / "change.tif") as x, rasterio.open(parts / "change.tif") as y:
        assert x.transform == y.transform and x.crs == y.crs and x.colormap(1) == y.colormap(1)
        assert (x.read(1) == y.read(1)).all() and x.tags() == y.tags() and x.overviews(1) == y.overviews(1)
    info_whole, info_parts = (json.loads((d / "change.json").read_text()) for d in (whole, parts))
    for key in ("before", "after"):
        info_whole.pop(key), info_parts.pop(key)
    assert info_parts.keys() == info_whole.keys()
    for key, value in info_whole.items():
        assert info_parts[key] == (pytest.approx(value, rel=1e-9) if isinstance(value, float) else value), key
    assert sorted(p.name for p in parts.iterdir()) == sorted(p.name for p in whole.iterdir())


def test_a_trend_over_datasets_without_predictions_files_dates_the_maps_from_the_partitions(two_dates, tmp_path):
    import shutil

    from geoclf.trend import open_stack

    copies = []
    for output in two_dates:  # past SINGLE_FILE_CHIPS a score output has its dataset and no predictions.parquet
        copy = tmp_path / output.name
        shutil.copytree(output, copy, ignore=shutil.ignore_patterns("predictions.parquet"))
        copies.append(copy)
    whole, parts = open_stack(two_dates), open_stack(copies)
    for name in ("time", "date_first", "date_last", "model"):
        assert list(parts[name].to_numpy()) == list(whole[name].to_numpy()), name
    assert all(parts["model"].to_numpy())


def test_a_date_compared_with_itself_over_a_dataset_shows_no_change(two_dates, tmp_path):
    import json

    import pandas as pd

    from geoclf.change import run_change

    before, _ = two_dates
    written = run_change(before, before, tmp_path / "same", html_map=False)
    info = json.loads(written["json"].read_text())
    assert info["changed_chips"] == 0 and info["paired"] == info["paired_by_cell"] > 0
    assert info["unpaired_before"] == info["unpaired_after"] == 0
    assert len(gpd.read_parquet(written["changes"])) == 0
    transitions = pd.read_csv(written["transitions"])
    assert transitions.loc[transitions["changed"], "chips"].sum() == 0
    assert transitions["chips"].sum() == info["paired"]


@pytest.mark.parametrize("rows", [3, 0])
def test_a_partition_table_is_the_geoparquet_geopandas_writes(rows):
    # a block's table is built without writing Parquet and reading it back: the very table that round trip
    # gives (columns, types, geo and pandas metadata), also for an empty block's all-missing columns
    import datetime as dt
    import io

    import pandas as pd
    import pyarrow.parquet as pq
    from shapely import box

    from geoclf.score import _geoparquet

    frame = gpd.GeoDataFrame({
        "chip_id": [f"s:{i}_0" for i in range(rows)], "cell": [f"EPSG:26919:224:224:{i}:0" for i in range(rows)],
        "ix": np.arange(rows, dtype=np.int64), "crs": ["EPSG:26919"] * rows,
        "date": pd.Series([dt.date(2016, 8, 17)] * rows, dtype="object"),
        "label": pd.Series([None] * rows, dtype=object),
        "pred": pd.Series(["Forest"] * rows, dtype=object), "prob_Forest": np.ones(rows, dtype=np.float32),
        "nodata_frac": np.zeros(rows)}, geometry=[box(i * 224, 0, i * 224 + 224, 224) for i in range(rows)],
        crs="EPSG:26919")
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    written = pq.read_table(io.BytesIO(buffer.getvalue()))
    table = _geoparquet(frame)
    assert table.num_rows == rows
    assert table.equals(_geoparquet_of(written)) and table.schema.metadata == _geoparquet_of(written).schema.metadata


def _geoparquet_of(table):
    import pyarrow as pa

    from geoclf.score import _TYPES

    fields = [field.with_type(_TYPES[field.name]) if field.name in _TYPES and pa.types.is_null(field.type)
              else field for field in table.schema]
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def test_the_change_tally_joins_the_changed_pairs_of_many_partitions_into_a_few_frames(two_dates, monkeypatch):
    """A frame per partition's few changed pairs made the client grow with the area (~100 kB each, issue 16): the
    tally joins every CHANGED_BATCH partitions' frames into one, its string columns one Arrow chunk each (not a
    chunk of a few strings per frame), and the changed pairs stay those of each partition, in order."""
    import pandas as pd

    from geoclf.change import partitioned
    from geoclf.change.partitioned import ChangeTally, area_crs, date_partitions, partition_pairs
    from geoclf.change.run import _partition_classes, load_scheme

    before, after = (date_partitions(d) for d in two_dates)
    scheme = load_scheme(two_dates[0], _partition_classes(before[0]))
    monkeypatch.setattr(partitioned, "CHANGED_BATCH", 4)
    tally = ChangeTally(list(scheme.names))
    each = []
    for found in partition_pairs(before, after, crs=area_crs(after)):
        aligned = found.aligned
        changed = aligned[aligned["class_before"].astype(str) != aligned["class_after"].astype(str)]
        if len(changed):
            each.append(changed)
        tally.add(found)
    assert len(each) >= 12
    assert len(tally.changed) <= len(each) // 4 + 3  # one per partition before the fix
    import pyarrow as pa

    joined = pa.Table.from_pandas(pd.DataFrame(tally.changed[0]).drop(columns="geometry"))
    strings = [name for name in joined.column_names if pa.types.is_string(joined.column(name).type)
               or pa.types.is_large_string(joined.column(name).type)]
    assert "cell" in strings and all(joined.column(name).num_chunks == 1 for name in strings)  # not one a frame
    expected = pd.concat(each, ignore_index=True)
    got = tally.changed_pairs()
    assert got.crs == expected.crs and list(got.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(pd.DataFrame(got), pd.DataFrame(expected))
