"""Land-use maps from chip predictions: the COG on the chip grid, class polygons, folium HTML, static PNG.

The map's pixel *is* the chip: when every chip comes from one CRS and one grid, chip ``(ix, iy)`` becomes
pixel ``(row, col) = (iy_max - iy, ix - ix_min)`` of a raster whose pixel size is the grid's stride and whose
origin sits on a cell corner, so nothing is resampled. Only an area spanning several grids (UTM zones, or a
CRS the user asks for) is warped, nearest neighbour, so class codes are never interpolated.

Class ``i`` of the scheme is stored as code ``i + 1``; 0 is nodata. A GeoTIFF colour table lives on a
single-band palette image, so class codes go to ``landuse.tif`` and the per-class probabilities, when wanted,
to a float32 sibling ``landuse_probs.tif`` on the very same grid.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.features
import rasterio.shutil
import rasterio.warp
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from scipy import ndimage

from tiling.classes import ClassScheme
from tiling.errors import InputError

PathLike = str | os.PathLike[str]

#: CRS of mosaics that span several native grids (CONUS Albers equal area, the NLCD's own CRS).
MOSAIC_CRS = CRS.from_epsg(5070)

#: Columns a predictions GeoDataFrame needs to be mapped (see docs/architecture.md, "Predictions").
REQUIRED_COLUMNS = ("cell", "ix", "iy", "crs", "pred")

NODATA = 0


class LandUseGrid(NamedTuple):
    """A land-use raster in memory: what ``landuse.tif`` (and ``landuse_probs.tif``) hold.

    Attributes:
        codes: ``(H, W)`` uint8 class codes, class ``i`` of the scheme as ``i + 1``, 0 nodata.
        transform: pixel -> CRS affine transform (north up, pixel size = chip stride).
        crs: the raster's CRS.
        probs: optional ``(C, H, W)`` float32 class probabilities in scheme order, NaN where there is no chip.
    """

    codes: np.ndarray
    transform: Affine
    crs: CRS
    probs: np.ndarray | None = None

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        height, width = self.codes.shape
        left, top = self.transform.c, self.transform.f
        return left, top + height * self.transform.e, left + width * self.transform.a, top


# --------------------------------------------------------------------------------------------------------------
# predictions -> grid


def predictions_to_grid(predictions: pd.DataFrame, classes: ClassScheme, crs: Any = None,
                        resolution: float | None = None) -> LandUseGrid:
    """Rasterize chip predictions onto the chip grid, one pixel per chip.

    When every chip shares one grid (same native CRS, size and stride) and ``crs`` is that CRS (or None), each
    chip lands exactly in its cell: pixel size = stride, and pixel ``(row, col)`` spans
    ``[ix*stride, (ix+1)*stride) x [iy*stride, (iy+1)*stride)``, the cell itself when size == stride (with
    overlapping chips, the lower-left stride square of the cell). Otherwise each native grid is built that way
    and warped, nearest neighbour, onto a grid in ``crs`` (default: the chips' CRS if they share one, else
    EPSG:5070) whose pixels are aligned to multiples of ``resolution`` (default: the first grid's stride);
    where grids overlap (e.g. scenes either side of a UTM zone boundary), the grid first met in
    ``predictions`` wins.

    A cell predicted more than once (overlapping scenes) keeps its most confident prediction: a chip cut by
    a scene edge is partly nodata and usually the less confident of the two.

    Args:
        predictions: one row per chip, with at least ``cell``, ``ix``, ``iy``, ``crs`` and ``pred``; the
            ``prob_<Class>`` columns, when all present, fill ``probs``.
        classes: the class scheme; ``pred`` values must be its class names.
        crs: CRS of the output grid (anything ``CRS.from_user_input`` takes); must be projected.
        resolution: pixel size of a warped mosaic in ``crs`` units; ignored when no warping is needed.

    Returns:
        The land-use grid.

    Raises:
        InputError: missing columns, no chips, class names outside the scheme, a geographic target CRS.
    """
    frame = _check_predictions(predictions, classes)
    frame = _drop_duplicate_cells(frame, classes)
    groups = list(frame.groupby(["_crs", "_size", "_stride"], sort=False))
    native = [(CRS.from_user_input(key[0]), float(key[2]), part) for key, part in groups]
    target = None if crs is None else _projected_crs(crs)
    if target is None:
        target = native[0][0] if all(n[0] == native[0][0] for n in native) else MOSAIC_CRS
    if len(native) == 1 and native[0][0] == target:
        return _exact_grid(native[0][2], native[0][1], native[0][0], classes)
    return _mosaic([_exact_grid(part, stride, grid_crs, classes) for grid_crs, stride, part in native],
                   target, float(resolution) if resolution else native[0][1])


def _projected_crs(crs: Any) -> CRS:
    try:
        value = CRS.from_user_input(crs)
    except Exception as exc:  # rasterio raises several types for unparsable input
        raise InputError(f"map CRS {crs!r} is not a CRS rasterio understands") from exc
    if not value.is_projected:
        raise InputError(f"map CRS {value.to_string()} is geographic; land-use maps need a projected CRS "
                         "(metres), e.g. EPSG:5070")
    return value


def _check_predictions(predictions: pd.DataFrame, classes: ClassScheme) -> pd.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in predictions.columns]
    if missing:
        raise InputError(f"predictions lack column(s) {', '.join(missing)}; expected the columns of "
                         "predictions.parquet (cell, ix, iy, crs, pred, prob_<Class>)")
    frame = predictions[predictions["pred"].notna()]
    if frame.empty:
        raise InputError("no chip predictions to map")
    unknown = sorted(set(frame["pred"].astype(str)) - set(classes.names))
    if unknown:
        raise InputError(f"predicted class(es) {', '.join(map(repr, unknown))} are not in the class scheme "
                         f"({', '.join(classes.names)})")
    # The cell key is "<crs>:<size>:<stride>:<ix>:<iy>"; the CRS text may itself hold colons, the rest not.
    parts = frame["cell"].astype(str).str.rsplit(":", n=4, expand=True)
    if parts.shape[1] != 5 or parts.isna().any().any():
        raise InputError("predictions have malformed 'cell' keys; expected <crs>:<size>:<stride>:<ix>:<iy>")
    frame = frame.assign(_crs=frame["crs"].astype(str), _size=parts[1].astype(float),
                         _stride=parts[2].astype(float), _code=_codes_of(frame["pred"], classes),
                         _order=np.arange(len(frame)))
    return frame


def _codes_of(names: pd.Series, classes: ClassScheme) -> np.ndarray:
    lookup = {name: i + 1 for i, name in enumerate(classes.names)}
    return names.astype(str).map(lookup).to_numpy(dtype=np.uint8)


def _prob_columns(frame: pd.DataFrame, classes: ClassScheme) -> list[str] | None:
    columns = [f"prob_{name}" for name in classes.names]
    return columns if all(c in frame.columns for c in columns) else None


def _drop_duplicate_cells(frame: pd.DataFrame, classes: ClassScheme) -> pd.DataFrame:
    columns = _prob_columns(frame, classes)
    if columns is not None:
        probs = frame[columns].to_numpy(dtype=np.float64)
        confidence = probs[np.arange(len(frame)), frame["_code"].to_numpy(dtype=np.int64) - 1]
        frame = frame.assign(_confidence=np.nan_to_num(confidence, nan=-1.0))
        frame = frame.sort_values("_confidence", ascending=False, kind="stable")
    frame = frame.drop_duplicates(["_crs", "_size", "_stride", "ix", "iy"], keep="first")
    # back to input order: "the first grid" of a mosaic is the first one in the predictions
    return frame.sort_values("_order", kind="stable")


def _exact_grid(frame: pd.DataFrame, stride: float, crs: CRS, classes: ClassScheme) -> LandUseGrid:
    ix = frame["ix"].to_numpy(dtype=np.int64)
    iy = frame["iy"].to_numpy(dtype=np.int64)
    ix0, iy1 = int(ix.min()), int(iy.max())
    width, height = int(ix.max()) - ix0 + 1, iy1 - int(iy.min()) + 1
    rows, cols = iy1 - iy, ix - ix0
    codes = np.zeros((height, width), dtype=np.uint8)
    codes[rows, cols] = frame["_code"].to_numpy(dtype=np.uint8)
    probs = None
    columns = _prob_columns(frame, classes)
    if columns is not None:
        probs = np.full((len(columns), height, width), np.nan, dtype=np.float32)
        probs[:, rows, cols] = frame[columns].to_numpy(dtype=np.float32).T
    # The origin is computed the way ChipGrid.cell_bounds computes the top-left cell's corner (ix * stride,
    # iy * stride + stride), so the two agree to the last bit even for strides like 224 * 0.6 m.
    transform = Affine(stride, 0.0, float(ix0) * stride, 0.0, -stride, float(iy1) * stride + stride)
    return LandUseGrid(codes, transform, crs, probs)


def _mosaic(grids: Sequence[LandUseGrid], crs: CRS, resolution: float) -> LandUseGrid:
    """Warp several land-use grids (nearest) onto one grid in ``crs`` aligned to multiples of ``resolution``."""
    boxes = np.array([rasterio.warp.transform_bounds(g.crs, crs, *g.bounds, densify_pts=21) for g in grids])
    left = math.floor(boxes[:, 0].min() / resolution) * resolution
    bottom = math.floor(boxes[:, 1].min() / resolution) * resolution
    right = math.ceil(boxes[:, 2].max() / resolution) * resolution
    top = math.ceil(boxes[:, 3].max() / resolution) * resolution
    width, height = round((right - left) / resolution), round((top - bottom) / resolution)
    transform = Affine(resolution, 0.0, left, 0.0, -resolution, top)
    codes = np.zeros((height, width), dtype=np.uint8)
    with_probs = all(g.probs is not None for g in grids)
    probs = np.full((grids[0].probs.shape[0], height, width), np.nan, dtype=np.float32) if with_probs else None
    for grid in grids:
        warped = np.zeros_like(codes)
        _reproject(grid.codes, warped, grid, transform, crs, NODATA)
        fill = (codes == NODATA) & (warped != NODATA)  # the first grid keeps the overlap
        codes[fill] = warped[fill]
        if probs is not None and grid.probs is not None:
            for band in range(probs.shape[0]):
                warped_p = np.full(codes.shape, np.nan, dtype=np.float32)
                _reproject(grid.probs[band], warped_p, grid, transform, crs, np.nan)
                probs[band][fill] = warped_p[fill]
    return LandUseGrid(codes, transform, crs, probs)


def _reproject(source: np.ndarray, destination: np.ndarray, grid: LandUseGrid, transform: Affine, crs: CRS,
               nodata: float) -> None:
    rasterio.warp.reproject(source, destination, src_transform=grid.transform, src_crs=grid.crs,
                            src_nodata=nodata, dst_transform=transform, dst_crs=crs, dst_nodata=nodata,
                            resampling=Resampling.nearest)


# --------------------------------------------------------------------------------------------------------------
# smoothing


def smooth_plurality(codes: np.ndarray, size: int = 3) -> np.ndarray:
    """Plurality (mode) filter of a class-code raster over a ``size`` x ``size`` window.

    Nodata pixels (0) neither vote nor change: smoothing must not grow the map past the mapped area. A pixel
    takes the class most frequent in its window (itself included); on a tie its own class stays if it is among
    the most frequent, else the lowest code wins. Vectorized: one box-sum per class present.

    Args:
        codes: ``(H, W)`` uint8 class codes, 0 nodata.
        size: odd window side in pixels.

    Returns:
        A new ``(H, W)`` uint8 array.
    """
    if size < 1 or size % 2 == 0:
        raise InputError(f"smoothing window must be an odd number of pixels, got {size}")
    codes = np.asarray(codes)
    if size == 1 or codes.size == 0:
        return codes.copy()
    best_count = np.zeros(codes.shape, dtype=np.int32)
    best_code = np.zeros(codes.shape, dtype=codes.dtype)
    own_count = np.zeros(codes.shape, dtype=np.int32)
    window = np.ones((size, size), dtype=np.int32)
    for code in np.unique(codes[codes != NODATA]):
        is_code = codes == code
        count = ndimage.correlate(is_code.astype(np.int32), window, mode="constant", cval=0)
        better = count > best_count  # strict: among equal counts the lowest code, seen first, stays
        best_count[better] = count[better]
        best_code[better] = code
        own_count[is_code] = count[is_code]
    valid = codes != NODATA
    keep_own = own_count >= best_count
    return np.where(valid & ~keep_own, best_code, codes).astype(codes.dtype)


# --------------------------------------------------------------------------------------------------------------
# COG writing and reading


@contextmanager
def _atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``, moved onto it only when the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name, not mkstemp: the writers create the file themselves, with the user's usual permissions.
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _write_cog(path: PathLike, profile: dict[str, Any], write: Any, blocksize: int, resampling: str) -> None:
    """Build the raster in memory with ``write(dataset)``, then copy it to a COG atomically."""
    with MemoryFile() as memfile, memfile.open(driver="GTiff", **profile) as dataset:
        write(dataset)
        with _atomic_output(path) as temporary:
            # The COG driver writes overviews until they fit in one block, with the resampling given, and
            # puts the IFDs before the data so a client reads the header with one range request.
            rasterio.shutil.copy(dataset, temporary, driver="COG", BLOCKSIZE=blocksize, COMPRESS="DEFLATE",
                                 RESAMPLING=resampling, OVERVIEWS="AUTO")


def _scheme_tags(classes: ClassScheme) -> dict[str, str]:
    return {
        "CLASS_NAMES": json.dumps(classes.names),
        "CLASS_CODES": json.dumps({name: i + 1 for i, name in enumerate(classes.names)}),
        "CLASS_SCHEME": json.dumps(classes.to_dict()),
        "CLASS_COLORS": json.dumps({name: list(classes.color(name)) for name in classes.names}),
        "NODATA_CODE": str(NODATA),
    }


def write_landuse_cog(path: PathLike, grid: LandUseGrid, classes: ClassScheme, *, blocksize: int = 256) -> Path:
    """Write the class codes as a Cloud-Optimized GeoTIFF with a colour table and the class names.

    Band 1 holds code ``i + 1`` for class ``i``, nodata 0, with the scheme's colours as the colour table and
    the class names, codes, NLCD grouping and colours as JSON tags (``CLASS_NAMES``, ``CLASS_CODES``,
    ``CLASS_SCHEME``, ``CLASS_COLORS``). Overviews use mode resampling, so zoomed-out views stay classes.
    Probabilities, if any, are not written here (see :func:`write_probability_cog`).

    Args:
        path: output file; written to a temporary name and renamed, so a reader never sees half a file.
        grid: the land-use grid.
        classes: the scheme the codes refer to.
        blocksize: COG tile side in pixels (a multiple of 16).

    Returns:
        ``path`` as a Path.
    """
    codes = np.asarray(grid.codes, dtype=np.uint8)
    if codes.ndim != 2:
        raise InputError(f"class codes must be a 2-D array, got shape {codes.shape}")
    if codes.max(initial=0) > len(classes.names):
        raise InputError(f"class code {int(codes.max())} is past the scheme's {len(classes.names)} classes")
    height, width = codes.shape
    profile = {"width": width, "height": height, "count": 1, "dtype": "uint8", "crs": grid.crs,
               "transform": grid.transform, "nodata": NODATA}
    colormap = {NODATA: (0, 0, 0, 0)}
    colormap.update({i + 1: (*classes.color(name), 255) for i, name in enumerate(classes.names)})

    def write(dataset: rasterio.io.DatasetWriter) -> None:
        dataset.write(codes, 1)
        dataset.write_colormap(1, colormap)
        dataset.update_tags(**_scheme_tags(classes))
        dataset.set_band_description(1, "land_use_class")

    _write_cog(path, profile, write, blocksize, "MODE")
    return Path(path)


def write_probability_cog(path: PathLike, grid: LandUseGrid, classes: ClassScheme, *,
                          blocksize: int = 256) -> Path:
    """Write the per-class probabilities as a float32 COG on the same grid, one band per class.

    Band ``i + 1`` is class ``i``'s probability (its description is the class name), NaN where there is no
    chip. Kept apart from ``landuse.tif`` because a GeoTIFF colour table needs a single-band image.

    Args:
        path: output file, written atomically.
        grid: a land-use grid with ``probs``.
        classes: the scheme, in band order.
        blocksize: COG tile side in pixels.

    Returns:
        ``path`` as a Path.
    """
    if grid.probs is None:
        raise InputError("the land-use grid has no probabilities (predictions lack prob_<Class> columns)")
    probs = np.asarray(grid.probs, dtype=np.float32)
    if probs.shape != (len(classes.names), *grid.codes.shape):
        raise InputError(f"probabilities have shape {probs.shape}, expected "
                         f"{(len(classes.names), *grid.codes.shape)}")
    profile = {"width": probs.shape[2], "height": probs.shape[1], "count": probs.shape[0],
               "dtype": "float32", "crs": grid.crs, "transform": grid.transform, "nodata": float("nan")}

    def write(dataset: rasterio.io.DatasetWriter) -> None:
        dataset.write(probs)
        dataset.update_tags(**_scheme_tags(classes))
        for i, name in enumerate(classes.names):
            dataset.set_band_description(i + 1, name)

    _write_cog(path, profile, write, blocksize, "AVERAGE")
    return Path(path)


def read_landuse(path: PathLike, probs_path: PathLike | None = None) -> tuple[LandUseGrid, ClassScheme]:
    """Read a land-use COG written by :func:`write_landuse_cog` (and optionally its probabilities).

    Args:
        path: ``landuse.tif``.
        probs_path: ``landuse_probs.tif`` on the same grid, if wanted.

    Returns:
        The grid (with ``probs`` when ``probs_path`` is given) and the class scheme stored in the file.
    """
    with _open(path) as dataset:
        tags = dataset.tags()
        if "CLASS_SCHEME" not in tags:
            raise InputError("is not a geoclf land-use map (no CLASS_SCHEME tag)", path)
        try:
            groups = json.loads(tags["CLASS_SCHEME"])
            colors = json.loads(tags.get("CLASS_COLORS", "{}"))
            classes = ClassScheme({k: tuple(v) for k, v in groups.items()},
                                  {k: tuple(v) for k, v in colors.items()})
        except (ValueError, AttributeError, TypeError) as exc:
            raise InputError(f"has an unreadable class scheme tag ({exc})", path) from exc
        grid = LandUseGrid(dataset.read(1), dataset.transform, dataset.crs)
    if probs_path is not None:
        with _open(probs_path) as dataset:
            if (dataset.transform, dataset.crs, dataset.shape) != (grid.transform, grid.crs, grid.codes.shape):
                raise InputError(f"is not on the grid of {os.fspath(path)}", probs_path)
            grid = grid._replace(probs=dataset.read().astype(np.float32))
    return grid, classes


@contextmanager
def _open(path: PathLike) -> Iterator[rasterio.DatasetReader]:
    if not Path(path).exists():
        raise InputError("no such file", path)
    try:
        with rasterio.open(path) as dataset:
            yield dataset
    except RasterioError as exc:
        raise InputError(f"cannot be read as a raster ({str(exc).splitlines()[0]})", path) from exc


# --------------------------------------------------------------------------------------------------------------
# class polygons


def dissolve_classes(grid: LandUseGrid, classes: ClassScheme) -> gpd.GeoDataFrame:
    """Polygonize the class raster and dissolve it into one (multi)polygon per class present.

    Polygons come from the raster rather than from chip footprints so that overlapping chips (stride < size)
    still give a partition: class areas add up to the mapped area.

    Args:
        grid: the land-use grid.
        classes: the scheme the codes refer to.

    Returns:
        A GeoDataFrame in the grid's CRS with columns ``land_use_class``, ``code``, ``area_m2`` and
        ``geometry``, in scheme order.
    """
    codes = np.asarray(grid.codes, dtype=np.uint8)
    shapes = rasterio.features.shapes(codes, mask=codes != NODATA, transform=grid.transform, connectivity=4)
    pieces = pd.DataFrame([(shapely.geometry.shape(geom), int(value)) for geom, value in shapes],
                          columns=["geometry", "code"])
    rows = []
    for code, part in pieces.groupby("code", sort=True):
        rows.append((classes.names[int(code) - 1], int(code), shapely.union_all(part["geometry"].to_numpy())))
    frame = gpd.GeoDataFrame(rows, columns=["land_use_class", "code", "geometry"], geometry="geometry",
                             crs=grid.crs)
    _, to_metres = grid.crs.linear_units_factor
    frame.insert(2, "area_m2", frame.geometry.area * to_metres**2)
    return frame


def write_vector(frame: gpd.GeoDataFrame, path: PathLike) -> Path:
    """Write class polygons as GeoParquet (``.parquet``) or GeoJSON (``.geojson``/``.json``, EPSG:4326).

    GeoJSON is written in EPSG:4326 because RFC 7946 allows no other CRS; GeoParquet keeps the map's CRS.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".parquet", ".geojson", ".json"):
        raise InputError("unknown vector format; use .parquet (GeoParquet) or .geojson", path)
    with _atomic_output(target) as temporary:
        if suffix == ".parquet":
            frame.to_parquet(temporary, index=False)
        else:
            temporary.write_text(frame.to_crs(4326).to_json(drop_id=True), encoding="utf-8")
    return target


# --------------------------------------------------------------------------------------------------------------
# interactive HTML map


@cache
def leaflet_assets() -> tuple[str, str]:
    """Leaflet's JS and CSS, shipped by the xstatic-leaflet package, to inline into the page."""
    import xstatic.pkg.leaflet as leaflet

    base = Path(leaflet.BASE_DIR)
    return (base / "leaflet.js").read_text(encoding="utf-8"), (base / "leaflet.css").read_text(encoding="utf-8")


def _rgba_palette(classes: ClassScheme) -> np.ndarray:
    palette = np.zeros((256, 4), dtype=np.uint8)
    for i, name in enumerate(classes.names):
        palette[i + 1] = (*classes.color(name), 255)
    return palette


def offline_map(bounds: Sequence[Sequence[float]], basemap: str | None = "OpenStreetMap") -> Any:
    """A folium map over ``[[south, west], [north, east]]`` that renders offline and from a file:// URL.

    Only Leaflet is loaded (no jQuery or Bootstrap: nothing here uses them), inlined into the page, so the
    data layers show without a network; the basemap, a provider name or a tile URL template, needs one.
    """
    import folium

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
                         name="Basemap" if template else f"Basemap ({basemap})", overlay=False,
                         control=True).add_to(fmap)
    return fmap


def hex_color(rgb: Sequence[int]) -> str:
    """``#rrggbb`` of an RGB triple (legends, chip outlines)."""
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


def overlay_image(grid: LandUseGrid, classes: ClassScheme, max_pixels: int) -> tuple[str, list[list[float]]]:
    """The class raster warped (nearest) to Web Mercator as a palette PNG data URL, and its lat/lon bounds.

    Leaflet stretches an image overlay linearly in Web Mercator, so the raster is warped there first. It is
    also upsampled (up to ``max_pixels`` on a side) so that chips of a rotated grid keep their shape instead
    of aliasing into dropped or doubled pixels.
    """
    from PIL import Image

    mercator = CRS.from_epsg(3857)
    height, width = grid.codes.shape
    left, bottom, right, top = rasterio.warp.transform_bounds(grid.crs, mercator, *grid.bounds, densify_pts=21)
    native = rasterio.warp.calculate_default_transform(grid.crs, mercator, width, height, *grid.bounds)[0].a
    upsample = max(1, min(32, max_pixels // max(width, height, 1)))
    resolution = max(native / upsample, max(right - left, top - bottom) / max_pixels)
    out_width = max(1, math.ceil((right - left) / resolution))
    out_height = max(1, math.ceil((top - bottom) / resolution))
    transform = Affine(resolution, 0.0, left, 0.0, -resolution, top)
    warped = np.zeros((out_height, out_width), dtype=np.uint8)
    _reproject(grid.codes, warped, grid, transform, mercator, NODATA)
    image = Image.fromarray(warped, mode="P")
    palette = _rgba_palette(classes)
    image.putpalette(palette[:, :3].ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True, transparency=bytes(palette[:, 3].tolist()))
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    xs, ys = rasterio.warp.transform(mercator, "EPSG:4326", [left, left + out_width * resolution],
                                     [top - out_height * resolution, top])
    return url, [[ys[0], xs[0]], [ys[1], xs[1]]]


def _chip_features(predictions: pd.DataFrame, classes: ClassScheme) -> tuple[dict[str, Any], list[str],
                                                                              list[str]]:
    """Chip footprints in EPSG:4326 as GeoJSON, with the popup fields and their labels."""
    if not isinstance(predictions, gpd.GeoDataFrame) or predictions.crs is None:
        raise InputError("predictions need footprints with a CRS (a GeoDataFrame) for chip popups")
    frame = predictions[predictions["pred"].notna()].to_crs(4326)
    props = pd.DataFrame({"land_use_class": frame["pred"].astype(str)})
    fields, aliases = ["land_use_class"], ["class"]
    prob_columns = _prob_columns(frame, classes)
    if prob_columns is not None:
        probs = frame[prob_columns].to_numpy(dtype=np.float64)
        codes = _codes_of(frame["pred"], classes).astype(np.int64)
        props["probability"] = np.round(probs[np.arange(len(frame)), codes - 1], 3)
        fields.append("probability")
        aliases.append("probability")
    if "label" in frame.columns:
        props["reference"] = frame["label"].astype(object).where(frame["label"].notna(), "")
        fields.append("reference")
        aliases.append("reference (NLCD)")
    for column in ("chip_id", "scene", "date"):
        if column in frame.columns:
            values = frame[column]
            props[column] = values.astype(str).where(values.notna(), "").to_numpy()
            fields.append(column)
            aliases.append(column.replace("_", " "))
    if prob_columns is not None:
        for name, column in zip(classes.names, prob_columns, strict=True):
            props[column] = np.round(frame[column].to_numpy(dtype=np.float64), 3)
            fields.append(column)
            aliases.append(f"p({name})")
    # Six decimals of a degree is ~0.1 m: plenty for a footprint, and it keeps the page small.
    geometry = shapely.transform(frame.geometry.to_numpy(), lambda xy: np.round(xy, 6))
    data = json.loads(gpd.GeoDataFrame(props.reset_index(drop=True), geometry=list(geometry),
                                       crs=4326).to_json(drop_id=True))
    return data, fields, aliases


def legend_html(classes: ClassScheme, title: str, note: str | None) -> str:
    """A fixed-position HTML legend of ``classes`` for a folium map (change and trend maps reuse it)."""
    items = "".join(
        f'<div><span style="display:inline-block;width:14px;height:14px;margin-right:6px;'
        f'vertical-align:middle;border:1px solid #555;background:{hex_color(classes.color(name))}"></span>'
        f"{html.escape(name)}</div>" for name in classes.names)
    extra = f'<div style="margin-top:4px;color:#555;max-width:220px">{html.escape(note)}</div>' if note else ""
    return (f'<div class="geoclf-legend" style="position:absolute;right:10px;bottom:28px;z-index:1000;'
            f"background:rgba(255,255,255,0.92);padding:6px 8px;border-radius:4px;font:12px/1.5 sans-serif;"
            f'box-shadow:0 1px 4px rgba(0,0,0,0.3)"><b>{html.escape(title)}</b>{items}{extra}</div>')


def folium_map(predictions: pd.DataFrame, classes: ClassScheme, path: PathLike, *,
               grid: LandUseGrid | None = None, basemap: str | None = "OpenStreetMap",
               title: str = "Land use", opacity: float = 0.7, max_popup_chips: int = 5000,
               overlay_max_pixels: int = 2048) -> Path:
    """Write an interactive, self-contained folium map: basemap, class layer, legend, chip popups.

    The class layer is the land-use raster as one image overlay (a PNG inside the page), so the page stays
    small whatever the chip count. Chip footprints with popups (class, probabilities, reference label) are
    added as a second layer only up to ``max_popup_chips`` chips, past which their GeoJSON would make the page
    heavy; the legend says so. Leaflet's JS and CSS are inlined, so with no network only the basemap tiles
    are missing: the class layer, legend and popups still render.

    Args:
        predictions: chip predictions (see :func:`predictions_to_grid`), a GeoDataFrame with footprints.
        classes: the class scheme.
        path: output ``.html`` file, written atomically.
        grid: the land-use grid to show (e.g. smoothed); built from ``predictions`` when None.
        basemap: a folium/xyzservices tile provider name or a tile URL template; None for no basemap.
        title: legend title.
        opacity: class layer opacity.
        max_popup_chips: largest chip count that gets a clickable chip layer.
        overlay_max_pixels: longest side of the class overlay image.

    Returns:
        ``path`` as a Path.
    """
    import folium

    if "pred" not in predictions.columns:
        raise InputError("predictions lack the 'pred' column; expected the columns of predictions.parquet")
    if grid is None:
        grid = predictions_to_grid(predictions, classes)
    url, bounds = overlay_image(grid, classes, overlay_max_pixels)
    fmap = offline_map(bounds, basemap)
    root = fmap.get_root()
    folium.raster_layers.ImageOverlay(url, bounds=bounds, opacity=opacity, name=title, pixelated=True,
                                      interactive=False).add_to(fmap)
    note = None
    count = int(predictions["pred"].notna().sum())
    if count <= max_popup_chips:
        data, fields, aliases = _chip_features(predictions, classes)
        colors = {name: hex_color(classes.color(name)) for name in classes.names}
        folium.GeoJson(
            data, name="Chips (click for details)",
            style_function=lambda feature: {"color": colors[feature["properties"]["land_use_class"]],
                                            "weight": 1, "opacity": 0.6, "fillOpacity": 0.0},
            highlight_function=lambda feature: {"weight": 3, "opacity": 1.0},
            popup=folium.GeoJsonPopup(fields=fields, aliases=aliases),
        ).add_to(fmap)
    else:
        note = f"{count} chips: chip popups are left out past {max_popup_chips}."
    folium.LayerControl(collapsed=False).add_to(fmap)
    root.html.add_child(folium.Element(legend_html(classes, title, note)), name="legend")
    fmap.fit_bounds(bounds)
    with _atomic_output(path) as temporary:
        fmap.save(str(temporary))
    return Path(path)


# --------------------------------------------------------------------------------------------------------------
# static PNG


def static_png(grid: LandUseGrid, classes: ClassScheme, path: PathLike, *, title: str = "Land use",
               dpi: int = 150) -> Path:
    """Draw the land-use map to a PNG with a legend and axes in CRS units.

    Args:
        grid: the land-use grid.
        classes: the class scheme (legend order and colours).
        path: output ``.png``, written atomically.
        title: figure title; the CRS is appended.
        dpi: output resolution.

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    # Figure, not pyplot: no global state and no GUI backend, safe in workers and tests.
    rgba = _rgba_palette(classes)[np.asarray(grid.codes, dtype=np.uint8)]
    left, bottom, right, top = grid.bounds
    aspect = (top - bottom) / max(right - left, 1e-9)
    figure = Figure(figsize=(8.0, float(np.clip(6.0 * aspect + 1.5, 3.0, 12.0))), layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(rgba, extent=(left, right, bottom, top), interpolation="nearest")
    axes.set_facecolor("#f0f0f0")
    axes.ticklabel_format(style="plain", useOffset=False)
    axes.set_xlabel(f"easting ({grid.crs.linear_units})")
    axes.set_ylabel(f"northing ({grid.crs.linear_units})")
    axes.set_title(f"{title} ({grid.crs.to_string()})")
    handles = [Patch(facecolor=np.array(classes.color(name)) / 255, edgecolor="#555", label=name)
               for name in classes.names]
    figure.legend(handles=handles, loc="outside right upper", frameon=False, title="class")
    with _atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=dpi, format="png")
    return Path(path)


# --------------------------------------------------------------------------------------------------------------
# accuracy


def accuracy_against_reference(predictions: pd.DataFrame, classes: ClassScheme, *,
                               label_column: str = "label") -> dict[str, Any]:
    """Overall and per-class accuracy of the predictions against reference labels (e.g. NLCD-derived).

    Chips without a reference label are left out. The scores are :func:`geoclf.metrics.evaluate`'s, so a map
    and a validation run report the same numbers the same way.

    Args:
        predictions: chip predictions with ``pred`` and ``label_column``.
        classes: the class scheme (row/column order of the confusion matrix).
        label_column: the column holding each chip's reference class.

    Returns:
        The JSON-ready evaluation (:func:`geoclf.metrics.evaluation_to_json`): ``n``, ``accuracy``,
        ``balanced_accuracy``, ``kappa``, ``accuracy_3class``, ``per_class`` (``{class: {"precision",
        "recall", "f1", "support"}}``) and ``confusion_matrix`` (``{"classes", "counts"}``, reference classes
        in rows, predictions in columns).
    """
    from geoclf.metrics import evaluate, evaluation_to_json

    if label_column not in predictions.columns or "pred" not in predictions.columns:
        raise InputError(f"predictions need 'pred' and {label_column!r} columns to be compared with a reference")
    frame = predictions[predictions[label_column].notna() & predictions["pred"].notna()]
    if frame.empty:
        raise InputError(f"no chip has both a prediction and a reference {label_column!r}")
    return evaluation_to_json(evaluate(frame[label_column].astype(str).to_numpy(),
                                       frame["pred"].astype(str).to_numpy(), classes.names))


# --------------------------------------------------------------------------------------------------------------
# all outputs


def write_maps(predictions: pd.DataFrame, classes: ClassScheme, out_dir: PathLike, *, crs: Any = None,
               smooth: bool = False, probabilities: bool = False, html_map: bool = True,
               label_column: str = "label") -> dict[str, Path]:
    """Write every map product of a scored area into ``out_dir``.

    ``landuse.tif`` (COG), ``landuse_probs.tif`` (if ``probabilities``), ``landuse.parquet`` and
    ``landuse.geojson`` (class polygons), ``map.html`` (if ``html_map``), ``map.png`` and, when the
    predictions carry reference labels, ``accuracy.json``.

    Args:
        predictions: chip predictions (``predictions.parquet`` read with geopandas).
        classes: the class scheme.
        out_dir: output directory, created if needed.
        crs: map CRS (default: the chips' native CRS, or EPSG:5070 across zones).
        smooth: apply a 3x3 plurality filter to the class raster (polygons, HTML and PNG follow it).
        probabilities: also write the per-class probability COG.
        html_map: write the interactive map.
        label_column: reference label column used for ``accuracy.json``.

    Returns:
        Output name -> path.
    """
    out = Path(out_dir)
    grid = predictions_to_grid(predictions, classes, crs=crs)
    if smooth:
        grid = grid._replace(codes=smooth_plurality(grid.codes))
    written = {"landuse": write_landuse_cog(out / "landuse.tif", grid, classes)}
    if probabilities:
        written["probabilities"] = write_probability_cog(out / "landuse_probs.tif", grid, classes)
    polygons = dissolve_classes(grid, classes)
    written["polygons"] = write_vector(polygons, out / "landuse.parquet")
    written["geojson"] = write_vector(polygons, out / "landuse.geojson")
    if html_map:
        written["html"] = folium_map(predictions, classes, out / "map.html", grid=grid)
    written["png"] = static_png(grid, classes, out / "map.png")
    if label_column in predictions.columns and predictions[label_column].notna().any():
        report = accuracy_against_reference(predictions, classes, label_column=label_column)
        with _atomic_output(out / "accuracy.json") as temporary:
            temporary.write_text(json.dumps(report, indent=2), encoding="utf-8")
        written["accuracy"] = out / "accuracy.json"
    return written
