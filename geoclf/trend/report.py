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

import folium
import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr
from affine import Affine
from branca.element import MacroElement
from jinja2 import Template
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

    Each class has its own y axis: a few km² of new development would be invisible beside farmland.

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


def _trend_table_html(trends: pd.DataFrame) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(str(r['class']))}</td><td>{r['first']:.3g}</td><td>{r['last']:.3g}</td>"
        f"<td>{r['slope']:+.3g}</td><td>[{r['slope_low']:+.3g}, {r['slope_high']:+.3g}]</td>"
        f"<td>{html.escape(str(r['trend']))}</td></tr>" for _, r in trends.iterrows())
    return ("<table class='geoclf-trends' style='border-collapse:collapse;font:11px sans-serif'>"
            "<tr><th>class</th><th>first km²</th><th>last km²</th><th>km²/yr</th><th>CI</th><th>trend</th></tr>"
            f"{rows}</table>")


def trend_map(stack: xr.Dataset | LandUseStack, trajectory: xr.Dataset, trends: pd.DataFrame, chart: PathLike,
              path: PathLike, *, zones: gpd.GeoDataFrame | None = None, zone_trends: pd.DataFrame | None = None,
              zone_column: str | None = None, basemap: str | None = "OpenStreetMap", opacity: float = 0.75,
              max_pixels: int = 2048) -> Path:
    """Write ``trend.html``: a land-use layer per date behind a year slider, the year-developed layer,
    zones with their trends, and the area chart, all inline so the page works offline.

    The page is a :class:`geoclf.webmap.WebMap`: layers are warped (nearest) to Web Mercator images as on the
    land-use map, each made from the stack read at every ``k``-th pixel so it fits ``max_pixels``.

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
    for t in range(len(dates)):
        grid = _decimated(dataset[CODES].isel(time=t), transform, crs, max_pixels)
        images.append(overlay_image(grid, classes, max_pixels))
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
    page.add_legend(classes, "Land use")
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
    page.map.get_root().html.add_child(folium.Element(panel), name="slider_panel")
    names = ", ".join(layer.get_name() for layer in layers)
    # Rendered as the map's last child, so that the map and its layers exist when it runs.
    slider = MacroElement()
    slider._template = Template("{% macro script(this, kwargs) %}" + f"""
(function () {{
  var map = {page.map.get_name()};
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
    page.map.add_child(slider, name="geoclf_slider")
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
