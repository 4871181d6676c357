"""Where synthetic rasters lie: a scene's UTM pixel grid, its ties to the world and to lon/lat, its nodata
collar (a quarter-quad's lon/lat box), and the NLCD grid that synthetic land cover snaps to.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.errors import RasterioError

from tiling.errors import InputError
from tiling.io import PathLike
from tiling.synth.world import WORLD_CRS

#: Upper-left corner of the CONUS NLCD grid in EPSG:5070; synthetic NLCD cells snap to it like MRLC's.
NLCD_ORIGIN = (-2493045.0, 3310005.0)
NLCD_RES = 30.0

#: Default scene centre (lon, lat): central Massachusetts, near the UTM 18/19 boundary so that the
#: quarter-quad's geographic edges are visibly slanted in UTM, like real NAIP near a zone edge.
DEFAULT_CENTER = (-71.80, 42.35)


@dataclass(frozen=True)
class SceneGrid:
    """A north-up UTM pixel grid and its ties to the world (EPSG:5070) and to lon/lat."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    valid_lonlat: tuple[float, float, float, float] | None  # the quarter-quad's lon/lat box

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        left, top = self.transform.c, self.transform.f
        return (left, top + self.height * self.transform.e, left + self.width * self.transform.a, top)

    def nodes(self, col0: int, row0: int, ncols: int, nrows: int, step: int, target: Transformer) -> tuple[
            np.ndarray, np.ndarray]:
        """Coordinates in ``target``'s CRS of a coarse lattice of pixel corners over a block."""
        cols = col0 + np.arange(0, ncols + step, step)
        rows = row0 + np.arange(0, nrows + step, step)
        cc, rr = np.meshgrid(cols, rows)
        xs, ys = self.transform * (cc.astype(np.float64), rr.astype(np.float64))
        tx, ty = target.transform(xs, ys)
        return np.asarray(tx), np.asarray(ty)


def bilinear(nodes: np.ndarray, step: int, nrows: int, ncols: int, sub: int = 1) -> np.ndarray:
    """Interpolate node values on a ``step``-pixel lattice at sample points of an (nrows, ncols) block.

    Samples are the centres of a ``sub x sub`` split of each pixel (the pixel centre for ``sub=1``). Map
    projections are smooth: interpolating a lattice 64 m apart errs by well under a millimetre, and costs a
    fraction of transforming every sample.
    """
    fr = (np.arange(nrows * sub) + 0.5) / (sub * step)
    fc = (np.arange(ncols * sub) + 0.5) / (sub * step)
    r0 = np.minimum(fr.astype(np.int64), nodes.shape[0] - 2)
    c0 = np.minimum(fc.astype(np.int64), nodes.shape[1] - 2)
    wr = (fr - r0)[:, None]
    wc = (fc - c0)[None, :]
    along_rows = nodes[:, c0] * (1 - wc) + nodes[:, c0 + 1] * wc  # (node rows, ncols * sub)
    return along_rows[r0] * (1 - wr) + along_rows[r0 + 1] * wr


def scene_grid(size_m: float | tuple[float, float], resolution: float, crs: str | CRS,
                center: tuple[float, float], collar_m: float | None) -> SceneGrid:
    """The UTM grid of a scene centred on ``center`` (lon, lat), snapped to whole pixels."""
    try:
        crs = CRS.from_user_input(crs)
    except Exception as exc:
        raise InputError(f"unknown CRS {crs!r}") from exc
    if not crs.is_projected or crs.linear_units not in ("metre", "meter"):
        raise InputError(f"the scene CRS must be projected in metres (e.g. a UTM zone), got {crs.to_string()}")
    width_m, height_m = (size_m, size_m) if np.isscalar(size_m) else size_m  # type: ignore[misc]
    if resolution <= 0 or width_m < 8 * resolution or height_m < 8 * resolution:
        raise InputError(f"scene of {width_m} x {height_m} m at {resolution} m is too small")
    lon, lat = center
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise InputError(f"center must be (lon, lat) in degrees, got {center}")
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    cx, cy = to_utm.transform(lon, lat)
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise InputError(f"center {center} cannot be placed in {crs.to_string()}")
    width, height = round(width_m / resolution), round(height_m / resolution)
    left = round((cx - width * resolution / 2) / resolution) * resolution
    top = round((cy + height * resolution / 2) / resolution) * resolution
    transform = Affine(resolution, 0, left, 0, -resolution, top)
    grid = SceneGrid(crs, transform, width, height, None)
    if collar_m is None:
        collar_m = 0.005 * max(width_m, height_m)
    if collar_m <= 0:
        return grid
    if 4 * collar_m >= min(width_m, height_m):
        raise InputError(f"a nodata collar of {collar_m} m leaves little of a {width_m} x {height_m} m scene")
    # A quarter-quad is a lon/lat box: in UTM its edges are rotated by the meridian convergence, which
    # leaves slanted nodata slivers along the raster's edges. The box is the largest one inside the
    # raster shrunk by the collar.
    left_, bottom_, right_, top_ = grid.bounds
    inset = (left_ + collar_m, bottom_ + collar_m, right_ - collar_m, top_ - collar_m)
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    t = np.linspace(0, 1, 9)
    edges = {
        "west": (np.full_like(t, inset[0]), inset[1] + t * (inset[3] - inset[1])),
        "east": (np.full_like(t, inset[2]), inset[1] + t * (inset[3] - inset[1])),
        "south": (inset[0] + t * (inset[2] - inset[0]), np.full_like(t, inset[1])),
        "north": (inset[0] + t * (inset[2] - inset[0]), np.full_like(t, inset[3])),
    }
    lonlat = {name: to_lonlat.transform(*xy) for name, xy in edges.items()}
    box = (float(np.max(lonlat["west"][0])), float(np.max(lonlat["south"][1])),
           float(np.min(lonlat["east"][0])), float(np.min(lonlat["north"][1])))
    return SceneGrid(crs, transform, width, height, box)


def valid_mask(grid: SceneGrid, col: int, row: int, ncols: int, nrows: int, step: int,
                to_lonlat: Transformer) -> np.ndarray:
    """Flat boolean mask of the block's pixels inside the quarter-quad's lon/lat box."""
    if grid.valid_lonlat is None:
        return np.ones(nrows * ncols, dtype=bool)
    west, south, east, north = grid.valid_lonlat
    lon_nodes, lat_nodes = grid.nodes(col, row, ncols, nrows, step, to_lonlat)
    if (lon_nodes.min() > west and lon_nodes.max() < east and lat_nodes.min() > south
            and lat_nodes.max() < north):
        return np.ones(nrows * ncols, dtype=bool)
    lon = bilinear(lon_nodes, step, nrows, ncols)
    lat = bilinear(lat_nodes, step, nrows, ncols)
    return ((lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)).ravel()



def footprint_in_world(paths_or_grids: Iterable[SceneGrid | PathLike]) -> tuple[float, float, float, float]:
    """Bounds in EPSG:5070 covering every scene (edges densified: projected edges curve)."""
    xs, ys = [], []
    for item in paths_or_grids:
        if isinstance(item, SceneGrid):
            crs, bounds = item.crs, item.bounds
        else:
            try:
                with rasterio.open(item) as ds:
                    crs, bounds = ds.crs, tuple(ds.bounds)
            except RasterioError as exc:
                raise InputError("cannot be read as a raster", item) from exc
            if crs is None:
                raise InputError("has no CRS", item)
        t = np.linspace(0, 1, 33)
        left, bottom, right, top = bounds
        ex = np.concatenate([left + t * (right - left), np.full_like(t, right), right - t * (right - left),
                             np.full_like(t, left)])
        ey = np.concatenate([np.full_like(t, bottom), bottom + t * (top - bottom), np.full_like(t, top),
                             top - t * (top - bottom)])
        tx, ty = Transformer.from_crs(crs, WORLD_CRS, always_xy=True).transform(ex, ey)
        xs.append(np.asarray(tx))
        ys.append(np.asarray(ty))
    if not xs:
        raise InputError("no scenes given to cover")
    x, y = np.concatenate(xs), np.concatenate(ys)
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def snap_to_nlcd(bounds: tuple[float, float, float, float], margin_m: float) -> tuple[Affine, int, int]:
    """The NLCD-grid-aligned transform and size covering ``bounds`` plus a margin."""
    ox, oy = NLCD_ORIGIN
    left = ox + math.floor((bounds[0] - margin_m - ox) / NLCD_RES) * NLCD_RES
    right = ox + math.ceil((bounds[2] + margin_m - ox) / NLCD_RES) * NLCD_RES
    top = oy - math.floor((oy - bounds[3] - margin_m) / NLCD_RES) * NLCD_RES
    bottom = oy - math.ceil((oy - bounds[1] + margin_m) / NLCD_RES) * NLCD_RES
    width, height = round((right - left) / NLCD_RES), round((top - bottom) / NLCD_RES)
    return Affine(NLCD_RES, 0, left, 0, -NLCD_RES, top), width, height


