"""Scoring whole areas: every chip of a set of NAIP rasters through a model artifact, on Dask, then maps.

The area is cut on the same snapped chip grid as tiling (unlabeled: no NLCD needed), split into
partitions that workers score in one pass each (chips read from the rasters, model, probabilities:
no intermediate feature files), written atomically so that reruns resume and a killed worker costs only
its partition. The predictions table then feeds the maps (:mod:`geoclf.maps`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
from rasterio.crs import CRS

from geoclf.artifact import LandUseModel, artifact_digest, load_model_dir
from geoclf.chips import iter_batches
from geoclf.landuse import ScoreOutput, check_map_extent, classes_of
from geoclf.maps import write_maps
from geoclf.models import load_model, resolve_model_dir
from geoclf.partitions import print_dashboard, read_partitions, run_partitions, task_threads, worker_model
from tiling.errors import InputError
from tiling.grid import parse_cell
from tiling.index import TileParams, read_index, tile, validate_index, write_index
from tiling.io import ChipReader, PathLike, describe_naip, normalize_source
from tiling.locks import locks_output
from tiling.parallel import Scheduler, check_counts

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
    """

    model_dir: str
    batch_size: int = 32
    torch_threads: int | None = None
    trusted: bool = False
    digest: str | None = None

    def __call__(self, part: pd.DataFrame) -> pa.Table:
        model = self.model()
        probs = []
        with ChipReader(bands=model.bands, size=model.chip_size) as reader:
            for _, chips in iter_batches(part, reader, self.batch_size):
                probs.append(np.asarray(model.predict_proba(chips), dtype=np.float32))
        matrix = np.concatenate(probs) if probs else np.zeros((0, len(model.classes)), np.float32)
        columns: dict[str, Any] = {
            "chip_id": pa.array(part["chip_id"].astype(str)),
            "pred": pa.array(np.asarray(model.classes, dtype=object)[matrix.argmax(axis=1)], pa.string()),
        }
        for i, name in enumerate(model.classes):
            columns[f"prob_{name}"] = pa.array(matrix[:, i])
        return pa.table(columns)

    def model(self) -> LandUseModel:
        """The model of this worker process, loaded on its first task and ready to predict.

        Raises:
            InputError: the artifact changed since the client checked it, or (without ``trusted``) its
                classifier holds types outside geoclf's allowlist.
        """
        def load() -> LandUseModel:
            # the files are what the client checked, and they load under the user's own trust decision: an
            # artifact replaced between the two loads (shared storage, a cloud cluster) runs nothing here
            if self.digest is not None and artifact_digest(self.model_dir) != self.digest:
                raise InputError(f"changed since scoring started (its files no longer have the sha256 "
                                 f"{self.digest[:12]}... the client checked); the worker refuses to load it",
                                 self.model_dir)
            return load_model_dir(self.model_dir, trusted=self.trusted).prepare()

        return worker_model(f"model:{self.model_dir}:{self.digest}:{self.trusted}", load, self.torch_threads)


@locks_output("out")
def score(model: str, out: PathLike, *, naip: list[PathLike] | None = None, chips: PathLike | None = None,
          aoi: PathLike | None = None, scheduler: Scheduler = None, n_workers: int | None = None,
          batch_size: int = 32, chips_per_partition: int = 512, max_nodata: float = 0.5,
          chip_size_m: float | None = None, crs: Any = None,
          smooth: bool = False, probabilities: bool = False, html_map: bool = True, trusted: bool = False,
          runs_dir: PathLike | None = None, progress: bool = True) -> dict[str, Path]:
    """Score an area with a model and write ``predictions.parquet`` and the maps into ``out``.

    Args:
        model: a model artifact directory or a run name/id from the run history.
        out: output directory; a rerun resumes (finished partitions are kept).
        naip: NAIP rasters to score (tiled on the model's chip grid, no labels needed).
        chips: instead of ``naip``, an existing chip index (its labels then give an accuracy report).
        aoi: optional vector file restricting the area (with ``naip``).
        scheduler: ``None``/``"local"`` (LocalCluster), ``"sync"``, an address, a client or a cluster.
        n_workers: worker processes of a new LocalCluster.
        batch_size: chips per forward pass.
        chips_per_partition: chips per task and output partition.
        max_nodata: skip chips with more than this fraction without data (image collars).
        chip_size_m: ground side of a chip in metres (default: the model's training chips, else the model's
            chip size in pixels at the first raster's resolution).
        crs: map CRS (default: the rasters' CRS, or EPSG:5070 across UTM zones).
        smooth: 3x3 plurality smoothing of the class map.
        probabilities: also write per-class probability bands.
        html_map: write ``map.html``.
        trusted: load a pickled classifier artifact without checks (see :func:`geoclf.models.load_model`).
        runs_dir: run history in which ``model`` names a run or a registered model (default: ``GEOCLF_RUNS``
            or the current directory).
        progress: show progress bars.

    Returns:
        Output name -> path (``predictions``, ``landuse``, ``html``, ``png``, ...).
    """
    check_counts(batch_size=batch_size, chips_per_partition=chips_per_partition, n_workers=n_workers)
    model_dir = str(resolve_model_dir(model, runs_dir))
    # everything the client can check, before any output: the artifact loads under the user's trust decision,
    # and its network builds (backbone weights as recorded, feature length as the classifier's)
    loaded = load_model(model_dir, trusted=trusted).prepare()
    digest = artifact_digest(model_dir)  # what the workers must find (see ScoreTask)
    output = ScoreOutput.at(out)
    index = _chips_to_score(loaded, output, naip, chips, aoi, max_nodata, chip_size_m, progress)
    table = pd.DataFrame(index.drop(columns="geometry"))
    task = ScoreTask(model_dir=model_dir, batch_size=batch_size, torch_threads=task_threads(scheduler, n_workers),
                     trusted=trusted, digest=digest)
    settings = {"model": model_stamp(model_dir)}
    run_partitions(table, output.partitions, task, settings=settings, chips_per_partition=chips_per_partition,
                   scheduler=scheduler, n_workers=n_workers, desc="scoring", progress=progress,
                   on_client=print_dashboard)
    scored = read_partitions(output.partitions)
    predictions = _predictions(index, scored, loaded, model)
    written = {"predictions": write_index(predictions, output.predictions)}
    written.update(write_maps(predictions, classes_of(predictions), output.directory, crs=crs, smooth=smooth,
                              probabilities=probabilities, html_map=html_map))
    return written


def _chips_to_score(model: Any, output: ScoreOutput, naip: list[PathLike] | None, chips: PathLike | None,
                    aoi: PathLike | None, max_nodata: float, chip_size_m: float | None,
                    progress: bool) -> gpd.GeoDataFrame:
    """The chip index of the area: given, reused from an earlier run of this output, or tiled now.

    An earlier run's grid is reused only when every grid parameter is the same; when they differ and that run
    scored anything, this stops (before tiling) rather than mix two grids or overwrite the one its results
    are on. A run that failed before scoring a partition leaves nothing to protect: the grid is tiled again.
    """
    if chips is not None:
        index = read_index(chips, check_rasters=True)
        check_scorable(index, model, chips)
        check_map_extent(index)  # the map of these chips can be made: refused now, not after scoring them all
        return index
    if not naip:
        raise InputError("nothing to score: give NAIP rasters or a chip index")
    scenes = [describe_naip(path) for path in naip]
    need = max(model.bands)
    for scene in scenes:
        if scene.count < need:
            raise InputError(f"has {scene.count} bands; the model reads bands {list(model.bands)} "
                             f"(trained on {need}-band imagery)", scene.source)
    size_m = float(chip_size_m or model.chip_size_m or model.chip_size * scenes[0].res[0])
    grid = {"naip": sorted(scene.source for scene in scenes), "aoi": None if aoi is None else normalize_source(aoi),
            "aoi_sha256": None if aoi is None else _file_sha256(aoi), "chip_size": int(model.chip_size),
            "chip_size_m": size_m, "stride_m": size_m, "max_nodata": float(max_nodata)}
    cached = output.chips
    if cached.exists():  # a rerun: its partitions refer to the chips of this grid
        index = read_index(cached)
        different = _grid_difference(_recorded_grid(index.attrs.get("geoclf", {})), grid)
        if different is None:
            validate_index(index, cached, check_rasters=True)
            return index
        if any(output.partitions.glob("part-*.parquet")):
            raise InputError(f"was scored on another chip grid ({different}); choose another --out, or remove "
                             "it to start over", output.directory)
    params = TileParams(chip_size=model.chip_size, chip_size_m=size_m, max_nodata=max_nodata)
    index = tile(naip, None, None, params=params, aoi=aoi, scheduler="sync", progress=progress)
    index.attrs["geoclf"]["score_grid"] = grid
    write_index(index, cached)
    return index


def _file_sha256(path: PathLike) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _recorded_grid(attrs: dict[str, Any]) -> dict[str, Any]:
    """The grid parameters an earlier run recorded (indexes written before they were recorded: from its attrs)."""
    if "score_grid" in attrs:
        return dict(attrs["score_grid"])
    params = attrs.get("params", {})
    return {"naip": sorted(attrs.get("naip", [])), "aoi": attrs.get("aoi"), "chip_size": params.get("chip_size"),
            "chip_size_m": attrs.get("chip_size_m"), "stride_m": attrs.get("stride_m"),
            "max_nodata": params.get("max_nodata")}


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
