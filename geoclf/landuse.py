"""The land-use map contract: chip predictions -> a grid of class codes, its COG files, a score output's layout.

Every stage after scoring speaks this: ``geoclf score`` writes it, maps, change, trend and the results report
read it. What it fixes:

- **Codes.** Class ``i`` of a :class:`~tiling.classes.ClassScheme` is stored as code ``i + 1``; :data:`NODATA`
  (0) is "no chip here". The scheme travels with every map as GeoTIFF tags
  (:meth:`ClassScheme.to_tags() <tiling.classes.ClassScheme.to_tags>`), so a map is read back with its class
  names, NLCD grouping and colours.
- **The grid.** A map pixel *is* a chip: when every chip comes from one CRS and one grid, chip ``(ix, iy)``
  becomes pixel ``(row, col) = (iy_max - iy, ix - ix_min)`` of a raster whose pixel size is the grid's stride and
  whose origin sits on a cell corner, so nothing is resampled. Only an area spanning several grids (UTM zones,
  or a CRS the user asks for) is warped, nearest neighbour, so class codes are never interpolated.
- **Files.** A GeoTIFF colour table lives on a single-band palette image, so class codes go to ``landuse.tif``
  and the per-class probabilities, when wanted, to a float32 sibling ``landuse_probs.tif`` on the very same
  grid. :class:`ScoreOutput` names every file of a score output directory.
- **Smoothing.** :func:`majority_filter` is the one plurality filter of class codes, over a 2-D window in space
  (maps) or a 1-D window along the time axis of a stack (trend).

Nothing here renders: pictures of these maps are :mod:`geoclf.maps` and :mod:`geoclf.webmap`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import rasterio
import rasterio.shutil
import rasterio.warp
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.io import MemoryFile
from scipy import ndimage

from tiling.classes import NO_CLASS, ClassScheme
from tiling.errors import InputError
from tiling.grid import parse_cell
from tiling.io import atomic_path, open_raster

PathLike = str | os.PathLike[str]

#: The code of "no chip here" in ``landuse.tif`` (class ``i`` is code ``i + 1``).
NODATA = NO_CLASS

#: CRS of mosaics that span several native grids (CONUS Albers equal area, the NLCD's own CRS).
MOSAIC_CRS = CRS.from_epsg(5070)

#: Columns a predictions table needs to be mapped (see docs/architecture.md, "Predictions").
REQUIRED_COLUMNS = ("cell", "ix", "iy", "crs", "pred")

#: Prefix of the per-class probability columns of a predictions table (``prob_<Class>``).
PROB_PREFIX = "prob_"


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


class Legend(Protocol):
    """What drawing a map needs of its classes: names in code order (code ``i + 1`` is ``names[i]``) and a
    colour for each. A :class:`~tiling.classes.ClassScheme` is one; so is a legend of other codes (transitions)."""

    @property
    def names(self) -> list[str]: ...

    def color(self, name: str) -> tuple[int, int, int]: ...


class LandUseHeader(NamedTuple):
    """What a land-use COG's header says, read without its pixels (:func:`read_header`)."""

    classes: ClassScheme
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    tags: dict[str, str]


# --------------------------------------------------------------------------------------------------------------
# A score output directory


class ScoreOutput:
    """The files of one ``geoclf score`` output: where each one is, and readers for the ones others read.

    ``ScoreOutput(path)`` takes what users pass around: the output directory, its ``landuse.tif`` (or any
    land-use COG: its siblings are then looked for beside it) or its predictions table (any ``.parquet`` file;
    the maps are looked for beside it). :meth:`at` names the files of an output directory to write.

    The attribute names are the keys of the dictionaries ``score`` and ``write_maps`` return.

    Attributes:
        directory: the output directory.
        landuse: ``landuse.tif``: class codes with a colour table and the class scheme as tags.
        predictions: ``predictions.parquet``: GeoParquet, one row per chip with ``pred`` and ``prob_<Class>``.
    """

    PREDICTIONS = "predictions.parquet"
    LANDUSE = "landuse.tif"
    PROBABILITIES = "landuse_probs.tif"
    POLYGONS = "landuse.parquet"
    GEOJSON = "landuse.geojson"
    HTML = "map.html"
    PNG = "map.png"
    ACCURACY = "accuracy.json"
    CHIPS = "chips.parquet"
    PARTITIONS = "partitions"

    def __init__(self, path: PathLike) -> None:
        given = Path(path)
        suffix = given.suffix.lower()
        self.given = given
        if given.is_dir() or (not given.exists() and suffix not in (".tif", ".tiff", ".parquet")):
            self.directory = given
        else:
            self.directory = given.parent
        self.landuse = given if suffix in (".tif", ".tiff") else self.directory / self.LANDUSE
        # a predictions table may have any name (change analysis compares before.parquet with after.parquet)
        self.predictions = given if suffix == ".parquet" else self.directory / self.PREDICTIONS

    @classmethod
    def at(cls, directory: PathLike) -> ScoreOutput:
        """The output that is (or will be) written into ``directory``, whatever that directory is called."""
        output = cls.__new__(cls)
        output.given = output.directory = Path(directory)
        output.landuse = output.directory / cls.LANDUSE
        output.predictions = output.directory / cls.PREDICTIONS
        return output

    def __repr__(self) -> str:
        return f"ScoreOutput({os.fspath(self.given)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScoreOutput) and (self.directory, self.landuse, self.predictions) == (
            other.directory, other.landuse, other.predictions)

    def __hash__(self) -> int:
        return hash((self.directory, self.landuse, self.predictions))

    @property
    def probabilities(self) -> Path:
        """``landuse_probs.tif`` beside the land-use map: per-class probabilities on its grid."""
        return self.landuse.with_name(self.PROBABILITIES)

    @property
    def polygons(self) -> Path:
        """``landuse.parquet``: one (multi)polygon per class, GeoParquet in the map's CRS."""
        return self.directory / self.POLYGONS

    @property
    def geojson(self) -> Path:
        """``landuse.geojson``: the class polygons in EPSG:4326."""
        return self.directory / self.GEOJSON

    @property
    def html(self) -> Path:
        """``map.html``: the interactive map."""
        return self.directory / self.HTML

    @property
    def png(self) -> Path:
        """``map.png``: the static map."""
        return self.directory / self.PNG

    @property
    def accuracy(self) -> Path:
        """``accuracy.json``: agreement with the reference labels, when labelled chips were scored."""
        return self.directory / self.ACCURACY

    @property
    def chips(self) -> Path:
        """``chips.parquet``: the chips scored (when the output tiled NAIP itself)."""
        return self.directory / self.CHIPS

    @property
    def partitions(self) -> Path:
        """``partitions/``: the partial results a rerun resumes from."""
        return self.directory / self.PARTITIONS

    def require_landuse(self) -> Path:
        """The land-use map's path; an :class:`InputError` naming what was given when there is none."""
        if not self.landuse.is_file():
            if self.landuse == self.given:
                raise InputError("no such file", self.landuse)
            raise InputError("no landuse.tif here; give a `geoclf score` output directory or a land-use COG",
                             self.directory)
        return self.landuse

    def read_predictions(self) -> gpd.GeoDataFrame:
        """Read the predictions table (GeoParquet) and check it against the contract (see
        :func:`prediction_classes`).

        Raises:
            InputError: the file is missing, is not GeoParquet with footprints, or lacks ``pred``/``prob_*``.
        """
        file = self.predictions
        if not file.exists():
            raise InputError("no predictions.parquet here (give a `geoclf score` output directory or the file)"
                             if self.given.is_dir() else "no such file", file)
        try:
            frame = gpd.read_parquet(file)
        except ValueError as exc:  # geopandas' message for Parquet without geometry metadata
            raise InputError(f"has no geometry, so chips cannot be placed ({_first_line(exc)}); predictions must "
                             "be GeoParquet with chip footprints", file) from exc
        except Exception as exc:
            raise InputError(f"cannot be read as GeoParquet ({_first_line(exc)})", file) from exc
        prediction_classes(frame, name=str(file))
        return frame

    def read_landuse(self, probabilities: bool = False) -> tuple[LandUseGrid, ClassScheme]:
        """The land-use grid (with ``probs`` when ``probabilities``) and its class scheme (:func:`read_landuse`)."""
        landuse = self.require_landuse()
        if probabilities and not self.probabilities.is_file():
            raise InputError("no landuse_probs.tif beside the map (score with --probabilities to get it)",
                             self.probabilities)
        return read_landuse(landuse, self.probabilities if probabilities else None)

    @property
    def classes(self) -> ClassScheme:
        """The class scheme of this output: its ``landuse.tif`` tags (names, order, NLCD groups, colours) when
        the map is there, else the predictions table's metadata (:func:`classes_of`)."""
        if self.landuse.is_file():
            return read_header(self.landuse).classes
        if not self.predictions.is_file():
            raise InputError("no landuse.tif or predictions.parquet here to read the class scheme from",
                             self.given)
        try:
            names = pq.read_schema(self.predictions).names
            # only the probability columns: the table's metadata (class groups) comes with any column
            frame = pd.read_parquet(self.predictions, columns=[c for c in names if c.startswith(PROB_PREFIX)])
        except Exception as exc:
            raise InputError(f"cannot be read as Parquet ({_first_line(exc)})", self.predictions) from exc
        return classes_of(frame)

    def models(self) -> list[str] | None:
        """The model names in the predictions table (sorted), ``None`` without a table or a ``model`` column."""
        if not self.predictions.is_file() or "model" not in pq.read_schema(self.predictions).names:
            return None
        names = pd.read_parquet(self.predictions, columns=["model"])["model"]
        return sorted(str(m) for m in names.dropna().unique())


def read_predictions(path: PathLike) -> gpd.GeoDataFrame:
    """Read a predictions table: a score output directory (``DIR/predictions.parquet``) or the file itself.

    Shorthand for ``ScoreOutput(path).read_predictions()``.
    """
    return ScoreOutput(path).read_predictions()


def prediction_classes(predictions: pd.DataFrame, name: str | None = None) -> list[str]:
    """The classes a predictions table was scored with, in the model's order (from its ``prob_*`` columns).

    Also checks what the stages after scoring rely on: footprints with a CRS, a ``pred`` column, and
    predicted classes that are among the scored ones.

    Raises:
        InputError: any of these is missing (``name`` starts the message).
    """
    if not isinstance(predictions, gpd.GeoDataFrame) or predictions.geometry.name not in predictions.columns:
        raise InputError("predictions without geometry: chip footprints are needed to compare dates", name)
    if predictions.crs is None:
        raise InputError("the chip footprints have no CRS", name)
    if "pred" not in predictions.columns:
        raise InputError("no 'pred' column; is this a geoclf predictions table?", name)
    classes = [str(c)[len(PROB_PREFIX):] for c in predictions.columns if str(c).startswith(PROB_PREFIX)]
    if not classes:
        raise InputError("no prob_<class> columns; is this a geoclf predictions table?", name)
    unknown = sorted(set(predictions["pred"].dropna().astype(str)) - set(classes))
    if unknown:
        raise InputError(f"predicted classes {unknown} have no probability column", name)
    return classes


def classes_of(predictions: pd.DataFrame) -> ClassScheme:
    """The class scheme of a predictions table: from its metadata, else its ``prob_<Class>`` columns."""
    meta = predictions.attrs.get("geoclf", {})
    groups = meta.get("class_groups")
    if groups:
        return ClassScheme.from_mapping(groups)
    names = meta.get("classes") or [c[len(PROB_PREFIX):] for c in predictions.columns if c.startswith(PROB_PREFIX)]
    if not names:
        raise InputError("the predictions name no classes (no prob_<Class> columns)")
    return ClassScheme.from_mapping({name: [] for name in names})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
        InputError: missing columns, no chips, class names outside the scheme, malformed cell keys, a
            geographic target CRS.
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


def class_codes(names: pd.Series, classes: ClassScheme) -> np.ndarray:
    """The map codes (uint8, class ``i`` -> ``i + 1``) of a Series of class names of ``classes``."""
    lookup = {name: i + 1 for i, name in enumerate(classes.names)}
    return names.astype(str).map(lookup).to_numpy(dtype=np.uint8)


def probability_columns(frame: pd.DataFrame, classes: ClassScheme) -> list[str] | None:
    """The ``prob_<Class>`` columns of ``frame`` in scheme order, or None unless every class has one."""
    columns = [f"{PROB_PREFIX}{name}" for name in classes.names]
    return columns if all(c in frame.columns for c in columns) else None


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


def _exact_grid(frame: pd.DataFrame, stride: float, crs: CRS, classes: ClassScheme) -> LandUseGrid:
    ix = frame["ix"].to_numpy(dtype=np.int64)
    iy = frame["iy"].to_numpy(dtype=np.int64)
    ix0, iy1 = int(ix.min()), int(iy.max())
    width, height = int(ix.max()) - ix0 + 1, iy1 - int(iy.min()) + 1
    rows, cols = iy1 - iy, ix - ix0
    codes = np.zeros((height, width), dtype=np.uint8)
    codes[rows, cols] = frame["_code"].to_numpy(dtype=np.uint8)
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


# --------------------------------------------------------------------------------------------------------------
# COG writing and reading


def color_table(classes: Legend) -> np.ndarray:
    """``(256, 4)`` uint8 RGBA by map code: class ``i``'s colour at ``i + 1``, opaque; everything else (nodata
    included) transparent black. The COG's colour table and every picture of a map use it."""
    table = np.zeros((256, 4), dtype=np.uint8)
    for i, name in enumerate(classes.names):
        table[i + 1] = (*classes.color(name), 255)
    return table


def _as_scheme(classes: Any) -> ClassScheme:
    """A ClassScheme of a scheme-like legend (``names``, ``color(name)``, ``to_dict()``), e.g. of transitions."""
    if isinstance(classes, ClassScheme):
        return classes
    return ClassScheme(classes.to_dict(), {name: classes.color(name) for name in classes.names})


def _write_cog(path: PathLike, profile: dict[str, Any], write: Callable[[Any], None], blocksize: int,
               resampling: str) -> None:
    """Build the raster in memory with ``write(dataset)``, then copy it to a COG atomically."""
    with MemoryFile() as memfile, memfile.open(driver="GTiff", **profile) as dataset:
        write(dataset)
        with atomic_path(path) as temporary:
            # The COG driver writes overviews until they fit in one block, with the resampling given, and
            # puts the IFDs before the data so a client reads the header with one range request.
            rasterio.shutil.copy(dataset, temporary, driver="COG", BLOCKSIZE=blocksize, COMPRESS="DEFLATE",
                                 RESAMPLING=resampling, OVERVIEWS="AUTO")


def write_landuse_cog(path: PathLike, grid: LandUseGrid, classes: ClassScheme, *, blocksize: int = 256) -> Path:
    """Write the class codes as a Cloud-Optimized GeoTIFF with a colour table and the class names.

    Band 1 holds code ``i + 1`` for class ``i``, nodata 0, with the scheme's colours as the colour table and
    the class names, codes, NLCD grouping and colours as JSON tags (:meth:`ClassScheme.to_tags()
    <tiling.classes.ClassScheme.to_tags>`). Overviews use mode resampling, so zoomed-out views stay classes.
    Probabilities, if any, are not written here (see :func:`write_probability_cog`).

    Args:
        path: output file; written to a temporary name and renamed, so a reader never sees half a file.
        grid: the land-use grid.
        classes: the scheme the codes refer to (or a legend with ``names``, ``color(name)`` and ``to_dict()``,
            e.g. of the transitions of a change map).
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
    scheme = _as_scheme(classes)
    table = color_table(scheme)
    colormap = {code: tuple(int(v) for v in table[code]) for code in range(len(scheme.names) + 1)}

    def write(dataset: rasterio.io.DatasetWriter) -> None:
        dataset.write(codes, 1)
        dataset.write_colormap(1, colormap)
        dataset.update_tags(**scheme.to_tags())
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
        dataset.update_tags(**_as_scheme(classes).to_tags())
        for i, name in enumerate(classes.names):
            dataset.set_band_description(i + 1, name)

    _write_cog(path, profile, write, blocksize, "AVERAGE")
    return Path(path)


def read_header(path: PathLike) -> LandUseHeader:
    """The class scheme and georeferencing of a land-use COG, from its header only (no pixel is read).

    Raises:
        InputError: no such file, not a raster, or no readable class scheme tags.
    """
    with open_raster(path) as dataset:
        tags = dataset.tags()
        return LandUseHeader(ClassScheme.from_tags(tags, path), dataset.crs, dataset.transform, dataset.width,
                             dataset.height, tags)


def read_landuse(path: PathLike, probs_path: PathLike | None = None) -> tuple[LandUseGrid, ClassScheme]:
    """Read a land-use COG written by :func:`write_landuse_cog` (and optionally its probabilities).

    Args:
        path: ``landuse.tif``.
        probs_path: ``landuse_probs.tif`` on the same grid, if wanted.

    Returns:
        The grid (with ``probs`` when ``probs_path`` is given) and the class scheme stored in the file.

    Raises:
        InputError: a missing or unreadable file, no class scheme tags, probabilities on another grid.
    """
    with open_raster(path) as dataset:
        classes = ClassScheme.from_tags(dataset.tags(), path)
        grid = LandUseGrid(dataset.read(1), dataset.transform, dataset.crs)
    if probs_path is not None:
        with open_raster(probs_path) as dataset:
            if (dataset.transform, dataset.crs, dataset.shape) != (grid.transform, grid.crs, grid.codes.shape):
                raise InputError(f"is not on the grid of {os.fspath(path)}", probs_path)
            grid = grid._replace(probs=dataset.read().astype(np.float32))
    return grid, classes


__all__ = [
    "MOSAIC_CRS",
    "NODATA",
    "PROB_PREFIX",
    "REQUIRED_COLUMNS",
    "LandUseGrid",
    "LandUseHeader",
    "Legend",
    "ScoreOutput",
    "class_codes",
    "classes_of",
    "color_table",
    "majority_filter",
    "prediction_classes",
    "predictions_to_grid",
    "probability_columns",
    "read_header",
    "read_landuse",
    "read_predictions",
    "reproject_nearest",
    "write_landuse_cog",
    "write_probability_cog",
]
