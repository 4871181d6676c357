"""``geoclf trend`` as a function: the stack and every trend product of a series of maps, into one directory."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from geoclf.landuse import smoothing_window
from geoclf.partitions import print_dashboard
from geoclf.trend.areas import class_areas, reference_areas, zonal_areas
from geoclf.trend.report import area_figure, trend_map, year_developed_figure
from geoclf.trend.series import class_trends
from geoclf.trend.stack import CHUNK, CODES, STACK, LandUseStack, decimal_years, open_stack, stack_classes, write_stack
from geoclf.trend.trajectories import (
    developed_by_year,
    smooth_time,
    stored_trajectories,
    trajectories,
    trajectory_summary,
)
from geoclf.zones import DEVELOPED, checked_zone_names, read_reference, read_zones
from tiling.io import atomic_path, relocated, staged_directory
from tiling.parallel import Scheduler, dask_client, for_tasks

PathLike = str | os.PathLike[str]


def analyze_trends(maps: Sequence[PathLike], out: PathLike, *, zones: PathLike | None = None,
                   zone_column: str | None = None, reference: PathLike | None = None, smooth: int | bool = 1,
                   developed: str | None = DEVELOPED, dates: Sequence[str] | None = None,
                   probabilities: bool = False, chunks: int = CHUNK, html_map: bool = True,
                   basemap: str | None = "OpenStreetMap", scheduler: Scheduler = None, n_workers: int | None = None,
                   progress: bool = True) -> dict[str, Path]:
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
        zone_column: the zones' name column (see :func:`geoclf.zones.zone_names`).
        reference: a labelled reference sample (see :func:`geoclf.trend.reference_areas`).
        smooth: window (an odd number of dates) of the temporal majority filter applied before counting
            changes; 1 for none (``True``, as for the spatial commands, is 3).
        developed: the class whose first year is mapped; skipped when the scheme has no such class.
        dates: one acquisition date per map, overriding those the maps carry.
        probabilities: also stack the probability COGs.
        chunks: spatial chunk side of the stack.
        html_map: write ``trend.html``.
        basemap: basemap of ``trend.html`` (None for none).
        scheduler: where the chunks are computed (see :func:`tiling.parallel.dask_client`); a stack of a
            single chunk is computed in this process.
        n_workers: worker processes of a new LocalCluster (default: one per core).
        progress: show which step runs, and print the Dask dashboard's address.

    Returns:
        Output name -> path.
    """
    # Inputs are read and checked before any pixel is: a bad zone file should not cost a county's stack.
    smooth = smoothing_window(smooth)
    zone_frame = read_zones(zones) if zones is not None else None
    if zone_frame is not None:
        checked_zone_names(zone_frame, zone_column)
    samples = read_reference(reference) if reference is not None else None
    # into a staging directory first: a run refused halfway (a reference sample that does not fit, Ctrl-C
    # during the stack) leaves no half set of products in the output directory
    with staged_directory(out) as out_dir:
        opened = open_stack(maps, dates=dates, probabilities=probabilities, chunks=chunks)
        if developed is not None and developed not in stack_classes(opened).names:
            developed = None  # a scheme without a developed class still gets areas, trends and change counts
        steps = ["stack", "areas", "trajectories", *(["zones"] if zone_frame is not None else []), "figures",
                 *(["page"] if html_map else [])]
        chunk_count = int(np.prod(opened[CODES].data.numblocks[1:]))
        with dask_client(for_tasks(scheduler, chunk_count), n_workers=n_workers) as client:
            if client is not None and progress:
                print_dashboard(client)  # before the bar, so that the address is not drawn over
            with tqdm(total=len(steps), desc="trend", unit="step", disable=not progress, leave=False) as bar:

                def step(name: str) -> None:
                    bar.set_postfix_str(name, refresh=True)

                step("stack")
                written = {"stack": _write_stack(opened, out_dir / STACK, smooth, developed)}
                stored = xr.open_zarr(written["stack"], decode_coords="all")
                stack = LandUseStack.of(stored)
                chosen = stored_trajectories(stored)
                raw = stored_trajectories(stored, "_raw") if smooth > 1 else chosen
                bar.update()

                step("areas")
                areas = class_areas(stack)
                trends = class_trends(areas).assign(series="mapped")
                adjusted = None
                if samples is not None:
                    adjusted = reference_areas(stack, samples, areas=areas)
                    adjusted["decimal_year"] = decimal_years(pd.to_datetime(adjusted["date"]))
                    areas = areas.merge(adjusted.drop(columns=["decimal_year", "mapped_km2"]), on=["date", "class"],
                                        how="left")
                    adjusted_trends = class_trends(adjusted, value="area_km2").assign(series="error-adjusted")
                    trends = pd.concat([trends, adjusted_trends], ignore_index=True)
                written["areas"] = _write_csv(areas, out_dir / "areas.csv")
                written["trends"] = _write_csv(trends, out_dir / "trends.csv")
                bar.update()

                step("trajectories")
                summaries = [{"series": "raw", **trajectory_summary(raw, stack)}]
                if smooth > 1:
                    summaries.append({"series": "smoothed", **trajectory_summary(chosen, stack)})
                written["trajectories"] = _write_csv(pd.DataFrame(summaries), out_dir / "trajectories.csv")
                if developed is not None:
                    written["developed_by_year"] = _write_csv(developed_by_year(chosen, stack),
                                                              out_dir / "developed_by_year.csv")
                    written["year_developed_png"] = year_developed_figure(chosen, stack, out_dir / "year_developed.png")
                bar.update()

                zone_trend_table = None
                if zone_frame is not None:
                    step("zones")
                    zonal = zonal_areas(stack, zone_frame, zone_column=zone_column)
                    zone_trend_table = class_trends(zonal, by=("zone", "class"))
                    written["zonal_areas"] = _write_csv(zonal, out_dir / "zonal_areas.csv")
                    written["zonal_trends"] = _write_csv(zone_trend_table, out_dir / "zonal_trends.csv")
                    bar.update()

                step("figures")
                mapped_trends = trends[trends["series"] == "mapped"]
                written["areas_png"] = area_figure(areas, mapped_trends, out_dir / "areas.png", classes=stack.classes,
                                                   adjusted=adjusted)
                bar.update()
                if html_map:
                    step("page")
                    written["html"] = trend_map(stack, chosen, mapped_trends, written["areas_png"],
                                                out_dir / "trend.html", zones=zone_frame, zone_trends=zone_trend_table,
                                                basemap=basemap, zone_column=zone_column)
                    bar.update()
    return relocated(written, out_dir, out)


def _write_stack(stack: xr.Dataset, path: Path, smooth: int, developed: str | None) -> Path:
    """Write the stack with its trajectory layers: one write computes them together, so each COG chunk is read
    once."""
    layers = [trajectories(stack, smooth=smooth, developed=developed)]
    if smooth > 1:
        raw = trajectories(stack, smooth=1, developed=developed)
        layers.append(raw.rename({name: f"{name}_raw" for name in raw.data_vars}))
        layers.append(smooth_time(stack[CODES], smooth).rename(f"{CODES}_smoothed").to_dataset())
    full = xr.merge([stack, *layers], compat="override", join="exact", combine_attrs="override")
    return write_stack(full.rio.write_crs(stack.rio.crs), path)


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False)
    return path
