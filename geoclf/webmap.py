"""Offline folium pages: inlined Leaflet, a basemap, class-raster overlays, a legend, escaped popups, atomic save.

Every interactive page of geoclf (the land-use map, the change map, the trend map) is built here, so all of them
open from disk without a network and treat text alike. Text that comes from data -- class names, scene names
(raster file or URL stems), chip ids, model names, titles, basemap names -- is HTML-escaped before it reaches
the page: Leaflet puts popup, tooltip, legend and layer-control text into ``innerHTML``, so a raster named
``<img src=x onerror=...>.tif`` would otherwise run its script in the reader's browser.

A page is built with :class:`WebMap`::

    url, bounds = overlay_image(grid, classes, max_pixels=2048)
    page = WebMap(bounds)
    page.add_image(url, bounds, name="Land use", opacity=0.7)
    page.add_features(chips, name="Chips", fields=["chip_id"], style=lambda feature: {"weight": 1})
    page.add_legend(classes, "Land use")
    page.save("map.html")
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import folium
import geopandas as gpd
import numpy as np
import rasterio.warp
import xstatic.pkg.leaflet as leaflet
from affine import Affine
from PIL import Image
from rasterio.crs import CRS

from geoclf.landuse import NODATA, LandUseGrid, Legend, color_table, reproject_nearest
from tiling.io import atomic_path

PathLike = str | os.PathLike[str]
#: ``[[south, west], [north, east]]`` in degrees, as Leaflet takes bounds.
LatLonBounds = Sequence[Sequence[float]]
#: A folium style function: a GeoJSON feature (with escaped properties) -> Leaflet path options.
StyleFunction = Callable[[dict[str, Any]], dict[str, Any]]

_MERCATOR = CRS.from_epsg(3857)


def escape(value: Any) -> Any:
    """``value`` made safe to show as HTML text: strings escaped (``<>&"'``), other JSON values as they are.

    Lists and mappings are escaped element by element, since folium's popups show them as JSON text.
    """
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, Mapping):
        return {key: escape(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [escape(item) for item in value]
    return value


@cache
def leaflet_assets() -> tuple[str, str]:
    """Leaflet's JS and CSS, shipped by the xstatic-leaflet package, to inline into the page."""
    base = Path(leaflet.BASE_DIR)
    return (base / "leaflet.js").read_text(encoding="utf-8"), (base / "leaflet.css").read_text(encoding="utf-8")


def hex_color(rgb: Sequence[int]) -> str:
    """``#rrggbb`` of an RGB triple (legends, chip outlines)."""
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


def offline_map(bounds: LatLonBounds, basemap: str | None = "OpenStreetMap") -> folium.Map:
    """A folium map over ``[[south, west], [north, east]]`` that renders offline and from a file:// URL.

    Only Leaflet is loaded (no jQuery or Bootstrap: nothing here uses them), inlined into the page, so the
    data layers show without a network; the basemap, a provider name or a tile URL template, needs one.
    """
    fmap = folium.Map(location=[(bounds[0][0] + bounds[1][0]) / 2, (bounds[0][1] + bounds[1][1]) / 2],
                      tiles=None, control_scale=True, prefer_canvas=True)
    # instance attributes: folium's default lists are module globals shared by every map
    fmap.default_js = []
    fmap.default_css = []
    leaflet_js, leaflet_css = leaflet_assets()
    root = fmap.get_root()
    root.header.add_child(folium.Element(f"<style>{leaflet_css}</style>"), name="leaflet_css")
    root.header.add_child(folium.Element(f"<script>{leaflet_js}</script>"), name="leaflet")
    if basemap is not None:
        template = "{" in basemap  # a tile URL rather than a provider name: folium then wants an attribution
        folium.TileLayer(basemap, attr="basemap" if template else None,
                         name="Basemap" if template else html.escape(f"Basemap ({basemap})"), overlay=False,
                         control=True).add_to(fmap)
    return fmap


def overlay_image(grid: LandUseGrid, classes: Legend, max_pixels: int) -> tuple[str, list[list[float]]]:
    """The class raster warped (nearest) to Web Mercator as a palette PNG data URL, and its lat/lon bounds.

    Leaflet stretches an image overlay linearly in Web Mercator, so the raster is warped there first. It is
    also upsampled (up to ``max_pixels`` on a side) so that chips of a rotated grid keep their shape instead
    of aliasing into dropped or doubled pixels.
    """
    height, width = grid.codes.shape
    left, bottom, right, top = rasterio.warp.transform_bounds(grid.crs, _MERCATOR, *grid.bounds, densify_pts=21)
    native = rasterio.warp.calculate_default_transform(grid.crs, _MERCATOR, width, height, *grid.bounds)[0].a
    upsample = max(1, min(32, max_pixels // max(width, height, 1)))
    resolution = max(native / upsample, max(right - left, top - bottom) / max_pixels)
    out_width = max(1, math.ceil((right - left) / resolution))
    out_height = max(1, math.ceil((top - bottom) / resolution))
    transform = Affine(resolution, 0.0, left, 0.0, -resolution, top)
    warped = np.zeros((out_height, out_width), dtype=np.uint8)
    reproject_nearest(grid.codes, warped, grid, transform, _MERCATOR, NODATA)
    image = Image.fromarray(warped, mode="P")
    palette = color_table(classes)
    image.putpalette(palette[:, :3].ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True, transparency=bytes(palette[:, 3].tolist()))
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    xs, ys = rasterio.warp.transform(_MERCATOR, "EPSG:4326", [left, left + out_width * resolution],
                                     [top - out_height * resolution, top])
    return url, [[ys[0], xs[0]], [ys[1], xs[1]]]


def legend_html(classes: Legend, title: str, note: str | None) -> str:
    """A fixed-position HTML legend of ``classes`` for a folium map; names, title and note are escaped."""
    items = "".join(
        f'<div><span style="display:inline-block;width:14px;height:14px;margin-right:6px;'
        f'vertical-align:middle;border:1px solid #555;background:{hex_color(classes.color(name))}"></span>'
        f"{html.escape(name)}</div>" for name in classes.names)
    extra = f'<div style="margin-top:4px;color:#555;max-width:220px">{html.escape(note)}</div>' if note else ""
    return (f'<div class="geoclf-legend" style="position:absolute;right:10px;bottom:28px;z-index:1000;'
            f"background:rgba(255,255,255,0.92);padding:6px 8px;border-radius:4px;font:12px/1.5 sans-serif;"
            f'box-shadow:0 1px 4px rgba(0,0,0,0.3)"><b>{html.escape(title)}</b>{items}{extra}</div>')


def escaped_geojson(features: gpd.GeoDataFrame | Mapping[str, Any]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection with every property escaped; a GeoDataFrame is converted (to EPSG:4326 when
    it has another CRS, ids dropped)."""
    if isinstance(features, gpd.GeoDataFrame):
        if features.crs is not None and features.crs.to_epsg() != 4326:
            features = features.to_crs(4326)
        features = json.loads(features.to_json(drop_id=True))
    return {**features, "features": [{**feature, "properties": escape(feature.get("properties") or {})}
                                     for feature in features["features"]]}


def save_map(fmap: folium.Map, path: PathLike) -> Path:
    """Write a folium map to ``path`` atomically (a reader never sees half a page); returns ``path``."""
    with atomic_path(path) as temporary:
        fmap.save(str(temporary))
    return Path(path)


class WebMap:
    """One offline page under construction: a folium map with geoclf's layers, legend and escaping.

    Args:
        bounds: ``[[south, west], [north, east]]`` the page opens on (e.g. from :func:`overlay_image`).
        basemap: a folium/xyzservices tile provider name or a tile URL template; None for no basemap.

    Attributes:
        map: the folium map, for elements this class does not offer (a page script, a custom control).
        bounds: the bounds the page is fitted to when saved.
    """

    def __init__(self, bounds: LatLonBounds, basemap: str | None = "OpenStreetMap") -> None:
        self.bounds = bounds
        self.map = offline_map(bounds, basemap)
        self._layer_control = False

    def add_image(self, url: str, bounds: LatLonBounds, *, name: str | None = None, opacity: float = 0.7,
                  show: bool = True, control: bool = True, class_name: str | None = None
                  ) -> folium.raster_layers.ImageOverlay:
        """Add an image overlay (an :func:`overlay_image` data URL), drawn pixelated, named in the layer list.

        Args:
            url: the image (a data URL keeps the page self-contained).
            bounds: its lat/lon bounds.
            name: its entry in the layer control (escaped).
            opacity: layer opacity.
            show: shown when the page opens.
            control: listed in the layer control.
            class_name: CSS class of the image element (for page scripts).
        """
        options: dict[str, Any] = {} if class_name is None else {"className": class_name}
        layer = folium.raster_layers.ImageOverlay(url, bounds=bounds, opacity=opacity,
                                                  name=None if name is None else html.escape(name),
                                                  pixelated=True, interactive=False, control=control, show=show,
                                                  **options)
        layer.add_to(self.map)
        return layer

    def add_grid(self, grid: LandUseGrid, classes: Legend, *, max_pixels: int = 2048, **options: Any
                 ) -> folium.raster_layers.ImageOverlay:
        """Add a class raster as an image overlay (:func:`overlay_image`); ``options`` as for :meth:`add_image`."""
        url, bounds = overlay_image(grid, classes, max_pixels)
        return self.add_image(url, bounds, **options)

    def add_features(self, features: gpd.GeoDataFrame | Mapping[str, Any], *, name: str, fields: Sequence[str],
                     aliases: Sequence[str] | None = None, style: StyleFunction | None = None,
                     highlight: StyleFunction | None = None, popup: bool = True, tooltip: bool = False
                     ) -> folium.GeoJson:
        """Add vector features (in EPSG:4326) whose ``fields`` open in a popup (or show in a tooltip).

        Every property and alias is escaped, so ``style`` and ``highlight`` see escaped properties: key any
        lookup by ``html.escape(value)``.

        Args:
            features: a GeoDataFrame (any CRS) or a GeoJSON FeatureCollection (EPSG:4326).
            name: the layer's entry in the layer control (escaped).
            fields: the properties shown, in order.
            aliases: their labels (default: the field names).
            style: Leaflet path options per feature.
            highlight: path options of a feature under the pointer.
            popup: show the fields in a popup on click.
            tooltip: show the fields in a tooltip on hover.
        """
        labels = escape(list(aliases if aliases is not None else fields))
        layer = folium.GeoJson(
            escaped_geojson(features), name=html.escape(name), style_function=style, highlight_function=highlight,
            popup=folium.GeoJsonPopup(fields=list(fields), aliases=labels) if popup else None,
            tooltip=folium.GeoJsonTooltip(fields=list(fields), aliases=labels) if tooltip else None)
        layer.add_to(self.map)
        return layer

    def add_legend(self, classes: Legend, title: str, note: str | None = None) -> None:
        """Add the fixed-position legend (:func:`legend_html`) to the page."""
        self.map.get_root().html.add_child(folium.Element(legend_html(classes, title, note)), name="legend")

    def add_layer_control(self) -> None:
        """Add the (expanded) layer list now; :meth:`save` adds it last otherwise. Only one is added."""
        if not self._layer_control:
            folium.LayerControl(collapsed=False).add_to(self.map)
            self._layer_control = True

    def save(self, path: PathLike) -> Path:
        """Add the layer list (unless added), fit the page to :attr:`bounds` and write it atomically."""
        self.add_layer_control()
        self.map.fit_bounds(self.bounds)
        return save_map(self.map, path)


__all__ = [
    "WebMap",
    "escape",
    "escaped_geojson",
    "hex_color",
    "leaflet_assets",
    "legend_html",
    "offline_map",
    "overlay_image",
    "save_map",
]
