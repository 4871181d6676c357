"""Per-pixel trajectories of a land-use stack: class changes, flicker, the year first developed.

:func:`trajectories` counts, per pixel, how many times the class changed, how many of those changes are
"flicker" (A→B→A), and the first year it was Developed, optionally after a majority filter over time
(:func:`smooth_time`) that removes single-date flicker, which is usually classifier noise.
:func:`trajectory_summary` and :func:`developed_by_year` turn the layers into tables.
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from geoclf.landuse import NODATA, majority_filter
from geoclf.trend.stack import LandUseStack
from geoclf.zones import DEVELOPED
from tiling.errors import InputError

#: The per-pixel layers of :func:`trajectories`.
TRAJECTORY_LAYERS = ("changes", "flicker", "year_developed", "first_class", "last_class", "mapped_dates")


def smooth_time(codes: xr.DataArray, window: int = 3) -> xr.DataArray:
    """Majority (mode) filter of each pixel's class series over ``window`` consecutive dates (lazy).

    A pixel takes the class most frequent among the dates within ``window // 2`` of it, itself included;
    on a tie it keeps its own class, and nodata neither votes nor changes. With ``window=3`` a single-date
    excursion A→B→A becomes A→A→A, while a lasting change A→A→B→B keeps its date (each side wins its own
    ties); a two-date excursion needs ``window=5``. The first and last dates have one-sided windows, where
    ties are the rule, so they change only when outvoted. The filter is :func:`geoclf.landuse.majority_filter`
    along time, the one that smooths maps in space.
    """
    if window < 1 or window % 2 == 0:
        raise InputError(f"the temporal smoothing window must be an odd number of dates, got {window}")
    if window == 1:
        return codes
    smoothed = xr.apply_ufunc(majority_filter, _whole_series(codes), kwargs={"size": window, "axes": (-1,)},
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


def trajectories(stack: xr.Dataset | LandUseStack, *, smooth: int = 1,
                 developed: str | None = DEVELOPED) -> xr.Dataset:
    """Per-pixel class trajectories over the dates of a stack (lazy).

    Consecutive *mapped* dates are compared (a date without data at a pixel is skipped, not a change).

    Args:
        stack: from :func:`geoclf.trend.open_stack`.
        smooth: window of :func:`smooth_time` applied first (1: none).
        developed: the class whose first year is reported; None to skip.

    Returns:
        A Dataset ``(y, x)``: ``changes`` (class changes), ``flicker`` (changes that return to the class held
        before a one-date excursion, A→B→A; each such excursion also counts two changes), ``year_developed``
        (year of the first date mapped as ``developed``; 0 never -- equal to the first year when it was
        already developed then), ``first_class``, ``last_class`` (codes), ``mapped_dates``. Attributes:
        ``smoothing_window``, ``developed``.
    """
    stack = LandUseStack.of(stack)
    names = stack.classes.names
    if developed is not None and developed not in names:
        raise InputError(f"no class named {developed!r} among {names}; name the developed class")
    code = names.index(developed) + 1 if developed is not None else 0
    codes = smooth_time(stack.codes, smooth) if smooth > 1 else stack.codes
    years = stack.years.astype(np.int16)
    outputs = xr.apply_ufunc(
        _trajectory_series, _whole_series(codes), kwargs={"years": years, "developed": code},
        input_core_dims=[["time"]], output_core_dims=[[]] * 6, dask="parallelized",
        output_dtypes=[np.uint8, np.uint8, np.int16, np.uint8, np.uint8, np.uint8])
    result = xr.Dataset(dict(zip(TRAJECTORY_LAYERS, outputs, strict=True)))
    result["year_developed"].attrs["long_name"] = f"year first mapped as {developed} (0: never)"
    result["flicker"].attrs["long_name"] = "one-date excursions A→B→A"
    settings = {"smoothing_window": int(smooth), "developed": developed or ""}
    for name in TRAJECTORY_LAYERS:  # on each layer too, so that they survive being stored beside the stack
        result[name].attrs.update(settings)
    result.attrs.update(settings)
    return result


def stored_trajectories(stored: xr.Dataset, suffix: str = "") -> xr.Dataset:
    """The trajectory layers of a stack written by :func:`geoclf.trend.analyze_trends` (``suffix="_raw"``:
    unsmoothed)."""
    names = [f"{name}{suffix}" for name in TRAJECTORY_LAYERS]
    missing = [n for n in names if n not in stored]
    if missing:
        raise InputError(f"the stack holds no trajectory layers {missing}")
    layers = stored[names].rename({f"{name}{suffix}": name for name in TRAJECTORY_LAYERS})
    layers.attrs.update({k: layers["changes"].attrs.get(k) for k in ("smoothing_window", "developed")})
    return layers


def trajectory_summary(trajectory: xr.Dataset, stack: xr.Dataset | LandUseStack, *,
                       common: bool = True) -> dict[str, Any]:
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
    stack = LandUseStack.of(stack)
    mask = stack.assessed if common else trajectory["mapped_dates"] > 0
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
    out["km2"] = out["pixels"] * stack.pixel_area_km2
    out["changed_share"] = out["changed_pixels"] / pixels
    out["flicker_share"] = out["flicker_pixels"] / pixels
    out["mean_changes"] = out["changes"] / pixels
    out["flicker_change_share"] = 2 * out["flicker_events"] / out["changes"] if out["changes"] else 0.0
    out["smoothing_window"] = int(trajectory.attrs.get("smoothing_window", 1))
    return out


def developed_by_year(trajectory: xr.Dataset, stack: xr.Dataset | LandUseStack, *,
                      common: bool = True) -> pd.DataFrame:
    """Area first mapped as developed in each year (the first year: already developed then).

    Args:
        trajectory: from :func:`trajectories`.
        stack: the stack it was computed on.
        common: count the assessed area only (pixels mapped at every date).

    Returns:
        One row per date: ``year``, ``pixels``, ``km2``, ``already_developed`` (true for the first date).
    """
    stack = LandUseStack.of(stack)
    mask = stack.assessed if common else trajectory["mapped_dates"] > 0
    years = stack.years
    values = trajectory["year_developed"].where(mask, 0)
    counts = dask.compute(*[(values == int(year)).sum() for year in years])
    table = pd.DataFrame({"year": years, "pixels": np.array(counts, dtype=np.int64)})
    table["km2"] = table["pixels"] * stack.pixel_area_km2
    table["already_developed"] = table["year"] == years[0]
    return table


