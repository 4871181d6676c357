"""The chip index: NAIP rasters x NLCD -> one GeoParquet row per labeled 224 x 224 chip."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from rasterio.crs import CRS

from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.grid import ChipGrid, scene_windows
from tiling.io import PathLike, SceneInfo, WindowPixels, atomic_path, describe_naip, normalize_source, open_raster
from tiling.labels import NlcdInfo, check_overlap, chip_fractions, describe_nlcd
from tiling.parallel import Scheduler, dask_client, for_tasks, map_tasks
from tiling.split import SPLIT_METHODS, assign_split, balance_classes, block_keys

#: CRS of the index geometry when the rasters are in several CRSes: NLCD's equal-area CONUS Albers.
MULTI_CRS_INDEX = "EPSG:5070"

#: Cells per labeling task (and per partition of `geoclf tile`): big enough to amortize opening the rasters, small
#: enough to spread a scene.
CELLS_PER_TASK = 2048


@dataclass
class TileParams:
    """Parameters of a tiling run (stored with the index).

    Attributes:
        chip_size: chip side in pixels, the model input size.
        chip_size_m: chip side in metres; default ``chip_size`` times the first raster's pixel size, so
            rasters of other resolutions over the same place share one grid (their windows are resampled).
        stride_m: spacing of chips in metres; default the chip size (no overlap).
        min_purity: keep a chip when its majority class covers at least this fraction of its valid area.
            0.6 keeps chips a person would call by one class while leaving enough mixed edges that the
            classifier sees realistic chips.
        max_nodata: keep a chip when at most this fraction has no data (NAIP collar or outside NLCD).
        samples: NLCD sample points per chip side (see ``tiling.labels``).
        split: ``"blocks"`` (spatial blocks) or ``"scene"`` (whole rasters).
        block_size_m: side of a spatial block; default five chips.
        val_fraction: share of chips, per class, aimed for the validation split.
        balance: undersample every class to the rarest one within each split.
        seed: seed of the split and of balancing.
        aoi_predicate: ``"intersects"`` or ``"within"``: which chips an AOI keeps.
    """

    chip_size: int = 224
    chip_size_m: float | None = None
    stride_m: float | None = None
    min_purity: float = 0.6
    max_nodata: float = 0.05
    samples: int = 32
    split: str = "blocks"
    block_size_m: float | None = None
    val_fraction: float = 0.2
    balance: bool = False
    seed: int = 0
    aoi_predicate: str = "intersects"
    classes: dict[str, list[int]] = field(default_factory=lambda: ClassScheme.default().to_dict())

    def validate(self) -> None:
        """Raise an :class:`InputError` for out-of-range parameters."""
        if self.chip_size < 8:
            raise InputError(f"chip size must be at least 8 pixels, not {self.chip_size}")
        if not 0 <= self.min_purity <= 1:
            raise InputError(f"min purity must be between 0 and 1, not {self.min_purity}")
        if not 0 <= self.max_nodata <= 1:
            raise InputError(f"max nodata must be between 0 and 1, not {self.max_nodata}")
        if self.split not in SPLIT_METHODS:
            raise InputError(f"unknown split method {self.split!r}; choose one of {', '.join(SPLIT_METHODS)}")
        if self.aoi_predicate not in ("intersects", "within"):
            raise InputError(f"unknown AOI predicate {self.aoi_predicate!r}; choose intersects or within")
        for name in ("chip_size_m", "stride_m", "block_size_m"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"{name.replace('_', ' ')} must be a positive number of metres, not {value}")


@dataclass(frozen=True)
class CellTask:
    """Grid cells of one raster to label in one task: ``ix``/``iy`` are their cell indices on ``grid``."""

    scene: SceneInfo
    grid: ChipGrid
    ix: np.ndarray
    iy: np.ndarray


def plan_chips(naip: Sequence[PathLike], params: TileParams, aoi: PathLike | None = None,
               nlcd: NlcdInfo | None = None) -> tuple[list[SceneInfo], list[CellTask], dict[str, int]]:
    """Describe the scenes and list the grid cells to label, in tasks of at most a few thousand cells.

    Returns the scenes, the tasks and counts of candidate cells before and after the AOI filter.
    """
    if not naip:
        raise InputError("no NAIP rasters given")
    scenes = [describe_naip(path) for path in naip]
    names = pd.Series([s.name for s in scenes])
    if names.duplicated().any():
        dup = names[names.duplicated()].iloc[0]
        raise InputError(f"two NAIP rasters share the name {dup!r}; scene names must be unique")
    if nlcd is not None:
        for scene in scenes:
            check_overlap(scene, nlcd)
    size_m = params.chip_size_m or params.chip_size * scenes[0].res[0]
    aoi_shapes = read_aoi(aoi) if aoi is not None else None
    grids = [ChipGrid(scene.crs, size_m, params.stride_m) for scene in scenes]
    # Only cells near the AOI's bounding box can meet it: the grid is laid over that part of each raster.
    extents = [scene_extent(scene, grid, aoi_shapes) for scene, grid in zip(scenes, grids, strict=True)]
    check_grid_size(scenes, grids, extents, params)
    tasks: list[CellTask] = []
    counts = {"cells": 0, "in_aoi": 0}
    for scene, grid, extent in zip(scenes, grids, extents, strict=True):
        counts["cells"] += grid.count_within(scene.bounds, tolerance=0.5 * scene.res[0])
        ix, iy = grid.cells_within(extent, tolerance=0.5 * scene.res[0]) if extent else (np.empty(0, np.int64),) * 2
        if aoi_shapes is not None and len(ix):
            shape = aoi_shapes.to_crs(scene.crs).union_all()
            boxes = shapely.box(*grid.cell_bounds(ix, iy).T)
            keep = (shapely.within(boxes, shape) if params.aoi_predicate == "within"
                    else shapely.intersects(boxes, shape))
            ix, iy = ix[keep], iy[keep]
        counts["in_aoi"] += len(ix)
        for start in range(0, len(ix), CELLS_PER_TASK):
            stop = start + CELLS_PER_TASK
            tasks.append(CellTask(scene, grid, ix[start:stop], iy[start:stop]))
    return scenes, tasks, counts


#: Most grid cells one tiling run may lay out (before the nodata and purity filters): ten million chips make
#: an index of about ten GB in memory. A stride or chip size far below a chip's usual size is refused
#: before anything is allocated.
MAX_CELLS = 10_000_000


def scene_extent(scene: SceneInfo, grid: ChipGrid,
                 aoi: gpd.GeoSeries | None) -> tuple[float, float, float, float] | None:
    """The part of a raster where cells can be kept: all of it, or what lies within a cell of the AOI's bounds."""
    if aoi is None:
        return scene.bounds
    a_left, a_bottom, a_right, a_top = aoi.to_crs(scene.crs).total_bounds
    left, bottom, right, top = scene.bounds
    extent = (max(left, a_left - grid.size), max(bottom, a_bottom - grid.size), min(right, a_right + grid.size),
              min(top, a_top + grid.size))
    return extent if extent[0] < extent[2] and extent[1] < extent[3] else None


def check_grid_size(scenes: Sequence[SceneInfo], grids: Sequence[ChipGrid],
                     extents: Sequence[tuple[float, float, float, float] | None], params: TileParams,
                     limit: bool = True) -> None:
    """Refuse chips smaller than a few pixels, strides finer than a pixel, and (with ``limit``) grids of more
    than MAX_CELLS: work planned in blocks (:mod:`tiling.blocks`) never holds the cells in one process."""
    for scene, grid in zip(scenes, grids, strict=True):
        res = min(scene.res)
        if grid.size < 8 * res:
            raise InputError(f"a chip side of {grid.size:g} m covers {grid.size / res:.3g} pixels of its {res:g} m "
                             "pixels; chips need at least 8 pixels (raise --chip-size-m)", scene.source)
        if grid.step < res:
            raise InputError(f"a stride of {grid.step:g} m is finer than its {res:g} m pixels: chips would repeat "
                             "the same windows (use a stride of at least the pixel size)", scene.source)
    if not limit:
        return
    total = sum(grid.count_within(extent, tolerance=0.5 * scene.res[0])
                for scene, grid, extent in zip(scenes, grids, extents, strict=True) if extent is not None)
    check_cell_count(total, grids[0], len(scenes))


def check_cell_count(total: int, grid: ChipGrid, rasters: int) -> None:
    """Refuse a run of more than :data:`MAX_CELLS` grid cells (a stride or chip size far below a chip's usual
    size, most likely a mistake), naming the chip size, the stride and what to change."""
    if total > MAX_CELLS:
        raise InputError(f"chips of {grid.size:g} m every {grid.step:g} m make {total:,.0f} grid cells over the "
                         f"{rasters} NAIP raster(s), more than {MAX_CELLS:,} in one run: use a larger --stride-m "
                         "or --chip-size-m, an --aoi, or fewer rasters per run")


def read_aoi(path: PathLike) -> gpd.GeoSeries:
    """The shapes of an AOI vector file; an :class:`InputError` naming it when unreadable, CRS-less or empty."""
    try:
        frame = gpd.read_file(path)
    except Exception as exc:
        raise InputError(f"cannot be read as a vector file ({str(exc).splitlines()[0]})", os.fspath(path)) from exc
    if frame.crs is None:
        raise InputError("has no CRS; the AOI needs one to be matched with the rasters", os.fspath(path))
    if frame.empty:
        raise InputError("holds no shapes", os.fspath(path))
    return frame.geometry


def label_cells(task: CellTask, nlcd: NlcdInfo | None, scheme: ClassScheme, samples: int,
                block_size_m: float | None, pixels: WindowPixels | None = None) -> pd.DataFrame:
    """Label one task's cells: a plain DataFrame (geometry is built once, on the client). ``pixels``: some of
    the raster's pixels already read, for its nodata lattice (see :func:`tiling.labels.chip_fractions`)."""
    scene, grid = task.scene, task.grid
    fractions = chip_fractions(scene, grid, task.ix, task.iy, nlcd, scheme, samples, pixels)
    windows = scene_windows(scene, grid, task.ix, task.iy)
    bounds = grid.cell_bounds(task.ix, task.iy)
    crs = scene.crs.to_string()
    frame = pd.DataFrame({
        "chip_id": [f"{scene.name}:{x}_{y}" for x, y in zip(task.ix, task.iy, strict=True)],
        "cell": [grid.cell_id(x, y) for x, y in zip(task.ix, task.iy, strict=True)],
        "ix": task.ix, "iy": task.iy,
        "scene": scene.name, "source": scene.source,
        "date": pd.Series([scene.date] * len(task.ix), dtype="object"),
        "crs": crs,
        "col_off": windows[:, 0], "row_off": windows[:, 1], "width": windows[:, 2], "height": windows[:, 3],
        "minx": bounds[:, 0], "miny": bounds[:, 1], "maxx": bounds[:, 2], "maxy": bounds[:, 3],
    })
    if nlcd is not None:
        names = scheme.names
        best = fractions.classes.argmax(axis=1)
        purity = fractions.classes.max(axis=1)
        frame["label"] = pd.Series(np.array(names, dtype=object)[best]).where(purity > 0, None)
        frame["purity"] = purity
        for i, name in enumerate(names):
            frame[f"frac_{name}"] = fractions.classes[:, i]
        frame["frac_unmapped"] = fractions.unmapped
    frame["nodata_frac"] = fractions.nodata
    frame["block"] = block_keys(frame["crs"], bounds[:, 0], bounds[:, 1], block_size_m or 5 * grid.size).to_numpy()
    return frame


def tile(naip: Sequence[PathLike], nlcd: PathLike | None = None, out: PathLike | None = None, *,
         params: TileParams | None = None, aoi: PathLike | None = None, scheduler: Scheduler = "sync",
         progress: bool = True) -> gpd.GeoDataFrame:
    """Cut NAIP rasters into chips on a snapped grid and label them from NLCD.

    Args:
        naip: NAIP raster paths or URLs (GDAL-readable, e.g. COGs over HTTP).
        nlcd: the NLCD raster; ``None`` for unlabeled chips (scoring), then no label, purity or split.
        out: directory to write ``chips.parquet`` into (atomically); nothing is written when ``None``.
        params: tiling parameters (defaults: 224 px chips, purity >= 0.6, block split).
        aoi: optional vector file; chips outside it are dropped.
        scheduler: ``"sync"``, ``None``/``"local"`` (LocalCluster), a scheduler address or a client.
        progress: show a progress bar.

    Returns:
        The chip index (see docs/architecture.md for its columns); run parameters in ``.attrs["geoclf"]``.

    Raises:
        InputError: unreadable rasters, a missing CRS, rasters that do not overlap, non-NLCD values, or no
            chip left after a filter (the message says which).
    """
    params = params or TileParams()
    params.validate()
    scheme = ClassScheme.from_mapping(params.classes)
    nlcd_info = describe_nlcd(normalize_source(nlcd)) if nlcd is not None else None
    scenes, tasks, counts = plan_chips(naip, params, aoi, nlcd_info)
    if counts["cells"] == 0:
        raise InputError("no whole chip fits in the NAIP rasters; use a smaller chip size")
    if counts["in_aoi"] == 0:
        raise InputError(f"the AOI misses every chip of the {len(scenes)} NAIP raster(s)", os.fspath(aoi))
    with dask_client(for_tasks(scheduler, len(tasks))) as client:
        parts = map_tasks(label_cells, tasks, client, nlcd_info, scheme, params.samples, params.block_size_m,
                          desc="labeling chips", progress=progress)
    frame = pd.concat(parts, ignore_index=True)
    frame = _filter(frame, params, labeled=nlcd_info is not None)
    frame = _dedupe_overlaps(frame)
    index_crs = index_crs_of(scenes)
    index = with_footprints(frame, index_crs)
    if nlcd_info is not None:
        index = _split(index, params)
    index = index.reset_index(drop=True)
    index.attrs["geoclf"] = {
        "params": asdict(params),
        "naip": [s.source for s in scenes],
        "nlcd": None if nlcd_info is None else nlcd_info.source,
        "aoi": None if aoi is None else normalize_source(aoi),
        "classes": scheme.names,
        "chip_size_m": tasks[0].grid.size if tasks else None,
        "stride_m": tasks[0].grid.step if tasks else None,
    }
    if out is not None:
        write_index(index, Path(out) / "chips.parquet")
    return index


def kept_chips(frame: pd.DataFrame, params: TileParams, labeled: bool) -> pd.Series:
    """Which labeled cells the filters keep: at most ``max_nodata`` without data and, when labeled, a majority
    class covering at least ``min_purity``."""
    keep = frame["nodata_frac"] <= params.max_nodata
    if labeled:
        keep &= (frame["purity"] >= params.min_purity) & frame["label"].notna()
    return keep


def _filter(frame: pd.DataFrame, params: TileParams, labeled: bool) -> pd.DataFrame:
    total = len(frame)
    frame = frame[frame["nodata_frac"] <= params.max_nodata]
    if frame.empty:
        raise InputError(f"no chip left: all {total} candidate chips have more than "
                         f"{params.max_nodata:.0%} nodata (raise --max-nodata, or check the rasters overlap)")
    if labeled:
        kept = frame[(frame["purity"] >= params.min_purity) & frame["label"].notna()]
        if kept.empty:
            raise InputError(f"no chip left: none of the {len(frame)} chips with data has a land-use class "
                             f"covering {params.min_purity:.0%} of it (lower --min-purity)")
        frame = kept
    return frame


def _dedupe_overlaps(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep one chip per grid cell and date where neighbouring rasters overlap (the one with most data).

    A missing date is an ordinary value here: undated rasters of one place compete with each other, never
    with all other undated chips (``duplicated`` treats missing values as equal to each other, but a text key
    built from them would be missing itself under pandas 3, and every row would collapse into one).
    """
    order = frame.sort_values(["nodata_frac", "scene"], kind="stable")
    return order[~order.duplicated(["cell", "date"])].sort_index()


def index_crs_of(scenes: Sequence[SceneInfo]) -> CRS:
    """The chip index's CRS for these rasters: theirs when they share one, else :data:`MULTI_CRS_INDEX`."""
    crses = {s.crs.to_string() for s in scenes}
    return scenes[0].crs if len(crses) == 1 else CRS.from_string(MULTI_CRS_INDEX)


def with_footprints(frame: pd.DataFrame, index_crs: CRS) -> gpd.GeoDataFrame:
    """Footprints in the index CRS; native bounds dropped (they follow from the grid cell)."""
    crses = frame["crs"].unique()
    index_wkt = index_crs.to_wkt()
    # geopandas makes a pyproj CRS of a rasterio one each time it is given one (~1 ms, three times a block)
    index_crs = _pyproj_crs(index_wkt)
    if len(crses) == 1 and _exact_same_crs(str(crses[0]), index_wkt):
        # the chips of one raster in its own CRS (every scored block): their boxes are the footprints, as
        # to_crs keeps them; building them once skips the GeoSeries per CRS and their CRS comparisons
        boxes = shapely.box(frame["minx"].to_numpy(), frame["miny"].to_numpy(), frame["maxx"].to_numpy(),
                            frame["maxy"].to_numpy())
        return gpd.GeoDataFrame(frame.drop(columns=["minx", "miny", "maxx", "maxy"]),
                                geometry=gpd.GeoSeries(boxes, index=frame.index, crs=index_crs))
    geometry = gpd.GeoSeries(index=frame.index, dtype="geometry", crs=index_crs)
    for crs, rows in frame.groupby("crs", sort=False):
        native = gpd.GeoSeries(shapely.box(rows["minx"], rows["miny"], rows["maxx"], rows["maxy"]),
                               index=rows.index, crs=crs)
        geometry.loc[rows.index] = native.to_crs(index_crs)
    return gpd.GeoDataFrame(frame.drop(columns=["minx", "miny", "maxx", "maxy"]), geometry=geometry,
                            crs=index_crs)


@functools.lru_cache(maxsize=64)
def _pyproj_crs(wkt: str) -> pyproj.CRS:
    """The pyproj CRS of a WKT, built once per process: what geopandas builds of a rasterio CRS (from its WKT)."""
    return pyproj.CRS.from_user_input(wkt)


@functools.lru_cache(maxsize=64)
def _exact_same_crs(native: str, index_wkt: str) -> bool:
    """Whether footprints in ``native`` need no reprojection into the index CRS, answered once per pair
    (building the two pyproj CRSes is most of it): the test ``GeoSeries.to_crs`` makes (pyproj's
    ``is_exact_same``), or else a transformation between them that is PROJ's ``noop``, which leaves every
    coordinate as it is: one CRS written two ways (a raster's ``EPSG:26919`` and the index CRS's WKT of it,
    which ``is_exact_same`` tells apart)."""
    source, target = pyproj.CRS.from_user_input(native), pyproj.CRS.from_user_input(index_wkt)
    if source.is_exact_same(target):
        return True
    # the very transformer to_crs builds (geopandas: Transformer.from_crs(..., always_xy=True))
    return pyproj.Transformer.from_crs(source, target, always_xy=True).name == "noop"


def _split(index: gpd.GeoDataFrame, params: TileParams) -> gpd.GeoDataFrame:
    if params.split == "scene":
        if index["scene"].nunique() < 2:
            raise InputError("a split by scene needs at least two NAIP rasters; use --split blocks")
        groups = index["scene"]
    else:
        groups = index["block"]
    index = index.assign(split=assign_split(groups, index["label"], params.val_fraction, params.seed).to_numpy())
    if params.balance:
        keep = balance_classes(index["label"], index["split"], params.seed)
        index = index.loc[index.index.isin(keep)]
    return index


#: Rows per Parquet row group of a chip index: a featurize task reads one row group (:mod:`tiling.slices`), not
#: the whole file (pyarrow's default, a million rows, would make every task decode the whole of a county's index).
INDEX_ROW_GROUP = 4096


def write_index(index: gpd.GeoDataFrame, path: PathLike) -> Path:
    """Write a chip index as GeoParquet, atomically (:func:`tiling.io.atomic_path`), run parameters included,
    in row groups of :data:`INDEX_ROW_GROUP` rows."""
    path = Path(path)
    frame = index.copy()
    frame.attrs = json.loads(json.dumps(index.attrs, default=str))
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, row_group_size=INDEX_ROW_GROUP)
    return path


def read_index(path: PathLike, *, check_rasters: bool = False) -> gpd.GeoDataFrame:
    """Read a chip index written by :func:`tile` (a directory holding ``chips.parquet`` or the file), checked.

    The index is checked as :func:`validate_index` says before it is returned, so that a stage refuses a bad
    index with one line before it starts any work or writes any output.

    Args:
        path: ``chips.parquet`` or the directory holding it.
        check_rasters: also open every source raster (its header only) and check that each chip's window lies
            inside it. Stages that read pixels ask for it; reading the run parameters needs no rasters.

    Raises:
        InputError: the file is missing, is no chip index, or a row is bad (the message names the first one).
    """
    path = index_file(path)
    if not path.exists():
        raise InputError("no such chip index", path)
    try:
        index = gpd.read_parquet(path)
    except Exception as exc:
        raise InputError(f"is not a chip index ({str(exc).splitlines()[0]})", path) from exc
    validate_index(index, path, check_rasters=check_rasters)
    return index


#: Columns every chip index has: the chip and where to read it.
REQUIRED_COLUMNS = ("chip_id", "source", "col_off", "row_off", "width", "height")
_INTEGER_COLUMNS = ("col_off", "row_off", "width", "height", "ix", "iy")
_TEXT_COLUMNS = ("chip_id", "source", "cell", "scene", "crs", "label", "split", "block")
_SPLITS = ("train", "val")


def validate_index(index: pd.DataFrame, path: PathLike | None = None, *, check_rasters: bool = False,
                   first_row: int = 0) -> None:
    """Check a chip index: known columns, their types, and every row; one :class:`InputError` for the first problem.

    Checked: the columns every index needs (``chip_id``, ``source`` and the window); integer window offsets and
    sizes and cell indices, text ids and keys, dates, fractions in [0, 1] and splits ``train``/``val`` where
    those columns exist; and per row, a unique non-empty ``chip_id``, a source, offsets >= 0, sizes > 0 and a
    footprint geometry that is not empty.
    With ``check_rasters``, each source raster's header is read and every window must lie inside the raster.

    Args:
        index: the index (from :func:`read_index`, or built in memory).
        path: the file it came from, named in the message.
        check_rasters: also check windows against the source rasters (opens each once).
        first_row: the row number of the index's first row in its file (a row group checked on its own), for
            the message.

    Raises:
        InputError: ``<path>: row <n> (chip_id '<id>'): <problem>`` for the first bad row, or the column's
            problem.
    """
    missing = [name for name in REQUIRED_COLUMNS if name not in index.columns]
    if missing:
        raise InputError(f"is not a chip index (missing columns: {', '.join(missing)})", path)
    if index.empty:
        raise InputError("holds no chips", path)
    for name in _INTEGER_COLUMNS:
        if name in index.columns and not pd.api.types.is_integer_dtype(index[name]):
            raise InputError(f"column {name!r} holds {index[name].dtype} values; chip windows and cell indices are "
                             "integers", path)
    fractions = [c for c in index.columns if c in ("purity", "nodata_frac") or str(c).startswith("frac_")]
    for name in fractions:
        if not pd.api.types.is_float_dtype(index[name]):
            raise InputError(f"column {name!r} holds {index[name].dtype} values; fractions are floats", path)
    # Row problems, each a mask and a message; the earliest bad row is reported.
    problems: list[tuple[np.ndarray, Callable[[int], str]]] = []

    def problem(bad: pd.Series | np.ndarray, message: str | Callable[[int], str]) -> None:
        problems.append((np.asarray(bad, dtype=bool), message if callable(message) else lambda _: message))

    for name in (c for c in _TEXT_COLUMNS if c in index.columns):
        problem(~_is_text(index[name]),
                lambda row, name=name: f"{name} is {type(index[name].iloc[row]).__name__}, not text")
    chip_id = index["chip_id"].astype(object)
    problem(chip_id.isna() | (chip_id == ""), "chip_id is empty")
    problem(chip_id.duplicated(), "chip_id repeats an earlier row's; chip ids must be unique")
    source = index["source"].astype(object)
    problem(source.isna() | (source == ""), "no source raster")
    for name in ("col_off", "row_off"):
        problem(index[name] < 0, f"{name} is negative; chip windows start inside the raster")
    for name in ("width", "height"):
        problem(index[name] <= 0, lambda row, name=name: f"window {name} is {index[name].iloc[row]}; chip windows "
                                                         "need positive sizes")
    for name in fractions:
        problem(~index[name].between(0, 1) & index[name].notna(),
                lambda row, name=name: f"{name} is {index[name].iloc[row]}, outside [0, 1]")
    if "date" in index.columns and not pd.api.types.is_datetime64_any_dtype(index["date"]):
        dates = index["date"].astype(object)
        problem(~(dates.isna() | dates.map(lambda v: isinstance(v, dt.date))), "date is not a date")
    if "split" in index.columns:
        problem(~index["split"].isin(_SPLITS) & index["split"].notna(), "split is neither train nor val")
    if isinstance(index, gpd.GeoDataFrame) and index.geometry.name in index.columns:
        # the footprint is what maps, areas and zones are computed from: an empty one has no place on the map
        footprints = index.geometry
        problem(footprints.isna().to_numpy() | footprints.is_empty.to_numpy(), "footprint geometry is empty")
    _refuse_first_row(index, problems, path, first_row)
    if check_rasters:
        _check_windows(index, path, first_row)


def _is_text(values: pd.Series) -> np.ndarray:
    """True where a value is text or missing."""
    if pd.api.types.is_string_dtype(values):  # every value is text or missing (checked without a Python loop)
        return np.ones(len(values), dtype=bool)
    values = values.astype(object)
    return (values.isna() | values.map(lambda v: isinstance(v, str))).to_numpy(dtype=bool)


def _refuse_first_row(index: pd.DataFrame, problems: list[tuple[np.ndarray, Callable[[int], str]]],
                      path: PathLike | None, first_row: int = 0) -> None:
    """Raise for the earliest row any problem flags (the first problem listed for that row)."""
    first = [(int(np.flatnonzero(bad)[0]), order, message) for order, (bad, message) in enumerate(problems)
             if bad.any()]
    if first:
        row, _, message = min(first, key=lambda item: item[:2])
        raise InputError(f"row {first_row + row} (chip_id {index['chip_id'].iloc[row]!r}): {message(row)}", path)


def _check_windows(index: pd.DataFrame, path: PathLike | None, first_row: int = 0) -> None:
    """Every window inside its source raster: an index outlives the rasters it was made from."""
    right = (index["col_off"] + index["width"]).to_numpy()
    bottom = (index["row_off"] + index["height"]).to_numpy()
    problems: list[tuple[np.ndarray, Callable[[int], str]]] = []
    for source, rows in index.groupby("source", sort=False).indices.items():
        mine = np.zeros(len(index), dtype=bool)
        mine[rows] = True
        try:
            with open_raster(source) as dataset:
                width, height = dataset.width, dataset.height
        except InputError as exc:
            problems.append((mine, lambda _, exc=exc: f"its source raster {exc}"))
            continue
        problems.append((mine & ((right > width) | (bottom > height)),
                         lambda row, width=width, height=height, source=source: (
                             f"window ({index['col_off'].iloc[row]}, {index['row_off'].iloc[row]}, "
                             f"{index['width'].iloc[row]}, {index['height'].iloc[row]}) reaches beyond its "
                             f"{width} x {height} px raster {source}")))
    _refuse_first_row(index, problems, path, first_row)


def index_file(path: PathLike) -> Path:
    """The ``chips.parquet`` a chip index argument names (the file, or the directory holding it)."""
    path = Path(path)
    return path / "chips.parquet" if path.is_dir() else path


def index_hash(path: PathLike) -> str:
    """SHA-256 of a chip index file: identifies the data a model was trained on."""
    digest = hashlib.sha256()
    with open(index_file(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def summarize(index: gpd.GeoDataFrame) -> pd.DataFrame:
    """Chips per class and split, with totals: what ``geoclf tile`` prints."""
    if "label" not in index.columns:
        return pd.DataFrame({"chips": [len(index)]}, index=["all"])
    table = pd.crosstab(index["label"], index["split"], margins=True, margins_name="total")
    return table


def summarize_counts(counts: pd.DataFrame | None, chips: int) -> pd.DataFrame:
    """:func:`summarize`'s table from counts alone (an index tiled in partitions is never held whole).

    Args:
        counts: ``label``, ``split`` and ``chips`` columns (chips per class and split), or ``None`` for an
            unlabeled index.
        chips: the index's chips.
    """
    if counts is None:
        return pd.DataFrame({"chips": [chips]}, index=["all"])
    table = counts[counts["chips"] > 0].pivot_table(index="label", columns="split", values="chips", aggfunc="sum",
                                                    fill_value=0)
    table = table.astype(np.int64)
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    return table


def index_scheme(index: gpd.GeoDataFrame | Mapping[str, Any]) -> ClassScheme:
    """The class scheme an index was tiled with (its stored tiling parameters), in class order.

    Takes the index or its ``attrs["geoclf"]``. An index that records none (written by another tool) is
    taken as tiled with the default scheme, the default of :class:`TileParams`. Every model trained on an
    index takes its class order and NLCD grouping (map legends) from here, whichever kind of model it is.

    Raises:
        InputError: the stored scheme is damaged (not NLCD codes, a code in two classes).
    """
    attrs = index.attrs.get("geoclf", {}) if isinstance(index, pd.DataFrame) else index
    groups = (attrs.get("params") or {}).get("classes")
    return ClassScheme.from_mapping(groups) if groups else ClassScheme.default()


def params_from(index: gpd.GeoDataFrame) -> dict[str, Any]:
    """The tiling parameters stored with an index (empty for indexes written by other tools)."""
    return dict(index.attrs.get("geoclf", {}).get("params", {}))
