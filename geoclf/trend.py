"""Multi-year land-use trends: a lazy stack of land-use maps, class area series, trends, trajectories, zones.

The stack (:func:`open_stack`) is an ``xarray.Dataset`` with dims ``(time, y, x)``: one land-use map per
acquisition date on one grid, georeferenced with rioxarray, backed by Dask so that nothing is read until a
result is asked for and no more than a few chunks are in memory at once. Every analysis below works on it
chunk by chunk:

- :func:`class_areas` -- area and share of each class at each date, over the *assessed area* (the pixels
  mapped at every date, so that a year with a smaller footprint does not look like a loss);
  :func:`reference_areas` -- the error-adjusted areas with 95% confidence intervals of Olofsson et al.
  (2014) at each date that a reference sample labels;
- :func:`class_trends` -- a Theil–Sen slope per class with Sen's rank-based confidence interval, and a flag
  where the interval holds zero (see :func:`theil_sen` for why this estimator);
- :func:`trajectories` -- per pixel: how many times the class changed, how many of those changes are
  "flicker" (A→B→A), and the first year it was Developed, optionally after a majority filter over time
  (:func:`smooth_time`) that removes single-date flicker, which is usually classifier noise;
- :func:`zonal_areas` -- area per class, date and zone (towns, tracts), whose trends :func:`class_trends`
  also gives;
- :func:`analyze_trends` -- all of the above written to a directory, with ``trend.html``
  (:func:`trend_map`).

A map pixel is a chip cell (see :mod:`geoclf.maps`): areas count pixels times the pixel's ground area, and
trends of the *mapped* areas inherit the maps' errors. With a reference sample the error-adjusted series are
estimated too, and trended alike.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as darr
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import rasterio
import rasterio.features
import rasterio.transform
import rasterio.warp
import rioxarray
import shapely
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from scipy import stats

from geoclf.area import equal_area_crs, error_matrix, olofsson, parse_cell
from geoclf.change import DEVELOPED, read_reference, read_zones, zone_names
from geoclf.maps import NODATA, LandUseGrid
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.io import scene_date

PathLike = str | os.PathLike[str]

#: The land-use map and its probabilities inside a ``geoclf score`` output directory.
LANDUSE = "landuse.tif"
PROBABILITIES = "landuse_probs.tif"
PREDICTIONS = "predictions.parquet"
#: Name of the class-code variable of the stack (the COG band's description).
CODES = "land_use_class"
#: The stack written by :func:`analyze_trends`.
STACK = "landuse_stack.zarr"
#: Default spatial chunk side of the stack, in map pixels (one pixel per chip: 512² chips is a large county).
CHUNK = 512

# A pixel offset closer than this to a whole number is one: float noise in transforms, not a shift.
_ALIGN_TOLERANCE = 1e-6


# --------------------------------------------------------------------------------------------------------
# Opening maps and stacking them
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Map:
    """What is known of one land-use map before any pixel is read."""

    path: Path
    probs_path: Path | None
    date: dt.date
    date_first: dt.date
    date_last: dt.date
    model: str
    classes: ClassScheme
    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        return left, top + self.height * self.transform.e, left + self.width * self.transform.a, top


def _landuse_path(source: Path) -> Path:
    path = source / LANDUSE if source.is_dir() else source
    if not path.exists():
        raise InputError(f"no {LANDUSE} here (give `geoclf score` output directories or land-use COGs)"
                         if source.is_dir() else "no such file", path)
    return path


def _header(path: Path) -> tuple[ClassScheme, CRS, Affine, int, int, dict[str, str]]:
    """Class scheme and georeferencing of a land-use COG, from its header only."""
    try:
        with rasterio.open(path) as dataset:
            tags, crs, transform = dataset.tags(), dataset.crs, dataset.transform
            width, height = dataset.width, dataset.height
    except RasterioError as exc:
        raise InputError(f"cannot be read as a raster ({str(exc).splitlines()[0]})", path) from exc
    if "CLASS_SCHEME" not in tags:
        raise InputError("is not a geoclf land-use map (no CLASS_SCHEME tag)", path)
    try:
        groups = json.loads(tags["CLASS_SCHEME"])
        colors = json.loads(tags.get("CLASS_COLORS", "{}"))
        classes = ClassScheme({k: tuple(v) for k, v in groups.items()}, {k: tuple(v) for k, v in colors.items()})
    except (ValueError, AttributeError, TypeError) as exc:
        raise InputError(f"has an unreadable class scheme tag ({exc})", path) from exc
    if crs is None:
        raise InputError("has no CRS, so it cannot be placed on a common grid with the other dates", path)
    if not crs.is_projected:
        raise InputError(f"is in a geographic CRS ({crs.to_string()}); land-use maps need a projected CRS", path)
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        raise InputError("is not a north-up raster; geoclf land-use maps are", path)
    return classes, crs, transform, width, height, tags


def _map_dates(source: Path, landuse: Path, tags: dict[str, str]) -> tuple[list[dt.date], str]:
    """Acquisition dates of a map's chips (else of the map itself), and the model name.

    Only the date/scene/model columns of ``predictions.parquet`` are read: the footprints are not needed,
    and a county's predictions need not be loaded to learn when its imagery was flown.
    """
    table = source / PREDICTIONS if source.is_dir() else landuse.with_name(PREDICTIONS)
    dates: list[dt.date] = []
    model = ""
    if table.exists():
        try:
            names = set(pq.read_schema(table).names)
            columns = [c for c in ("date", "scene", "source", "model") if c in names]
            frame = pq.read_table(table, columns=columns).to_pandas() if columns else pd.DataFrame()
        except Exception as exc:
            raise InputError(f"cannot be read as Parquet ({str(exc).splitlines()[0]})", table) from exc
        if "date" in frame.columns:
            when = pd.to_datetime(frame["date"], errors="coerce").dropna()
            dates = [d.date() for d in when]
        if not dates:  # chips without a date column: NAIP names carry it
            for column in ("scene", "source"):
                if column in frame.columns:
                    found = [scene_date(Path(str(v)).stem) for v in frame[column].dropna().unique()]
                    dates = [d for d in found if d is not None]
                    if dates:
                        break
        if "model" in frame.columns and frame["model"].notna().any():
            model = str(frame["model"].dropna().mode().iloc[0])
    if not dates:
        found = scene_date(landuse.stem, tags) or scene_date(source.name)
        dates = [found] if found else []
    return sorted(dates), model


def _describe(source: PathLike, date: dt.date | str | None, probabilities: bool) -> _Map:
    source = Path(source)
    landuse = _landuse_path(source)
    classes, crs, transform, width, height, tags = _header(landuse)
    probs_path = None
    if probabilities:
        probs_path = landuse.with_name(PROBABILITIES)
        if not probs_path.exists():
            raise InputError(f"no {PROBABILITIES} beside the map (score with --probabilities to get it)",
                             probs_path)
    dates, model = _map_dates(source, landuse, tags)
    if date is not None:
        try:
            dates = [pd.Timestamp(date).date()]
        except (ValueError, TypeError) as exc:
            raise InputError(f"date {date!r} given for it is not a date (use YYYY-MM-DD)", landuse) from exc
    if not dates:
        raise InputError("has no acquisition date: no dated predictions.parquet beside it, no ACQUISITION_DATE "
                         "tag and no _YYYYMMDD in its name; give the dates explicitly", landuse)
    # The median chip date: a county's imagery is flown over days or weeks, and the middle one stands for
    # the whole map better than the first.
    median = dates[(len(dates) - 1) // 2]
    return _Map(landuse, probs_path, median, dates[0], dates[-1], model, classes, crs, transform, width, height)


def _check_dates(maps: list[_Map]) -> None:
    if len(maps) < 2:
        found = f"one map ({maps[0].path}, {maps[0].date})" if maps else "no map"
        raise InputError(f"a trend needs maps of at least two dates, got {found}")
    seen: dict[dt.date, _Map] = {}
    for item in maps:
        if item.date in seen:
            other = seen[item.date]
            what = "the same map twice" if other.path.resolve() == item.path.resolve() else "two maps of one date"
            raise InputError(f"{what}: {other.path} and {item.path} are both dated {item.date}; give one map per "
                             "acquisition date")
        seen[item.date] = item


def _check_classes(maps: list[_Map]) -> ClassScheme:
    reference = maps[0]
    for item in maps[1:]:
        if set(item.classes.names) != set(reference.classes.names):
            raise InputError(f"maps use different class sets: {reference.path} ({reference.date}) has "
                             f"{reference.classes.names}, {item.path} ({item.date}) has {item.classes.names}; "
                             "stack maps scored with the same classes")
    return reference.classes


@dataclass(frozen=True)
class _Grid:
    crs: CRS
    transform: Affine
    width: int
    height: int


def _common_grid(maps: list[_Map]) -> _Grid:
    """The grid the stack lives on: that of most maps (the earliest on a tie), grown to cover every map.

    Maps on one chip grid share CRS, pixel size and pixel corners, so they sit on it at whole-pixel offsets
    and are never resampled; choosing the most common grid keeps the number of resampled maps smallest.
    """
    def key(item: _Map) -> tuple[str, float, float, float, float]:
        a, e = item.transform.a, item.transform.e
        return (item.crs.to_wkt(), round(a, 9), round(e, 9),
                round((item.transform.c / a) % 1.0, 6) % 1.0, round((item.transform.f / e) % 1.0, 6) % 1.0)

    counts = pd.Series([key(m) for m in maps]).value_counts(sort=False)
    best = counts.idxmax()
    base = next(m for m in maps if key(m) == best)
    res_x, res_y = base.transform.a, -base.transform.e
    origin_x, origin_y = base.transform.c, base.transform.f
    boxes = []
    for item in maps:
        bounds = item.bounds if item.crs == base.crs else rasterio.warp.transform_bounds(
            item.crs, base.crs, *item.bounds, densify_pts=21)
        boxes.append(bounds)
    _check_overlap(maps, boxes)
    # Edges round to the nearest pixel edge: exact for maps on the grid, and a resampled map's pixel counts only
    # where its centre is covered (nearest neighbour leaves the rest nodata anyway).
    col0 = round(min((b[0] - origin_x) / res_x for b in boxes))
    col1 = round(max((b[2] - origin_x) / res_x for b in boxes))
    row0 = round(min((origin_y - b[3]) / res_y for b in boxes))
    row1 = round(max((origin_y - b[1]) / res_y for b in boxes))
    transform = Affine(res_x, 0.0, origin_x + col0 * res_x, 0.0, -res_y, origin_y - row0 * res_y)
    return _Grid(base.crs, transform, col1 - col0, row1 - row0)


def _check_overlap(maps: list[_Map], boxes: list[tuple[float, float, float, float]]) -> None:
    left, bottom, right, top = boxes[0]
    for item, box in zip(maps[1:], boxes[1:], strict=True):
        left, bottom = max(left, box[0]), max(bottom, box[1])
        right, top = min(right, box[2]), min(top, box[3])
        if left >= right or bottom >= top:
            raise InputError(f"the maps cannot be aligned: {item.path} ({item.date}) shares no area with the maps "
                             f"of earlier dates ({maps[0].path} covers {_bounds_text(boxes[0])}, it covers "
                             f"{_bounds_text(box)}); stack maps of the same area")


def _bounds_text(bounds: Sequence[float]) -> str:
    return "({:.0f}, {:.0f}, {:.0f}, {:.0f})".format(*bounds)


def _offset(item: _Map, grid: _Grid) -> tuple[int, int] | None:
    """Whole-pixel (column, row) offset of a map on the grid, or None if it must be resampled."""
    if item.crs != grid.crs or not np.allclose((item.transform.a, item.transform.e),
                                               (grid.transform.a, grid.transform.e), rtol=0, atol=1e-9):
        return None
    col = (item.transform.c - grid.transform.c) / grid.transform.a
    row = (item.transform.f - grid.transform.f) / grid.transform.e
    if abs(col - round(col)) > _ALIGN_TOLERANCE or abs(row - round(row)) > _ALIGN_TOLERANCE:
        return None
    return round(col), round(row)


def _open_on_grid(path: Path, grid: _Grid, offset: tuple[int, int] | None, nodata: float,
                  chunks: int) -> darr.Array:
    """The bands of a raster as a lazy ``(band, H, W)`` Dask array on ``grid``.

    A map at a whole-pixel offset is padded with nodata: its pixels are the file's, untouched. Any other map
    (another CRS, pixel size, or pixel corners) is read through a GDAL warped VRT with nearest-neighbour
    resampling, so class codes are never blended. ``rio.reproject_match`` would do the same warp, but on the
    whole array in memory; the VRT is read block by block, like the files themselves.
    """
    spec = {"band": 1, "y": chunks, "x": chunks}
    if offset is not None:
        array = rioxarray.open_rasterio(path, chunks=spec, masked=False).data
        col, row = offset
        pad = ((0, 0), (row, grid.height - row - array.shape[1]), (col, grid.width - col - array.shape[2]))
        return darr.pad(array, pad, mode="constant", constant_values=nodata)
    with rasterio.open(path) as source:
        vrt = WarpedVRT(source, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                        resampling=Resampling.nearest, src_nodata=nodata, nodata=nodata)
        # rioxarray keeps the VRT's parameters and reopens it from the file when a chunk is read.
        return rioxarray.open_rasterio(vrt, chunks=spec, masked=False).data


def open_stack(maps: Sequence[PathLike], *, dates: Sequence[dt.date | str] | None = None,
               probabilities: bool = False, chunks: int = CHUNK) -> xr.Dataset:
    """Stack land-use maps of several dates on one grid, lazily: opening reads headers, never pixels.

    Each map is a ``geoclf score`` output directory (``landuse.tif``, ``predictions.parquet``) or a
    land-use COG. Its date is the median acquisition date of its chips (``predictions.parquet``'s ``date``,
    else the NAIP names of its scenes), else the COG's ``ACQUISITION_DATE`` tag or a ``_YYYYMMDD`` in its name.

    Alignment: the stack's grid is that of most maps, extended to cover them all. Maps on it at whole-pixel
    offsets (the same chip grid, which is snapped to the CRS, so NAIP years whose rasters start a few metres
    apart still land on the same cells) are padded, never resampled; others are warped onto it with nearest
    neighbour (see :func:`_open_on_grid`). Codes of a map whose scheme lists the same classes in another
    order are renumbered to the first map's order.

    Args:
        maps: map directories or COGs, in any order (the stack is sorted by date).
        dates: one acquisition date per map, overriding what the maps say.
        probabilities: also stack ``landuse_probs.tif`` as ``prob_<Class>`` variables (float32, NaN nodata).
        chunks: spatial chunk side in pixels; a chunk holds every date of its pixels.

    Returns:
        A Dataset with ``land_use_class`` ``(time, y, x)`` uint8 (class ``i`` as ``i + 1``, 0 nodata),
        optional ``prob_<Class>`` ``(time, y, x)``; coordinates ``time`` (acquisition dates), ``year``,
        ``date_first``/``date_last`` (span of the chip dates), ``source`` (map path), ``model``, pixel-centre
        ``y``/``x`` and rioxarray's ``spatial_ref``. Attributes: ``class_names``, ``class_scheme``,
        ``class_colors`` (JSON), ``pixel_area_km2``, ``resampled`` (maps that were warped).

    Raises:
        InputError: fewer than two maps, duplicate dates, different class sets, maps without CRS or sharing
            no area, missing files.
    """
    if chunks < 1:
        raise InputError(f"the chunk size must be a positive number of pixels, not {chunks}")
    if dates is not None and len(dates) != len(maps):
        raise InputError(f"{len(maps)} maps but {len(dates)} dates; give one date per map")
    described = [_describe(m, None if dates is None else dates[i], probabilities) for i, m in enumerate(maps)]
    described.sort(key=lambda m: m.date)
    _check_dates(described)
    classes = _check_classes(described)
    grid = _common_grid(described)
    n_classes = len(classes.names)

    layers, probs, resampled = [], [], []
    for item in described:
        offset = _offset(item, grid)
        if offset is None:
            resampled.append(str(item.path))
        codes = _open_on_grid(item.path, grid, offset, NODATA, chunks)[0]
        order = [item.classes.names.index(name) for name in classes.names]
        if order != list(range(n_classes)):
            lut = np.zeros(256, dtype=np.uint8)
            lut[[i + 1 for i in order]] = np.arange(1, n_classes + 1, dtype=np.uint8)
            codes = codes.map_blocks(lut.__getitem__, dtype=np.uint8)
        layers.append(codes.astype(np.uint8))
        if item.probs_path is not None:
            # landuse_probs.tif shares its map's grid (see geoclf.maps), so it takes the same path.
            bands = _open_on_grid(item.probs_path, grid, offset, np.nan, chunks)
            if bands.shape[0] != n_classes:
                raise InputError(f"has {bands.shape[0]} bands for {n_classes} classes", item.probs_path)
            probs.append(bands[order].astype(np.float32))

    spec = (len(described), chunks, chunks)
    height, width = grid.height, grid.width
    xs = grid.transform.c + (np.arange(width) + 0.5) * grid.transform.a
    ys = grid.transform.f + (np.arange(height) + 0.5) * grid.transform.e
    coords: dict[str, Any] = {
        "time": pd.to_datetime([m.date for m in described]),
        "year": ("time", np.array([m.date.year for m in described], dtype=np.int64)),
        "date_first": ("time", pd.to_datetime([m.date_first for m in described])),
        "date_last": ("time", pd.to_datetime([m.date_last for m in described])),
        "source": ("time", np.array([str(m.path) for m in described], dtype=object)),
        "model": ("time", np.array([m.model for m in described], dtype=object)),
        "y": ys, "x": xs,
    }
    variables = {CODES: (("time", "y", "x"), darr.stack(layers).rechunk(spec))}
    if probs:
        stacked = darr.stack(probs)  # (time, class, y, x)
        for i, name in enumerate(classes.names):
            variables[f"prob_{name}"] = (("time", "y", "x"), stacked[:, i].rechunk(spec))
    stack = xr.Dataset(variables, coords=coords)
    stack[CODES].attrs.update({
        "long_name": "land-use class code (class i of class_names is i + 1)",
        "flag_values": list(range(1, n_classes + 1)),
        "flag_meanings": " ".join(re.sub(r"\W+", "_", name) for name in classes.names),
        "nodata": NODATA,
    })
    for name in classes.names:
        if f"prob_{name}" in stack:
            stack[f"prob_{name}"].attrs.update({"long_name": f"probability of {name}", "nodata": float("nan")})
    stack = stack.rio.write_crs(grid.crs).rio.write_transform(grid.transform)
    stack.attrs.update({
        "title": "geoclf land-use stack",
        "class_names": json.dumps(classes.names),
        "class_scheme": json.dumps(classes.to_dict()),
        "class_colors": json.dumps({n: list(classes.color(n)) for n in classes.names}),
        "pixel_area_km2": pixel_area_km2(grid.crs, grid.transform, width, height),
        "resampled": json.dumps(resampled),
    })
    return stack


def pixel_area_km2(crs: CRS, transform: Affine, width: int, height: int) -> float:
    """Ground area of one pixel in km², measured in an equal-area CRS over the grid's footprint.

    A projected CRS's square metres are not ground square metres away from its standard lines (UTM: up to
    ~0.1%); measuring the footprint in an equal-area CRS makes areas agree with
    :func:`geoclf.area.chip_area_km2`. Across one map the distortion varies far less than that, so one
    figure serves every pixel.
    """
    left, top = transform.c, transform.f
    footprint = shapely.box(left, top + height * transform.e, left + width * transform.a, top)
    frame = gpd.GeoDataFrame(geometry=[footprint.segmentize(footprint.length / 400)], crs=crs)
    ground = float(frame.to_crs(equal_area_crs(frame)).area.iloc[0])
    return ground / (width * height) / 1e6


def stack_classes(stack: xr.Dataset) -> ClassScheme:
    """The class scheme of a stack (from its attributes)."""
    try:
        groups = json.loads(stack.attrs["class_scheme"])
        colors = json.loads(stack.attrs.get("class_colors", "{}"))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError("the dataset is not a geoclf land-use stack (no class_scheme attribute)") from exc
    return ClassScheme({k: tuple(v) for k, v in groups.items()}, {k: tuple(v) for k, v in colors.items()})


def write_stack(stack: xr.Dataset, path: PathLike) -> Path:
    """Write a stack (and any per-pixel layers added to it) as Zarr, chunk by chunk, atomically.

    Zarr format 2 with consolidated metadata: the most widely read flavour (GDAL, R, older zarr-python).
    Reopen it lazily with ``xr.open_zarr(path, decode_coords="all")``; ``.rio.crs`` works on the result.
    """
    target = Path(path)
    if target.suffix != ".zarr":
        raise InputError("the stack is written as Zarr; name it *.zarr", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        stack.to_zarr(temporary, mode="w", zarr_format=2, consolidated=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
    return target


def decimal_years(times: Sequence[Any] | pd.DatetimeIndex) -> np.ndarray:
    """Dates as decimal years (2010-07-02 -> 2010.5): the time axis of trends, in years."""
    index = pd.DatetimeIndex(times)
    length = np.where(index.is_leap_year, 366.0, 365.0)
    return index.year.to_numpy(dtype=float) + (index.dayofyear.to_numpy(dtype=float) - 1.0) / length


# --------------------------------------------------------------------------------------------------------
# Class areas over time
# --------------------------------------------------------------------------------------------------------

def assessed_mask(stack: xr.Dataset) -> xr.DataArray:
    """Pixels mapped at every date (lazy): the area over which dates are compared."""
    return (stack[CODES] != NODATA).all("time")


def class_areas(stack: xr.Dataset, *, common: bool = True) -> pd.DataFrame:
    """Mapped area and share of each class at each date.

    Args:
        stack: from :func:`open_stack`.
        common: count only the pixels mapped at every date (default), so that a date with a larger or smaller
            footprint does not show as a gain or a loss; else each date's whole map.

    Returns:
        A long table, one row per date and class: ``date``, ``year``, ``decimal_year``, ``class``, ``pixels``,
        ``km2``, ``share`` (of the counted area at that date) and ``assessed_km2`` (that area).
    """
    classes = stack_classes(stack)
    codes = stack[CODES]
    if common:
        codes = codes.where(assessed_mask(stack), NODATA)
    values = xr.DataArray(np.arange(1, len(classes.names) + 1, dtype=np.uint8), dims="class")
    counts = (codes == values).sum(("y", "x")).compute().to_numpy()  # (time, class)
    return _area_table(stack, counts, classes.names)


def _area_table(stack: xr.Dataset, counts: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    times = pd.DatetimeIndex(stack["time"].to_numpy())
    area = float(stack.attrs["pixel_area_km2"])
    total = counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total > 0, counts / total, np.nan)
    return pd.DataFrame({
        "date": np.repeat(times.date, len(names)),
        "year": np.repeat(times.year, len(names)),
        "decimal_year": np.repeat(decimal_years(times), len(names)),
        "class": np.tile(list(names), len(times)),
        "pixels": counts.ravel().astype(np.int64),
        "km2": counts.ravel() * area,
        "share": share.ravel(),
        "assessed_km2": np.repeat(total[:, 0] * area, len(names)),
    })


def reference_areas(stack: xr.Dataset, reference: pd.DataFrame, *, common: bool = True,
                    z: float = 1.96) -> pd.DataFrame:
    """Error-adjusted class areas with confidence intervals at each date a reference sample labels.

    The reference table holds one row per sample unit and date, placed by its geometry (a GeoDataFrame with
    a CRS: the pixel holding each unit's representative point) or by a ``cell`` key of the chip grid; and
    labelled either in long form (``date`` or ``year`` plus ``reference``, the true class) or in wide form
    (``reference_<YYYY>`` columns, one per year). Each date with labels gets the stratified estimators of
    Olofsson et al. (2014) (:func:`geoclf.area.olofsson`), with that date's map classes as strata and their
    mapped km² over the assessed area as stratum sizes.

    Those estimators are unbiased for a sample stratified by that date's map (or a simple random one). A
    single sample stratified by *another* date's map, labelled at every date, is a case for the estimators of
    Stehman (2014), which are not implemented: the intervals are then approximate.

    Returns:
        One row per labelled date and class: ``date``, ``class``, ``n`` (units mapped as the class),
        ``mapped_km2``, ``area_km2`` (error-adjusted), ``area_se_km2``, ``area_ci_km2`` (half-width),
        ``area_low_km2``, ``area_high_km2``, ``users``, ``producers``, ``overall_accuracy``.

    Raises:
        InputError: no location or labels in the reference, no unit on the assessed area, a date whose
            sample misses a mapped class (every stratum needs units).
    """
    classes = stack_classes(stack).names
    labels = _reference_labels(stack, reference)
    rows, cols = _reference_pixels(stack, labels)
    inside = (rows >= 0) & (rows < stack.sizes["y"]) & (cols >= 0) & (cols < stack.sizes["x"])
    labels, rows, cols = labels[inside], rows[inside], cols[inside]
    codes = stack[CODES]
    if common:
        codes = codes.where(assessed_mask(stack), NODATA)
    times = pd.DatetimeIndex(stack["time"].to_numpy())
    sampled = codes.isel(y=xr.DataArray(rows, dims="unit"), x=xr.DataArray(cols, dims="unit")).compute().to_numpy()
    mapped = class_areas(stack, common=common)
    area_per_pixel = float(stack.attrs["pixel_area_km2"])
    out = []
    for t, when in enumerate(times):
        here = (labels["_time"] == t).to_numpy()
        values = sampled[t, here]
        on_map = values != NODATA
        if not on_map.any():
            continue
        map_labels = np.asarray(classes, dtype=object)[values[on_map].astype(int) - 1]
        truth = labels.loc[here, "reference"].to_numpy()[on_map]
        counts = error_matrix(map_labels, truth, classes)
        strata = mapped[mapped["date"] == when.date()].set_index("class")["pixels"] * area_per_pixel
        try:
            estimate = olofsson(counts, strata[strata > 0], z=z, unit="km²")
        except InputError as exc:
            raise InputError(f"reference sample of {when.date()}: {exc}") from exc
        table = estimate.area.reindex(classes)
        accuracy = estimate.accuracy.reindex(classes)
        out.append(pd.DataFrame({
            "date": when.date(), "class": classes, "n": accuracy["n"].fillna(0).astype(np.int64).to_numpy(),
            "mapped_km2": table["mapped_area"].fillna(0.0).to_numpy(), "area_km2": table["area"].to_numpy(),
            "area_se_km2": table["area_se"].to_numpy(), "area_ci_km2": table["area_ci"].to_numpy(),
            "area_low_km2": table["area_low"].to_numpy(), "area_high_km2": table["area_high"].to_numpy(),
            "users": accuracy["users"].to_numpy(), "producers": accuracy["producers"].to_numpy(),
            "overall_accuracy": float(estimate.overall["accuracy"]),
        }))
    if not out:
        raise InputError("no reference unit falls on the assessed area of the stack at a date it labels")
    return pd.concat(out, ignore_index=True)


def _reference_labels(stack: xr.Dataset, reference: pd.DataFrame) -> pd.DataFrame:
    """Reference labels in long form with ``_time`` (index of the stack date they label) and ``_unit``."""
    times = pd.DatetimeIndex(stack["time"].to_numpy())
    frame = reference.reset_index(drop=True).assign(_unit=np.arange(len(reference)))
    wide = [c for c in frame.columns if re.fullmatch(r"reference_\d{4}", str(c))]
    if "reference" in frame.columns and ({"date", "year"} & set(frame.columns)):
        if "date" in frame.columns:
            when = pd.to_datetime(frame["date"], errors="coerce")
            exact = pd.Series(np.arange(len(times)), index=times.normalize())
            index = when.dt.normalize().map(exact)
            by_year = pd.Series(np.arange(len(times)), index=times.year)
            index = index.fillna(when.dt.year.map(by_year[~by_year.index.duplicated(keep=False)]))
        else:
            by_year = pd.Series(np.arange(len(times)), index=times.year)
            index = pd.to_numeric(frame["year"], errors="coerce").map(by_year[~by_year.index.duplicated(keep=False)])
        long = frame.assign(_time=index)
    elif wide:
        by_year = pd.Series(np.arange(len(times)), index=times.year)
        by_year = by_year[~by_year.index.duplicated(keep=False)]
        parts = []
        for column in wide:
            year = int(str(column)[-4:])
            if year in by_year.index:
                parts.append(frame.assign(reference=frame[column], _time=by_year[year]))
        long = pd.concat(parts, ignore_index=True) if parts else frame.iloc[:0].assign(reference=None, _time=None)
    else:
        raise InputError("the reference sample has no labels: give 'reference' with 'date' or 'year' columns, "
                         "or one 'reference_<YYYY>' column per year")
    long = long[long["_time"].notna() & long["reference"].notna()].copy()
    if long.empty:
        years = ", ".join(str(y) for y in times.year)
        raise InputError(f"no reference label is for a date of the stack ({years})")
    unknown = sorted(set(long["reference"].astype(str)) - set(stack_classes(stack).names))
    if unknown:
        raise InputError(f"reference classes {unknown} are not among the map classes {stack_classes(stack).names}")
    long["_time"] = long["_time"].astype(np.int64)
    long["reference"] = long["reference"].astype(str)
    return long


def _reference_pixels(stack: xr.Dataset, labels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each reference unit on the stack's grid."""
    crs = stack.rio.crs
    if isinstance(labels, gpd.GeoDataFrame) and labels.crs is not None and labels.geometry.notna().all():
        points = labels.geometry.representative_point().to_crs(crs)
        x, y = points.x.to_numpy(), points.y.to_numpy()
    elif "cell" in labels.columns:
        cells = parse_cell(labels["cell"])
        if cells["grid"].isna().any():
            raise InputError("the reference sample has malformed 'cell' keys; expected <crs>:<size>:<stride>:<ix>:<iy>")
        x = np.empty(len(labels))
        y = np.empty(len(labels))
        for grid_crs, part in cells.groupby("grid_crs"):
            # The centre of the cell's map pixel (its lower-left stride square, see geoclf.maps).
            cx = (part["ix"].to_numpy() + 0.5) * part["stride"].to_numpy()
            cy = (part["iy"].to_numpy() + 0.5) * part["stride"].to_numpy()
            tx, ty = rasterio.warp.transform(CRS.from_user_input(grid_crs), crs, cx, cy)
            positions = labels.index.get_indexer(part.index)
            x[positions], y[positions] = tx, ty
    else:
        raise InputError("the reference sample has neither geometry with a CRS nor a 'cell' column to place it")
    transform = stack.rio.transform()
    cols, rows = ~transform * (x, y)
    return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)


# --------------------------------------------------------------------------------------------------------
# Trends
# --------------------------------------------------------------------------------------------------------

def theil_sen(t: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Theil–Sen slope of ``y`` over ``t`` with Sen's (1968) rank-based confidence interval.

    Why this estimator: a classified area series has outlier years -- imagery flown in another season, a
    radiometric seam, another model -- which pull a least-squares line wherever they fall. The Theil–Sen
    slope (the median of all pairwise slopes) ignores up to 29% of wild points, and its interval comes from
    the distribution of Kendall's S under no trend, so it assumes neither normal nor equal errors. The
    interval runs between the pairwise slopes of ranks ``(N - C)/2`` and ``(N + C)/2 + 1`` (``N`` slopes,
    ``C = z sqrt(Var S)`` with the tie correction), both rounded outwards.

    With few dates the interval is the whole range of the pairwise slopes (always so with five dates or
    fewer at 95%), and its coverage is then ``1 - 2/n!`` for an untied series: 67%, 92% and 98% with three,
    four and five dates. ``ci_level`` reports that figure, else the requested confidence; four dates cannot
    give a 95% interval at all.

    Returns:
        ``n``, ``slope``, ``intercept`` (at ``t = 0``, through the medians), ``low``, ``high``, ``ci_level``,
        ``tau`` and ``p_value`` (Kendall's tau of ``y`` with ``t``, i.e. the Mann–Kendall test). With fewer
        than three points the interval and the test are NaN.
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    n = len(t)
    nan = float("nan")
    out = {"n": n, "slope": nan, "intercept": nan, "low": nan, "high": nan, "ci_level": nan, "tau": nan,
           "p_value": nan}
    if n < 2:
        return out
    i, j = np.triu_indices(n, k=1)
    dt_ = t[j] - t[i]
    slopes = np.sort((y[j] - y[i])[dt_ != 0] / dt_[dt_ != 0])
    if not len(slopes):
        return out
    slope = float(np.median(slopes))
    out["slope"] = slope
    out["intercept"] = float(np.median(y) - slope * np.median(t))
    if n < 3:
        return out
    _, tie_counts = np.unique(y, return_counts=True)
    var_s = (n * (n - 1) * (2 * n + 5) - sum(k * (k - 1) * (2 * k + 5) for k in tie_counts)) / 18.0
    big_n = len(slopes)
    c = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(max(var_s, 0.0))
    lo = max(0, math.floor((big_n - c) / 2) - 1)  # rank (N - C)/2, 1-based, rounded down
    hi = min(big_n - 1, math.ceil((big_n + c) / 2))  # rank (N + C)/2 + 1, 1-based, rounded up
    out["low"], out["high"] = float(slopes[lo]), float(slopes[hi])
    out["ci_level"] = 1.0 - 2.0 / math.factorial(n) if (lo == 0 and hi == big_n - 1) else confidence
    if np.ptp(y) > 0:
        result = stats.kendalltau(t, y)
        out["tau"], out["p_value"] = float(result.statistic), float(result.pvalue)
    return out


def trend_label(low: float, high: float) -> str:
    """``increasing``/``decreasing`` when the interval excludes zero, ``no trend`` when it holds it."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "too few dates"
    if low > 0:
        return "increasing"
    if high < 0:
        return "decreasing"
    return "no trend"


def class_trends(areas: pd.DataFrame, *, value: str = "km2", by: Sequence[str] = ("class",),
                 confidence: float = 0.95) -> pd.DataFrame:
    """Theil–Sen trend of ``value`` over time in each group (class; or zone and class).

    Args:
        areas: a long table with ``decimal_year`` and ``value`` (from :func:`class_areas`,
            :func:`zonal_areas`, or :func:`reference_areas` with ``value="area_km2"`` once ``decimal_year``
            is joined).
        value: the column to trend.
        by: the grouping columns.
        confidence: level of the slope's interval.

    Returns:
        One row per group: the group columns, ``n_dates``, ``first``, ``last`` (values at the first and last
        date), ``mean``, ``slope`` (per year), ``slope_low``, ``slope_high``, ``ci_level``,
        ``slope_pct_per_year`` (of the mean), ``tau``, ``p_value``, ``trend`` (see :func:`trend_label`) and
        ``significant`` (the interval excludes zero).
    """
    missing = [c for c in ("decimal_year", value, *by) if c not in areas.columns]
    if missing:
        raise InputError(f"the area table lacks column(s) {missing}")
    rows = []
    for key, part in areas.sort_values("decimal_year", kind="stable").groupby(list(by), sort=False):
        fit = theil_sen(part["decimal_year"], part[value], confidence)
        values = part[value].to_numpy(dtype=float)
        mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "n_dates": fit["n"], "first": values[0], "last": values[-1],
                     "mean": mean, "slope": fit["slope"], "slope_low": fit["low"], "slope_high": fit["high"],
                     "ci_level": fit["ci_level"],
                     "slope_pct_per_year": 100 * fit["slope"] / mean if mean else float("nan"),
                     "tau": fit["tau"], "p_value": fit["p_value"],
                     "trend": trend_label(fit["low"], fit["high"])})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["significant"] = table["trend"].isin(["increasing", "decreasing"])
    return table


# --------------------------------------------------------------------------------------------------------
# Per-pixel trajectories
# --------------------------------------------------------------------------------------------------------

def _smooth_series(codes: np.ndarray, window: int) -> np.ndarray:
    """Majority filter along the last axis; nodata neither votes nor changes, ties keep the pixel's class."""
    half = window // 2
    steps = codes.shape[-1]
    position = np.arange(steps)
    lo = np.clip(position - half, 0, steps)
    hi = np.clip(position + half + 1, 0, steps)
    best_count = np.zeros(codes.shape, dtype=np.int32)
    best_code = np.zeros(codes.shape, dtype=codes.dtype)
    own_count = np.zeros(codes.shape, dtype=np.int32)
    for code in np.unique(codes[codes != NODATA]):
        is_code = codes == code
        total = np.concatenate([np.zeros((*codes.shape[:-1], 1), np.int32),
                                np.cumsum(is_code, axis=-1, dtype=np.int32)], axis=-1)
        count = total[..., hi] - total[..., lo]
        better = count > best_count  # strict: on equal counts the lowest code, seen first, stays
        best_count[better] = count[better]
        best_code[better] = code
        own_count[is_code] = count[is_code]
    replace = (codes != NODATA) & (own_count < best_count)
    return np.where(replace, best_code, codes).astype(codes.dtype)


def smooth_time(codes: xr.DataArray, window: int = 3) -> xr.DataArray:
    """Majority (mode) filter of each pixel's class series over ``window`` consecutive dates (lazy).

    A pixel takes the class most frequent among the dates within ``window // 2`` of it, itself included;
    on a tie it keeps its own class, and nodata neither votes nor changes. With ``window=3`` a single-date
    excursion A→B→A becomes A→A→A, while a lasting change A→A→B→B keeps its date (each side wins its own
    ties); a two-date excursion needs ``window=5``. The first and last dates have one-sided windows, where
    ties are the rule, so they change only when outvoted.
    """
    if window < 1 or window % 2 == 0:
        raise InputError(f"the temporal smoothing window must be an odd number of dates, got {window}")
    if window == 1:
        return codes
    smoothed = xr.apply_ufunc(_smooth_series, _whole_series(codes), kwargs={"window": window},
                              input_core_dims=[["time"]], output_core_dims=[["time"]], dask="parallelized",
                              output_dtypes=[codes.dtype])
    return smoothed.transpose(*codes.dims).assign_coords(codes.coords).assign_attrs(codes.attrs,
                                                                                     smoothing_window=window)


def _whole_series(codes: xr.DataArray) -> xr.DataArray:
    """Codes chunked with every date of a pixel in one chunk, without the per-date coordinates.

    Only the data is rechunked: ``DataArray.chunk`` would also turn the text coordinates (source, model)
    into Dask arrays of objects, which Zarr then has to load to learn their type.
    """
    plain = codes.drop_vars([name for name in codes.coords if name not in codes.dims])
    return plain.chunk({"time": -1})


def _trajectory_series(codes: np.ndarray, years: np.ndarray, developed: int) -> tuple[np.ndarray, ...]:
    """Per-pixel trajectory figures of ``(..., time)`` codes, comparing consecutive *mapped* dates."""
    shape = codes.shape[:-1]
    last = np.zeros(shape, dtype=codes.dtype)  # the latest mapped class so far
    second = np.zeros(shape, dtype=codes.dtype)  # the mapped class before it
    first = np.zeros(shape, dtype=codes.dtype)
    changes = np.zeros(shape, dtype=np.uint8)
    flicker = np.zeros(shape, dtype=np.uint8)
    mapped = np.zeros(shape, dtype=np.uint8)
    year_developed = np.zeros(shape, dtype=np.int16)
    for t in range(codes.shape[-1]):
        now = codes[..., t]
        valid = now != NODATA
        changed = valid & (last != NODATA) & (now != last)
        changes += changed
        flicker += changed & (now == second)  # A→B→A: back to the class before the excursion
        if developed:
            became = valid & (now == developed) & (year_developed == 0)
            year_developed[became] = years[t]
        first = np.where(valid & (first == NODATA), now, first)
        second = np.where(valid, last, second)
        last = np.where(valid, now, last)
        mapped += valid
    return changes, flicker, year_developed, first, last, mapped


def trajectories(stack: xr.Dataset, *, smooth: int = 1, developed: str | None = DEVELOPED) -> xr.Dataset:
    """Per-pixel class trajectories over the dates of a stack (lazy).

    Consecutive *mapped* dates are compared (a date without data at a pixel is skipped, not a change).

    Args:
        stack: from :func:`open_stack`.
        smooth: window of :func:`smooth_time` applied first (1: none).
        developed: the class whose first year is reported; None to skip.

    Returns:
        A Dataset ``(y, x)``: ``changes`` (class changes), ``flicker`` (changes that return to the class held
        before a one-date excursion, A→B→A; each such excursion also counts two changes), ``year_developed``
        (year of the first date mapped as ``developed``; 0 never -- equal to the first year when it was
        already developed then), ``first_class``, ``last_class`` (codes), ``mapped_dates``. Attributes:
        ``smoothing_window``, ``developed``.
    """
    classes = stack_classes(stack)
    if developed is not None and developed not in classes.names:
        raise InputError(f"no class named {developed!r} among {classes.names}; name the developed class")
    code = classes.names.index(developed) + 1 if developed is not None else 0
    codes = smooth_time(stack[CODES], smooth) if smooth > 1 else stack[CODES]
    years = stack["year"].to_numpy().astype(np.int16)
    outputs = xr.apply_ufunc(
        _trajectory_series, _whole_series(codes), kwargs={"years": years, "developed": code},
        input_core_dims=[["time"]], output_core_dims=[[]] * 6, dask="parallelized",
        output_dtypes=[np.uint8, np.uint8, np.int16, np.uint8, np.uint8, np.uint8])
    names = ("changes", "flicker", "year_developed", "first_class", "last_class", "mapped_dates")
    result = xr.Dataset(dict(zip(names, outputs, strict=True)))
    result["year_developed"].attrs["long_name"] = f"year first mapped as {developed} (0: never)"
    result["flicker"].attrs["long_name"] = "one-date excursions A→B→A"
    settings = {"smoothing_window": int(smooth), "developed": developed or ""}
    for name in names:  # on each layer too, so that they survive being stored beside the stack
        result[name].attrs.update(settings)
    result.attrs.update(settings)
    return result


#: The per-pixel layers of :func:`trajectories`.
TRAJECTORY_LAYERS = ("changes", "flicker", "year_developed", "first_class", "last_class", "mapped_dates")


def stored_trajectories(stored: xr.Dataset, suffix: str = "") -> xr.Dataset:
    """The trajectory layers of a stack written by :func:`analyze_trends` (``suffix="_raw"``: unsmoothed)."""
    names = [f"{name}{suffix}" for name in TRAJECTORY_LAYERS]
    missing = [n for n in names if n not in stored]
    if missing:
        raise InputError(f"the stack holds no trajectory layers {missing}")
    layers = stored[names].rename({f"{name}{suffix}": name for name in TRAJECTORY_LAYERS})
    layers.attrs.update({k: layers["changes"].attrs.get(k) for k in ("smoothing_window", "developed")})
    return layers


def trajectory_summary(trajectory: xr.Dataset, stack: xr.Dataset, *, common: bool = True) -> dict[str, Any]:
    """Counts of changing and flickering pixels (over the assessed area when ``common``).

    Args:
        trajectory: from :func:`trajectories`.
        stack: the stack it was computed on.
        common: count the assessed area only, else every pixel mapped at least once.

    Returns:
        ``pixels``, ``km2``, ``changed_pixels``/``changed_share`` (at least one change),
        ``flicker_pixels``/``flicker_share`` (at least one A→B→A), ``flicker_events``, ``changes``
        (all changes), ``flicker_change_share`` (share of all changes that are flicker: two per excursion),
        ``mean_changes`` and ``changes_<k>`` (pixels changing exactly k times, ``k`` up to 3, then ``3+``).
    """
    mask = assessed_mask(stack) if common else trajectory["mapped_dates"] > 0
    changes = trajectory["changes"].where(mask)
    flicker = trajectory["flicker"].where(mask)
    figures = {
        "pixels": mask.sum(), "changed_pixels": (changes > 0).sum(), "flicker_pixels": (flicker > 0).sum(),
        "flicker_events": flicker.sum(), "changes": changes.sum(),
        "changes_0": (changes == 0).sum(), "changes_1": (changes == 1).sum(), "changes_2": (changes == 2).sum(),
        "changes_3+": (changes >= 3).sum(),
    }
    computed = dask.compute(*figures.values())
    out: dict[str, Any] = {k: int(v) for k, v in zip(figures, computed, strict=True)}
    pixels = max(out["pixels"], 1)
    out["km2"] = out["pixels"] * float(stack.attrs["pixel_area_km2"])
    out["changed_share"] = out["changed_pixels"] / pixels
    out["flicker_share"] = out["flicker_pixels"] / pixels
    out["mean_changes"] = out["changes"] / pixels
    out["flicker_change_share"] = 2 * out["flicker_events"] / out["changes"] if out["changes"] else 0.0
    out["smoothing_window"] = int(trajectory.attrs.get("smoothing_window", 1))
    return out


def developed_by_year(trajectory: xr.Dataset, stack: xr.Dataset, *, common: bool = True) -> pd.DataFrame:
    """Area first mapped as developed in each year (the first year: already developed then).

    Args:
        trajectory: from :func:`trajectories`.
        stack: the stack it was computed on.
        common: count the assessed area only (pixels mapped at every date).

    Returns:
        One row per date: ``year``, ``pixels``, ``km2``, ``already_developed`` (true for the first date).
    """
    mask = assessed_mask(stack) if common else trajectory["mapped_dates"] > 0
    years = stack["year"].to_numpy()
    values = trajectory["year_developed"].where(mask, 0)
    counts = dask.compute(*[(values == int(year)).sum() for year in years])
    area = float(stack.attrs["pixel_area_km2"])
    table = pd.DataFrame({"year": years, "pixels": np.array(counts, dtype=np.int64)})
    table["km2"] = table["pixels"] * area
    table["already_developed"] = table["year"] == years[0]
    return table


# --------------------------------------------------------------------------------------------------------
# Zones
# --------------------------------------------------------------------------------------------------------

def _zone_block_counts(block: np.ndarray, transform: Affine, geometries: list[Any], n_codes: int,
                       common: bool) -> np.ndarray:
    """``(zones, time, codes)`` pixel counts of one ``(time, h, w)`` block; a pixel belongs by its centre."""
    counts = np.zeros((len(geometries), block.shape[0], n_codes), dtype=np.int64)
    keep = (block != NODATA).all(axis=0) if common else np.ones(block.shape[1:], dtype=bool)
    offsets = (np.arange(block.shape[0]) * n_codes)[:, None]
    for z, geometry in enumerate(geometries):
        if geometry is None:
            continue
        inside = rasterio.features.geometry_mask([geometry], block.shape[1:], transform, invert=True) & keep
        if inside.any():
            values = block[:, inside].astype(np.int64) + offsets
            counts[z] = np.bincount(values.ravel(), minlength=block.shape[0] * n_codes).reshape(-1, n_codes)
    return counts


def zonal_areas(stack: xr.Dataset, zones: gpd.GeoDataFrame, *, zone_column: str | None = None,
                common: bool = True) -> pd.DataFrame:
    """Area of each class at each date in each zone (town, tract, watershed).

    A pixel counts, whole, in every zone that holds its centre (zones may overlap: a town and its county),
    the rule of :func:`geoclf.change.zonal_summary`. Zones are rasterized block by block, so a county's
    stack is never in memory.

    Returns:
        A long table, one row per zone, date and class: ``zone``, ``date``, ``year``, ``decimal_year``,
        ``class``, ``pixels``, ``km2``, ``share`` (of the zone's counted area) and ``assessed_km2``.
    """
    classes = stack_classes(stack)
    if zones.crs is None:
        raise InputError("the zones have no CRS; zones need one to be placed on the maps")
    if zone_column is not None and zone_column not in zones.columns:
        raise InputError(f"no column {zone_column!r} in the zones (columns: {', '.join(map(str, zones.columns))})")
    names = zone_names(zones, zone_column)
    if names.duplicated().any():
        repeated = sorted(names[names.duplicated()].unique())[:5]
        raise InputError(f"zone names repeat ({repeated}); pick a column that names each zone once")
    geometries = zones.geometry.to_crs(stack.rio.crs)
    codes = stack[CODES].chunk({"time": -1}).data
    transform = stack.rio.transform()
    row_edges = np.concatenate([[0], np.cumsum(codes.chunks[1])])
    col_edges = np.concatenate([[0], np.cumsum(codes.chunks[2])])
    tree = shapely.STRtree(geometries.to_numpy())
    blocks = codes.to_delayed()
    n_codes = len(classes.names) + 1
    tasks = []
    for i in range(len(row_edges) - 1):
        for j in range(len(col_edges) - 1):
            block_transform = transform * Affine.translation(col_edges[j], row_edges[i])
            box = shapely.box(*rasterio.transform.array_bounds(row_edges[i + 1] - row_edges[i],
                                                                col_edges[j + 1] - col_edges[j], block_transform))
            hits = set(tree.query(box, predicate="intersects").tolist())
            if not hits:
                continue
            chosen = [geometries.iloc[z] if z in hits else None for z in range(len(geometries))]
            tasks.append(dask.delayed(_zone_block_counts)(blocks[0, i, j], block_transform, chosen, n_codes, common))
    counts = np.zeros((len(geometries), stack.sizes["time"], n_codes), dtype=np.int64)
    for part in dask.compute(*tasks):
        counts += part
    tables = []
    for z, name in enumerate(names):
        table = _area_table(stack, counts[z, :, 1:], classes.names)
        table.insert(0, "zone", name)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


# --------------------------------------------------------------------------------------------------------
# Figures and the HTML page
# --------------------------------------------------------------------------------------------------------

def _decimated(array: xr.DataArray, transform: Affine, crs: CRS, max_pixels: int) -> LandUseGrid:
    """A 2-D layer read at every ``k``-th pixel (nearest), small enough for a page or a figure."""
    step = max(1, math.ceil(max(array.shape) / max_pixels))
    small = array.isel(y=slice(None, None, step), x=slice(None, None, step)).compute().to_numpy()
    return LandUseGrid(small, transform * Affine.scale(step), crs)


def _year_scheme(years: Sequence[int]) -> ClassScheme:
    """A pseudo class scheme whose classes are the years developed (colour ramp; the first year grey)."""
    from matplotlib import colormaps

    ramp = colormaps["plasma"]
    colors = {f"≤{years[0]}": (140, 140, 140)}
    later = list(years[1:])
    for k, year in enumerate(later):
        rgb = ramp(0.05 + 0.85 * k / max(len(later) - 1, 1))[:3]
        colors[str(year)] = tuple(round(255 * c) for c in rgb)
    return ClassScheme({name: () for name in colors}, colors)


def _year_codes(values: np.ndarray, years: Sequence[int]) -> np.ndarray:
    codes = np.zeros(values.shape, dtype=np.uint8)
    for k, year in enumerate(years):
        codes[values == year] = k + 1
    return codes


def area_figure(areas: pd.DataFrame, trends: pd.DataFrame, path: PathLike, *, classes: ClassScheme | None = None,
                adjusted: pd.DataFrame | None = None, title: str = "Area by class") -> Path:
    """Small multiples of each class's area over time with its Theil–Sen line (and adjusted estimates).

    Each class has its own y axis: a few km² of new development would be invisible beside farmland.

    Args:
        areas: from :func:`class_areas`.
        trends: from :func:`class_trends` on ``areas``.
        path: output PNG.
        classes: the scheme, for the class colours.
        adjusted: from :func:`reference_areas` with ``decimal_year``, drawn with their 95% intervals.
        title: figure title.

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(areas["class"]))
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4.0 * columns, 2.8 * rows + 0.6), layout="constrained")
    figure.suptitle(title)
    for k, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, k + 1)
        part = areas[areas["class"] == name].sort_values("decimal_year")
        color = np.array(classes.color(name) if classes is not None and name in classes.names else (60, 60, 60)) / 255
        axes.plot(part["decimal_year"], part["km2"], "o-", color=color, label="mapped")
        fit = trends[trends["class"] == name]
        label = name
        if not fit.empty and np.isfinite(fit["slope"].iloc[0]):
            row = fit.iloc[0]
            t = part["decimal_year"].to_numpy()
            intercept = float(np.median(part["km2"]) - row["slope"] * np.median(t))
            axes.plot(t, intercept + row["slope"] * t, "--", color="#333", lw=1, label="Theil–Sen")
            label = f"{name}: {row['slope']:+.3g} km²/yr ({row['trend']})"
        if adjusted is not None and not adjusted.empty:
            adj = adjusted[adjusted["class"] == name].sort_values("decimal_year")
            if len(adj):
                axes.errorbar(adj["decimal_year"], adj["area_km2"], yerr=adj["area_ci_km2"], fmt="s", ms=3,
                              color="#555", capsize=2, label="error-adjusted (95% CI)")
        axes.set_title(label, fontsize=9)
        axes.set_ylabel("km²")
        axes.ticklabel_format(useOffset=False, style="plain")
        axes.grid(alpha=0.3)
        if k == 0:
            axes.legend(fontsize=7)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110, format="png")
    return target


def year_developed_figure(trajectory: xr.Dataset, stack: xr.Dataset, path: PathLike, *,
                          max_pixels: int = 1500) -> Path:
    """A static map of the year each pixel was first mapped as developed.

    Args:
        trajectory: from :func:`trajectories`.
        stack: the stack it was computed on (dates, grid).
        path: output PNG.
        max_pixels: longest side of the drawn raster (the layer is read at every k-th pixel past it).

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    years = [int(y) for y in stack["year"].to_numpy()]
    scheme = _year_scheme(years)
    grid = _decimated(trajectory["year_developed"], stack.rio.transform(), stack.rio.crs, max_pixels)
    mapped = _decimated(trajectory["mapped_dates"], stack.rio.transform(), stack.rio.crs, max_pixels).codes > 0
    palette = np.zeros((256, 4), dtype=np.uint8)
    never = len(scheme.names) + 1
    palette[never] = (235, 235, 235, 255)
    for k, name in enumerate(scheme.names):
        palette[k + 1] = (*scheme.color(name), 255)
    codes = _year_codes(grid.codes, years)
    codes[(codes == 0) & mapped] = never  # never developed; pixels never mapped stay transparent
    rgba = palette[codes]
    left, bottom, right, top = grid.bounds
    figure = Figure(figsize=(8.0, float(np.clip(6.0 * (top - bottom) / max(right - left, 1e-9) + 1.5, 3, 12))),
                    layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(rgba, extent=(left, right, bottom, top), interpolation="nearest")
    axes.ticklabel_format(style="plain", useOffset=False)
    axes.set_title(f"Year first mapped as {trajectory.attrs.get('developed') or 'developed'} "
                   f"({stack.rio.crs.to_string()})")
    handles = [Patch(facecolor=np.array(scheme.color(n)) / 255, edgecolor="#555", label=n) for n in scheme.names]
    handles.append(Patch(facecolor=(0.92, 0.92, 0.92), edgecolor="#555", label="never"))
    figure.legend(handles=handles, loc="outside right upper", frameon=False, title="year")
    target = Path(path)
    figure.savefig(target, dpi=120, format="png")
    return target


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _trend_table_html(trends: pd.DataFrame) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(r['class']))}</td><td>{r['first']:.3g}</td><td>{r['last']:.3g}</td>"
        f"<td>{r['slope']:+.3g}</td><td>[{r['slope_low']:+.3g}, {r['slope_high']:+.3g}]</td>"
        f"<td>{html.escape(str(r['trend']))}</td></tr>" for _, r in trends.iterrows())
    return ("<table class='geoclf-trends' style='border-collapse:collapse;font:11px sans-serif'>"
            "<tr><th>class</th><th>first km²</th><th>last km²</th><th>km²/yr</th><th>CI</th><th>trend</th></tr>"
            f"{rows}</table>")


def trend_map(stack: xr.Dataset, trajectory: xr.Dataset, trends: pd.DataFrame, chart: PathLike,
              path: PathLike, *, zones: gpd.GeoDataFrame | None = None, zone_trends: pd.DataFrame | None = None,
              zone_column: str | None = None, basemap: str | None = "OpenStreetMap", opacity: float = 0.75,
              max_pixels: int = 2048) -> Path:
    """Write ``trend.html``: a land-use layer per date behind a year slider, the year-developed layer,
    zones with their trends, and the area chart, all inline so the page works offline.

    Layers are warped (nearest) to Web Mercator images the way :func:`geoclf.maps.folium_map` draws its class
    layer; a layer's image is made from the stack read at every ``k``-th pixel so it fits ``max_pixels``.

    Args:
        stack: from :func:`open_stack` (or reopened from Zarr).
        trajectory: from :func:`trajectories`, for the year-developed layer.
        trends: from :func:`class_trends`, tabulated under the chart.
        chart: the area chart PNG (:func:`area_figure`), inlined.
        path: output ``.html``.
        zones: zone polygons, drawn with a popup of their trends.
        zone_trends: from :func:`class_trends` on :func:`zonal_areas`.
        zone_column: the zones' name column.
        basemap: a folium tile provider name or URL template; None for none.
        opacity: opacity of the land-use layers.
        max_pixels: longest side of each layer image.

    Returns:
        ``path`` as a Path.
    """
    import folium
    from branca.element import MacroElement
    from jinja2 import Template

    from geoclf.maps import hex_color, legend_html, offline_map, overlay_image

    classes = stack_classes(stack)
    crs, transform = stack.rio.crs, stack.rio.transform()
    years = [int(y) for y in stack["year"].to_numpy()]
    dates = [str(pd.Timestamp(t).date()) for t in stack["time"].to_numpy()]
    images = []
    for t in range(stack.sizes["time"]):
        grid = _decimated(stack[CODES].isel(time=t), transform, crs, max_pixels)
        images.append(overlay_image(grid, classes, max_pixels))
    bounds = images[0][1]
    fmap = offline_map(bounds, basemap)
    root = fmap.get_root()
    layers = []
    for t, (url, layer_bounds) in enumerate(images):
        layer = folium.raster_layers.ImageOverlay(url, bounds=layer_bounds, opacity=opacity, pixelated=True,
                                                  interactive=False, control=False,
                                                  className=f"geoclf-year geoclf-year-{dates[t]}")
        layer.add_to(fmap)
        layers.append(layer)
    year_scheme = _year_scheme(years)
    developed_grid = _decimated(trajectory["year_developed"], transform, crs, max_pixels)
    developed_grid = developed_grid._replace(codes=_year_codes(developed_grid.codes, years))
    url, layer_bounds = overlay_image(developed_grid, year_scheme, max_pixels)
    developed = trajectory.attrs.get("developed") or "developed"
    folium.raster_layers.ImageOverlay(url, bounds=layer_bounds, opacity=0.9, pixelated=True, interactive=False,
                                      name=f"Year first {developed}", show=False,
                                      className="geoclf-year-developed").add_to(fmap)
    if zones is not None and zone_trends is not None and not zone_trends.empty:
        _add_zones(fmap, zones, zone_trends, classes.names, zone_column)
    folium.LayerControl(collapsed=False).add_to(fmap)
    root.html.add_child(folium.Element(legend_html(classes, "Land use", None)), name="legend")
    swatches = "".join(
        f"<span style='display:inline-block;margin-right:6px'><span style='display:inline-block;width:12px;"
        f"height:12px;vertical-align:middle;border:1px solid #555;background:{hex_color(year_scheme.color(n))}'>"
        f"</span> {html.escape(n)}</span>" for n in year_scheme.names)
    smoothing = int(trajectory.attrs.get("smoothing_window", 1))
    note = f"temporal majority filter over {smoothing} dates" if smoothing > 1 else "no temporal smoothing"
    panel = (
        "<div class='geoclf-slider' style='position:absolute;left:54px;top:10px;z-index:1000;"
        "background:rgba(255,255,255,0.92);padding:6px 10px;border-radius:4px;font:13px sans-serif;"
        "box-shadow:0 1px 4px rgba(0,0,0,0.3)'>"
        f"<b>Land use</b> <span id='geoclf-date'>{dates[-1]}</span><br>"
        f"<input id='geoclf-slider' type='range' min='0' max='{len(dates) - 1}' value='{len(dates) - 1}' "
        f"step='1' style='width:260px'><div style='color:#555;font-size:11px'>{html.escape(dates[0])} … "
        f"{html.escape(dates[-1])}</div><div class='geoclf-year-legend' style='margin-top:4px;font-size:11px;"
        f"max-width:300px'><b>Year first {html.escape(developed)}</b> ({html.escape(note)}; layer list, top "
        f"right):<br>{swatches}</div></div>"
        "<details open class='geoclf-chart' style='position:absolute;left:10px;bottom:60px;z-index:1000;"
        "background:rgba(255,255,255,0.95);padding:6px;border-radius:4px;max-width:44%;max-height:55%;"
        "overflow:auto;box-shadow:0 1px 4px rgba(0,0,0,0.3);font:12px sans-serif'>"
        "<summary><b>Area by class over time</b></summary>"
        f"<img alt='area by class over time' src='{_data_url(Path(chart))}' style='width:100%'>"
        f"{_trend_table_html(trends)}</details>")
    root.html.add_child(folium.Element(panel), name="slider_panel")
    names = ", ".join(layer.get_name() for layer in layers)
    # Rendered as the map's last child, so that the map and its layers exist when it runs.
    slider = MacroElement()
    slider._template = Template("{% macro script(this, kwargs) %}" + f"""
(function () {{
  var map = {fmap.get_name()};
  var layers = [{names}];
  var dates = {json.dumps(dates)};
  var slider = document.getElementById('geoclf-slider');
  var label = document.getElementById('geoclf-date');
  var shown = null;
  function show(i) {{
    if (shown !== null) {{ map.removeLayer(layers[shown]); }}
    map.addLayer(layers[i]);
    layers[i].bringToBack();
    shown = i;
    label.textContent = dates[i];
  }}
  layers.forEach(function (layer) {{ map.removeLayer(layer); }});
  slider.addEventListener('input', function () {{ show(parseInt(slider.value, 10)); }});
  L.DomEvent.disableClickPropagation(slider.parentNode);
  show(layers.length - 1);
}})();
""" + "{% endmacro %}")
    fmap.add_child(slider, name="geoclf_slider")
    fmap.fit_bounds(bounds)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fmap.save(str(temporary))
    os.replace(temporary, target)
    return target


def _add_zones(fmap: Any, zones: gpd.GeoDataFrame, zone_trends: pd.DataFrame, classes: Sequence[str],
               zone_column: str | None) -> None:
    import folium

    names = zone_names(zones, zone_column)
    props = pd.DataFrame({"zone": names.to_numpy()})
    fields, aliases = ["zone"], ["zone"]
    for name in classes:
        part = zone_trends[zone_trends["class"] == name].set_index("zone")
        text = part.apply(lambda r: f"{r['slope']:+.3g} km²/yr ({r['trend']})", axis=1) if len(part) else None
        column = "trend_" + re.sub(r"\W+", "_", name)
        props[column] = names.map(text).fillna("").to_numpy() if text is not None else ""
        fields.append(column)
        aliases.append(name)
    frame = gpd.GeoDataFrame(props, geometry=zones.geometry.to_crs(4326).to_numpy(), crs=4326)
    folium.GeoJson(json.loads(frame.to_json(drop_id=True)), name="Zones (click for trends)",
                   style_function=lambda feature: {"color": "#222", "weight": 2, "fillOpacity": 0.0},
                   popup=folium.GeoJsonPopup(fields=fields, aliases=aliases)).add_to(fmap)


# --------------------------------------------------------------------------------------------------------
# Everything
# --------------------------------------------------------------------------------------------------------

def analyze_trends(maps: Sequence[PathLike], out: PathLike, *, zones: PathLike | None = None,
                   zone_column: str | None = None, reference: PathLike | None = None, smooth: int = 1,
                   developed: str | None = DEVELOPED, dates: Sequence[str] | None = None,
                   probabilities: bool = False, chunks: int = CHUNK, html_map: bool = True,
                   basemap: str | None = "OpenStreetMap") -> dict[str, Path]:
    """Stack the maps and write the stack and every trend product into ``out``.

    Outputs: ``landuse_stack.zarr`` (the stack and the per-pixel trajectory layers: with ``smooth > 1``
    those of the smoothed series, the unsmoothed ones as ``*_raw`` and the smoothed classes as
    ``land_use_class_smoothed``), ``areas.csv`` (class areas per date, with the error-adjusted columns when
    a reference sample is given), ``trends.csv`` (per class and series: mapped, error-adjusted),
    ``trajectories.csv`` (change and flicker counts, raw and smoothed), ``developed_by_year.csv``,
    ``zonal_areas.csv``/``zonal_trends.csv`` (with zones), ``areas.png``, ``year_developed.png`` and
    ``trend.html``.

    Areas and trends are those of the maps as they are: the reference sample assesses those maps, and a
    filter over time would change them. Smoothing applies to the trajectories (changes, year developed).

    Args:
        maps: map directories (``geoclf score`` outputs) or land-use COGs, two dates or more.
        out: output directory.
        zones: a vector file of zones (towns, tracts) for zonal areas and trends.
        zone_column: the zones' name column (see :func:`geoclf.change.zone_names`).
        reference: a labelled reference sample (see :func:`reference_areas`).
        smooth: window (dates) of the temporal majority filter applied before counting changes; 1 for none.
        developed: the class whose first year is mapped; skipped when the scheme has no such class.
        dates: one acquisition date per map, overriding those the maps carry.
        probabilities: also stack the probability COGs.
        chunks: spatial chunk side of the stack.
        html_map: write ``trend.html``.
        basemap: basemap of ``trend.html`` (None for none).

    Returns:
        Output name -> path.
    """
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stack = open_stack(maps, dates=dates, probabilities=probabilities, chunks=chunks)
    if developed is not None and developed not in stack_classes(stack).names:
        developed = None  # a scheme without a developed class still gets areas, trends and change counts
    layers = [trajectories(stack, smooth=smooth, developed=developed)]
    if smooth > 1:
        raw = trajectories(stack, smooth=1, developed=developed)
        layers.append(raw.rename({name: f"{name}_raw" for name in raw.data_vars}))
        layers.append(smooth_time(stack[CODES], smooth).rename(f"{CODES}_smoothed").to_dataset())
    # One write computes the stack and its layers together, so each COG chunk is read once.
    full = xr.merge([stack, *layers], compat="override", join="exact", combine_attrs="override")
    full = full.rio.write_crs(stack.rio.crs)
    written = {"stack": write_stack(full, out_dir / STACK)}
    stored = xr.open_zarr(written["stack"], decode_coords="all")
    chosen = stored_trajectories(stored)
    raw = stored_trajectories(stored, "_raw") if smooth > 1 else chosen
    stack = stored

    classes = stack_classes(stack)
    areas = class_areas(stack)
    trends = class_trends(areas).assign(series="mapped")
    adjusted = None
    if reference is not None:
        adjusted = reference_areas(stack, read_reference(reference))
        adjusted["decimal_year"] = decimal_years(pd.to_datetime(adjusted["date"]))
        areas = areas.merge(adjusted.drop(columns=["decimal_year", "mapped_km2"]), on=["date", "class"],
                            how="left")
        trends = pd.concat([trends, class_trends(adjusted, value="area_km2").assign(series="error-adjusted")],
                           ignore_index=True)
    written["areas"] = _write_csv(areas, out_dir / "areas.csv")
    written["trends"] = _write_csv(trends, out_dir / "trends.csv")

    summaries = [{"series": "raw", **trajectory_summary(raw, stack)}]
    if smooth > 1:
        summaries.append({"series": "smoothed", **trajectory_summary(chosen, stack)})
    written["trajectories"] = _write_csv(pd.DataFrame(summaries), out_dir / "trajectories.csv")
    if developed is not None:
        written["developed_by_year"] = _write_csv(developed_by_year(chosen, stack), out_dir / "developed_by_year.csv")
        written["year_developed_png"] = year_developed_figure(chosen, stack, out_dir / "year_developed.png")

    zone_frame = zone_trend_table = None
    if zones is not None:
        zone_frame = read_zones(zones)
        zonal = zonal_areas(stack, zone_frame, zone_column=zone_column)
        zone_trend_table = class_trends(zonal, by=("zone", "class"))
        written["zonal_areas"] = _write_csv(zonal, out_dir / "zonal_areas.csv")
        written["zonal_trends"] = _write_csv(zone_trend_table, out_dir / "zonal_trends.csv")

    mapped_trends = trends[trends["series"] == "mapped"]
    written["areas_png"] = area_figure(areas, mapped_trends, out_dir / "areas.png", classes=classes,
                                       adjusted=adjusted)
    if html_map:
        written["html"] = trend_map(stack, chosen, mapped_trends, written["areas_png"], out_dir / "trend.html",
                                    zones=zone_frame, zone_trends=zone_trend_table, basemap=basemap,
                                    zone_column=zone_column)
    return written


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_csv(temporary, index=False)
    os.replace(temporary, path)
    return path


__all__ = [
    "CODES", "STACK", "TRAJECTORY_LAYERS", "analyze_trends", "area_figure", "assessed_mask", "class_areas",
    "class_trends", "decimal_years", "developed_by_year", "open_stack", "pixel_area_km2", "reference_areas",
    "smooth_time", "stack_classes", "stored_trajectories", "theil_sen", "trajectories", "trajectory_summary",
    "trend_label", "trend_map", "write_stack", "year_developed_figure", "zonal_areas",
]
