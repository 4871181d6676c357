"""Scene blocks: the unit of planning past one machine, a rectangle of one raster's chip grid tiled on a worker.

:func:`tiling.tile` lays out every grid cell of an area on the client and gathers every labeled chip there,
which is what a county needs and what a state cannot afford. Here the client only describes the rasters (their
headers) and cuts each raster's span of grid cells into rectangles of at most a few hundred cells
(:class:`SceneBlock`): a few numbers per block, whatever the area. A worker turns one block into its chips
(:func:`block_chips`) with the very rules of :func:`tiling.tile`, so that both give the same chips:

- cells laid out top row first, left to right, inside the raster (within half a pixel), the AOI's test
  (``intersects`` or ``within``) on each cell;
- labels and nodata fractions from :func:`tiling.labels.chip_fractions`, the nodata (and purity) filters;
- where rasters of one date and one grid overlap, each cell goes to the one raster with the least nodata
  (then the first scene name), as :func:`tiling.tile` keeps it. A block knows the rasters that overlap it
  (:class:`Rival`) and measures their nodata on the shared cells itself, so every cell ends up in exactly one
  block without the client ever seeing a chip.

The spatial train/validation split and class balancing need every chip's label at once: a block's worker
counts its chips per split group and class (:func:`label_block` also says how many cells the filters saw),
and whoever plans the area splits and balances from those counts alone (:func:`tiling.split.assign_group_splits`,
:func:`tiling.split.balanced_positions`; ``geoclf tile`` does, in :mod:`geoclf.tile_area`). Scoring needs neither.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio.crs import CRS
from rasterio.windows import Window

from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.grid import ChipGrid, scene_windows
from tiling.index import (
    CellTask,
    TileParams,
    check_grid_size,
    index_crs_of,
    kept_chips,
    label_cells,
    read_aoi,
    scene_extent,
    with_footprints,
)
from tiling.io import PathLike, SceneInfo, WindowPixels, describe_naip, kept_dataset, open_dataset, read_pixels
from tiling.labels import NlcdInfo, check_overlap

Span = tuple[int, int, int, int]


@dataclass(frozen=True)
class Rival:
    """Another raster over some of a block's cells, on the same grid and date: the cells it could keep.

    Attributes:
        scene: the other raster.
        span: ``(ix0, ix1, iy0, iy1)`` of its candidate cells (inclusive; empty when ``ix1 < ix0``).
    """

    scene: SceneInfo
    span: Span


@dataclass(frozen=True)
class SceneBlock:
    """A rectangle of grid cells of one raster: one task, one partition of the output.

    Attributes:
        scene: the raster.
        grid: its chip grid.
        span: ``(ix0, ix1, iy0, iy1)``, the block's first and last cell indices (inclusive).
        number: the block's number within its scene (0 = the top-left block), in the partition's name.
        index_crs: CRS of the chip footprints (the index CRS of the whole area, see :func:`tiling.tile`).
        scene_span: the cells of the whole raster (where its shared cells are measured, see :func:`block_chips`).
        aoi: the AOI near this block as WKB in the raster's CRS, or ``None`` when the AOI covers the block
            (or there is none): cells are then kept whatever the predicate.
        aoi_predicate: ``"intersects"`` or ``"within"``.
        rivals: the rasters of the same grid and date that overlap the block.
    """

    scene: SceneInfo
    grid: ChipGrid
    span: Span
    number: int
    index_crs: str
    scene_span: Span
    aoi: bytes | None = None
    aoi_predicate: str = "intersects"
    rivals: tuple[Rival, ...] = ()

    @property
    def name(self) -> str:
        """The block's partition name: ``<scene>/part-<NNNNN>.parquet``."""
        return f"{self.scene.name}/part-{self.number:05d}.parquet"

    @property
    def cells(self) -> int:
        """Grid cells in the block (before the AOI and the filters)."""
        ix0, ix1, iy0, iy1 = self.span
        return (ix1 - ix0 + 1) * (iy1 - iy0 + 1)

    def cell_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ix, iy)`` of every cell, top row first, left to right (the order of :meth:`ChipGrid.cells_within`)."""
        ix0, ix1, iy0, iy1 = self.span
        iy, ix = np.meshgrid(np.arange(iy1, iy0 - 1, -1), np.arange(ix0, ix1 + 1), indexing="ij")
        return ix.ravel().astype(np.int64), iy.ravel().astype(np.int64)

    def describe(self) -> dict[str, Any]:
        """What the block's chips are computed from, as JSON (fingerprints of planned outputs)."""
        return {"scene": self.scene.source, "grid": self.grid.cell_id(0, 0).rsplit(":", 2)[0],
                "span": list(self.span), "scene_span": list(self.scene_span), "index_crs": self.index_crs,
                "aoi_predicate": self.aoi_predicate,
                "aoi": None if self.aoi is None else hashlib.sha256(self.aoi).hexdigest(),
                "rivals": [[r.scene.source, list(r.span)] for r in self.rivals]}


def cut_span(span: Span, cells_per_block: int) -> list[Span]:
    """Cut a span of cells into rectangles of at most ``cells_per_block`` cells and even sizes, top row first.

    Whole rows while a row fits (a scene 27 cells wide and 33 high, at 512, is two blocks of 17 and 16 rows,
    not 18 and 15); rows wider than a block are cut into even column ranges as well (widths and heights of the
    blocks differ by at most one cell).
    """
    if cells_per_block < 1:
        raise InputError(f"chips per partition must be at least 1, not {cells_per_block}")
    ix0, ix1, iy0, iy1 = span
    width, height = ix1 - ix0 + 1, iy1 - iy0 + 1
    if width < 1 or height < 1:
        return []
    columns = _even(ix0, width, math.ceil(width / cells_per_block))
    rows_per_block = cells_per_block // max(stop - start for start, stop in columns)
    rows = _even(iy0, height, math.ceil(height / rows_per_block))
    return [(left, right - 1, bottom, top - 1) for bottom, top in reversed(rows) for left, right in columns]


def _even(start: int, count: int, parts: int) -> list[tuple[int, int]]:
    """``count`` integers from ``start`` in ``parts`` consecutive ranges ``[a, b)`` of sizes within one."""
    edges = [start + (count * k) // parts for k in range(parts + 1)]
    return list(itertools.pairwise(edges))


def plan_blocks(naip: Sequence[PathLike | SceneInfo], params: TileParams, aoi: PathLike | None = None,
                nlcd: NlcdInfo | None = None, cells_per_block: int = 512) -> tuple[list[SceneInfo], list[SceneBlock]]:
    """Describe the rasters and cut the area into blocks, without laying out a single cell.

    The checks are :func:`tiling.tile`'s (unique scene names, rasters over the NLCD, chips of at least 8
    pixels, strides of at least a pixel), except its cap on the cell count: no process here holds the cells.

    Args:
        naip: the rasters, as paths or URLs or as already described (:func:`tiling.io.describe_naip`).
        params: the tiling parameters.
        aoi: optional vector file; blocks that miss it are left out, and the others keep the part near them.
        nlcd: the NLCD raster, when the chips will be labeled.
        cells_per_block: the most cells in a block (the partition size).

    Returns:
        The scenes (in the order given) and the blocks (by scene, then top to bottom, left to right).

    Raises:
        InputError: as :func:`tiling.tile`: no rasters, unreadable ones, no whole chip, an AOI missing them all.
    """
    if not naip:
        raise InputError("no NAIP rasters given")
    scenes = [path if isinstance(path, SceneInfo) else describe_naip(path) for path in naip]
    names = pd.Series([s.name for s in scenes])
    if names.duplicated().any():
        raise InputError(f"two NAIP rasters share the name {names[names.duplicated()].iloc[0]!r}; scene names "
                         "must be unique")
    if nlcd is not None:
        for scene in scenes:
            check_overlap(scene, nlcd)
    size_m = params.chip_size_m or params.chip_size * scenes[0].res[0]
    grids = [ChipGrid(scene.crs, size_m, params.stride_m) for scene in scenes]
    aoi_shapes = read_aoi(aoi) if aoi is not None else None
    extents = [scene_extent(scene, grid, aoi_shapes) for scene, grid in zip(scenes, grids, strict=True)]
    check_grid_size(scenes, grids, extents, params, limit=False)
    if sum(g.count_within(s.bounds, tolerance=0.5 * s.res[0]) for s, g in zip(scenes, grids, strict=True)) == 0:
        raise InputError("no whole chip fits in the NAIP rasters; use a smaller chip size")
    spans = [grid.span(extent, 0.5 * scene.res[0]) if extent else (0, -1, 0, -1)
             for scene, grid, extent in zip(scenes, grids, extents, strict=True)]
    index_crs = index_crs_of(scenes).to_string()
    crses = [scene.crs.to_string() for scene in scenes]  # once per raster: 0.1 ms each, per pair it was most of plan
    shapes: dict[str, Any] = {}
    blocks: list[SceneBlock] = []
    for i, (scene, grid, span) in enumerate(zip(scenes, grids, spans, strict=True)):
        crs = crses[i]
        # the rasters that could be rivals of any block of this one: same grid and date, spans overlapping
        candidates = [j for j, other in enumerate(scenes)
                      if j != i and crses[j] == crs and other.date == scene.date and _overlap(span, spans[j])]
        if aoi_shapes is not None and crs not in shapes:
            shapes[crs] = aoi_shapes.to_crs(scene.crs).union_all()
        number = 0
        for block in cut_span(span, cells_per_block):
            box = shapely.box(*_span_bounds(grid, block))
            clip = None
            if aoi_shapes is not None:
                shape = shapes[crs]
                if not shapely.intersects(shape, box):
                    continue
                if not shapely.covers(shape, box):
                    # cut a cell's width beyond the block, so no cell of the block meets the cut's new edges
                    clip = shapely.to_wkb(shapely.intersection(shape, shapely.buffer(box, grid.size,
                                                                                      join_style="mitre")))
            rivals = tuple(Rival(scenes[j], spans[j]) for j in candidates if _overlap(block, spans[j]))
            blocks.append(SceneBlock(scene, grid, block, number, index_crs, span, clip, params.aoi_predicate, rivals))
            number += 1
    if not blocks:
        raise InputError(f"the AOI misses every chip of the {len(scenes)} NAIP raster(s)", aoi)
    return scenes, blocks


def _span_bounds(grid: ChipGrid, span: Span) -> tuple[float, float, float, float]:
    ix0, ix1, iy0, iy1 = span
    corners = grid.cell_bounds(np.array([ix0, ix1]), np.array([iy0, iy1]))
    return float(corners[0, 0]), float(corners[0, 1]), float(corners[1, 2]), float(corners[1, 3])


def _overlap(a: Span, b: Span) -> bool:
    return a[0] <= b[1] and b[0] <= a[1] and a[2] <= b[3] and b[2] <= a[3]


def _inside(span: Span, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    return (ix >= span[0]) & (ix <= span[1]) & (iy >= span[2]) & (iy <= span[3])


#: Side, in cells, of the fixed squares of the grid in which cells shared by overlapping rasters are measured.
SHARED_CHUNK = 16


def block_chips(block: SceneBlock, params: TileParams, nlcd: NlcdInfo | None = None,
                pixels: WindowPixels | None = None) -> gpd.GeoDataFrame:
    """The chips of one block (runs on a worker): the rows :func:`tiling.tile` gives these cells.

    :func:`label_block` without its counts.
    """
    return label_block(block, params, nlcd, pixels)[0]


#: The most bytes :func:`block_pixels` reads at once (a block of 512 chips of 32 px in 4 bands is 2 MB; of
#: 224 px, 100 MB: those chips are read one by one, as before).
BLOCK_PIXELS_MAX_BYTES = 32 * 2**20


def block_window(block: SceneBlock, to_edges: bool = False) -> Window | None:
    """The pixels of a block's raster under its cells: the union of their chip windows, inside the raster
    (``None`` where that is empty). ``to_edges``: also the raster's margins beyond the grid's whole cells on the
    sides where the block is the raster's last, so that a raster's blocks together cover all of it."""
    scene = block.scene
    ix0, ix1, iy0, iy1 = block.span
    windows = scene_windows(scene, block.grid, np.array([ix0, ix1]), np.array([iy1, iy0]))
    col0, row0 = max(int(windows[0, 0]), 0), max(int(windows[0, 1]), 0)
    col1 = min(int(windows[1, 0] + windows[1, 2]), scene.width)
    row1 = min(int(windows[1, 1] + windows[1, 3]), scene.height)
    if col1 <= col0 or row1 <= row0:
        return None
    if to_edges:
        sx0, sx1, sy0, sy1 = block.scene_span
        col0 = 0 if ix0 == sx0 else col0
        col1 = scene.width if ix1 == sx1 else col1
        row0 = 0 if iy1 == sy1 else row0  # cell rows count northwards: the top row is the last
        row1 = scene.height if iy0 == sy0 else row1
    return Window(col0, row0, col1 - col0, row1 - row0)


def block_pixels(block: SceneBlock, bands: Sequence[int] = ()) -> WindowPixels | None:
    """The pixels under a block's cells, read once (runs on a worker): for its nodata lattice
    (:func:`block_chips`'s ``pixels``) and its chips (:meth:`tiling.io.ChipReader.hold`) both.

    The window is the union of the cells' chip windows, inside the raster; the bands are the ones the nodata
    lattice reads and ``bands``. ``None`` where the window is larger than :data:`BLOCK_PIXELS_MAX_BYTES`, or
    ``bands`` are not the raster's image bands: the readers then read the raster themselves.
    """
    scene = block.scene
    lattice = [b for b in range(1, scene.count + 1 + (scene.alpha_band is not None)) if b != scene.alpha_band][:4]
    wanted = tuple(dict.fromkeys([*lattice, *bands]))
    if any(b < 1 or b > scene.count + (scene.alpha_band is not None) or b == scene.alpha_band for b in wanted):
        return None
    window = block_window(block)
    if window is None or len(wanted) * window.width * window.height > BLOCK_PIXELS_MAX_BYTES:
        return None
    with ExitStack() as stack:
        dataset = kept_dataset(scene.source) or stack.enter_context(open_dataset(scene.source))
        return read_pixels(dataset, scene.source, window, wanted, scene.mask, scene.alpha_band)


def label_block(block: SceneBlock, params: TileParams, nlcd: NlcdInfo | None = None,
                pixels: WindowPixels | None = None) -> tuple[gpd.GeoDataFrame, dict[str, int]]:
    """The chips of one block (runs on a worker) and what the filters saw: the rows :func:`tiling.tile` gives
    these cells, and ``{"candidates": cells labeled, "with_data": cells within the nodata limit}`` counted as
    :func:`tiling.tile` counts them for its "no chip left" messages (before overlapping rasters are resolved).
    ``pixels``: the block's pixels already read (:func:`block_pixels`), for the nodata lattice.

    Columns as the chip index's (see docs/architecture.md), without ``split``: the split needs every chip of
    the area. Cells a rival raster keeps are left out, so neighbouring rasters' blocks never share a chip.

    A cell that rival rasters share is measured (nodata, labels) in a fixed square of :data:`SHARED_CHUNK`
    cells of each raster's grid, the same whichever block asks: the nodata fraction is sampled on a lattice
    read per strip of cells, and at a raster's edge the sampled points can move by a pixel with the strip, so
    two blocks measuring a shared cell in strips of their own could both keep it, or both give it up.
    """
    scheme = ClassScheme.from_mapping(params.classes)
    ix, iy = block.cell_indices()
    if block.aoi is not None and len(ix):
        shape = shapely.from_wkb(block.aoi)
        boxes = shapely.box(*block.grid.cell_bounds(ix, iy).T)
        keep = shapely.within(boxes, shape) if block.aoi_predicate == "within" else shapely.intersects(boxes, shape)
        ix, iy = ix[keep], iy[keep]
    labeled = nlcd is not None
    measure = (nlcd, scheme, params.samples, params.block_size_m, pixels)
    frame = label_cells(CellTask(block.scene, block.grid, ix, iy), *measure)
    shared = np.zeros(len(frame), dtype=bool)
    for rival in block.rivals:
        shared |= _inside(rival.span, ix, iy)
    if shared.any():
        own = _shared_measure(block.scene, block.grid, block.scene_span, ix[shared], iy[shared], measure)
        frame = pd.concat([frame[~shared], own.set_index(frame.index[shared])]).sort_index()
    counts = {"candidates": len(frame), "with_data": int((frame["nodata_frac"] <= params.max_nodata).sum())}
    frame = frame[kept_chips(frame, params, labeled).to_numpy()]
    for rival in block.rivals:
        mine = _inside(rival.span, frame["ix"].to_numpy(), frame["iy"].to_numpy())
        if not mine.any():
            continue
        rows = frame[mine]
        theirs = _shared_measure(rival.scene, block.grid, rival.span, rows["ix"].to_numpy(), rows["iy"].to_numpy(),
                                 measure)
        theirs = theirs[kept_chips(theirs, params, labeled).to_numpy()]
        beaten = rows.merge(theirs[["cell", "nodata_frac", "scene"]], on="cell", suffixes=("", "_rival"))
        # the order of tile's dedupe: least nodata first, then the scene name
        lost = (beaten["nodata_frac_rival"] < beaten["nodata_frac"]) | (
            (beaten["nodata_frac_rival"] == beaten["nodata_frac"]) & (beaten["scene_rival"] < beaten["scene"]))
        frame = frame[~frame["cell"].isin(beaten.loc[lost, "cell"])]
    return with_footprints(frame.reset_index(drop=True), CRS.from_user_input(block.index_crs)), counts


def _shared_measure(scene: SceneInfo, grid: ChipGrid, span: Span, ix: np.ndarray, iy: np.ndarray,
                    measure: tuple[Any, ...]) -> pd.DataFrame:
    """``label_cells`` of cells ``(ix, iy)`` of ``scene``, each measured within its fixed square of the grid
    (the square's cells inside ``span``, top row first), rows in the order given."""
    keys = pd.DataFrame({"cx": ix // SHARED_CHUNK, "cy": iy // SHARED_CHUNK})
    parts = []
    for (cx, cy), _ in keys.groupby(["cx", "cy"], sort=True):
        square = (max(span[0], cx * SHARED_CHUNK), min(span[1], cx * SHARED_CHUNK + SHARED_CHUNK - 1),
                  max(span[2], cy * SHARED_CHUNK), min(span[3], cy * SHARED_CHUNK + SHARED_CHUNK - 1))
        iy_all, ix_all = np.meshgrid(np.arange(square[3], square[2] - 1, -1), np.arange(square[0], square[1] + 1),
                                     indexing="ij")
        parts.append(label_cells(CellTask(scene, grid, ix_all.ravel().astype(np.int64),
                                          iy_all.ravel().astype(np.int64)), *measure))
    measured = pd.concat(parts, ignore_index=True).set_index(["ix", "iy"], drop=False)
    return measured.loc[list(zip(ix.tolist(), iy.tolist(), strict=True))].reset_index(drop=True)


__all__ = ["BLOCK_PIXELS_MAX_BYTES", "Rival", "SceneBlock", "block_chips", "block_pixels", "block_window", "cut_span",
           "label_block", "plan_blocks"]
