"""Scoring whole areas: every chip of a set of NAIP rasters through a model artifact, on Dask, then maps.

The unit of work is a block of a raster's chip grid (:class:`tiling.blocks.SceneBlock`), not a row of a chip
table: the client reads the rasters' headers and cuts each raster's grid into blocks of a few hundred cells,
and each worker task (:class:`ScoreBlockTask`) tiles its block on the same snapped grid as tiling (unlabeled:
no NLCD needed), scores its chips in one pass (windows read, model, probabilities: no intermediate feature
files) and writes its own outputs: a GeoParquet partition of the predictions dataset
(``predictions/<scene>/part-NNNNN.parquet``) and the block's map tile. Only block descriptions go out and small
summaries come back, so the client's memory does not grow with the area; partitions are written atomically,
so reruns resume and a killed worker costs only its block. The land-use COG is painted from the tiles strip
by strip (:mod:`geoclf.landuse.mosaic`; ``landuse.vrt`` shows the same raster); areas up to
:data:`SINGLE_FILE_CHIPS` also get ``predictions.parquet`` and ``chips.parquet``, streamed from the dataset one
partition at a time.

A chip index given instead of rasters (its labels then give an accuracy report) is a table the client
already holds: it is scored in partitions of that table (:func:`geoclf.partitions.run_partitions`).
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from geopandas.io.arrow import _geopandas_to_arrow
from rasterio.crs import CRS

from geoclf.area import equal_area_crs
from geoclf.artifact import LandUseModel, artifact_digest, load_model_dir
from geoclf.chips import iter_batches
from geoclf.export import EXPORT_FIELD, model_has_network
from geoclf.landuse import MOSAIC_CRS, ScoreOutput, check_map_extent, classes_of
from geoclf.landuse.grid import block_to_grid, projected_crs
from geoclf.landuse.mosaic import MapTile, write_mosaic, write_tile
from geoclf.maps import AreaFacts, early_imagery, write_maps, write_mosaic_maps
from geoclf.models import load_model, resolve_model_dir
from geoclf.partitions import (
    part_name,
    partition_scheduler,
    print_dashboard,
    read_partitions,
    recorded_settings,
    run_partitions,
    run_plan,
    task_threads,
    worker_model,
)
from geoclf.runtime import (
    AUTO,
    check_export,
    check_model_runtime,
    choose_runtime,
    openvino_preferred,
    resolve_precision,
)
from geoclf.webmap import imagery_resolution, preview_step, write_imagery_preview
from tiling.blocks import SceneBlock, block_chips, block_pixels, block_window, plan_blocks
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.grid import parse_cell
from tiling.index import TileParams, read_index, write_index
from tiling.io import (
    ChipReader,
    PathLike,
    SceneInfo,
    WindowPixels,
    atomic_path,
    describe_naip,
    is_remote,
    kept_dataset,
    normalize_source,
)
from tiling.locks import locks_output
from tiling.parallel import Scheduler, StartingCluster, check_counts

#: The predictions table's name in a score output (:class:`geoclf.landuse.ScoreOutput` names every file).
PREDICTIONS = ScoreOutput.PREDICTIONS


@dataclass
class ScoreTask:
    """Score one partition of chips (runs on a worker): class probabilities for every chip.

    Attributes:
        model_dir: the model artifact directory, loaded once per worker process
            (:func:`geoclf.partitions.worker_model`).
        batch_size: chips per forward pass.
        torch_threads: threads the model may use (``None``: the Dask worker's thread count).
        trusted: the user's trust decision (``--trust``): the worker loads the artifact with it, so a classifier
            holding types outside geoclf's allowlist is refused on the worker too.
        digest: :func:`geoclf.artifact.artifact_digest` of the artifact the client checked; a worker refuses
            an artifact that no longer has it (``None``: no check, for direct use).
        runtime, precision: the inference runtime and its precision (see
            :meth:`geoclf.artifact.LandUseModel.use_runtime`).
        loaded: the model as the client loaded and checked it, shipped to the workers with the task (sent once
            to each): workers then neither read the artifact again nor import skops (seconds per worker).
            ``None``: each worker loads ``model_dir`` itself (with ``trusted`` and ``digest``).
    """

    model_dir: str
    batch_size: int = 32
    torch_threads: int | None = None
    trusted: bool = False
    digest: str | None = None
    runtime: str = "torch"
    precision: str = "auto"
    loaded: LandUseModel | None = None

    #: Two partitions may run at once in one process (:func:`geoclf.partitions.run_partitions`): one's chip
    #: reads while the other's model runs.
    side_by_side: ClassVar[bool] = True

    def __call__(self, part: pd.DataFrame) -> pa.Table:
        matrix, classes = self.probabilities(part)
        columns: dict[str, Any] = {
            "chip_id": pa.array(part["chip_id"].astype(str)),
            "pred": pa.array(np.asarray(classes, dtype=object)[matrix.argmax(axis=1)], pa.string()),
        }
        for i, name in enumerate(classes):
            columns[f"prob_{name}"] = pa.array(matrix[:, i])
        return pa.table(columns)

    def probabilities(self, part: pd.DataFrame, pixels: WindowPixels | None = None,
                      lent: tuple[str, Any] | None = None) -> tuple[np.ndarray, list[str]]:
        """The class probabilities of the chips ``part`` (chip index rows), ``(chips, classes)`` float32 in
        their order, and the classes' names.

        Args:
            part: the chips.
            pixels: a window of their raster already read (:func:`tiling.blocks.block_pixels`): the chips
                inside it are taken from it.
            lent: ``(source, dataset)``: a raster of the chips open in the caller, read through
                (:meth:`tiling.io.ChipReader.lend`) and left open.
        """
        model = self.model()
        # a features model's classifier runs once on the part's features: sklearn's checks and its column
        # transformer's dispatch cost about as much for 32 rows as for 512
        features = getattr(model, "predict_proba_features", None) is not None
        outputs = []
        with ChipReader(bands=model.bands, size=model.chip_size) as reader:
            reader.hold(pixels)
            if lent is not None:
                reader.lend(*lent)
            for _, chips in iter_batches(part, reader, self.batch_size):
                outputs.append(model.featurize(chips) if features else model.predict_proba(chips))
        if not outputs:
            return np.zeros((0, len(model.classes)), np.float32), list(model.classes)
        matrix = np.concatenate(outputs)
        if features:
            matrix = model.predict_proba_features(matrix)
        return np.asarray(matrix, dtype=np.float32), list(model.classes)

    def model(self) -> LandUseModel:
        """The model of this worker process, loaded on its first task and ready to predict.

        Raises:
            InputError: the artifact changed since the client checked it, or (without ``trusted``) its
                classifier holds types outside geoclf's allowlist (a model loaded here, not shipped).
        """
        # a shipped model is known by what the client checked (the artifact's digest, else its model.json,
        # which holds its files' checksums): a long-lived worker never keeps the model of an artifact that was
        # retrained in the same directory
        shipped = "" if self.loaded is None else self.digest or hashlib.sha256(
            json.dumps(self.loaded.spec, sort_keys=True, default=str).encode()).hexdigest()
        return worker_model(f"model:{self.model_dir}:{self.digest}:{self.trusted}:{shipped}:{self.runtime}:"
                            f"{self.precision}", self._load, self.torch_threads)

    def _load(self) -> LandUseModel:
        if self.loaded is not None:
            # the very model the client loaded and checked: nothing of the artifact is read here but an export,
            # whose hash the model's runtime checks before compiling it
            model = self.loaded
        else:
            # the files are what the client checked, and they load under the user's own trust decision: an
            # artifact replaced between the two loads (shared storage, a cloud cluster) runs nothing here
            if self.digest is not None and artifact_digest(self.model_dir) != self.digest:
                raise InputError(f"changed since scoring started (its files no longer have the sha256 "
                                 f"{self.digest[:12]}... the client checked); the worker refuses to load it",
                                 self.model_dir)
            model = load_model_dir(self.model_dir, trusted=self.trusted)
        return model.use_runtime(self.runtime, self.precision, self.torch_threads).prepare()


@locks_output("out")
def score(model: str, out: PathLike, *, naip: list[PathLike] | None = None, chips: PathLike | None = None,
          aoi: PathLike | None = None, scheduler: Scheduler = None, n_workers: int | None = None,
          batch_size: int = 32, chips_per_partition: int = 512, max_nodata: float = 0.5,
          chip_size_m: float | None = None, crs: Any = None,
          smooth: bool | int = False, probabilities: bool = False, html_map: bool = True, trusted: bool = False,
          runs_dir: PathLike | None = None, progress: bool = True, runtime: str = "auto",
          precision: str = "auto") -> dict[str, Path]:
    """Score an area with a model and write ``predictions.parquet`` and the maps into ``out``.

    Args:
        model: a model artifact directory or a run name/id from the run history.
        out: output directory; a rerun resumes (finished partitions are kept).
        naip: NAIP rasters to score (tiled on the model's chip grid, no labels needed).
        chips: instead of ``naip``, an existing chip index (its labels then give an accuracy report).
        aoi: optional vector file restricting the area (with ``naip``).
        scheduler: ``None``/``"auto"`` (this process where worker processes cannot pay off, else a
            LocalCluster: :func:`geoclf.partitions.partition_scheduler`), ``"local"`` (a LocalCluster),
            ``"sync"``, an address, a client or a cluster.
        n_workers: worker processes of a new LocalCluster.
        batch_size: chips per forward pass.
        chips_per_partition: chips per task and output partition.
        max_nodata: skip chips with more than this fraction without data (image collars).
        chip_size_m: ground side of a chip in metres (default: the model's training chips, else the model's
            chip size in pixels at the first raster's resolution).
        crs: map CRS (default: the rasters' CRS, or EPSG:5070 across UTM zones).
        smooth: width of the plurality filter of the class map (odd pixels; 1/``False`` none, ``True`` 3).
        probabilities: also write per-class probability bands.
        html_map: write ``map.html``.
        trusted: load a pickled classifier artifact without checks (see :func:`geoclf.models.load_model`).
        runs_dir: run history in which ``model`` names a run or a registered model (default: ``GEOCLF_RUNS``
            or the current directory).
        progress: show progress bars.
        runtime: inference runtime of the model's network: ``"auto"`` (OpenVINO where the artifact holds an
            export, openvino is installed and no CUDA GPU is visible, else torch:
            :func:`geoclf.runtime.choose_runtime`), ``"torch"``, or ``"openvino"`` (the network exported into
            the artifact by ``geoclf models export``, run on the CPU; see :mod:`geoclf.runtime`).
        precision: ``"auto"`` (OpenVINO: bf16 where the CPU has it, else fp32), ``"fp32"`` or ``"bf16"``.

    Returns:
        Output name -> path (``predictions``, ``landuse``, ``html``, ``png``, ...).
    """
    check_counts(batch_size=batch_size, chips_per_partition=chips_per_partition, n_workers=n_workers)
    model_dir = str(resolve_model_dir(model, runs_dir))
    with _early_cluster(scheduler, n_workers) as cluster:
        return _score(model, model_dir, out, naip, chips, aoi, scheduler, cluster, n_workers, batch_size,
                      chips_per_partition, max_nodata, chip_size_m, trusted, progress, runtime, precision,
                      {"crs": crs, "smooth": smooth, "probabilities": probabilities, "html_map": html_map})


#: Start a LocalCluster's workers while the client loads the model and plans the area, and close it while the
#: maps are written (:class:`tiling.parallel.StartingCluster`); ``False`` starts and closes it around the
#: partitions only (what ``benchmarks/score_fixed_costs.py`` compares against).
OVERLAP_CLUSTER = True


def _early_cluster(scheduler: Scheduler, n_workers: int | None) -> Any:
    """A LocalCluster starting now where the run will want one (:func:`partition_scheduler` with more than one
    partition), else nothing; a context that closes it."""
    if OVERLAP_CLUSTER and partition_scheduler(scheduler, 2, n_workers) in (None, "local"):
        return StartingCluster(n_workers)
    return nullcontext(None)


def _score(model: str, model_dir: str, out: PathLike, naip: list[PathLike] | None, chips: PathLike | None,
           aoi: PathLike | None, scheduler: Scheduler, cluster: StartingCluster | None, n_workers: int | None,
           batch_size: int, chips_per_partition: int, max_nodata: float, chip_size_m: float | None,
           trusted: bool, progress: bool, runtime: str, precision: str, maps: dict[str, Any]) -> dict[str, Path]:
    """:func:`score`, with ``cluster`` the LocalCluster starting meanwhile (or ``None``)."""
    # everything the client can check, before any output: the artifact loads under the user's trust decision,
    # and the network that will run is checked: on torch it builds (backbone weights as recorded, feature
    # length as the classifier's); on another runtime its export is the recorded file, and the torch network
    # is neither built nor shipped (seconds here, and torch, which a slim worker does not have)
    loaded = load_model(model_dir, trusted=trusted)
    digest = artifact_digest(model_dir)  # what the workers must find (see ScoreTask)
    chosen = choose_runtime(runtime, loaded.spec.get("export"))
    if check_model_runtime(chosen, precision):
        check_export(model_dir, loaded.spec.get("export"), chosen, precision)
    else:
        loaded.prepare()
    auto, runtime = runtime == AUTO, chosen
    output = ScoreOutput.at(out)
    # torch_threads is set once the partitions, and hence where they run, are known (_placed)
    task = ScoreTask(model_dir=model_dir, batch_size=batch_size,
                     trusted=trusted, digest=digest, runtime=runtime, precision=precision, loaded=loaded)
    settings: dict[str, Any] = {"model": model_stamp(model_dir)}
    if runtime != "torch":  # other probabilities (within the runtime's tolerance): not mixed with torch's
        settings["runtime"] = {"runtime": runtime, "precision": precision}
    run = {"scheduler": scheduler, "cluster": cluster, "n_workers": n_workers, "progress": progress}
    if chips is not None:
        written = _score_index(loaded, model, output, chips, task, settings, chips_per_partition, maps, run)
    elif not naip:
        raise InputError("nothing to score: give NAIP rasters or a chip index")
    else:
        written = _score_scenes(loaded, model, output, naip, aoi, task, settings, chips_per_partition, max_nodata,
                                chip_size_m, maps, run)
    if progress and auto:  # said once it is done: a refusal stays the one line it is
        print(f"network ran on {runtime} ({resolve_precision(runtime, precision)}){_no_export_hint(loaded, model)}",
              file=sys.stderr)
    return written


def _no_export_hint(loaded: LandUseModel, model: str) -> str:
    """Why ``auto`` ran a model's network on torch where an export would have run on OpenVINO, and how to make
    one (the end of the ``network ran on`` line); empty where no export would change the choice."""
    if loaded.spec.get(EXPORT_FIELD) or not openvino_preferred() or not model_has_network(loaded):
        return ""
    return (f": model {model!r} has no exported network; `geoclf models export {shlex.quote(model)}` makes one, "
            "and then it runs on OpenVINO")


def _score_index(loaded: Any, name: str, output: ScoreOutput, chips: PathLike, task: ScoreTask,
                 settings: dict[str, Any], chips_per_partition: int, maps: dict[str, Any],
                 run: dict[str, Any]) -> dict[str, Path]:
    """Score a chip index the user gave: partitions of its table, then the maps from the predictions table."""
    index = read_index(chips, check_rasters=True)
    check_scorable(index, loaded, chips)
    check_map_extent(index)  # the map of these chips can be made: refused now, not after scoring them all
    table = pd.DataFrame(index.drop(columns="geometry"))
    n_parts = math.ceil(len(table) / chips_per_partition)
    todo = sum(not (output.partitions / part_name(i)).exists() for i in range(n_parts))
    task, run = _placed(task, run, todo)
    run_partitions(table, output.partitions, task, settings=settings, chips_per_partition=chips_per_partition,
                   desc="scoring", on_client=print_dashboard, **run)
    _done_with(run)
    scored = read_partitions(output.partitions)
    predictions = _predictions(index, scored, loaded, name)
    written = {"predictions": write_index(predictions, output.predictions)}
    written.update(write_maps(predictions, classes_of(predictions), output.directory, **maps))
    return written


def _placed(task: ScoreTask, run: dict[str, Any], n_tasks: int) -> tuple[ScoreTask, dict[str, Any]]:
    """Decide where ``n_tasks`` partitions run (``auto``: :func:`geoclf.partitions.partition_scheduler`) and
    give the task that place's threads: every core in this process, a core's share on a LocalCluster worker.

    Returns the task and the run's keyword arguments for :func:`run_plan` / :func:`run_partitions`: a cluster
    started early is the scheduler where the run goes to a LocalCluster, and is closed (on a thread) otherwise.
    """
    run = dict(run)
    cluster = run.pop("cluster")
    scheduler = partition_scheduler(run["scheduler"], n_tasks, run["n_workers"])
    threads = task_threads(scheduler, run["n_workers"])
    if cluster is not None:
        if scheduler in (None, "local"):
            scheduler = cluster
        else:  # nothing for its workers to do after all (one partition left)
            cluster.close_soon()
    return replace(task, torch_threads=threads), {**run, "scheduler": scheduler}


def _done_with(run: dict[str, Any]) -> None:
    """The partitions are written: close a cluster started early while the client writes the outputs."""
    if isinstance(run["scheduler"], StartingCluster):
        run["scheduler"].close_soon()


#: Largest area, in chips, whose predictions (and chip grid) are also written as one file each,
#: ``predictions.parquet`` and ``chips.parquet``: what a county user opens in QGIS. Past it the dataset
#: ``predictions/`` is the table (geopandas, dask-geopandas and DuckDB read it as one).
SINGLE_FILE_CHIPS = 250_000


def _score_scenes(loaded: Any, name: str, output: ScoreOutput, naip: list[PathLike], aoi: PathLike | None,
                  task: ScoreTask, settings: dict[str, Any], chips_per_partition: int, max_nodata: float,
                  chip_size_m: float | None, maps: dict[str, Any], run: dict[str, Any]) -> dict[str, Path]:
    """Score rasters block by block: workers tile, score and map their blocks; the client writes the maps."""
    scenes = [describe_naip(path) for path in naip]
    need = max(loaded.bands)
    for scene in scenes:
        if scene.count < need:
            raise InputError(f"has {scene.count} bands; the model reads bands {list(loaded.bands)} "
                             f"(trained on {need}-band imagery)", scene.source)
    size_m = float(chip_size_m or loaded.chip_size_m or loaded.chip_size * scenes[0].res[0])
    grid = {"naip": sorted(scene.source for scene in scenes), "aoi": None if aoi is None else normalize_source(aoi),
            "aoi_sha256": None if aoi is None else _file_sha256(aoi), "chip_size": int(loaded.chip_size),
            "chip_size_m": size_m, "stride_m": size_m, "max_nodata": float(max_nodata)}
    recorded = recorded_settings(output.dataset)
    if recorded is not None and "grid" in recorded:
        different = _grid_difference(recorded["grid"], grid)
        if different is not None:  # refused before planning: that run's partitions are on its own grid
            raise InputError(f"was scored on another chip grid ({different}); choose another --out, or remove "
                             "it to start over", output.directory)
    params = TileParams(chip_size=loaded.chip_size, chip_size_m=size_m, max_nodata=max_nodata)
    scenes, blocks = plan_blocks(scenes, params, aoi, cells_per_block=chips_per_partition)
    scheme = _model_scheme(loaded)
    map_crs = _map_crs(scenes, maps["crs"])
    task, run = _placed(task, run, sum(not (output.dataset / block.name).exists() for block in blocks))
    # the page's imagery: of rasters without overviews, from the previews their blocks write as they decode
    # them (a raster of the area is one block's or more, whole, without an AOI); of the others, read from now
    # on, while the blocks are scored
    sources = sorted({block.scene.source for block in blocks})
    previewed = maps["html_map"] and aoi is None and any(
        not scene.overviews and not is_remote(scene.source) for scene in scenes)
    resolution = imagery_resolution([(scene.crs, scene.bounds) for scene in scenes]) if previewed else None
    block_task = ScoreBlockTask(task, params, scheme.to_dict(), _model_name(loaded, name), str(output.directory),
                                map_crs.to_string(), size_m, _area_crs(scenes), resolution)
    settings = {**settings, "grid": grid, "map": {"crs": map_crs.to_string(), "resolution": size_m}}
    imagery = None if previewed else early_imagery(sources, maps["html_map"])
    summaries = run_plan(blocks, output.dataset, block_task, settings=settings, desc="scoring",
                         on_client=print_dashboard, **run)
    _done_with(run)
    total = sum(summary["rows"] for summary in summaries)
    if total == 0:
        raise InputError(f"no chip left: all {sum(b.cells for b in blocks)} candidate chips have more than "
                         f"{max_nodata:.0%} nodata (raise --max-nodata, or check the rasters)")
    tiles = [MapTile.from_summary(summary["tile"]) for summary in summaries if summary.get("tile")]
    written: dict[str, Path] = {"dataset": output.dataset}
    if total <= SINGLE_FILE_CHIPS:
        files = [output.dataset / block.name for block in blocks]
        attrs = _index_attrs(scenes, params, aoi, grid, scheme)
        written["predictions"] = _concatenate(files, output.predictions, prediction_columns(scheme.names),
                                              {**attrs, "model": name, "classes": list(loaded.classes),
                                               "class_groups": _groups(loaded)})
        written["chips"] = _concatenate(files, output.chips, CHIP_COLUMNS, attrs)
    written["mosaic"] = write_mosaic(output.mosaic, tiles, scheme)
    written["probability_mosaic"] = write_mosaic(output.probability_mosaic, tiles, scheme, probabilities=True)
    facts = AreaFacts.combine([AreaFacts(**summary["facts"]) for summary in summaries if summary.get("facts")])
    popups = (lambda: output.read_predictions()) if "predictions" in written and total <= 5000 else None
    written.update(write_mosaic_maps(output, tiles, scheme, facts, predictions=popups, smooth=maps["smooth"],
                                     probabilities=maps["probabilities"], html_map=maps["html_map"],
                                     imagery=imagery,
                                     stand_ins=imagery_stand_ins(blocks, summaries, output.directory)))
    return written


@dataclass
class ScoreBlockTask:
    """Tile, score and map one block of a raster (runs on a worker): its predictions partition and map tile.

    Attributes:
        score: scores the block's chips (:class:`ScoreTask`).
        params: the tiling parameters of the area (chip size, nodata filter).
        classes: the model's class scheme (``{class: NLCD codes}``), for the map tile's codes.
        model_name: the ``model`` column's value.
        directory: the score output directory (map tiles go to its ``tiles/``).
        map_crs: CRS of the map (the blocks' own grids, or a CRS tiles are warped into).
        resolution: the map's pixel size (the chip stride).
        area_crs: the equal-area CRS every block measures its chips' areas in (one for the area, so that a
            worker builds one transformer for all its blocks); ``None``: one centred on each block.
        imagery_resolution: the page imagery's pixel size (:func:`geoclf.webmap.imagery_resolution`): a block
            of a local raster without overviews writes the preview of its pixels the page is drawn from
            (:func:`geoclf.webmap.write_imagery_preview`), while GDAL still holds them decoded; ``None``: none.
    """

    score: ScoreTask
    params: TileParams
    classes: dict[str, list[int]]
    model_name: str
    directory: str
    map_crs: str
    resolution: float
    area_crs: str | None = None
    imagery_resolution: float | None = None

    #: Two blocks may run at once in one process (:func:`geoclf.partitions.run_plan`): what one reads while
    #: the other's model runs.
    side_by_side: ClassVar[bool] = True

    def __call__(self, block: SceneBlock) -> tuple[pa.Table, dict[str, Any]]:
        started = time.perf_counter()
        # the block's pixels read once, for its nodata lattice and its chips both
        pixels = block_pixels(block, self.score.model().bands)
        chips = block_chips(block, self.params, pixels=pixels)
        # too many pixels to hold (chips of 224 px): the chips are read through the dataset the lattice was
        # just read from, whose blocks GDAL keeps decoded
        lent = kept_dataset(block.scene.source) if pixels is None else None
        tiled = time.perf_counter()
        scheme = ClassScheme.from_mapping(self.classes)
        scored = (self.score.probabilities(pd.DataFrame(chips.drop(columns="geometry")), pixels,
                                           lent=None if lent is None else (block.scene.source, lent))
                  if len(chips) else None)
        del pixels
        modelled = time.perf_counter()
        if scored is not None:
            # one row of probabilities per chip, in the chips' order: the columns go beside the chips (what
            # ScoreTask's table merged on chip_id gave, without the table)
            matrix, names = scored
            columns = {"pred": np.asarray(names, dtype=object)[matrix.argmax(axis=1)],
                       **{f"prob_{name}": matrix[:, i] for i, name in enumerate(names)}}
        else:
            columns = {"pred": pd.Series(dtype=object),
                       **{f"prob_{c}": pd.Series(dtype=np.float32) for c in scheme.names}}
        # one frame of the columns in contract order (selecting, concatenating and assigning them in turn
        # copied the chips' columns three times: 4.4 -> 1.5 ms a block)
        frame = gpd.GeoDataFrame({**{c: chips[c] for c in _KEEP if c in chips.columns}, **columns,
                                  "model": self.model_name, **{c: chips[c] for c in _CHIP_EXTRA}},
                                 index=chips.index, geometry="geometry", crs=chips.crs)
        tile = None
        if len(frame):
            grid = block_to_grid(frame, scheme, parse_cell(block.grid.cell_id(0, 0)).stride, crs=self.map_crs,
                                 resolution=self.resolution)
            name = f"{ScoreOutput.TILES}/{block.name.removesuffix('.parquet')}"
            tile = write_tile(self.directory, name, grid).to_summary()
        facts = None
        if len(frame):
            facts = asdict(AreaFacts.of(frame, self.area_crs))
        imagery = self._preview(block)
        summary = {"chips": len(frame), "cells": block.cells, "tile": tile, "facts": facts, "imagery": imagery,
                   "classes": {str(k): int(v) for k, v in frame["pred"].value_counts().items()},
                   "seconds": {"tile": tiled - started, "model": modelled - tiled,
                               "write": time.perf_counter() - modelled}}
        return _geoparquet(frame), summary

    def _preview(self, block: SceneBlock) -> dict[str, str] | None:
        """The block's imagery preview written (``{"source", "path"}``, the path relative to the output), or
        ``None``: no page imagery wanted, a raster with overviews (the page reads those) or not local."""
        if self.imagery_resolution is None:
            return None
        dataset = kept_dataset(block.scene.source)
        window = block_window(block, to_edges=True)
        if dataset is None or window is None or dataset.overviews(1):
            return None
        step = preview_step(self.imagery_resolution, block.scene.res[0])
        name = f"{ScoreOutput.TILES}/{block.name.removesuffix('.parquet')}.imagery.tif"
        write_imagery_preview(dataset, window, step, Path(self.directory) / name, mask=block.scene.mask,
                              alpha_band=block.scene.alpha_band)
        return {"source": block.scene.source, "path": name}


def imagery_stand_ins(blocks: list[SceneBlock], summaries: list[dict[str, Any]],
                      directory: PathLike) -> dict[str, list[str]]:
    """The previews each raster's blocks wrote (:meth:`ScoreBlockTask._preview`), for the rasters where every
    block wrote one that is still there: the page reads those in the raster's place."""
    wanted: dict[str, int] = {}
    for block in blocks:
        wanted[block.scene.source] = wanted.get(block.scene.source, 0) + 1
    found: dict[str, list[str]] = {}
    for summary in summaries:
        preview = summary.get("imagery")
        if preview and (Path(directory) / preview["path"]).is_file():
            found.setdefault(preview["source"], []).append(str(Path(directory) / preview["path"]))
    return {source: files for source, files in found.items() if len(files) == wanted.get(source)}


#: Columns of a predictions table taken from the chips, in contract order (see docs/architecture.md).
_KEEP = ("chip_id", "cell", "ix", "iy", "crs", "scene", "source", "date", "label", "geometry")
#: Chip index columns a predictions dataset partition adds after the predictions' own (chips.parquet's rest).
_CHIP_EXTRA = ("col_off", "row_off", "width", "height", "nodata_frac", "block")
#: ``chips.parquet``'s columns, in the chip index's order.
CHIP_COLUMNS = ["chip_id", "cell", "ix", "iy", "scene", "source", "date", "crs", "col_off", "row_off", "width",
                "height", "nodata_frac", "block", "geometry"]


def prediction_columns(classes: list[str]) -> list[str]:
    """``predictions.parquet``'s columns for a model of ``classes``, in contract order."""
    return [*[c for c in _KEEP if c != "label"], "pred", *[f"prob_{c}" for c in classes], "model"]


#: Arrow types of the columns that may be all-missing (or absent) in one partition, so every file has one schema.
_TYPES = {"chip_id": pa.large_string(), "cell": pa.large_string(), "crs": pa.large_string(),
          "scene": pa.large_string(), "source": pa.large_string(), "date": pa.date32(), "pred": pa.large_string(),
          "model": pa.large_string(), "block": pa.large_string(), "label": pa.large_string()}


def _geoparquet(frame: gpd.GeoDataFrame) -> pa.Table:
    """A partition as geopandas writes GeoParquet (geo metadata, WKB), on the dataset's fixed column types.

    The table ``GeoDataFrame.to_parquet`` writes (its own conversion, without writing and reading back the
    Parquet bytes: 2-3 ms of a block's ~6 ms).
    """
    table = _geopandas_to_arrow(frame, index=False)
    fields = [field.with_type(_TYPES[field.name]) if field.name in _TYPES and pa.types.is_null(field.type)
              else field for field in table.schema]
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def _concatenate(files: list[Path], path: Path, columns: list[str], attrs: dict[str, Any]) -> Path:
    """Stream the dataset's partitions, in plan order, into one GeoParquet file (one partition in memory at a
    time), with the area's bounding box in its geo metadata and ``attrs`` as its ``geoclf`` attributes."""
    schema = pq.read_schema(files[0])
    geo = json.loads(schema.metadata[b"geo"])
    boxes, kinds = [], set()
    for file in files:
        column = json.loads(pq.read_schema(file).metadata[b"geo"])["columns"]["geometry"]
        if pq.read_metadata(file).num_rows:
            boxes.append(column["bbox"])
            kinds.update(column.get("geometry_types", []))
    area = np.array(boxes, dtype=float)
    geo["columns"]["geometry"]["bbox"] = [float(area[:, 0].min()), float(area[:, 1].min()),
                                          float(area[:, 2].max()), float(area[:, 3].max())]
    geo["columns"]["geometry"]["geometry_types"] = sorted(kinds)
    metadata = {b"geo": json.dumps(geo).encode(),
                b"PANDAS_ATTRS": json.dumps({"geoclf": attrs}, default=str).encode()}
    chosen = [c for c in columns if c in schema.names]
    target = pa.schema([schema.field(c) for c in chosen], metadata=metadata)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, target) as writer:
        for file in files:
            writer.write_table(pq.read_table(file, columns=chosen).cast(target))
    return path


def _index_attrs(scenes: list[SceneInfo], params: TileParams, aoi: PathLike | None, grid: dict[str, Any],
                 scheme: ClassScheme) -> dict[str, Any]:
    """The ``geoclf`` attributes :func:`tiling.tile` gives an unlabeled index of these rasters (and the grid)."""
    return json.loads(json.dumps({
        "params": asdict(params), "naip": [s.source for s in scenes], "nlcd": None,
        "aoi": None if aoi is None else normalize_source(aoi),
        "classes": ClassScheme.from_mapping(params.classes).names,
        "chip_size_m": grid["chip_size_m"], "stride_m": grid["stride_m"], "score_grid": grid}, default=str))


def _model_scheme(model: Any) -> ClassScheme:
    """The class scheme of a model's maps (its NLCD grouping when it has one), as :func:`classes_of` reads it."""
    groups = _groups(model)
    return ClassScheme.from_mapping(groups) if groups else ClassScheme.from_mapping({c: [] for c in model.classes})


def _groups(model: Any) -> dict[str, list[int]] | None:
    groups = getattr(model, "class_groups", None)
    return dict(groups) if groups else None


def _model_name(model: Any, name: str) -> str:
    return getattr(model, "name", None) or Path(name).name


def _map_crs(scenes: list[SceneInfo], crs: Any) -> CRS:
    """The map's CRS: the one asked for, else the rasters' own if they share one, else EPSG:5070."""
    if crs is not None:
        return projected_crs(crs)
    crses = {scene.crs.to_string() for scene in scenes}
    return scenes[0].crs if len(crses) == 1 else MOSAIC_CRS


def _area_crs(scenes: list[SceneInfo]) -> str:
    """The equal-area CRS of an area's chip areas: :func:`geoclf.area.equal_area_crs` of its rasters' extents."""
    boxes = [gpd.GeoSeries([shapely.box(*scene.bounds)], crs=scene.crs).to_crs("EPSG:4326").iloc[0]
             for scene in scenes]
    return equal_area_crs(gpd.GeoDataFrame(geometry=boxes, crs="EPSG:4326")).to_wkt()


def _file_sha256(path: PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


_GRID_WORDS = {"naip": "other NAIP rasters", "aoi": "another AOI", "aoi_sha256": "the AOI file has changed",
               "chip_size": "chip size {} px there, {} px now", "chip_size_m": "chip size {:g} m there, {:g} m now",
               "stride_m": "stride {:g} m there, {:g} m now", "max_nodata": "max nodata {:g} there, {:g} now"}


def _grid_difference(recorded: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """A few words on the first grid parameter that differs, or ``None`` when the grids are the same."""
    for key, words in _GRID_WORDS.items():
        if key not in recorded:  # an older index that did not record it
            continue
        before, now = recorded[key], wanted[key]
        if isinstance(now, float) and before is not None:
            same = abs(float(before) - now) <= 1e-9 * max(1.0, abs(now))
        else:
            same = before == now
        if not same:
            return words.format(before, now) if "{" in words and before is not None else words.split(" {")[0]
    return None


def check_scorable(index: pd.DataFrame, model: Any, where: PathLike | None = None) -> None:
    """Check what the maps and the accuracy report need of a chip index, before any chip is scored.

    An index from ``geoclf tile`` always passes; one edited or written by other tools could otherwise be
    scored in full and then fail when the map is drawn, leaving predictions without a map.

    Raises:
        InputError: a grid column (``cell``, ``ix``, ``iy``, ``crs``) is missing or unreadable, or chip labels
            are not among the model's classes.
    """
    missing = [c for c in ("cell", "ix", "iy", "crs") if c not in index.columns]
    if missing:
        raise InputError(f"lacks column(s) {', '.join(missing)}, which the land-use map is drawn from (an index "
                         "written by geoclf tile has them)", where)
    for value in index["crs"].drop_duplicates():
        try:
            CRS.from_user_input(value)
        except Exception as exc:  # rasterio raises several types for text it cannot parse
            raise InputError(f"crs {value!r} is not a CRS", where) from exc
    cells = parse_cell(index["cell"].astype(object))
    bad = cells["ix"].isna() | cells["iy"].isna() | cells["size"].isna()
    if bad.any():
        raise InputError(f"cell {index['cell'].iloc[int(np.argmax(bad.to_numpy()))]!r} is not a grid cell key "
                         "(<crs>:<size>:<stride>:<ix>:<iy>)", where)
    if "label" in index.columns:
        unknown = sorted(set(index["label"].dropna().astype(str)) - set(model.classes))
        if unknown:
            raise InputError(f"labels {unknown} are not among the model's classes {list(model.classes)}; its "
                             "accuracy cannot be reported on these chips", where)


def model_stamp(model_dir: str) -> dict[str, Any]:
    """What a score output's partitions are fingerprinted with for a model: its directory and ``model.json``.

    A rerun with another model (or the same directory holding another model) is refused instead of mixing
    predictions; a benchmark that computes partitions itself uses it to let ``score`` resume them.
    """
    meta = Path(model_dir) / "model.json"
    return {"dir": model_dir, "model.json": json.loads(meta.read_text()) if meta.exists() else None}


def _predictions(index: gpd.GeoDataFrame, scored: pd.DataFrame, model: Any, name: str) -> gpd.GeoDataFrame:
    keep = [c for c in ("chip_id", "cell", "ix", "iy", "crs", "scene", "source", "date", "label", "geometry")
            if c in index.columns]
    merged = index[keep].merge(scored, on="chip_id", how="inner", validate="one_to_one")
    if len(merged) != len(index):
        raise InputError(f"scored {len(merged)} of {len(index)} chips; rerun to finish", name)
    merged["model"] = getattr(model, "name", None) or Path(name).name
    groups = getattr(model, "class_groups", None)
    merged.attrs = {"geoclf": {**index.attrs.get("geoclf", {}), "model": name, "classes": list(model.classes),
                               "class_groups": dict(groups) if groups else None}}
    return gpd.GeoDataFrame(merged, geometry="geometry", crs=index.crs)


__all__ = ["PREDICTIONS", "ScoreTask", "classes_of", "model_stamp", "score"]
