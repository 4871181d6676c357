"""Offline folium pages: inlined Leaflet, a basemap, class-raster overlays, a legend, escaped popups, atomic save.

Every interactive page of geoclf (the land-use map, the change map, the trend map) is built here, so all of them
open from disk without a network and treat text alike. Text that comes from data -- class names, scene names
(raster file or URL stems), chip ids, model names, titles, basemap names -- is HTML-escaped before it reaches
the page: Leaflet puts popup, tooltip, legend and layer-control text into ``innerHTML``, so a raster named
``<img src=x onerror=...>.tif`` would otherwise run its script in the reader's browser.

Layers are images inside the page (data URLs): class rasters warped to Web Mercator (:func:`overlay_image`,
optionally with chip outlines) and the scored imagery itself, RGB or colour-infrared, read from the rasters'
overviews (:func:`imagery_image`), so a page shows what was classified even with no basemap. Controls are
plain Leaflet and a few lines of inline script: the layer list, a title, a legend (with its nodata entry), an
opacity slider per layer group and a swipe between two sets of layers (two dates).

A page is built with :class:`WebMap`::

    url, bounds = overlay_image(grid, classes, max_pixels=2048)
    page = WebMap(bounds)
    rgb = imagery_image(sources, bounds, bands=(1, 2, 3))
    page.add_image(rgb.url, rgb.bounds, name="Imagery (RGB)", imagery=True)
    land_use = page.add_image(url, bounds, name="Land use", opacity=0.7)
    page.add_features(chips, name="Chips", fields=["chip_id"], style=lambda feature: {"weight": 1})
    page.add_title("Land use 2016", ["model lr-lite0"])
    page.add_legend(classes, "Land use", nodata="not scored")
    page.add_opacity_control({"Land use": [land_use]})
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
from typing import Any, NamedTuple

import folium
import geopandas as gpd
import numpy as np
import rasterio.warp
import xstatic.pkg.leaflet as leaflet
from affine import Affine
from branca.element import MacroElement
from jinja2 import Template
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window, from_bounds

from geoclf.landuse import NODATA, LandUseGrid, Legend, color_table, reproject_nearest
from tiling.errors import InputError
from tiling.io import atomic_path, nodata_mask, open_raster, read_valid

PathLike = str | os.PathLike[str]
#: ``[[south, west], [north, east]]`` in degrees, as Leaflet takes bounds.
LatLonBounds = Sequence[Sequence[float]]
#: A folium style function: a GeoJSON feature (with escaped properties) -> Leaflet path options.
StyleFunction = Callable[[dict[str, Any]], dict[str, Any]]

_MERCATOR = CRS.from_epsg(3857)

#: Palette index of chip outlines in a class overlay (:func:`overlay_image`): above any class code.
OUTLINE_INDEX = 255
#: Colour (RGBA) of chip outlines: dark and half transparent, visible on every class colour.
OUTLINE_RGBA = (30, 30, 30, 150)
#: Least size of a chip, in overlay pixels, for outlines to be drawn: below it they would hide the classes.
OUTLINE_MIN_PIXELS = 4
#: Band triples of the imagery layers: natural colour, and colour infrared (NIR, red, green as R, G, B).
RGB_BANDS = (1, 2, 3)
CIR_BANDS = (4, 1, 2)


class Verbatim(folium.Element):
    """HTML that goes into a page as it is (a ``folium.Element`` whose text is not a jinja template).

    branca compiles an element's text as a jinja template and renders it: ``{{ ... }}`` in it is evaluated, with
    access to Python objects. The pages hold text from the data (raster and scene names from file names, STAC
    items or URLs; class names; titles), HTML-escaped, which leaves braces alone: a raster named
    ``{{ cycler.__init__.__globals__.os.popen('...').read() }}.tif`` would run a command while the page is
    written. Every piece of HTML geoclf adds to a page is one of these (compiling a page's megabytes of inlined
    Leaflet and images as templates also cost ~0.2 s a page).
    """

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def render(self, **kwargs: Any) -> str:
        """The text, as given."""
        return self.text


#: The template of :meth:`WebMap.add_script`'s elements: the code is put in as a value, not compiled.
_SCRIPT = Template("{% macro script(this, kwargs) %}{{ this.code }}{% endmacro %}")


class ImageLayer(NamedTuple):
    """An image for a page: a data URL, its lat/lon bounds, and what could not be drawn (for a note)."""

    url: str
    bounds: list[list[float]]
    missing: list[str]


#: Braces as HTML character references: what :func:`escape` writes for ``{`` and ``}``.
_BRACES = str.maketrans({"{": "&#123;", "}": "&#125;"})


def escape(value: Any) -> Any:
    """``value`` made safe to show as HTML text: strings escaped (``<>&"'``, and the braces), other JSON values as
    they are.

    Lists and mappings are escaped element by element (a mapping's keys too: they name popup fields), since
    folium's popups show them as JSON text. Braces become character references (shown as braces) because folium
    renders every layer's script, with the names and properties in it, and branca compiles that output once
    more as a jinja template: ``{{ ... }}`` from the data would be evaluated there, with Python's objects at
    hand (see :class:`Verbatim` for the HTML geoclf adds itself).
    """
    if isinstance(value, str):
        return html.escape(value).translate(_BRACES)
    if isinstance(value, Mapping):
        return {escape(key): escape(item) for key, item in value.items()}
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
    root.header.add_child(Verbatim(f"<style>{leaflet_css}</style>"), name="leaflet_css")
    root.header.add_child(Verbatim(f"<script>{leaflet_js}</script>"), name="leaflet")
    if basemap is not None:
        template = "{" in basemap  # a tile URL rather than a provider name: folium then wants an attribution
        folium.TileLayer(basemap, attr="basemap" if template else None,
                         name="Basemap" if template else escape(f"Basemap ({basemap})"), overlay=False,
                         control=True).add_to(fmap)
    return fmap


def _mercator_canvas(bounds: tuple[float, float, float, float], native: float, max_pixels: int,
                     upsample: int = 1) -> tuple[Affine, int, int]:
    """A north-up Web Mercator grid over ``bounds`` (Mercator): ``native / upsample`` resolution, at most
    ``max_pixels`` on a side."""
    left, bottom, right, top = bounds
    resolution = max(native / upsample, max(right - left, top - bottom) / max_pixels)
    width = max(1, math.ceil((right - left) / resolution))
    height = max(1, math.ceil((top - bottom) / resolution))
    return Affine(resolution, 0.0, left, 0.0, -resolution, top), width, height


def _latlon_bounds(transform: Affine, width: int, height: int) -> list[list[float]]:
    left, top = transform.c, transform.f
    xs, ys = rasterio.warp.transform(_MERCATOR, "EPSG:4326", [left, left + width * transform.a],
                                     [top + height * transform.e, top])
    return [[ys[0], xs[0]], [ys[1], xs[1]]]


def overlay_image(grid: LandUseGrid, classes: Legend, max_pixels: int, *, outlines: bool = False,
                  transparent: Sequence[int] = ()) -> tuple[str, list[list[float]]]:
    """The class raster warped (nearest) to Web Mercator as a palette PNG data URL, and its lat/lon bounds.

    Leaflet stretches an image overlay linearly in Web Mercator, so the raster is warped there first. It is
    also upsampled (up to ``max_pixels`` on a side) so that chips of a rotated grid keep their shape instead
    of aliasing into dropped or doubled pixels.

    Args:
        grid: the class raster (one pixel per chip).
        classes: the legend of its codes (code ``i + 1`` is ``classes.names[i]``).
        max_pixels: longest side of the image.
        outlines: draw each chip's outline (a dark line on its east and south edges), when chips are at least
            :data:`OUTLINE_MIN_PIXELS` image pixels wide; cells are found by warping cell numbers, not codes, so
            two chips of one class are told apart, on any grid.
        transparent: codes drawn transparent (e.g. "no change" on a change layer over imagery).
    """
    height, width = grid.codes.shape
    mercator = rasterio.warp.transform_bounds(grid.crs, _MERCATOR, *grid.bounds, densify_pts=21)
    native = rasterio.warp.calculate_default_transform(grid.crs, _MERCATOR, width, height, *grid.bounds)[0].a
    upsample = max(1, min(32, max_pixels // max(width, height, 1)))
    transform, out_width, out_height = _mercator_canvas(mercator, native, max_pixels, upsample)
    palette = color_table(classes)
    for code in transparent:
        palette[code, 3] = 0
    draw_outlines = outlines and native / transform.a >= OUTLINE_MIN_PIXELS
    if draw_outlines:
        if len(classes.names) >= OUTLINE_INDEX:
            raise InputError(f"{len(classes.names)} classes leave no palette entry for chip outlines")
        # cell numbers (1-based, 0 = no chip) warped nearest: a pixel is on an outline where its cell differs
        # from its east or south neighbour's
        cells = np.where(grid.codes != NODATA, np.arange(1, grid.codes.size + 1, dtype=np.int32).reshape(
            grid.codes.shape), 0).astype(np.int32)
        warped_cells = np.zeros((out_height, out_width), dtype=np.int32)
        reproject_nearest(cells, warped_cells, grid, transform, _MERCATOR, 0)
        flat = np.asarray(grid.codes, dtype=np.uint8).ravel()
        warped = np.where(warped_cells > 0, flat[np.maximum(warped_cells - 1, 0)], NODATA).astype(np.uint8)
        edge = np.zeros(warped.shape, dtype=bool)
        edge[:, :-1] |= warped_cells[:, :-1] != warped_cells[:, 1:]
        edge[:-1, :] |= warped_cells[:-1, :] != warped_cells[1:, :]
        warped[edge & (warped_cells > 0)] = OUTLINE_INDEX
        palette[OUTLINE_INDEX] = OUTLINE_RGBA
    else:
        warped = np.zeros((out_height, out_width), dtype=np.uint8)
        reproject_nearest(grid.codes, warped, grid, transform, _MERCATOR, NODATA)
    image = Image.fromarray(warped, mode="P")
    image.putpalette(palette[:, :3].ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True, transparency=bytes(palette[:, 3].tolist()))
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return url, _latlon_bounds(transform, out_width, out_height)


def imagery_image(sources: Sequence[str], bounds: LatLonBounds | None = None, *,
                  bands: Sequence[int] = RGB_BANDS, max_pixels: int = 1536, quality: int = 82) -> ImageLayer | None:
    """The scored imagery as one WebP data URL, read from the rasters' overviews.

    Each raster is read at about the page's resolution (pixels averaged; GDAL reads the overview level nearest
    that resolution, so a county costs a few reads per raster, not its full pixels), warped (bilinear) to Web
    Mercator, and laid in order: where rasters overlap, the first one given wins. Pixels without data (all
    bands 0, or hidden by the raster's mask) are transparent. Lossy WebP with an alpha channel keeps aerial
    imagery small in the page.

    Args:
        sources: raster paths or URLs (NAIP: band 1 red, 2 green, 3 blue, 4 near-infrared).
        bounds: ``[[south, west], [north, east]]`` to cover; default: all of the rasters, so the imagery also
            shows where nothing was scored (collars, edges, skipped chips).
        bands: the bands drawn as red, green and blue (:data:`RGB_BANDS`, :data:`CIR_BANDS`).
        max_pixels: longest side of the image.
        quality: WebP quality (0-100).

    Returns:
        The layer, with the sources that could not be read (missing, unreadable, too few bands) in
        ``missing``; None when no raster gave a pixel (or, with an empty ``url``, when none could be read).
    """
    return imagery_images(sources, bounds, band_sets=[bands], max_pixels=max_pixels, quality=quality)[0]


def imagery_images(sources: Sequence[str], bounds: LatLonBounds | None = None, *,
                   band_sets: Sequence[Sequence[int]] = (RGB_BANDS, CIR_BANDS), max_pixels: int = 1536,
                   quality: int = 82, stand_ins: Mapping[str, Sequence[str]] | None = None) -> list[ImageLayer | None]:
    """:func:`imagery_image` of several band triples (natural colour and colour infrared), each raster read once.

    A raster without overviews is decoded whole by a decimated read (seconds for a NAIP quarter-quad), so the
    layers of one page share that read: the union of their bands is read and warped together. Each layer is
    what :func:`imagery_image` of its bands gives, ``missing`` included (a 3-band raster is missing from the
    colour-infrared layer only).

    ``stand_ins``: for some sources, small rasters that hold their pixels at about the page's resolution
    (:func:`write_imagery_preview`, written by the workers that decoded them anyway): those are read in the
    source's place. The page covers the sources' own footprints; a source whose stand-ins cannot be read is
    missing, as the source itself would be.

    Returns:
        One layer (or None) per band triple, in order.
    """
    sets = [list(bands) for bands in band_sets]
    missing: list[list[str]] = [[] for _ in sets]
    footprints: dict[str, tuple[float, float, float, float]] = {}
    for source in dict.fromkeys(str(s) for s in sources if isinstance(s, str) and s):
        try:
            with open_raster(source) as dataset:
                footprints[source] = rasterio.warp.transform_bounds(dataset.crs, _MERCATOR, *dataset.bounds,
                                                                    densify_pts=21)
        except (InputError, RasterioError, OSError, ValueError):
            for unread in missing:
                unread.append(source)
    if not footprints:
        return [ImageLayer("", [], unread) if unread else None for unread in missing]
    if bounds is None:
        boxes = np.array(list(footprints.values()))
        extent = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
    else:
        (south, west), (north, east) = bounds
        extent = rasterio.warp.transform_bounds("EPSG:4326", _MERCATOR, west, south, east, north)
    transform, width, height = _mercator_canvas(extent, 0.0, max_pixels)
    canvases = [np.zeros((4, height, width), dtype=np.uint8) for _ in sets]
    painted = {id(canvas): False for canvas in canvases}
    for source in footprints:
        try:
            if stand_ins and source in stand_ins:
                pieces = _read_stand_ins(stand_ins[source], extent, transform, width, height, sets)
            else:
                pieces = _read_imagery(source, extent, transform, width, height, sets)
        except (InputError, RasterioError, OSError, ValueError):
            pieces = [InputError("cannot be read", source)] * len(sets)
        for canvas, unread, piece in zip(canvases, missing, pieces, strict=True):
            if isinstance(piece, InputError):
                unread.append(source)
            elif piece is not None:
                if not painted[id(canvas)]:  # the first raster on a blank canvas: its pixels are the canvas
                    canvas[...] = piece
                    painted[id(canvas)] = True
                    continue
                fill = (canvas[3] == 0) & (piece[3] > 0)
                canvas[:, fill] = piece[:, fill]
    return [_image_layer(canvas, unread, transform, width, height, quality)
            for canvas, unread in zip(canvases, missing, strict=True)]


def _image_layer(canvas: np.ndarray, missing: list[str], transform: Affine, width: int, height: int,
                 quality: int) -> ImageLayer | None:
    if not canvas[3].any():
        return ImageLayer("", [], missing) if missing else None
    image = Image.fromarray(np.ascontiguousarray(np.moveaxis(canvas, 0, -1)), mode="RGBA")
    buffer = io.BytesIO()
    # WebP's effort 2 of 6: half the encoding time of its default 4 for a file ~3% larger (a 1,536 px layer)
    image.save(buffer, format="WEBP", quality=quality, method=2)
    url = "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return ImageLayer(url, _latlon_bounds(transform, width, height), missing)


def _missing_bands(count: int, band_sets: list[list[int]], source: str) -> list[np.ndarray | InputError | None]:
    """Per band triple, the error of a raster (or its preview) of ``count`` image bands that lacks one of the
    triple's bands, else ``None`` (the triple is read)."""
    return [InputError(f"has {count} band(s); band {max(bands)} was asked for", source) if max(bands) > count
            else None for bands in band_sets]


def _read_imagery(source: str, mercator: tuple[float, float, float, float], transform: Affine, width: int,
                  height: int, band_sets: list[list[int]]) -> list[np.ndarray | InputError | None]:
    """One raster's band triples, each with its alpha, on the Mercator canvas: per triple a ``(4, height,
    width)`` uint8 array, None outside it, or an InputError where the raster lacks one of its bands."""
    with open_raster(source) as dataset:
        mask, alpha_band = nodata_mask(dataset)
        count = dataset.count - (alpha_band is not None)
        pieces = _missing_bands(count, band_sets, source)
        readable = [i for i, piece in enumerate(pieces) if piece is None]
        if not readable:
            return pieces
        left, bottom, right, top = rasterio.warp.transform_bounds(_MERCATOR, dataset.crs, *mercator, densify_pts=21)
        window = from_bounds(left, bottom, right, top, transform=dataset.transform).intersection(
            Window(0, 0, dataset.width, dataset.height)).round_offsets().round_lengths()
        if window.width < 1 or window.height < 1:
            return pieces
        # about one source pixel per page pixel, each the average of the raster's pixels under it, never more
        # than the raster has: GDAL reads the nearest overview level for a decimated read. (Two per page pixel
        # made the warp 4x the work: 1 s more CPU for a 6,720 px quarter-quad, for a difference of ~4 grey
        # levels in 255, where the lossy WebP itself adds ~3.)
        wanted = transform.a / max(abs(dataset.transform.a), 1e-12)
        shape = (max(1, round(window.height / max(wanted, 1))), max(1, round(window.width / max(wanted, 1))))
        # every band once, whichever triples need it: each band is resampled on its own, so a triple's pixels
        # are those of reading it alone
        bands = sorted({band for i in readable for band in band_sets[i]})
        data = dataset.read(bands, window=window, out_shape=(len(bands), *shape), resampling=Resampling.average)
        valid = read_valid(dataset, mask, alpha_band, window, shape)
        source_transform = dataset.window_transform(window) * Affine.scale(window.width / shape[1],
                                                                           window.height / shape[0])
        crs = dataset.crs
    return _warp_imagery(pieces, band_sets, bands, data, valid, source_transform, crs, transform, width, height)


def _warp_imagery(pieces: list[np.ndarray | InputError | None], band_sets: list[list[int]], bands: list[int],
                  data: np.ndarray, valid: np.ndarray | None, source_transform: Affine, crs: Any,
                  transform: Affine, width: int, height: int) -> list[np.ndarray | InputError | None]:
    """``pieces`` with the band triples still ``None`` in them warped from ``data`` (``bands`` of a raster at
    ``source_transform``, ``valid`` where it has data by its mask) onto the Mercator canvas."""
    readable = [i for i, piece in enumerate(pieces) if piece is None]
    alphas = []
    for i in readable:
        triple = data[[bands.index(band) for band in band_sets[i]]]
        alpha = (triple.max(axis=0) > 0) if valid is None else valid & (triple.max(axis=0) > 0)
        alphas.append((alpha * 255).astype(np.uint8))
    # one warp for all triples: bilinear warps each band on its own, the coordinates are computed once; a
    # band two triples share (red and green) is warped once, then each triple's alpha
    stack = np.concatenate([data.astype(np.uint8, copy=False), np.stack(alphas)])
    out = np.zeros((len(stack), height, width), dtype=np.uint8)
    rasterio.warp.reproject(stack, out, src_transform=source_transform, src_crs=crs,
                            dst_transform=transform, dst_crs=_MERCATOR, resampling=Resampling.bilinear)
    for n, i in enumerate(readable):
        piece = np.concatenate([out[[bands.index(band) for band in band_sets[i]]], out[len(bands) + n][None]])
        piece[3] = np.where(piece[3] >= 128, 255, 0)  # a hard edge: half-transparent collars look like haze
        piece[:3, piece[3] == 0] = 0
        pieces[i] = piece
    return pieces


def _read_stand_ins(files: Sequence[str], mercator: tuple[float, float, float, float], transform: Affine,
                    width: int, height: int, band_sets: list[list[int]]) -> list[np.ndarray | InputError | None]:
    """:func:`_read_imagery` of one source from the previews of its parts (:func:`write_imagery_preview`: one
    lattice, overlapping by at most a pixel of the same values), laid together and warped once."""
    previews = []
    for file in files:
        with rasterio.open(file) as preview:
            previews.append((preview.read(), preview.transform, preview.crs))
    count = len(previews[0][0]) - 1  # the image bands; the last is the alpha
    pieces = _missing_bands(count, band_sets, files[0])
    if all(piece is not None for piece in pieces):
        return pieces
    (_, first, crs) = previews[0]
    left = min(t.c for _, t, _ in previews)
    top = max(t.f for _, t, _ in previews)
    places = [(round((t.f - top) / first.e), round((t.c - left) / first.a)) for _, t, _ in previews]
    rows = max(row + pixels.shape[1] for (row, _), (pixels, _, _) in zip(places, previews, strict=True))
    cols = max(col + pixels.shape[2] for (_, col), (pixels, _, _) in zip(places, previews, strict=True))
    laid = np.zeros((count + 1, rows, cols), dtype=np.uint8)
    for (row, col), (pixels, _, _) in zip(places, previews, strict=True):
        laid[:, row:row + pixels.shape[1], col:col + pixels.shape[2]] = pixels
    bands = sorted({band for i, piece in enumerate(pieces) if piece is None for band in band_sets[i]})
    return _warp_imagery(pieces, band_sets, bands, laid[[band - 1 for band in bands]], laid[count] > 0,
                         Affine(first.a, 0.0, left, 0.0, first.e, top), crs, transform, width, height)


def imagery_resolution(footprints: Sequence[tuple[Any, tuple[float, float, float, float]]],
                       max_pixels: int = 1536) -> float:
    """The pixel size (Web Mercator metres) of the page imagery :func:`imagery_images` draws of rasters with
    these ``(crs, bounds)`` footprints: what their previews are written at (:func:`write_imagery_preview`)."""
    boxes = np.array([rasterio.warp.transform_bounds(crs, _MERCATOR, *box, densify_pts=21) for crs, box in footprints])
    extent = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
    return float(_mercator_canvas(extent, 0.0, max_pixels)[0].a)


def preview_step(resolution: float, pixel_size: float) -> int:
    """How many of a raster's pixels (of ``pixel_size``) a side of a pixel of its preview averages: the ratio
    :func:`_read_imagery` reads the raster itself at for a page of ``resolution``, rounded, at least one."""
    return max(1, round(resolution / max(pixel_size, 1e-12)))


def write_imagery_preview(dataset: rasterio.DatasetReader, window: Window, step: int, path: PathLike, *,
                          mask: str | None, alpha_band: int | None) -> Path:
    """Write the pixels of ``window`` averaged over ``step`` x ``step`` squares, with their data mask as an alpha
    band: a stand-in for the window in the page imagery (:func:`imagery_images`'s ``stand_ins``), read in
    milliseconds where the raster itself, without overviews, is decoded whole.

    The squares lie on one lattice of the raster (from its first pixel), whatever the window, so the previews
    of neighbouring windows fit together (sharing at most a row or column of squares, of the same values); a
    square at the raster's edge averages the pixels it has. A worker writes it right after it read the window's
    pixels for its chips: GDAL still holds them decoded, so the preview costs an average, not a second decode.
    Bands: the raster's image bands (alpha excluded), then the alpha (255 where the raster's mask or alpha band
    says there is data, everywhere without one).
    """
    step = max(1, int(step))
    bands = [b for b in range(1, dataset.count + 1) if b != alpha_band]
    col0, row0 = int(window.col_off) // step, int(window.row_off) // step
    col1 = -(-min(int(window.col_off + window.width), dataset.width) // step)
    row1 = -(-min(int(window.row_off + window.height), dataset.height) // step)
    shape = (row1 - row0, col1 - col0)
    data = np.zeros((len(bands) + 1, *shape), dtype=np.uint8)
    # whole squares in one read, the raster's last part-squares (its right and bottom edges) in their own
    whole_cols = min(col1, dataset.width // step) - col0
    whole_rows = min(row1, dataset.height // step) - row0
    for rows in ((0, whole_rows), (whole_rows, shape[0])):
        for cols in ((0, whole_cols), (whole_cols, shape[1])):
            if rows[1] <= rows[0] or cols[1] <= cols[0]:
                continue
            top, left = (row0 + rows[0]) * step, (col0 + cols[0]) * step
            part = Window(left, top, min((col0 + cols[1]) * step, dataset.width) - left,
                          min((row0 + rows[1]) * step, dataset.height) - top)
            size = (rows[1] - rows[0], cols[1] - cols[0])
            target = (slice(rows[0], rows[1]), slice(cols[0], cols[1]))
            data[(slice(0, len(bands)), *target)] = dataset.read(bands, window=part, out_shape=(len(bands), *size),
                                                                 resampling=Resampling.average)
            valid = read_valid(dataset, mask, alpha_band, part, size)
            data[(len(bands), *target)] = 255 if valid is None else valid * np.uint8(255)
    origin = dataset.transform * Affine.translation(col0 * step, row0 * step)
    profile = {"driver": "GTiff", "width": shape[1], "height": shape[0], "count": len(bands) + 1, "dtype": "uint8",
               "crs": dataset.crs, "transform": origin * Affine.scale(step), "compress": "deflate",
               "photometric": "MINISBLACK"}
    with atomic_path(path) as temporary, rasterio.open(temporary, "w", **profile) as out:
        # before the pixels: GDAL's GeoTIFF keeps the extra samples' meaning only when it is set first
        out.colorinterp = [ColorInterp.gray, *[ColorInterp.undefined] * (len(bands) - 1), ColorInterp.alpha]
        out.write(data)
    return Path(path)


_SWATCH = ("display:inline-block;width:14px;height:14px;margin-right:6px;vertical-align:middle;"
           "border:1px solid #555;")
# what "no colour" looks like in a legend: a light checkerboard, as image editors show transparency
_CHECKER = ("background-color:#fff;background-image:linear-gradient(45deg,#bbb 25%,transparent 25%,transparent 75%,"
            "#bbb 75%),linear-gradient(45deg,#bbb 25%,transparent 25%,transparent 75%,#bbb 75%);"
            "background-size:8px 8px;background-position:0 0,4px 4px")


def legend_section(classes: Legend, title: str, note: str | None = None, nodata: str | None = None,
                   names: Sequence[str] | None = None) -> str:
    """One titled list of a legend (see :func:`legend_html`); all text escaped."""
    shown = list(classes.names if names is None else names)
    items = "".join(
        f'<div class="geoclf-legend-entry"><span style="{_SWATCH}background:{hex_color(classes.color(name))}">'
        f"</span>{escape(name)}</div>" for name in shown)
    if nodata is not None:
        items += (f'<div class="geoclf-legend-entry geoclf-legend-nodata"><span style="{_SWATCH}{_CHECKER}"></span>'
                  f"{escape(nodata)}</div>")
    extra = f'<div style="margin-top:4px;color:#555;max-width:260px">{escape(note)}</div>' if note else ""
    return f'<div class="geoclf-legend-section"><b>{escape(title)}</b>{items}{extra}</div>'


def legend_box(sections: Sequence[str]) -> str:
    """The fixed-position legend box (bottom right) holding :func:`legend_section` parts."""
    return ('<div class="geoclf-legend" style="position:absolute;right:10px;bottom:28px;z-index:1000;'
            "background:rgba(255,255,255,0.92);padding:6px 8px;border-radius:4px;font:12px/1.5 sans-serif;"
            'max-height:60%;overflow:auto;box-shadow:0 1px 4px rgba(0,0,0,0.3)">'
            + '<div style="height:6px"></div>'.join(sections) + "</div>")


def legend_html(classes: Legend, title: str, note: str | None, nodata: str | None = None,
                names: Sequence[str] | None = None) -> str:
    """A fixed-position HTML legend of ``classes`` for a folium map; names, title and notes are escaped.

    Args:
        classes: names and colours.
        title: the legend's heading.
        note: a line of small print under the entries.
        nodata: the label of a last entry for what the map leaves uncoloured (e.g. "not scored"), drawn as a
            checkerboard swatch; None for no such entry.
        names: the entries listed, in order (default: every name of ``classes``).
    """
    return legend_box([legend_section(classes, title, note, nodata, names)])


def title_html(title: str, lines: Sequence[str] = ()) -> str:
    """A fixed-position title box (top left, beside the zoom buttons and clear of the layer list at the top
    right) with lines of detail under it; all text escaped."""
    details = "".join(f'<div class="geoclf-title-line">{escape(line)}</div>' for line in lines if line)
    return ('<div class="geoclf-title" style="position:absolute;top:10px;left:54px;'
            "z-index:1000;background:rgba(255,255,255,0.92);padding:4px 12px;border-radius:4px;"
            "font:12px/1.4 sans-serif;color:#333;max-width:calc(100% - 360px);min-width:180px;"
            'box-shadow:0 1px 4px rgba(0,0,0,0.3)">'
            f'<div class="geoclf-title-text" style="font-size:15px;font-weight:bold;color:#111">{escape(title)}'
            f"</div>{details}</div>")


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
        self._panes: set[str] = set()
        self._legend: list[str] = []
        # imagery is smoothed when scaled; folium's pixelated style is for every image layer
        self.map.get_root().header.add_child(Verbatim(
            "<style>.leaflet-image-layer.geoclf-imagery{image-rendering:auto!important}</style>"),
            name="geoclf_imagery_css")

    def add_image(self, url: str, bounds: LatLonBounds, *, name: str | None = None, opacity: float = 0.7,
                  show: bool = True, control: bool = True, class_name: str | None = None, imagery: bool = False,
                  pane: str | None = None) -> folium.raster_layers.ImageOverlay:
        """Add an image overlay (an :func:`overlay_image` or :func:`imagery_image` data URL), named in the layer
        list. Class rasters are drawn pixelated (a chip stays a square when zoomed in), imagery smoothly.

        Args:
            url: the image (a data URL keeps the page self-contained).
            bounds: its lat/lon bounds.
            name: its entry in the layer control (escaped).
            opacity: layer opacity.
            show: shown when the page opens.
            control: listed in the layer control.
            class_name: CSS class of the image element (for page scripts).
            imagery: a photograph rather than classes: smoothed when scaled, and under the class layers
                (Leaflet's tile pane level) unless ``pane`` says otherwise.
            pane: the map pane it is drawn in (see :meth:`add_pane`; :meth:`add_swipe` clips panes).
        """
        classes = [c for c in (class_name, "geoclf-imagery" if imagery else "geoclf-classes") if c]
        options: dict[str, Any] = {"className": " ".join(classes)}
        if pane is not None:
            options["pane"] = pane
        elif imagery:
            options["pane"] = self.add_pane("geoclf-imagery", 250)
        layer = folium.raster_layers.ImageOverlay(url, bounds=bounds, opacity=opacity,
                                                  name=None if name is None else escape(name),
                                                  pixelated=True, interactive=False, control=control, show=show,
                                                  **options)
        layer.add_to(self.map)
        return layer

    def add_pane(self, name: str, z_index: int) -> str:
        """Create a map pane (once) stacked at ``z_index`` (Leaflet: tiles 200, overlays 400); returns its
        name."""
        if name not in self._panes:
            folium.map.CustomPane(name, z_index=z_index, pointer_events=False).add_to(self.map)
            self._panes.add(name)
        return name

    def add_imagery(self, sources: Sequence[str], *, name: str, bands: Sequence[int] = RGB_BANDS,
                    show: bool = True, pane: str | None = None, max_pixels: int = 1536,
                    bounds: LatLonBounds | None = None, hidden: Mapping[str, Sequence[int]] | None = None,
                    read: Sequence[ImageLayer | None] | None = None
                    ) -> tuple[folium.raster_layers.ImageOverlay | None, list[str]]:
        """Add the imagery of ``sources`` (:func:`imagery_image`; all of them, or over ``bounds``) as a layer.

        Args:
            hidden: more layers of the same imagery, name -> bands (e.g. colour infrared), read in the same pass
                (:func:`imagery_images`) and added hidden when the first layer has pixels.
            read: the layers already read (:func:`imagery_images` of ``sources`` with ``bands`` and the hidden
                layers' bands, in order; e.g. on a thread while other outputs were written): nothing is read.

        Returns:
            The layer (None when no raster could be drawn) and the sources that could not be read.
        """
        names = [name, *(hidden or {})]
        if read is None:
            read = imagery_images(sources, bounds, band_sets=[bands, *(hidden or {}).values()], max_pixels=max_pixels)
        layers = list(read)
        layer = layers[0]
        if layer is None:
            return None, []
        if not layer.url:
            return None, layer.missing
        first = self.add_image(layer.url, layer.bounds, name=name, opacity=1.0, show=show, imagery=True, pane=pane)
        for more, extra in zip(names[1:], layers[1:], strict=True):
            if extra is not None and extra.url:
                self.add_image(extra.url, extra.bounds, name=more, opacity=1.0, show=False, imagery=True, pane=pane)
        return first, layer.missing

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

        Every property (key and value) and alias is escaped (:func:`escape`), so ``style`` and ``highlight`` see
        escaped properties: key any lookup by ``escape(value)``.

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
        keys = escape(list(fields))  # as the properties' escaped keys
        layer = folium.GeoJson(
            escaped_geojson(features), name=escape(name), style_function=style, highlight_function=highlight,
            popup=folium.GeoJsonPopup(fields=keys, aliases=labels) if popup else None,
            tooltip=folium.GeoJsonTooltip(fields=keys, aliases=labels) if tooltip else None)
        layer.add_to(self.map)
        return layer

    def add_legend(self, classes: Legend, title: str, note: str | None = None, nodata: str | None = None,
                   names: Sequence[str] | None = None) -> None:
        """Add a section to the page's legend (one fixed-position box, :func:`legend_html`); sections show in
        the order they are added."""
        self._legend.append(legend_section(classes, title, note, nodata, names))
        self.map.get_root().html.add_child(Verbatim(legend_box(self._legend)), name="legend")

    def add_side_panel(self, content: str, width: str = "30%", wide: str = "65%") -> None:
        """Put ``content`` (HTML the caller has escaped) in a panel beside the map, on its right, so that charts
        and tables do not cover the map: the map takes the rest of the page's width.

        A click on an element of class ``geoclf-widen`` in the panel (a chart) widens the panel to ``wide`` and
        back, the map shrinking and growing beside it.
        """
        self.map.width = (f"calc(100% - {width})", "")  # folium writes width[0] + width[1] into the map's CSS
        self.map.get_root().html.add_child(Verbatim(
            f'<div class="geoclf-side-panel" style="position:absolute;top:0;right:0;width:{width};height:100%;'
            "box-sizing:border-box;overflow:auto;padding:8px 10px;background:#fff;border-left:1px solid #ccc;"
            f'font:12px/1.4 sans-serif;color:#222">{content}</div>'), name="side_panel")
        self.add_script("geoclf_widen_panel", f"""
  var panel = document.querySelector('.geoclf-side-panel');
  var widths = {json.dumps([width, wide])};
  panel.querySelectorAll('.geoclf-widen').forEach(function (element) {{
    element.style.cursor = 'zoom-in';
    element.title = 'click to widen';
    element.addEventListener('click', function () {{
      var widened = panel.getAttribute('data-wide') !== '1';
      var w = widths[widened ? 1 : 0];
      panel.style.width = w;
      map.getContainer().style.width = 'calc(100% - ' + w + ')';
      panel.setAttribute('data-wide', widened ? '1' : '0');
      element.style.cursor = widened ? 'zoom-out' : 'zoom-in';
      map.invalidateSize(false);
    }});
  }});""")

    def add_zoom_target(self) -> None:
        """Let other pages zoom this map to a box: a ``{"geoclfZoom": [[south, west], [north, east]]}`` message
        (from the page that embeds it in an iframe), or ``#zoom=south,west,north,east`` in the page's address.
        The box is outlined on the map."""
        self.add_script("geoclf_zoom", """
  var mark = null;
  function zoomTo(box) {
    var bounds = L.latLngBounds(box);
    map.fitBounds(bounds, {maxZoom: 17, animate: false});
    if (mark !== null) { map.removeLayer(mark); }
    mark = L.rectangle(bounds, {color: '#00e5ff', weight: 3, fill: false, interactive: false}).addTo(map);
    document.body.setAttribute('data-geoclf-zoom', JSON.stringify(box));
  }
  window.addEventListener('message', function (event) {
    var box = event.data && event.data.geoclfZoom;
    if (Array.isArray(box) && box.length === 2) { zoomTo(box); }
  });
  var hash = /#zoom=(-?[0-9.]+),(-?[0-9.]+),(-?[0-9.]+),(-?[0-9.]+)/.exec(window.location.hash);
  // after the page has been fitted to its bounds (the last script of the page)
  if (hash) { setTimeout(function () { zoomTo([[+hash[1], +hash[2]], [+hash[3], +hash[4]]]); }, 0); }""")

    def add_title(self, title: str, lines: Sequence[str] = ()) -> None:
        """Title the page: a box at the top of the map (:func:`title_html`) and the document's ``<title>``."""
        self.map.get_root().title = escape(title)  # branca puts it into <title> unescaped
        self.map.get_root().html.add_child(Verbatim(title_html(title, lines)), name="title")

    def add_script(self, name: str, body: str) -> None:
        """Add JavaScript run once the map and its layers exist (``map`` is the Leaflet map in ``body``)."""
        script = MacroElement()
        # the code is a value the template puts in, never template source: jinja evaluates ``{{ }}`` in its
        # source, and the code holds names from the data (labels, JSON)
        script._template = _SCRIPT
        script.code = "(function () {\n  var map = " + self.map.get_name() + ";\n" + body + "\n})();"
        self.map.add_child(script, name=name)

    def add_opacity_control(self, groups: Mapping[str, Sequence[folium.raster_layers.ImageOverlay]],
                            position: str = "bottomleft") -> None:
        """Add an opacity slider per group of image layers (e.g. every date's land use as one group).

        Args:
            groups: slider label -> the layers it sets; each slider starts at its first layer's opacity.
            position: the Leaflet control corner.
        """
        rows = [(label, [layer.get_name() for layer in layers], float(layers[0].options.get("opacity", 1.0)))
                for label, layers in groups.items() if layers]
        if not rows:
            return
        spec = json.dumps([[escape(label), round(value * 100)] for label, _, value in rows])
        layers = "[" + ", ".join("[" + ", ".join(names) + "]" for _, names, _ in rows) + "]"
        self.add_script("geoclf_opacity", f"""
  var rows = {spec};
  var layers = {layers};
  var control = L.control({{position: {json.dumps(position)}}});
  control.onAdd = function () {{
    var box = L.DomUtil.create('div', 'geoclf-opacity leaflet-bar');
    box.style.cssText = 'background:rgba(255,255,255,0.92);padding:4px 8px;font:12px sans-serif';
    box.innerHTML = '<b>Opacity</b>';
    rows.forEach(function (row, i) {{
      var line = L.DomUtil.create('label', '', box);
      line.style.display = 'block';
      line.innerHTML = row[0] + ' ';  // escaped by geoclf
      var input = L.DomUtil.create('input', 'geoclf-opacity-' + i, line);
      input.type = 'range'; input.min = 0; input.max = 100; input.value = row[1];
      input.style.cssText = 'width:110px;vertical-align:middle';
      input.addEventListener('input', function () {{
        layers[i].forEach(function (layer) {{ layer.setOpacity(input.value / 100); }});
      }});
    }});
    L.DomEvent.disableClickPropagation(box);
    L.DomEvent.disableScrollPropagation(box);
    return box;
  }};
  control.addTo(map);""")

    def add_swipe(self, left_pane: str, right_pane: str, labels: tuple[str, str]) -> None:
        """Add a swipe between two map panes: ``left_pane`` shows left of a draggable divider, ``right_pane``
        right of it (two dates of one place, compared in one view).

        Both panes are clipped to their side of the divider as the map moves; layers in other panes (the change
        layer, chip outlines) stay whole. Folium's side-by-side plugin would do this with a script loaded from
        a CDN, which an offline page cannot load, so the page carries these few lines itself.

        Args:
            left_pane: pane (:meth:`add_pane`) of the left side's layers, e.g. the earlier date.
            right_pane: pane of the right side's layers.
            labels: the two sides' names shown beside the divider (escaped).
        """
        left, right = (escape(label) for label in labels)
        self.map.get_root().header.add_child(Verbatim(
            "<style>.geoclf-swipe{position:absolute;top:0;bottom:0;left:0;right:0;z-index:450;pointer-events:none}"
            ".geoclf-swipe-line{position:absolute;top:0;bottom:0;width:3px;margin-left:-1px;background:#fff;"
            "box-shadow:0 0 3px rgba(0,0,0,.6)}"
            ".geoclf-swipe input{position:absolute;top:50%;left:0;width:100%;margin:0;-webkit-appearance:none;"
            "appearance:none;background:transparent;pointer-events:none;height:0}"
            ".geoclf-swipe input::-webkit-slider-thumb{-webkit-appearance:none;pointer-events:auto;width:26px;"
            "height:38px;border-radius:4px;background:#fff;border:1px solid #555;cursor:ew-resize}"
            ".geoclf-swipe input::-moz-range-thumb{pointer-events:auto;width:26px;height:38px;cursor:ew-resize}"
            ".geoclf-swipe-label{position:absolute;bottom:34px;background:rgba(255,255,255,.92);padding:2px 6px;"
            "border-radius:3px;font:12px sans-serif;white-space:nowrap}</style>"), name="geoclf_swipe_css")
        self.add_script("geoclf_swipe", f"""
  var leftPane = map.getPane({json.dumps(left_pane)}), rightPane = map.getPane({json.dumps(right_pane)});
  var box = L.DomUtil.create('div', 'geoclf-swipe', map.getContainer());
  var line = L.DomUtil.create('div', 'geoclf-swipe-line', box);
  var leftLabel = L.DomUtil.create('div', 'geoclf-swipe-label geoclf-swipe-left', box);
  var rightLabel = L.DomUtil.create('div', 'geoclf-swipe-label geoclf-swipe-right', box);
  leftLabel.innerHTML = '&#9664; ' + {json.dumps(left)};  // escaped by geoclf
  rightLabel.innerHTML = {json.dumps(right)} + ' &#9654;';
  var input = L.DomUtil.create('input', 'geoclf-swipe-range', box);
  input.type = 'range'; input.min = 0; input.max = 1; input.step = 'any'; input.value = 0.5;
  ['mousedown', 'touchstart', 'pointerdown', 'dblclick', 'click'].forEach(function (name) {{
    input.addEventListener(name, function (event) {{ event.stopPropagation(); }});
  }});
  function clip() {{
    var size = map.getSize();
    var nw = map.containerPointToLayerPoint([0, 0]);
    var se = map.containerPointToLayerPoint(size);
    var x = size.x * input.value;
    var at = nw.x + x;
    leftPane.style.clip = 'rect(' + [nw.y, at, se.y, nw.x].join('px,') + 'px)';
    rightPane.style.clip = 'rect(' + [nw.y, se.x, se.y, at].join('px,') + 'px)';
    line.style.left = x + 'px';
    leftLabel.style.right = (size.x - x + 8) + 'px';
    rightLabel.style.left = (x + 8) + 'px';
  }}
  input.addEventListener('input', clip);
  map.on('move zoom resize viewreset', clip);
  clip();
  window.geoclfSwipe = function (value) {{ input.value = value; clip(); }};""")

    def add_layer_control(self) -> None:
        """Add the (expanded) layer list now; :meth:`save` adds it last otherwise. Only one is added."""
        if not self._layer_control:
            control = folium.LayerControl(collapsed=False)
            control.add_to(self.map)
            self._layer_control = True
            # open on a screen-sized map; folded into its button on a small one (a page embedded in a report)
            self.add_script("geoclf_fold_layers",
                            f"  if (map.getSize().y < 640) {{ {control.get_name()}.collapse(); }}")

    def save(self, path: PathLike) -> Path:
        """Add the layer list (unless added), fit the page to :attr:`bounds` and write it atomically."""
        self.add_layer_control()
        # the title and legend are placed on the map, not on the page (which may hold a side panel too)
        self.add_script("geoclf_overlays", """
  document.querySelectorAll('.geoclf-title, .geoclf-legend').forEach(function (box) {
    map.getContainer().appendChild(box);
    L.DomEvent.disableClickPropagation(box);
    L.DomEvent.disableScrollPropagation(box);
  });""")
        self.map.fit_bounds(self.bounds)
        return save_map(self.map, path)


__all__ = [
    "CIR_BANDS",
    "RGB_BANDS",
    "ImageLayer",
    "Verbatim",
    "WebMap",
    "escape",
    "escaped_geojson",
    "hex_color",
    "imagery_image",
    "imagery_images",
    "imagery_resolution",
    "leaflet_assets",
    "legend_box",
    "legend_html",
    "legend_section",
    "offline_map",
    "overlay_image",
    "preview_step",
    "save_map",
    "title_html",
    "write_imagery_preview",
]
