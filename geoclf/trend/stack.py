"""The land-use stack: land-use maps of several dates on one grid, as a lazy ``xarray.Dataset``.

The stack (:func:`open_stack`) has dims ``(time, y, x)``: one land-use map per acquisition date on one grid,
georeferenced with rioxarray, backed by Dask so that nothing is read until a result is asked for and no more
than a few chunks are in memory at once. :class:`LandUseStack` carries it together with what every analysis
needs of it (the class scheme, a pixel's ground area, the assessed area), derived once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as darr
import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import rasterio
import rasterio.warp
import rioxarray
import shapely
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT

from geoclf.area import equal_area_crs
from geoclf.landuse import NODATA, LandUseHeader, ScoreOutput, read_header
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.io import atomic_path, scene_date

PathLike = str | os.PathLike[str]

#: The land-use map, its probabilities and its predictions inside a ``geoclf score`` output directory (their
#: home is :class:`geoclf.landuse.ScoreOutput`).
LANDUSE = ScoreOutput.LANDUSE
PROBABILITIES = ScoreOutput.PROBABILITIES
PREDICTIONS = ScoreOutput.PREDICTIONS
#: Name of the class-code variable of the stack (the COG band's description).
CODES = "land_use_class"
#: The stack written by :func:`geoclf.trend.analyze_trends`.
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


def _check_georeferencing(header: LandUseHeader, path: Path) -> None:
    """What stacking needs of a map's grid: a projected CRS and a north-up transform."""
    if header.crs is None:
        raise InputError("has no CRS, so it cannot be placed on a common grid with the other dates", path)
    if not header.crs.is_projected:
        raise InputError(f"is in a geographic CRS ({header.crs.to_string()}); land-use maps need a projected CRS",
                         path)
    transform = header.transform
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        raise InputError("is not a north-up raster; geoclf land-use maps are", path)


def _map_dates(output: ScoreOutput, tags: dict[str, str]) -> tuple[pd.Series, str]:
    """Acquisition dates of a map's chips (else of the map itself), as chips per date (sorted), and the model name.

    Only the date/scene/model columns of the predictions are read, one file at a time (``predictions.parquet``,
    else each file of the ``predictions/`` dataset a large area has instead), and only counted: a state's
    predictions need not be loaded to learn when its imagery was flown.
    """
    files = [output.predictions] if output.predictions.exists() else output.dataset_files()
    dates: pd.Series = pd.Series(dtype=np.int64)
    models: pd.Series = pd.Series(dtype=np.int64)
    names: dict[str, set[str]] = {"scene": set(), "source": set()}
    for table in files:
        try:
            present = set(pq.read_schema(table).names)
            columns = [c for c in ("date", "scene", "source", "model") if c in present]
            frame = pq.read_table(table, columns=columns).to_pandas() if columns else pd.DataFrame()
        except Exception as exc:
            raise InputError(f"cannot be read as Parquet ({str(exc).splitlines()[0]})", table) from exc
        if "date" in frame.columns:
            when = pd.to_datetime(frame["date"], errors="coerce").dropna()
            dates = dates.add(pd.Series([d.date() for d in when]).value_counts(), fill_value=0)
        for column in names:
            if column in frame.columns:
                names[column].update(str(v) for v in frame[column].dropna().unique())
        if "model" in frame.columns:
            models = models.add(frame["model"].dropna().astype(str).value_counts(), fill_value=0)
    if not len(dates):  # chips without a date column: NAIP names carry it
        for column in ("scene", "source"):
            found = [scene_date(Path(v).stem) for v in sorted(names[column])]
            found = [d for d in found if d is not None]
            if found:
                dates = pd.Series(found).value_counts()
                break
    # the most frequent model, ties to the first name (what ``Series.mode`` gave over the whole column)
    model = str(models.sort_index().idxmax()) if len(models) and models.max() > 0 else ""
    if not len(dates):
        found = scene_date(output.landuse.stem, tags) or scene_date(output.given.name)
        dates = pd.Series([1], index=[found]) if found else pd.Series(dtype=np.int64)
    return dates.sort_index().astype(np.int64), model


def _describe(source: PathLike, date: dt.date | str | None, probabilities: bool) -> _Map:
    output = ScoreOutput(source)
    landuse = output.require_landuse()
    header = read_header(landuse)
    _check_georeferencing(header, landuse)
    probs_path = None
    if probabilities:
        probs_path = output.probabilities
        if not probs_path.exists():
            raise InputError(f"no {PROBABILITIES} beside the map (score with --probabilities to get it)",
                             probs_path)
    dates, model = _map_dates(output, header.tags)
    if date is not None:
        try:
            dates = pd.Series([1], index=[pd.Timestamp(date).date()])
        except (ValueError, TypeError) as exc:
            raise InputError(f"date {date!r} given for it is not a date (use YYYY-MM-DD)", landuse) from exc
    if not len(dates):
        raise InputError("has no acquisition date: no dated predictions.parquet beside it, no ACQUISITION_DATE "
                         "tag and no _YYYYMMDD in its name; give the dates explicitly", landuse)
    # The median chip date: a county's imagery is flown over days or weeks, and the middle one stands for
    # the whole map better than the first.
    position = (int(dates.sum()) - 1) // 2
    median = dates.index[int(np.searchsorted(dates.cumsum().to_numpy(), position, side="right"))]
    return _Map(landuse, probs_path, median, dates.index[0], dates.index[-1], model, header.classes, header.crs,
                header.transform, header.width, header.height)


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
    """The class scheme of a stack (from its attributes, which hold the maps' scheme tags)."""
    if "class_scheme" not in stack.attrs:
        raise InputError("the dataset is not a geoclf land-use stack (no class_scheme attribute)")
    tags = {"CLASS_SCHEME": stack.attrs["class_scheme"], "CLASS_COLORS": stack.attrs.get("class_colors", "{}")}
    return ClassScheme.from_tags(tags, "the land-use stack")


def write_stack(stack: xr.Dataset, path: PathLike) -> Path:
    """Write a stack (and any per-pixel layers added to it) as Zarr, chunk by chunk, atomically.

    Zarr format 2 with consolidated metadata: the most widely read flavour (GDAL, R, older zarr-python).
    Reopen it lazily with ``xr.open_zarr(path, decode_coords="all")``; ``.rio.crs`` works on the result.
    """
    target = Path(path)
    if target.suffix != ".zarr":
        raise InputError("the stack is written as Zarr; name it *.zarr", target)
    with atomic_path(target, directory=True) as temporary:
        stack.to_zarr(temporary, mode="w", zarr_format=2, consolidated=True)
    return target


def decimal_years(times: Sequence[Any] | pd.DatetimeIndex) -> np.ndarray:
    """Dates as decimal years (2010-07-02 -> 2010.5): the time axis of trends, in years."""
    index = pd.DatetimeIndex(times)
    length = np.where(index.is_leap_year, 366.0, 365.0)
    return index.year.to_numpy(dtype=float) + (index.dayofyear.to_numpy(dtype=float) - 1.0) / length


@dataclass(frozen=True, eq=False)
class LandUseStack:
    """A land-use stack and what every analysis of it needs, derived once from its attributes.

    Build it with :meth:`of` from :func:`open_stack`'s Dataset or from the Zarr store
    :func:`write_stack` wrote; every analysis in :mod:`geoclf.trend` takes either.

    Attributes:
        dataset: the stack (``land_use_class`` and any probability or trajectory layers).
        classes: its class scheme (class ``i`` is code ``i + 1``).
        pixel_area_km2: ground area of one pixel (see :func:`pixel_area_km2`).
        assessed: the pixels mapped at every date (lazy): the area over which dates are compared, so that
            a date with a smaller footprint does not look like a loss.
    """

    dataset: xr.Dataset
    classes: ClassScheme
    pixel_area_km2: float
    assessed: xr.DataArray

    @classmethod
    def of(cls, stack: xr.Dataset | LandUseStack) -> LandUseStack:
        """The stack itself, or a Dataset from :func:`open_stack` (or reopened from Zarr) with its scheme read.

        Raises:
            InputError: the Dataset is not a geoclf land-use stack.
        """
        if isinstance(stack, LandUseStack):
            return stack
        classes = stack_classes(stack)
        if CODES not in stack or "pixel_area_km2" not in stack.attrs:
            raise InputError(f"the dataset is not a geoclf land-use stack (no {CODES} variable or pixel area)")
        return cls(stack, classes, float(stack.attrs["pixel_area_km2"]), (stack[CODES] != NODATA).all("time"))

    @property
    def codes(self) -> xr.DataArray:
        """The class codes ``(time, y, x)``: class ``i`` is ``i + 1``, 0 nodata."""
        return self.dataset[CODES]

    @property
    def times(self) -> pd.DatetimeIndex:
        """The acquisition dates."""
        return pd.DatetimeIndex(self.dataset["time"].to_numpy())

    @property
    def years(self) -> np.ndarray:
        """The acquisition years, one per date."""
        return self.dataset["year"].to_numpy()

    def counted(self, common: bool = True) -> xr.DataArray:
        """The codes, set to nodata off the assessed area when ``common`` (lazy)."""
        return self.codes.where(self.assessed, NODATA) if common else self.codes
