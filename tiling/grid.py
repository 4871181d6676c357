"""The chip grid: square cells snapped to multiples of the stride in a raster's CRS.

Snapping cells to the CRS (not to each raster's corner) is what lets two NAIP years of one place, or two
neighbouring quarter-quads, produce the very same chips: change analysis compares cells, and mosaics
place one pixel per cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, overload

import numpy as np
import pandas as pd
from rasterio.crs import CRS
from rasterio.windows import Window
from shapely import box

from tiling.io import SceneInfo


@dataclass(frozen=True)
class ChipGrid:
    """Square cells of ``size`` CRS units, at ``stride`` spacing, anchored at the CRS origin.

    Cell ``(ix, iy)`` spans x in ``[ix*stride, ix*stride + size)`` and y in ``[iy*stride, iy*stride + size)``.

    Args:
        crs: the grid's CRS (a projected CRS in metres, e.g. a UTM zone).
        size: cell side in CRS units (metres).
        stride: spacing between cells; defaults to ``size`` (no overlap, no gaps).
    """

    crs: CRS
    size: float
    stride: float | None = None

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError("chip size must be positive")
        if self.stride is None:
            object.__setattr__(self, "stride", float(self.size))
        elif self.stride <= 0:
            raise ValueError("stride must be positive")

    @property
    def step(self) -> float:
        """Spacing between neighbouring cells (the stride)."""
        return float(self.stride)  # type: ignore[arg-type]

    def cell_bounds(self, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
        """(n, 4) array of (left, bottom, right, top) for the cells ``(ix, iy)``."""
        left = np.asarray(ix, dtype=float) * self.step
        bottom = np.asarray(iy, dtype=float) * self.step
        return np.stack([left, bottom, left + self.size, bottom + self.size], axis=1)

    def span(self, bounds: tuple[float, float, float, float], tolerance: float = 0.0) -> tuple[int, int, int, int]:
        """``(ix0, ix1, iy0, iy1)``: the first and last cell indices (inclusive) of the cells inside ``bounds``
        (empty when ``ix1 < ix0`` or ``iy1 < iy0``), what :meth:`cells_within` lays out, as four numbers."""
        left, bottom, right, top = bounds
        return (math.ceil((left - tolerance) / self.step), math.floor((right + tolerance - self.size) / self.step),
                math.ceil((bottom - tolerance) / self.step), math.floor((top + tolerance - self.size) / self.step))

    def count_within(self, bounds: tuple[float, float, float, float], tolerance: float = 0.0) -> int:
        """How many cells :meth:`cells_within` would return, without laying them out."""
        ix0, ix1, iy0, iy1 = self.span(bounds, tolerance)
        return max(0, ix1 - ix0 + 1) * max(0, iy1 - iy0 + 1)

    def cells_within(self, bounds: tuple[float, float, float, float], tolerance: float = 0.0) -> tuple[
            np.ndarray, np.ndarray]:
        """Indices ``(ix, iy)`` of every cell lying inside ``bounds`` (within ``tolerance`` units).

        Cells are ordered top row first, left to right, like pixels.
        """
        ix0, ix1, iy0, iy1 = self.span(bounds, tolerance)
        if ix1 < ix0 or iy1 < iy0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        iy, ix = np.meshgrid(np.arange(iy1, iy0 - 1, -1), np.arange(ix0, ix1 + 1), indexing="ij")
        return ix.ravel().astype(np.int64), iy.ravel().astype(np.int64)

    @cached_property
    def _key_prefix(self) -> str:
        # CRS.to_string() is a PROJ database lookup: once per grid, not once per cell
        return f"{self.crs.to_string()}:{self.size:g}:{self.step:g}"

    def cell_id(self, ix: int, iy: int) -> str:
        """A stable text key of a cell, the same for every raster on this grid."""
        return f"{self._key_prefix}:{ix}:{iy}"

    def footprint(self, ix: int, iy: int):  # -> shapely Polygon
        """The cell's square footprint in the grid CRS."""
        return box(*self.cell_bounds(np.array([ix]), np.array([iy]))[0])


def scene_windows(scene: SceneInfo, grid: ChipGrid, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Pixel windows of grid cells in a scene, as an (n, 4) int array of (col_off, row_off, width, height).

    Offsets and sizes are rounded to whole pixels: a cell edge that falls inside a pixel moves by at most
    half a pixel. Readers resample each window to the model's input size.
    """
    bounds = grid.cell_bounds(ix, iy)
    res_x, res_y = scene.res
    left0, top0 = scene.transform.c, scene.transform.f
    col0 = np.rint((bounds[:, 0] - left0) / res_x)
    col1 = np.rint((bounds[:, 2] - left0) / res_x)
    row0 = np.rint((top0 - bounds[:, 3]) / res_y)
    row1 = np.rint((top0 - bounds[:, 1]) / res_y)
    return np.stack([col0, row0, col1 - col0, row1 - row0], axis=1).astype(np.int64)


def as_window(row: tuple[int, int, int, int]) -> Window:
    """A rasterio ``Window`` from ``(col_off, row_off, width, height)``."""
    return Window(*map(int, row))


class CellKey(NamedTuple):
    """One grid cell key, parsed: the grid's CRS text, cell size and stride (CRS units), and the indices."""

    grid_crs: str
    size: float
    stride: float
    ix: int
    iy: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) of the cell in the grid CRS."""
        left, bottom = self.ix * self.stride, self.iy * self.stride
        return left, bottom, left + self.size, bottom + self.size


@overload
def parse_cell(cells: str) -> CellKey: ...
@overload
def parse_cell(cells: pd.Series) -> pd.DataFrame: ...
def parse_cell(cells: str | pd.Series) -> CellKey | pd.DataFrame:
    """Split grid cell keys ``<crs>:<size>:<stride>:<ix>:<iy>`` (:meth:`ChipGrid.cell_id`) into their parts.

    The CRS text may itself hold colons (``EPSG:26914``); the four numbers after it never do.

    Args:
        cells: one key, or a Series of them.

    Returns:
        For one key, a :class:`CellKey` (``ValueError`` if it is malformed). For a Series, columns ``grid``
        (``<crs>:<size>:<stride>``, the same for every cell of one grid), ``grid_crs``, ``size``, ``stride``
        (float), ``ix``, ``iy``; NaN/None where a key cannot be parsed.
    """
    if isinstance(cells, str):
        try:
            crs, size, stride, ix, iy = cells.rsplit(":", 4)
            return CellKey(crs, float(size), float(stride), int(ix), int(iy))
        except ValueError:
            raise ValueError(f"malformed grid cell key {cells!r}; expected <crs>:<size>:<stride>:<ix>:<iy>") from None
    if cells.empty:
        parts = pd.DataFrame(index=cells.index, columns=range(5), dtype=float)
    else:
        # split in Python, not with Series.str.rsplit(expand=True) (ten times slower): every scored block
        # parses its keys, and the keys of one grid share their first three parts, parsed once
        text = cells.astype(object).where(cells.notna(), "").astype(str).tolist()
        fast = _parse_one_grid_keys(text, cells.index)
        if fast is not None:
            return fast
        rows = [key.rsplit(":", 4) for key in text]
        parts = pd.DataFrame({i: pd.Series([r[i] if len(r) > i else None for r in rows], index=cells.index,
                                           dtype="str") for i in range(5)})
    out = pd.DataFrame(index=cells.index)
    out["grid_crs"] = parts[0]
    out["size"] = pd.to_numeric(parts[1], errors="coerce")
    out["stride"] = pd.to_numeric(parts[2], errors="coerce")
    out["ix"] = pd.to_numeric(parts[3], errors="coerce")
    out["iy"] = pd.to_numeric(parts[4], errors="coerce")
    bad = out[["size", "stride", "ix", "iy"]].isna().any(axis=1) | (out["grid_crs"] == "")
    out.loc[bad, ["grid_crs"]] = None
    out["grid"] = (out["grid_crs"].astype(str) + ":" + parts[1].astype(str) + ":" + parts[2].astype(str)).where(~bad)
    return out[["grid", "grid_crs", "size", "stride", "ix", "iy"]]


def _parse_one_grid_keys(text: list[str], index: pd.Index) -> pd.DataFrame | None:
    """:func:`parse_cell`'s table when every key is well formed with integer cell indices (``None`` otherwise):
    the ``<crs>:<size>:<stride>`` parts parsed once per grid, the indices as integers."""
    rows = [key.rsplit(":", 2) for key in text]
    if any(len(row) != 3 for row in rows):
        return None
    try:
        ix = np.array([row[1] for row in rows]).astype(np.int64)
        iy = np.array([row[2] for row in rows]).astype(np.int64)
    except ValueError:
        return None
    codes, grids = pd.factorize(pd.Series([row[0] for row in rows], dtype=object))
    heads = [str(grid).rsplit(":", 2) for grid in grids]
    if any(len(head) != 3 or not head[0] for head in heads):
        return None
    size = pd.to_numeric(pd.Series([head[1] for head in heads], dtype="str"), errors="coerce")
    stride = pd.to_numeric(pd.Series([head[2] for head in heads], dtype="str"), errors="coerce")
    if size.isna().any() or stride.isna().any():
        return None
    return pd.DataFrame({"grid": pd.Series(np.asarray(grids, dtype=object)[codes], index=index, dtype="str"),
                         "grid_crs": pd.Series(np.array([h[0] for h in heads], dtype=object)[codes], index=index,
                                               dtype="str"),
                         "size": size.to_numpy()[codes], "stride": stride.to_numpy()[codes], "ix": ix, "iy": iy},
                        index=index)
