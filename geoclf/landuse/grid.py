"""Chip predictions onto the chip grid: the land-use grid, its codes, the mosaic across grids, the majority filter.

A map pixel *is* a chip: when every chip comes from one CRS and one grid, chip ``(ix, iy)`` becomes pixel
``(row, col) = (iy_max - iy, ix - ix_min)`` of a raster whose pixel size is the grid's stride and whose origin
sits on a cell corner, so nothing is resampled. Only an area spanning several grids (UTM zones, or a CRS the
user asks for) is warped, nearest neighbour, so class codes are never interpolated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import rasterio.warp
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from scipy import ndimage

from tiling.classes import NO_CLASS, ClassScheme
from tiling.errors import InputError
from tiling.grid import parse_cell

#: The code of "no chip here" in ``landuse.tif`` (class ``i`` is code ``i + 1``).
NODATA = NO_CLASS

#: CRS of mosaics that span several native grids (CONUS Albers equal area, the NLCD's own CRS).
MOSAIC_CRS = CRS.from_epsg(5070)

#: Columns a predictions table needs to be mapped (see docs/architecture.md, "Predictions").
REQUIRED_COLUMNS = ("cell", "ix", "iy", "crs", "pred")

#: Prefix of the per-class probability columns of a predictions table (``prob_<Class>``).
PROB_PREFIX = "prob_"

#: Most pixels one land-use grid may have (a map pixel is a chip: 20,000 x 20,000 chips of 224 m cover
#: 4,480 km square). More means cell indices lying impossibly far apart (a damaged index): refused before
#: anything is allocated, rather than a MemoryError for petabytes.
MAX_MAP_PIXELS = 400_000_000


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
        InputError: missing columns, no chips, class names outside the scheme, malformed cell keys, a
            geographic target CRS.
    """
    frame = _check_predictions(predictions, classes)
    frame = _drop_duplicate_cells(frame, classes)
    groups = list(frame.groupby(["_crs", "_size", "_stride"], sort=False))
    native = [(CRS.from_user_input(key[0]), float(key[2]), part) for key, part in groups]
    target = None if crs is None else projected_crs(crs)
    if target is None:
        target = native[0][0] if all(n[0] == native[0][0] for n in native) else MOSAIC_CRS
    if len(native) == 1 and native[0][0] == target:
        return _exact_grid(native[0][2], native[0][1], native[0][0], classes)
    return _mosaic([_exact_grid(part, stride, grid_crs, classes) for grid_crs, stride, part in native],
                   target, float(resolution) if resolution else native[0][1])


def block_to_grid(predictions: pd.DataFrame, classes: ClassScheme, stride: float, crs: Any = None,
                  resolution: float | None = None) -> LandUseGrid:
    """:func:`predictions_to_grid` of chips that are distinct cells of one grid of stride ``stride`` (a scored
    block, :class:`tiling.blocks.SceneBlock`): the same grid, without parsing every cell key or looking for
    cells predicted twice, where the map is in the chips' own CRS (else, or when a chip is unscored or of a
    class outside ``classes``, :func:`predictions_to_grid` itself).
    """
    crses = predictions["crs"].unique() if "crs" in predictions.columns and len(predictions) else ()
    if len(crses) == 1 and predictions["pred"].notna().all() and set(predictions["pred"].unique()) <= set(
            classes.names):
        grid_crs = CRS.from_user_input(crses[0])
        if (grid_crs if crs is None else projected_crs(crs)) == grid_crs:
            # the codes beside the frame, not a copy of it with a column more
            return _exact_grid(predictions, stride, grid_crs, classes, class_codes(predictions["pred"], classes))
    return predictions_to_grid(predictions, classes, crs=crs, resolution=resolution)


def check_map_size(width: int, height: int, what: str = "the chips") -> None:
    """Refuse a land-use grid of more than :data:`MAX_MAP_PIXELS` pixels, before it is allocated.

    Raises:
        InputError: the grid would be too large; the message gives its size.
    """
    if int(width) * int(height) > MAX_MAP_PIXELS:
        raise InputError(f"{what} span {int(width):,} x {int(height):,} grid cells, a map of "
                         f"{int(width) * int(height):,} pixels (at most {MAX_MAP_PIXELS:,}): their cell indices (ix, "
                         "iy) lie too far apart for one map (a damaged chip index?)")


def check_map_extent(chips: pd.DataFrame) -> None:
    """Refuse chips (a chip index or predictions, with ``ix``, ``iy`` and ``crs``) whose map would have more than
    :data:`MAX_MAP_PIXELS` pixels on any one grid: what scoring checks before it scores anything.

    Raises:
        InputError: the chips of one CRS span too many grid cells.
    """
    if chips.empty or not {"ix", "iy", "crs"} <= set(chips.columns):
        return
    spans = chips.groupby(chips["crs"].astype(str), sort=False).agg(
        x0=("ix", "min"), x1=("ix", "max"), y0=("iy", "min"), y1=("iy", "max"))
    for crs, span in spans.iterrows():
        check_map_size(int(span.x1) - int(span.x0) + 1, int(span.y1) - int(span.y0) + 1, f"the chips in {crs}")


def class_codes(names: pd.Series, classes: ClassScheme) -> np.ndarray:
    """The map codes (uint8, class ``i`` -> ``i + 1``) of a Series of class names of ``classes``."""
    lookup = {name: i + 1 for i, name in enumerate(classes.names)}
    text = names.astype(str)
    # each distinct name looked up once (a block's 500 chips hold a few: 0.76 -> 0.06 ms), where all are classes
    positions, distinct = pd.factorize(text, use_na_sentinel=False)
    if all(isinstance(name, str) and name in lookup for name in distinct):
        return np.array([lookup[name] for name in distinct], dtype=np.uint8)[positions]
    return text.map(lookup).to_numpy(dtype=np.uint8)


def probability_columns(frame: pd.DataFrame, classes: ClassScheme) -> list[str] | None:
    """The ``prob_<Class>`` columns of ``frame`` in scheme order, or None unless every class has one."""
    columns = [f"{PROB_PREFIX}{name}" for name in classes.names]
    return columns if all(c in frame.columns for c in columns) else None


def projected_crs(crs: Any) -> CRS:
    """``crs`` as a CRS, refused (one line) when rasterio cannot read it or it is geographic: maps are in metres."""
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
    cells = parse_cell(frame["cell"])
    if cells["grid"].isna().any():
        raise InputError("predictions have malformed 'cell' keys; expected <crs>:<size>:<stride>:<ix>:<iy>")
    return frame.assign(_crs=frame["crs"].astype(str), _size=cells["size"], _stride=cells["stride"],
                        _code=class_codes(frame["pred"], classes), _order=np.arange(len(frame)))


def _drop_duplicate_cells(frame: pd.DataFrame, classes: ClassScheme) -> pd.DataFrame:
    columns = probability_columns(frame, classes)
    if columns is not None:
        probs = frame[columns].to_numpy(dtype=np.float64)
        confidence = probs[np.arange(len(frame)), frame["_code"].to_numpy(dtype=np.int64) - 1]
        frame = frame.assign(_confidence=np.nan_to_num(confidence, nan=-1.0))
        frame = frame.sort_values("_confidence", ascending=False, kind="stable")
    frame = frame.drop_duplicates(["_crs", "_size", "_stride", "ix", "iy"], keep="first")
    # back to input order: "the first grid" of a mosaic is the first one in the predictions
    return frame.sort_values("_order", kind="stable")


def _exact_grid(frame: pd.DataFrame, stride: float, crs: CRS, classes: ClassScheme,
                codes_of: np.ndarray | None = None) -> LandUseGrid:
    """The grid of distinct cells of one grid; ``codes_of``: the rows' map codes (default: their ``_code``)."""
    ix = frame["ix"].to_numpy(dtype=np.int64)
    iy = frame["iy"].to_numpy(dtype=np.int64)
    ix0, iy1 = int(ix.min()), int(iy.max())
    width, height = int(ix.max()) - ix0 + 1, iy1 - int(iy.min()) + 1
    check_map_size(width, height)
    rows, cols = iy1 - iy, ix - ix0
    codes = np.zeros((height, width), dtype=np.uint8)
    codes[rows, cols] = frame["_code"].to_numpy(dtype=np.uint8) if codes_of is None else codes_of
    probs = None
    columns = probability_columns(frame, classes)
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
    check_map_size(width, height, "the chips' mosaic")
    transform = Affine(resolution, 0.0, left, 0.0, -resolution, top)
    codes = np.zeros((height, width), dtype=np.uint8)
    with_probs = all(g.probs is not None for g in grids)
    probs = np.full((grids[0].probs.shape[0], height, width), np.nan, dtype=np.float32) if with_probs else None
    for grid in grids:
        warped = np.zeros_like(codes)
        reproject_nearest(grid.codes, warped, grid, transform, crs, NODATA)
        fill = (codes == NODATA) & (warped != NODATA)  # the first grid keeps the overlap
        codes[fill] = warped[fill]
        if probs is not None and grid.probs is not None:
            for band in range(probs.shape[0]):
                warped_p = np.full(codes.shape, np.nan, dtype=np.float32)
                reproject_nearest(grid.probs[band], warped_p, grid, transform, crs, np.nan)
                probs[band][fill] = warped_p[fill]
    return LandUseGrid(codes, transform, crs, probs)


def reproject_nearest(source: np.ndarray, destination: np.ndarray, grid: LandUseGrid, transform: Affine,
                      crs: CRS, nodata: float) -> None:
    """Warp one band on ``grid``'s georeferencing into ``destination`` (on ``transform``/``crs``), nearest
    neighbour, so class codes stay codes; ``nodata`` on both sides."""
    rasterio.warp.reproject(source, destination, src_transform=grid.transform, src_crs=grid.crs,
                            src_nodata=nodata, dst_transform=transform, dst_crs=crs, dst_nodata=nodata,
                            resampling=Resampling.nearest)


# --------------------------------------------------------------------------------------------------------------
# smoothing


def smoothing_window(smooth: bool | int) -> int:
    """The window width a ``smooth`` setting means: an odd number (1: none); ``True`` is 3, ``False`` is 1.

    Every command's ``--smooth`` is this window (pixels on a map, dates in a trend); the booleans are the
    older spelling of the spatial commands (``smooth: true`` in recipes), kept working.

    Raises:
        InputError: an even or non-positive width.
    """
    window = (3 if smooth else 1) if isinstance(smooth, bool) else int(smooth)
    if window < 1 or window % 2 == 0:
        raise InputError(f"the smoothing window must be an odd number (1 for none), got {smooth}")
    return window


def majority_filter(codes: np.ndarray, size: int = 3, axes: Sequence[int] = (-2, -1)) -> np.ndarray:
    """Plurality (mode) filter of class codes over a window ``size`` wide along each of ``axes``.

    The one smoothing of class codes: in space (``axes=(-2, -1)``, a ``size`` x ``size`` window on a map) and in
    time (``axes=(-1,)`` on ``(..., time)`` codes, ``size`` consecutive dates of one pixel). A value takes the
    class most frequent in its window (itself included); on a tie its own class stays if it is among the most
    frequent, else the lowest code wins. :data:`NODATA` neither votes nor changes: smoothing must not grow a
    map past the mapped area, nor fill a date that was not mapped. Past the array's edges the window is cut
    short, so edge values change only when outvoted. Vectorized: one box-sum per class present.

    Args:
        codes: integer class codes, :data:`NODATA` for none, any number of dimensions.
        size: odd window width (pixels, or dates).
        axes: the axes the window spans.

    Returns:
        A new array of the same shape and dtype.

    Raises:
        InputError: ``size`` is not a positive odd number.
    """
    if size < 1 or size % 2 == 0:
        raise InputError(f"smoothing window must be an odd number of pixels, got {size}")
    codes = np.asarray(codes)
    if size == 1 or codes.size == 0:
        return codes.copy()
    axes = sorted({axis % codes.ndim for axis in axes})
    best_count = np.zeros(codes.shape, dtype=np.int32)
    best_code = np.zeros(codes.shape, dtype=codes.dtype)
    own_count = np.zeros(codes.shape, dtype=np.int32)
    window = np.ones(size, dtype=np.int32)
    for code in np.unique(codes[codes != NODATA]):
        is_code = codes == code
        count = is_code.astype(np.int32)
        for axis in axes:  # a box sum is separable: one pass per axis
            count = ndimage.correlate1d(count, window, axis=axis, mode="constant", cval=0)
        better = count > best_count  # strict: among equal counts the lowest code, seen first, stays
        best_count[better] = count[better]
        best_code[better] = code
        own_count[is_code] = count[is_code]
    replace = (codes != NODATA) & (own_count < best_count)
    return np.where(replace, best_code, codes).astype(codes.dtype)
