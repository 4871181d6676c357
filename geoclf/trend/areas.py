"""Class areas of a land-use stack: per date over the assessed area, error-adjusted, and per zone.

- :func:`class_areas` -- area and share of each class at each date, over the *assessed area* (the pixels
  mapped at every date, so that a year with a smaller footprint does not look like a loss);
- :func:`reference_areas` -- the error-adjusted areas with 95% confidence intervals of Olofsson et al.
  (2014) at each date that a reference sample labels;
- :func:`zonal_areas` -- area per class, date and zone (towns, tracts).

A map pixel is a chip cell (see :mod:`geoclf.maps`): areas count pixels times the pixel's ground area, so
the areas of the *mapped* classes inherit the maps' errors; the reference sample corrects for them.
"""

from __future__ import annotations

import re
from typing import Any

import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio.features
import rasterio.transform
import rasterio.warp
import shapely
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from geoclf.area import error_matrix, olofsson
from geoclf.landuse import NODATA
from geoclf.trend.stack import LandUseStack, decimal_years
from geoclf.zones import checked_zone_names
from tiling.errors import InputError
from tiling.grid import parse_cell


def assessed_mask(stack: xr.Dataset | LandUseStack) -> xr.DataArray:
    """Pixels mapped at every date (lazy): the area over which dates are compared."""
    return LandUseStack.of(stack).assessed


def class_areas(stack: xr.Dataset | LandUseStack, *, common: bool = True) -> pd.DataFrame:
    """Mapped area and share of each class at each date.

    Args:
        stack: from :func:`geoclf.trend.open_stack`.
        common: count only the pixels mapped at every date (default), so that a date with a larger or smaller
            footprint does not show as a gain or a loss; else each date's whole map.

    Returns:
        A long table, one row per date and class: ``date``, ``year``, ``decimal_year``, ``class``, ``pixels``,
        ``km2``, ``share`` (of the counted area at that date) and ``assessed_km2`` (that area).
    """
    stack = LandUseStack.of(stack)
    values = xr.DataArray(np.arange(1, len(stack.classes.names) + 1, dtype=np.uint8), dims="class")
    counts = (stack.counted(common) == values).sum(("y", "x")).compute().to_numpy()  # (time, class)
    return _area_table(stack, counts)


def _area_table(stack: LandUseStack, counts: np.ndarray) -> pd.DataFrame:
    """The long area table of ``(time, class)`` pixel counts."""
    names, times, area = stack.classes.names, stack.times, stack.pixel_area_km2
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


def reference_areas(stack: xr.Dataset | LandUseStack, reference: pd.DataFrame, *, common: bool = True,
                    z: float = 1.96, areas: pd.DataFrame | None = None) -> pd.DataFrame:
    """Error-adjusted class areas with confidence intervals at each date a reference sample labels.

    The reference table holds one row per sample unit and date, placed by its geometry (a GeoDataFrame with
    a CRS: the pixel holding each unit's representative point) or by a ``cell`` key of the chip grid; and
    labelled either in long form (``date`` or ``year`` plus ``reference``, the true class) or in wide form
    (``reference_<YYYY>`` columns, one per year). Each date with labels gets the stratified estimators of
    Olofsson et al. (2014) (:func:`geoclf.area.olofsson`), with that date's map classes as strata, their
    mapped km² over the assessed area as stratum areas and their pixels as the strata sizes of the finite
    population correction.

    Those estimators are unbiased for a sample stratified by that date's map (or a simple random one). A
    single sample stratified by *another* date's map, labelled at every date, is a case for the estimators of
    Stehman (2014), which are not implemented: the intervals are then approximate.

    Args:
        stack: from :func:`geoclf.trend.open_stack`.
        reference: the labelled sample units.
        common: estimate over the assessed area (default), else over each date's whole map.
        z: normal quantile of the intervals (1.96 for 95%).
        areas: :func:`class_areas` of the stack with the same ``common``, when already computed.

    Returns:
        One row per labelled date and class: ``date``, ``class``, ``n`` (units mapped as the class),
        ``mapped_km2``, ``area_km2`` (error-adjusted), ``area_se_km2``, ``area_ci_km2`` (half-width),
        ``area_low_km2``, ``area_high_km2``, ``users``, ``producers``, ``overall_accuracy``.

    Raises:
        InputError: no location or labels in the reference, no unit on the assessed area, a date whose
            sample misses a mapped class (every stratum needs units).
    """
    stack = LandUseStack.of(stack)
    classes = stack.classes.names
    labels = _reference_labels(stack, reference)
    rows, cols = _reference_pixels(stack.dataset, labels)
    sizes = stack.dataset.sizes
    inside = (rows >= 0) & (rows < sizes["y"]) & (cols >= 0) & (cols < sizes["x"])
    labels, rows, cols = labels[inside], rows[inside], cols[inside]
    units = {"y": xr.DataArray(rows, dims="unit"), "x": xr.DataArray(cols, dims="unit")}
    sampled = stack.counted(common).isel(units).compute().to_numpy()
    mapped = class_areas(stack, common=common) if areas is None else areas
    out = []
    for t, when in enumerate(stack.times):
        here = (labels["_time"] == t).to_numpy()
        values = sampled[t, here]
        on_map = values != NODATA
        if not on_map.any():
            continue
        map_labels = np.asarray(classes, dtype=object)[values[on_map].astype(int) - 1]
        truth = labels.loc[here, "reference"].to_numpy()[on_map]
        counts = error_matrix(map_labels, truth, classes)
        pixels = mapped[mapped["date"] == when.date()].set_index("class")["pixels"]
        pixels = pixels[pixels > 0]
        try:
            estimate = olofsson(counts, pixels * stack.pixel_area_km2, z=z, unit="km²", population=pixels)
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


def _reference_labels(stack: LandUseStack, reference: pd.DataFrame) -> pd.DataFrame:
    """Reference labels in long form with ``_time`` (index of the stack date they label) and ``_unit``."""
    times = stack.times
    # A year names a date only when the stack holds a single date of that year.
    by_year = pd.Series(np.arange(len(times)), index=times.year)
    by_year = by_year[~by_year.index.duplicated(keep=False)]
    frame = reference.reset_index(drop=True).assign(_unit=np.arange(len(reference)))
    wide = [c for c in frame.columns if re.fullmatch(r"reference_\d{4}", str(c))]
    if "reference" in frame.columns and ({"date", "year"} & set(frame.columns)):
        if "date" in frame.columns:
            when = pd.to_datetime(frame["date"], errors="coerce")
            exact = pd.Series(np.arange(len(times)), index=times.normalize())
            index = when.dt.normalize().map(exact).fillna(when.dt.year.map(by_year))
        else:
            index = pd.to_numeric(frame["year"], errors="coerce").map(by_year)
        long = frame.assign(_time=index)
    elif wide:
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
    unknown = sorted(set(long["reference"].astype(str)) - set(stack.classes.names))
    if unknown:
        raise InputError(f"reference classes {unknown} are not among the map classes {stack.classes.names}")
    long["_time"] = long["_time"].astype(np.int64)
    long["reference"] = long["reference"].astype(str)
    return long


def _reference_pixels(dataset: xr.Dataset, labels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each reference unit on the stack's grid."""
    crs = dataset.rio.crs
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
    transform = dataset.rio.transform()
    cols, rows = ~transform * (x, y)
    return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)


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


def zonal_areas(stack: xr.Dataset | LandUseStack, zones: gpd.GeoDataFrame, *, zone_column: str | None = None,
                common: bool = True) -> pd.DataFrame:
    """Area of each class at each date in each zone (town, tract, watershed).

    A pixel counts, whole, in every zone that holds its centre (zones may overlap: a town and its county),
    the rule of :func:`geoclf.change.zonal_summary`. Zones are rasterized block by block, so a county's
    stack is never in memory.

    Returns:
        A long table, one row per zone, date and class: ``zone``, ``date``, ``year``, ``decimal_year``,
        ``class``, ``pixels``, ``km2``, ``share`` (of the zone's counted area) and ``assessed_km2``.
    """
    stack = LandUseStack.of(stack)
    names = checked_zone_names(zones, zone_column)
    geometries = zones.geometry.to_crs(stack.dataset.rio.crs)
    codes = stack.codes.chunk({"time": -1}).data
    transform = stack.dataset.rio.transform()
    row_edges = np.concatenate([[0], np.cumsum(codes.chunks[1])])
    col_edges = np.concatenate([[0], np.cumsum(codes.chunks[2])])
    tree = shapely.STRtree(geometries.to_numpy())
    blocks = codes.to_delayed()
    n_codes = len(stack.classes.names) + 1
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
    counts = np.zeros((len(geometries), len(stack.times), n_codes), dtype=np.int64)
    for part in dask.compute(*tasks):
        counts += part
    tables = []
    for z, name in enumerate(names):
        table = _area_table(stack, counts[z, :, 1:])
        table.insert(0, "zone", name)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


