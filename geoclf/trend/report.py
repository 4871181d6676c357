"""Figures and the page of a trend analysis: area small multiples, the year-developed map, ``trend.html``."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr
from affine import Affine
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from rasterio.crs import CRS

from geoclf.landuse import LandUseGrid
from geoclf.trend.stack import CODES, LandUseStack
from geoclf.webmap import WebMap, hex_color, overlay_image
from geoclf.zones import zone_names
from tiling.classes import ClassScheme
from tiling.io import atomic_path

PathLike = str | os.PathLike[str]


def _decimated(array: xr.DataArray, transform: Affine, crs: CRS, max_pixels: int) -> LandUseGrid:
    """A 2-D layer read at every ``k``-th pixel (nearest), small enough for a page or a figure."""
    step = max(1, math.ceil(max(array.shape) / max_pixels))
    small = array.isel(y=slice(None, None, step), x=slice(None, None, step)).compute().to_numpy()
    return LandUseGrid(small, transform * Affine.scale(step), crs)


def _year_scheme(years: Sequence[int]) -> ClassScheme:
    """A pseudo class scheme whose classes are the years developed (colour ramp; the first year grey)."""
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

    Each class has its own y axis (the figure says so): a few km² of new development would be invisible beside
    farmland. Each panel's title gives the slope and its interval with the interval's coverage (see
    :func:`interval_text`).

    Args:
        areas: from :func:`geoclf.trend.class_areas`.
        trends: from :func:`geoclf.trend.class_trends` on ``areas``.
        path: output PNG.
        classes: the scheme, for the class colours.
        adjusted: from :func:`geoclf.trend.reference_areas` with ``decimal_year``, drawn with their 95% intervals.
        title: figure title.

    Returns:
        ``path`` as a Path.
    """
    names = list(dict.fromkeys(areas["class"]))
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4.0 * columns, 2.8 * rows + 0.6), layout="constrained")
    figure.suptitle(f"{title}\n(each panel has its own y axis: compare slopes in km²/yr, not heights)", fontsize=11)
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
            label = f"{name}: {row['slope']:+.3g} km²/yr ({row['trend']})\n{interval_text(row)}"
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
    with atomic_path(target) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    return target


def year_developed_figure(trajectory: xr.Dataset, stack: xr.Dataset | LandUseStack, path: PathLike, *,
                          max_pixels: int = 1500) -> Path:
    """A static map of the year each pixel was first mapped as developed.

    Args:
        trajectory: from :func:`geoclf.trend.trajectories`.
        stack: the stack it was computed on (dates, grid).
        path: output PNG.
        max_pixels: longest side of the drawn raster (the layer is read at every k-th pixel past it).

    Returns:
        ``path`` as a Path.
    """
    dataset = LandUseStack.of(stack).dataset
    years = [int(y) for y in dataset["year"].to_numpy()]
    scheme = _year_scheme(years)
    crs, transform = dataset.rio.crs, dataset.rio.transform()
    grid = _decimated(trajectory["year_developed"], transform, crs, max_pixels)
    mapped = _decimated(trajectory["mapped_dates"], transform, crs, max_pixels).codes > 0
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
                   f"({crs.to_string()})")
    handles = [Patch(facecolor=np.array(scheme.color(n)) / 255, edgecolor="#555", label=n) for n in scheme.names]
    handles.append(Patch(facecolor=(0.92, 0.92, 0.92), edgecolor="#555", label="never"))
    figure.legend(handles=handles, loc="outside right upper", frameon=False, title="year")
    target = Path(path)
    with atomic_path(target) as temporary:
        figure.savefig(temporary, dpi=120, format="png")
    return target


def _data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def interval_text(row: pd.Series | dict) -> str:
    """A slope's interval as people should read it: its bounds and its real coverage (``ci_level``), e.g.
    ``"[+0.12, +0.40] km²/yr, 92% interval"``; with too few dates for an interval, it says so (never "nan")."""
    low, high, level = (float(row.get(key, np.nan)) for key in ("slope_low", "slope_high", "ci_level"))
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"no interval from {int(row.get('n_dates', 0))} dates (3 or more needed)"
    coverage = f"{level:.0%} interval" if np.isfinite(level) else "interval"
    return f"[{low:+.3g}, {high:+.3g}] km²/yr, {coverage}"


def _figure(value: float) -> str:
    return f"{value:.3g}" if np.isfinite(value) else "–"


def _signed(value: float) -> str:
    return f"{value:+.3g}" if np.isfinite(value) else "–"


def _interval_cells(row: pd.Series) -> str:
    """The table cells of a slope's interval: its bounds and its real coverage (see :func:`interval_text`)."""
    low, high, level = (float(row.get(key, np.nan)) for key in ("slope_low", "slope_high", "ci_level"))
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"<td colspan='2'>none from {int(row.get('n_dates', 0))} dates</td>"
    return (f"<td style='white-space:nowrap'>[{low:+.3g}, {high:+.3g}]</td>"
            f"<td>{f'{level:.0%}' if np.isfinite(level) else '–'}</td>")


def _trend_table_html(trends: pd.DataFrame) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(r['class']))}</td><td>{_figure(r['first'])}</td><td>{_figure(r['last'])}</td>"
        f"<td>{_signed(r['slope'])}</td>{_interval_cells(r)}"
        f"<td>{html.escape(str(r['trend']))}</td></tr>" for _, r in trends.iterrows())
    return ("<table class='geoclf-trends' style='border-collapse:collapse;font:10px sans-serif'>"
            "<tr><th>class</th><th>first km²</th><th>last km²</th><th>km²/yr</th><th>interval</th>"
            f"<th>coverage</th><th>trend</th></tr>{rows}</table>")


def trend_map(stack: xr.Dataset | LandUseStack, trajectory: xr.Dataset, trends: pd.DataFrame, chart: PathLike,
              path: PathLike, *, zones: gpd.GeoDataFrame | None = None, zone_trends: pd.DataFrame | None = None,
              zone_column: str | None = None, basemap: str | None = "OpenStreetMap", opacity: float = 0.75,
              max_pixels: int = 2048) -> Path:
    """Write ``trend.html``: a land-use layer per date behind a year slider, the year-developed layer,
    zones with their trends, and a side panel with the area chart and the trend table, all inline so the page
    works offline.

    The page is a :class:`geoclf.webmap.WebMap`: layers are warped (nearest) to Web Mercator images as on the
    land-use map, each made from the stack read at every ``k``-th pixel so it fits ``max_pixels``; read whole
    (``k = 1``), the land-use layers outline each chip. The chart and the table sit in a panel beside the map,
    not over it; the table states each slope's interval with its real coverage (:func:`interval_text`), and
    the chart that each class has its own y axis.

    Args:
        stack: from :func:`geoclf.trend.open_stack` (or reopened from Zarr).
        trajectory: from :func:`geoclf.trend.trajectories`, for the year-developed layer.
        trends: from :func:`geoclf.trend.class_trends`, tabulated under the chart.
        chart: the area chart PNG (:func:`area_figure`), inlined.
        path: output ``.html``.
        zones: zone polygons, drawn with a popup of their trends.
        zone_trends: from :func:`geoclf.trend.class_trends` on :func:`geoclf.trend.zonal_areas`.
        zone_column: the zones' name column.
        basemap: a folium tile provider name or URL template; None for none.
        opacity: opacity of the land-use layers.
        max_pixels: longest side of each layer image.

    Returns:
        ``path`` as a Path.
    """
    stack = LandUseStack.of(stack)
    classes, dataset = stack.classes, stack.dataset
    crs, transform = dataset.rio.crs, dataset.rio.transform()
    years = [int(y) for y in stack.years]
    dates = [str(t.date()) for t in stack.times]
    images = []
    whole = max(dataset[CODES].shape[1:]) <= max_pixels  # read at every pixel: one image pixel block per chip
    for t in range(len(dates)):
        grid = _decimated(dataset[CODES].isel(time=t), transform, crs, max_pixels)
        images.append(overlay_image(grid, classes, max_pixels, outlines=whole))
    page = WebMap(images[0][1], basemap)
    # The dates' layers stay out of the layer list: the slider shows one at a time.
    layers = [page.add_image(url, layer_bounds, opacity=opacity, control=False,
                             class_name=f"geoclf-year geoclf-year-{dates[t]}")
              for t, (url, layer_bounds) in enumerate(images)]
    year_scheme = _year_scheme(years)
    developed_grid = _decimated(trajectory["year_developed"], transform, crs, max_pixels)
    developed_grid = developed_grid._replace(codes=_year_codes(developed_grid.codes, years))
    url, layer_bounds = overlay_image(developed_grid, year_scheme, max_pixels)
    developed = trajectory.attrs.get("developed") or "developed"
    page.add_image(url, layer_bounds, name=f"Year first {developed}", opacity=0.9, show=False,
                   class_name="geoclf-year-developed")
    if zones is not None and zone_trends is not None and not zone_trends.empty:
        _add_zones(page, zones, zone_trends, classes.names, zone_column)
    page.add_layer_control()
    mapped = float(stack.assessed.sum().compute()) * stack.pixel_area_km2
    page.add_title(f"Land use {dates[0]} to {dates[-1]}",
                   [f"{len(dates)} dates ({', '.join(str(y) for y in years)}); {mapped:,.2f} km² mapped at every date"])
    outline = " Thin dark lines outline the chips." if whole else ""
    page.add_legend(classes, "Land use", f"Shown: the date of the slider (right panel).{outline}",
                    nodata="not mapped at that date")
    page.add_opacity_control({"Land use": layers})
    swatches = "".join(
        f"<span style='display:inline-block;margin-right:6px'><span style='display:inline-block;width:12px;"
        f"height:12px;vertical-align:middle;border:1px solid #555;background:{hex_color(year_scheme.color(n))}'>"
        f"</span> {html.escape(n)}</span>" for n in year_scheme.names)
    smoothing = int(trajectory.attrs.get("smoothing_window", 1))
    note = f"temporal majority filter over {smoothing} dates" if smoothing > 1 else "no temporal smoothing"
    few = (trends["n_dates"] < 3).any() if "n_dates" in trends.columns else False
    panel = (
        "<div class='geoclf-slider'>"
        f"<b>Land use</b> <span id='geoclf-date'>{dates[-1]}</span><br>"
        f"<input id='geoclf-slider' type='range' min='0' max='{len(dates) - 1}' value='{len(dates) - 1}' "
        f"step='1' style='width:100%'><div style='color:#555;font-size:11px'>{html.escape(dates[0])} … "
        f"{html.escape(dates[-1])}</div><div class='geoclf-year-legend' style='margin-top:4px;font-size:11px'>"
        f"<b>Year first {html.escape(developed)}</b> ({html.escape(note)}; in the layer list):<br>{swatches}</div>"
        "</div><div class='geoclf-chart' style='margin-top:10px'><b>Area by class over time</b>"
        f"<img class='geoclf-widen' alt='area by class over time' src='{_data_url(Path(chart))}' "
        "style='width:100%;margin-top:4px'>"
        "<div style='color:#555;font-size:11px'>Click the chart to widen the panel.</div>"
        "<p class='geoclf-axes-note' style='color:#555;font-size:11px;margin:2px 0 6px'>Each class has its own "
        "y axis, so that small classes show their change: compare the slopes (km²/yr), not the heights.</p>"
        f"{_trend_table_html(trends)}"
        "<p class='geoclf-interval-note' style='color:#555;font-size:11px'>Slopes are Theil–Sen; the interval is "
        "Sen's, with the coverage it really has: with few dates it spans every pairwise slope and covers less "
        "than 95% (67% with three dates, 92% with four)."
        + (" Two dates give a slope but no interval." if few else "") + "</p></div>")
    page.add_side_panel(panel)
    names = ", ".join(layer.get_name() for layer in layers)
    page.add_script("geoclf_slider", f"""
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
  show(layers.length - 1);""")
    return page.save(path)


def _add_zones(page: WebMap, zones: gpd.GeoDataFrame, zone_trends: pd.DataFrame, classes: Sequence[str],
               zone_column: str | None) -> None:
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
    page.add_features(frame, name="Zones (click for trends)", fields=fields, aliases=aliases,
                      style=lambda feature: {"color": "#222", "weight": 2, "fillOpacity": 0.0})
