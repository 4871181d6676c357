"""Multi-year land-use trends: a lazy stack of land-use maps, class area series, trends, trajectories, zones.

The stages, each in its module:

- :mod:`geoclf.trend.stack` -- :func:`open_stack` puts the land-use maps of several dates on one grid as a
  lazy ``xarray.Dataset`` ``(time, y, x)``; :class:`LandUseStack` carries it with its class scheme, pixel
  area and assessed area;
- :mod:`geoclf.trend.areas` -- :func:`class_areas` over the assessed area, :func:`reference_areas`
  (error-adjusted, Olofsson et al. 2014) and :func:`zonal_areas`;
- :mod:`geoclf.trend.series` -- :func:`class_trends`: a Theil–Sen slope per class with Sen's interval
  (:func:`theil_sen`);
- :mod:`geoclf.trend.trajectories` -- per pixel: changes, flicker (A→B→A) and the first year developed,
  optionally after a majority filter over time (:func:`smooth_time`);
- :mod:`geoclf.trend.report` -- the area figure, the year-developed map and ``trend.html``;
- :mod:`geoclf.trend.run` -- :func:`analyze_trends`: all of the above written to a directory.

A map pixel is a chip cell (see :mod:`geoclf.maps`): areas count pixels times the pixel's ground area, and
trends of the *mapped* areas inherit the maps' errors. With a reference sample the error-adjusted series are
estimated too, and trended alike.
"""

from __future__ import annotations

from geoclf.trend.areas import assessed_mask, class_areas, reference_areas, zonal_areas
from geoclf.trend.report import area_figure, trend_map, year_developed_figure
from geoclf.trend.run import analyze_trends
from geoclf.trend.series import class_trends, theil_sen, trend_label
from geoclf.trend.stack import (
    CHUNK,
    CODES,
    LANDUSE,
    PREDICTIONS,
    PROBABILITIES,
    STACK,
    LandUseStack,
    decimal_years,
    open_stack,
    pixel_area_km2,
    stack_classes,
    write_stack,
)
from geoclf.trend.trajectories import (
    TRAJECTORY_LAYERS,
    developed_by_year,
    smooth_time,
    stored_trajectories,
    trajectories,
    trajectory_summary,
)

__all__ = [
    "CHUNK", "CODES", "LANDUSE", "PREDICTIONS", "PROBABILITIES", "STACK", "TRAJECTORY_LAYERS", "LandUseStack",
    "analyze_trends", "area_figure", "assessed_mask", "class_areas", "class_trends", "decimal_years",
    "developed_by_year", "open_stack", "pixel_area_km2", "reference_areas", "smooth_time", "stack_classes",
    "stored_trajectories", "theil_sen", "trajectories", "trajectory_summary", "trend_label", "trend_map",
    "write_stack", "year_developed_figure", "zonal_areas",
]
