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
import shapely
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
    out = workdir / "map-2016"  # scored by the recipe (in this process: 400 chips are a single partition)
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
        while not list((out / "predictions").glob("*/part-*.parquet")) and time.time() < deadline:
            time.sleep(0.2)
        os.kill(pids[1], signal.SIGKILL)
        thread.join(600)
    assert not errors, errors
    first = gpd.read_parquet(out / "predictions.parquet")
    chips = tiling.read_index(out / "chips.parquet")
    assert first["chip_id"].is_unique and sorted(first["chip_id"]) == sorted(chips["chip_id"])
    parts = {p: p.stat().st_mtime_ns for p in (out / "predictions").glob("*/part-*.parquet")}
    score(str(model.path), out, naip=[naip], aoi=aoi, scheduler="sync", progress=False, chips_per_partition=8,
          html_map=False)
    again = gpd.read_parquet(out / "predictions.parquet")
    assert {p: p.stat().st_mtime_ns for p in parts} == parts  # nothing scored twice
    assert sorted(again["chip_id"]) == sorted(first["chip_id"])


def test_workers_score_the_model_the_client_checked_not_the_files(trained, tmp_path):
    """The task ships the model as the client loaded and checked it: a worker reads nothing of the artifact,
    so files replaced or removed after the client's check (shared storage) never run there."""
    import shutil

    from geoclf.landuse import read_predictions
    from geoclf.models import load_model
    from geoclf.partitions import read_partitions, run_partitions
    from geoclf.score import ScoreTask

    workdir, model = trained
    copy = tmp_path / "model"
    shutil.copytree(model.path, copy)
    task = ScoreTask(str(copy), loaded=load_model(copy))
    shutil.rmtree(copy)  # gone before any worker starts
    table = tiling.read_index(workdir / "map-2016" / "chips.parquet").head(6).drop(columns="geometry")
    with dask_client("local", n_workers=1) as client:
        run_partitions(table, tmp_path / "parts", task, settings={}, chips_per_partition=3, scheduler=client,
                       progress=False)
    ours = read_partitions(tmp_path / "parts")
    reference = read_predictions(workdir / "map-2016").set_index("chip_id").loc[ours["chip_id"]]
    assert list(ours["pred"]) == list(reference["pred"])
    columns = [f"prob_{c}" for c in model.classes]
    assert np.allclose(ours[columns].to_numpy(), reference[columns].to_numpy(), atol=1e-5)


@pytest.fixture
def quick_unreachable(monkeypatch):
    """Connecting to an address where no scheduler listens is given up after 1 s, not the default 10 s: the tests
    below check the one-line error, not how long Dask keeps trying a refused port."""
    import tiling.parallel

    monkeypatch.setattr(tiling.parallel, "SCHEDULER_CONNECT_TIMEOUT", "1s")


def _cli_error(capsys, args) -> str:
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    return err


def test_bad_inputs_are_one_line(trained, tmp_path, capsys, quick_unreachable):
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


def _corner_aoi(naip, path, size_m: float):
    """An AOI of ``size_m`` x ``size_m`` inside the scene's lower-left corner: a few chips, a quick score."""
    with rasterio.open(naip) as ds:
        left, bottom = ds.bounds.left, ds.bounds.bottom
        gpd.GeoDataFrame(geometry=[box(left + 10, bottom + 10, left + size_m, bottom + size_m)],
                         crs=ds.crs).to_file(path)
    return path


def test_rerun_with_other_grid_parameters_refuses_before_tiling(trained, tmp_path, capsys):
    workdir, model = trained
    naip, other_naip = workdir / "scene" / "naip_2016.tif", workdir / "scene" / "naip_2010.tif"
    aoi = _corner_aoi(naip, tmp_path / "aoi.geojson", 600)
    out = tmp_path / "out"
    first = ["score", "--model", str(model.path), "--naip", str(naip), "--aoi", str(aoi), "--out", str(out),
             "--scheduler", "sync"]
    main(first)
    grid = (out / "chips.parquet").read_bytes()
    parts = {p: p.stat().st_mtime_ns for p in (out / "predictions").glob("*/part-*.parquet")}
    smaller = _corner_aoi(naip, tmp_path / "smaller.geojson", 400)
    changes = [(["--chip-size-m", "448"], "chip size 224 m there, 448 m now"),
               (["--max-nodata", "0.2"], "max nodata 0.5 there, 0.2 now"),
               (["--aoi", str(smaller)], "another AOI"),
               (["--naip", str(other_naip)], "other NAIP rasters")]
    for change, words in changes:
        args = list(first)
        if change[0] in args:  # replace the option's value
            args[args.index(change[0]) + 1] = change[1]
        else:
            args += change
        err = _cli_error(capsys, args)
        lines = [line for line in err.splitlines() if line.startswith("geoclf: error:")]
        assert len(lines) == 1 and str(out) in lines[0] and words in lines[0], err
        assert (out / "chips.parquet").read_bytes() == grid  # refused before tiling anything
    _corner_aoi(naip, aoi, 400)  # the AOI file edited in place is another AOI too
    assert "the AOI file has changed" in _cli_error(capsys, first)
    _corner_aoi(naip, aoi, 600)
    main(first)  # the very same parameters: the grid and the partitions are reused
    assert (out / "chips.parquet").read_bytes() == grid
    assert {p: p.stat().st_mtime_ns for p in parts} == parts


def test_a_first_run_that_failed_before_scoring_does_not_block_the_corrected_rerun(trained, tmp_path, capsys,
                                                                                       quick_unreachable):
    workdir, model = trained
    naip = workdir / "scene" / "naip_2016.tif"
    aoi = _corner_aoi(naip, tmp_path / "aoi.geojson", 900)
    out = tmp_path / "out"
    args = ["score", "--model", str(model.path), "--naip", str(naip), "--aoi", str(aoi), "--out", str(out)]
    assert "cannot reach the Dask scheduler" in _cli_error(capsys, [*args, "--scheduler", "tcp://127.0.0.1:9"])
    assert not list((out / "predictions").glob("*/part-*.parquet"))
    score(str(model.path), out, naip=[naip], aoi=aoi, chip_size_m=448, scheduler="sync", progress=False,
          html_map=False)
    chips = tiling.read_index(out / "chips.parquet")
    predictions = gpd.read_parquet(out / "predictions.parquet")
    assert chips.attrs["geoclf"]["chip_size_m"] == 448
    assert sorted(predictions["chip_id"]) == sorted(chips["chip_id"]) and len(chips) >= 2
    with rasterio.open(out / "landuse.tif") as ds:
        assert ds.res == (448, 448) and (ds.read(1) > 0).sum() == len(chips)


@pytest.mark.parametrize(("cores", "tasks", "n_workers", "asked", "expected"), [
    (2, 2, None, None, "sync"),  # 2 cores: one process outscored two workers at 900 and 3,600 chips
    (2, 2, None, "auto", "sync"),
    (2, 2, 2, None, None),  # workers asked for: a LocalCluster of them
    (16, 2, None, None, None),
    (16, 1, None, None, "sync"),  # a single partition: no worker could share it
    (16, 1, 4, "local", "sync"),  # even asked for by name (for_tasks runs it here: with every core)
    (16, 2, None, "local", "local"),
    (16, 0, None, None, "sync"),  # a rerun with nothing left to score starts no cluster
    (2, 1, None, "tcp://10.0.0.5:8786", "tcp://10.0.0.5:8786"),
])
def test_the_default_scheduler_runs_in_process_where_workers_cannot_pay_off(cores, tasks, n_workers, asked,
                                                                             expected, monkeypatch):
    from geoclf import partitions
    from geoclf.partitions import partition_scheduler, task_threads

    monkeypatch.setattr(partitions, "default_workers", lambda: cores)
    chosen = partition_scheduler(asked, tasks, n_workers)
    assert chosen == expected
    if chosen == "sync":  # then the model gets every core, not a worker's share
        assert task_threads(chosen, n_workers) == cores


def test_a_default_run_of_one_block_scores_here_with_every_core(trained, tmp_path):
    """One block is scored in this process, and its model gets every core (it had one core's share: 1 of 2)."""
    import torch

    from tiling.parallel import default_workers

    if default_workers() < 2:
        pytest.skip("one core: every share of it is the whole")
    workdir, model = trained
    naip = workdir / "scene" / "naip_2016.tif"
    aoi = _corner_aoi(naip, tmp_path / "aoi.geojson", 700)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        score(str(model.path), tmp_path / "out", naip=[naip], aoi=aoi, progress=False, html_map=False)
        assert torch.get_num_threads() == default_workers()
    finally:
        torch.set_num_threads(saved)
    assert len(gpd.read_parquet(tmp_path / "out" / "predictions.parquet")) >= 4


def test_a_local_cluster_starts_while_the_client_loads_the_model_and_is_closed_after(trained, tmp_path,
                                                                                     monkeypatch):
    """The workers start while the client loads the model (seconds that were on the critical path), and the
    cluster is closed when score returns: no thread or worker process left behind."""
    import psutil

    from geoclf import score as score_module

    workdir, model = trained
    naip = workdir / "scene" / "naip_2016.tif"
    aoi = _corner_aoi(naip, tmp_path / "aoi.geojson", 700)
    starting: list[list[str]] = []
    load_model = score_module.load_model

    def loading(*args, **kwargs):  # the real load, noting which cluster threads run meanwhile
        starting.append(sorted(t.name for t in threading.enumerate() if t.name.startswith("geoclf-cluster")))
        return load_model(*args, **kwargs)

    monkeypatch.setattr(score_module, "load_model", loading)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    score(str(model.path), tmp_path / "out", naip=[naip], aoi=aoi, scheduler="local", n_workers=1,
          chips_per_partition=4, progress=False, html_map=False)
    assert starting == [["geoclf-cluster-start"]]
    assert not [t for t in threading.enumerate() if t.name.startswith("geoclf-cluster")]
    assert not [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]
    predictions = gpd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert len(predictions) == len(tiling.read_index(tmp_path / "out" / "chips.parquet")) > 4  # several blocks


def test_map_products_are_the_same_with_the_imagery_read_alongside(trained, tmp_path, monkeypatch):
    # write_mosaic_maps reads the page's imagery on a thread while it writes the COG, polygons and PNG: every
    # product must be what writing them one after the other gives (the page's images included)
    import re
    import shutil

    from geoclf import maps
    from geoclf.landuse import ScoreOutput
    from geoclf.landuse.mosaic import MapTile
    from geoclf.partitions import read_summary
    from geoclf.score import _model_scheme

    workdir, model = trained
    scheme = _model_scheme(model)
    pages = {}
    for overlap in (True, False):
        out = ScoreOutput.at(shutil.copytree(workdir / "map-2016", tmp_path / str(overlap)))
        predictions = gpd.read_parquet(out.predictions)
        monkeypatch.setattr(maps, "OVERLAP_IMAGERY", overlap)
        tiles = [MapTile.from_summary(read_summary(file)["tile"]) for file in out.dataset_files()]
        written = maps.write_mosaic_maps(out, tiles, scheme, maps.AreaFacts.of(predictions),
                                         predictions=lambda table=predictions: table)
        assert list(written) == ["landuse", "categories", "qml", "sld", "polygons", "geojson", "html", "png"]
        pages[overlap] = {key: path.read_bytes() for key, path in written.items()}
    images = {overlap: re.findall(rb"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", files.pop("html"))
              for overlap, files in pages.items()}
    assert len(images[True]) == 4 and images[True] == images[False]  # class overlay, two imagery layers, ...
    assert pages[True] == pages[False]


def test_the_page_imagery_is_read_while_the_blocks_are_scored(trained, tmp_path, monkeypatch):
    # the page's imagery needs only the rasters (a raster without overviews is decoded whole: seconds a
    # quarter-quad): it is read from the moment the run knows its rasters, not after the last block, and once
    import re
    import time

    from geoclf import maps

    workdir, model = trained
    naip = workdir / "scene" / "naip_2016.tif"
    calls: list[tuple[float, list[str]]] = []
    page_imagery = maps.page_imagery

    def reading(sources, *args, **kwargs):  # the real read, noting when it began
        calls.append((time.time(), list(sources)))
        return page_imagery(sources, *args, **kwargs)

    monkeypatch.setattr(maps, "page_imagery", reading)
    out = tmp_path / "out"
    aoi = _corner_aoi(naip, tmp_path / "aoi.geojson", 700)  # a few blocks of a few chips
    score(str(model.path), out, naip=[naip], aoi=aoi, scheduler="sync", chips_per_partition=4, progress=False)
    assert [sources for _, sources in calls] == [[str(naip)]]
    first_written = min(path.stat().st_mtime for path in (out / "predictions").rglob("part-*.parquet"))
    assert calls[0][0] < first_written
    page = (out / "map.html").read_text()
    assert "Imagery (natural colour)" in page and "Imagery (colour infrared)" in page
    assert len(re.findall(r"data:image/webp;base64,", page)) == 2


def test_the_page_imagery_of_a_raster_without_overviews_is_read_from_its_blocks_previews(trained, tmp_path,
                                                                                         monkeypatch):
    # a raster without overviews is decoded whole for the page's imagery (a second decode of every pixel the
    # blocks decoded: ~15% of a whole in-process score): its blocks write previews of what they read, and the
    # page reads those, never the raster
    import re

    from rasterio.windows import Window

    from geoclf import webmap

    workdir, model = trained
    plain = tmp_path / "plain.tif"
    with rasterio.open(workdir / "scene" / "naip_2016.tif") as src:
        window = Window(101, 57, 1650, 1420)  # off the 224 m grid: margins beyond the whole cells on all sides
        profile = src.profile | {"width": window.width, "height": window.height,
                                 "transform": src.window_transform(window)}
        with rasterio.open(plain, "w", **profile) as dst:
            dst.write(src.read(window=window))
    read: list[str] = []  # rasters the page read
    stood_in: list[list[str]] = []  # the previews it read instead
    original, stand_ins = webmap._read_imagery, webmap._read_stand_ins

    def reading(source, *args, **kwargs):  # the real reads, noting what they read
        read.append(str(source))
        return original(source, *args, **kwargs)

    def reading_previews(files, *args, **kwargs):
        stood_in.append(sorted(files))
        return stand_ins(files, *args, **kwargs)

    monkeypatch.setattr(webmap, "_read_imagery", reading)
    monkeypatch.setattr(webmap, "_read_stand_ins", reading_previews)
    out = tmp_path / "out"
    score(str(model.path), out, naip=[plain], scheduler="sync", chips_per_partition=8, progress=False)
    previews = sorted(str(path) for path in (out / "tiles").rglob("*.imagery.tif"))
    assert len(previews) == len(list((out / "predictions").rglob("part-*.parquet"))) > 2
    assert read == [] and stood_in == [previews]
    # together they are the whole raster, its margins included
    with rasterio.open(plain) as ds:
        bounds = ds.bounds
    boxes = []
    for path in previews:
        with rasterio.open(path) as preview:
            boxes.append(box(*preview.bounds).buffer(1e-6, join_style="mitre"))  # their edges meet in floats
    assert shapely.union_all(boxes).covers(box(*bounds))
    page = (out / "map.html").read_text()
    assert "Imagery (natural colour)" in page and "Imagery (colour infrared)" in page
    assert len(re.findall(r"data:image/webp;base64,", page)) == 2
    # a raster with overviews (the page reads those: a few reads, not its pixels) gets no previews
    import shutil

    from rasterio.enums import Resampling

    overviews = shutil.copy(plain, tmp_path / "overviews.tif")
    with rasterio.open(overviews, "r+") as ds:
        ds.build_overviews([2, 4, 8], Resampling.average)
    read.clear()
    score(str(model.path), tmp_path / "out-overviews", naip=[overviews], scheduler="sync", chips_per_partition=8,
          progress=False)
    assert not list((tmp_path / "out-overviews" / "tiles").rglob("*.imagery.tif"))
    assert read == [str(overviews)] and stood_in == [previews]
