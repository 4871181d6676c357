"""Synthetic NAIP-like imagery and NLCD-like land cover, rendered from one seeded procedural world.

The world is a land-cover map defined everywhere in EPSG:5070 (CONUS Albers, the NLCD's CRS) by a seed:
jittered-grid Voronoi *parcels* on domain-warped coordinates (so boundaries are irregular and ignore any
chip grid), grouped into *zones* whose theme (urban, agricultural, forest, barrens, scrub, wet) sets the
parcel land-cover odds, plus a network of major roads. A parcel half can be converted to Developed in a given year
(a seeded hazard), which gives time series with a known change schedule.

Every raster is a view of that world:

* the NLCD-like raster samples it at 30 m cell centres on the real NLCD grid, in EPSG:5070;
* a NAIP-like scene transforms each 1 m pixel centre of a UTM grid into EPSG:5070, looks up the land cover
  there, and renders it with textures anchored to world coordinates (roofs and streets, tree crowns, field
  rows, bushes, ...), then adds the year's illumination and phenology and sensor noise.

Because everything is a pure function of (seed, location, year), scenes in different UTM zones agree with
one NLCD raster, every year of a place is pixel-aligned, and rendering in blocks gives the same bytes as
rendering at once. Nothing here draws from a global random state.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from tiling.classes import NLCD_COLORS, NLCD_NAMES, NLCD_NODATA, ClassScheme
from tiling.errors import InputError

PathLike = str | os.PathLike[str]

#: CRS of the world and of every NLCD raster written here.
WORLD_CRS = CRS.from_epsg(5070)

#: Upper-left corner of the CONUS NLCD grid in EPSG:5070; synthetic NLCD cells snap to it like MRLC's.
NLCD_ORIGIN = (-2493045.0, 3310005.0)
NLCD_RES = 30.0

#: Default scene centre (lon, lat): central Massachusetts, near the UTM 18/19 boundary so that the
#: quarter-quad's geographic edges are visibly slanted in UTM, like real NAIP near a zone edge.
DEFAULT_CENTER = (-71.80, 42.35)

#: The NLCD codes the world uses (no ice, no Alaska-only classes).
WORLD_CODES = (11, 21, 22, 23, 24, 31, 41, 42, 43, 52, 71, 81, 82, 90, 95)

_BLOCK = 512  # GeoTIFF tile side and rendering block side, in pixels
_GDAL_CACHE_BYTES = 64 * 2**20
_PARCEL_SPACING = 320.0  # mean parcel diameter (m): most parcels exceed a 224 m chip
_ZONE_SPACING = 960.0  # zones group ~9 parcels under one land-use theme
_ROAD_SPACING = 1700.0  # major roads, per direction
_ROAD_HALF_WIDTH = 15.0  # road corridor (pavement + verges) half width; mapped as Developed, Open Space
_PAVEMENT_HALF_WIDTH = 5.5
_DEVELOPED = (21, 22, 23, 24)
_CONVERTIBLE = (31, 41, 42, 43, 52, 71, 81, 82)  # water and wetlands are protected from development

# Zone themes: (weight, {nlcd code: weight}). Shares are tilted toward the rarer land-use classes (Barren,
# Shrub) compared with real Massachusetts so that every class yields enough pure chips to learn from.
_THEMES: tuple[tuple[str, float, dict[int, float]], ...] = (
    ("urban", 0.19, {22: 0.30, 23: 0.25, 24: 0.13, 21: 0.10, 41: 0.06, 43: 0.05, 71: 0.05, 31: 0.03,
                     11: 0.01, 52: 0.02}),
    ("agricultural", 0.21, {82: 0.36, 81: 0.30, 41: 0.07, 43: 0.05, 71: 0.08, 22: 0.05, 52: 0.03, 31: 0.03,
                            11: 0.01, 21: 0.02}),
    ("forest", 0.25, {41: 0.36, 42: 0.20, 43: 0.25, 90: 0.05, 52: 0.05, 71: 0.04, 11: 0.03, 31: 0.02}),
    ("barrens", 0.10, {31: 0.60, 52: 0.22, 71: 0.13, 21: 0.05}),  # sand plains, pits and quarries
    ("scrub", 0.15, {52: 0.55, 71: 0.32, 31: 0.05, 41: 0.05, 81: 0.03}),  # old fields and scrubland
    ("wet", 0.10, {11: 0.35, 90: 0.25, 95: 0.25, 43: 0.10, 71: 0.05}),
)
# Development pressure by theme: new subdivisions grow mostly at the edge of towns.
_HAZARD_WEIGHT = np.array([2.5, 1.0, 0.4, 0.8, 1.0, 0.0])


# --------------------------------------------------------------------------------------------------------
# Hashing and noise: pure functions of integer lattice coordinates, so any block of any scene can be
# rendered on its own and agree with its neighbours.
# --------------------------------------------------------------------------------------------------------

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))


def _mix(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijective, well-avalanched scramble of uint64 values."""
    h = (h ^ (h >> _S30)) * _M1
    h = (h ^ (h >> _S27)) * _M2
    return h ^ (h >> _S31)


def _hash(*keys: int | np.ndarray) -> np.ndarray:
    """A uint64 hash of integer keys (arrays broadcast); uint64 arithmetic wraps on purpose."""
    with np.errstate(over="ignore"):
        h = np.asarray(0x243F6A8885A308D3, dtype=np.uint64)
        for key in keys:
            if isinstance(key, int):  # Python ints of any size: keep their low 64 bits
                key = np.uint64(key & 0xFFFFFFFFFFFFFFFF)
            k = np.asarray(key)
            k = k.astype(np.int64).view(np.uint64) if k.dtype != np.uint64 else k
            h = _mix(h ^ (k + _GOLDEN))
        return h


def _unit(h: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from uint64 hashes (the top 53 bits)."""
    return (h >> _S11).astype(np.float64) * (1.0 / 9007199254740992.0)


def _rehash(h: np.ndarray, salt: int) -> np.ndarray:
    """A second independent hash derived from a first one."""
    with np.errstate(over="ignore"):
        return _mix(h ^ np.uint64(salt * 0x632BE59BD9B4E019 & 0xFFFFFFFFFFFFFFFF))


def _lattice(key: int, ix: np.ndarray, iy: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int, int,
                                                               np.ndarray, np.ndarray]:
    """Hashes of the integer lattice around points, as a small table plus each point's flat index in it.

    Points of one block span few lattice cells, so hashing the table once and gathering is much cheaper
    than hashing four corners per point.

    Returns:
        ``(table, flat, x0, y0, width, gx, gy)``: the hashes of lattice cells ``[x0, x0 + width) x [y0, ...)``
        (a margin of one cell left and two right of the points), each point's flat index in the table, the
        table's origin and row width, and the lattice coordinates of the table's cells.
    """
    x0, x1 = int(ix.min()) - 1, int(ix.max()) + 2
    y0, y1 = int(iy.min()) - 1, int(iy.max()) + 2
    gx, gy = np.meshgrid(np.arange(x0, x1 + 1), np.arange(y0, y1 + 1))
    width = x1 - x0 + 1
    gx, gy = gx.ravel(), gy.ravel()
    table = _hash(key, gx, gy)
    flat = (iy - y0) * width + (ix - x0)
    return table, flat, x0, y0, width, gx, gy


def _value_noise(x: np.ndarray, y: np.ndarray, scale: float, key: int) -> np.ndarray:
    """Smooth value noise in [0, 1) with features about ``scale`` metres across (float32)."""
    if x.size == 0:
        return np.empty(0, dtype=np.float32)
    fx, fy = x * (1.0 / scale), y * (1.0 / scale)
    ixf, iyf = np.floor(fx), np.floor(fy)
    tx, ty = (fx - ixf).astype(np.float32), (fy - iyf).astype(np.float32)
    ix, iy = ixf.astype(np.int64), iyf.astype(np.int64)
    span = (int(ix.max()) - int(ix.min()) + 4) * (int(iy.max()) - int(iy.min()) + 4)
    if span <= 4 * x.size + 64:
        table, flat, _, _, width, _, _ = _lattice(key, ix, iy)
        values = _unit(table).astype(np.float32)
        v00, v10 = values[flat], values[flat + 1]
        v01, v11 = values[flat + width], values[flat + width + 1]
    else:  # scattered points (e.g. a coarse grid over a large area): hash the corners directly
        v00 = _unit(_hash(key, ix, iy)).astype(np.float32)
        v10 = _unit(_hash(key, ix + 1, iy)).astype(np.float32)
        v01 = _unit(_hash(key, ix, iy + 1)).astype(np.float32)
        v11 = _unit(_hash(key, ix + 1, iy + 1)).astype(np.float32)
    sx = tx * tx * (3 - 2 * tx)
    sy = ty * ty * (3 - 2 * ty)
    top = v00 + (v10 - v00) * sx
    return top + (v01 + (v11 - v01) * sx - top) * sy


def _fbm(x: np.ndarray, y: np.ndarray, scale: float, key: int, octaves: int = 3) -> np.ndarray:
    """Fractal value noise in [0, 1): ``octaves`` layers, each half the size and weight of the last."""
    total = np.zeros(x.shape, dtype=np.float32)
    weight, norm = 1.0, 0.0
    for octave in range(octaves):
        total += weight * _value_noise(x, y, scale / 2**octave, key * 31 + octave)
        norm += weight
        weight *= 0.5
    return total / norm


@dataclass
class _Cells:
    """Nearest feature points of a jittered grid (Worley cells) for a set of query points.

    Attributes:
        dx, dy: query point minus its nearest feature point, in metres.
        d1, d2: distances to the nearest and second-nearest feature points, in metres.
        cell: index of the nearest cell in the lattice table.
        cell2: index of the second-nearest cell (only if asked for, else None).
        hashes: the table's cell hashes; ``hashes[cell]`` identifies each point's feature.
        fx, fy: the table's feature point coordinates, in metres.
    """

    dx: np.ndarray
    dy: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    cell: np.ndarray
    cell2: np.ndarray | None
    hashes: np.ndarray
    fx: np.ndarray
    fy: np.ndarray

    @property
    def hash(self) -> np.ndarray:
        """Each query point's feature hash."""
        return self.hashes[self.cell]


def _cells(x: np.ndarray, y: np.ndarray, spacing: float, key: int, jitter: float = 0.9,
           second_cell: bool = False) -> _Cells:
    """Worley cells: one feature point per ``spacing`` grid cell, jittered inside it; nearest two per point.

    With feature points inside their own cells, the nearest one is always among the 3x3 neighbouring cells.
    """
    fx, fy = x * (1.0 / spacing), y * (1.0 / spacing)
    ix, iy = np.floor(fx).astype(np.int64), np.floor(fy).astype(np.int64)
    table, flat, x0, y0, width, gx, gy = _lattice(key, ix, iy)
    # Coordinates relative to the table's corner, in cells, fit float32 (a block spans a few hundred
    # cells) and halve the memory traffic of the 3x3 search.
    lx, ly = (fx - x0).astype(np.float32), (fy - y0).astype(np.float32)
    px = ((gx - x0) + 0.5 + jitter * (_unit(table) - 0.5)).astype(np.float32)
    py = ((gy - y0) + 0.5 + jitter * (_unit(_rehash(table, 1)) - 0.5)).astype(np.float32)
    best = np.full(x.shape, np.inf, dtype=np.float32)
    second = np.full(x.shape, np.inf, dtype=np.float32)
    cell = flat.copy()
    cell2 = flat.copy() if second_cell else None
    for offset in (-width - 1, -width, -width + 1, -1, 0, 1, width - 1, width, width + 1):
        index = flat + offset
        ddx = lx - px[index]
        ddy = ly - py[index]
        d = ddx * ddx
        d += ddy * ddy
        closer = d < best
        if cell2 is not None:
            np.copyto(cell2, index, where=~closer & (d < second))
            np.copyto(cell2, cell, where=closer)
        np.minimum(second, np.maximum(d, best), out=second)
        np.copyto(best, d, where=closer)
        np.copyto(cell, index, where=closer)
    return _Cells(dx=(lx - px[cell]) * spacing, dy=(ly - py[cell]) * spacing, d1=np.sqrt(best) * spacing,
                  d2=np.sqrt(second) * spacing, cell=cell, cell2=cell2, hashes=table,
                  fx=(px.astype(np.float64) + x0) * spacing, fy=(py.astype(np.float64) + y0) * spacing)


def _choice(u: np.ndarray, weights: dict[int, float]) -> np.ndarray:
    """Map uniforms to keys of ``weights`` in proportion to the weights."""
    keys = np.array(list(weights))
    cumulative = np.cumsum(list(weights.values()))
    return keys[np.searchsorted(cumulative / cumulative[-1], u, side="right").clip(0, len(keys) - 1)]


# --------------------------------------------------------------------------------------------------------
# The world: land cover as a function of EPSG:5070 location and year.
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Sample:
    """Everything rendering needs to know about a set of world points (1-D arrays of equal length)."""

    x: np.ndarray  # EPSG:5070 metres (float64)
    y: np.ndarray
    code: np.ndarray  # land cover this year (uint8 NLCD code)
    parcel: np.ndarray  # parcel hash (uint64), for per-parcel randomness
    zone: np.ndarray  # zone hash (uint64)
    anchor_x: np.ndarray  # zone seed point: origin of the zone's street grid
    anchor_y: np.ndarray
    edge: np.ndarray  # distance to the parcel boundary (m, float32)
    neighbour: np.ndarray  # the nearest other parcel's land cover (uint8 NLCD code, before conversions)
    road: np.ndarray  # distance to the nearest major road centreline (m, float32)
    age: np.ndarray  # years since the point was converted to Developed (-1: never, or not yet)

    def take(self, index: np.ndarray) -> _Sample:
        """The sample restricted to ``index``."""
        return _Sample(**{name: value[index] for name, value in vars(self).items()})


class SyntheticWorld:
    """A seeded procedural landscape: NLCD land cover at any EPSG:5070 location and year.

    Args:
        seed: the world's seed; equal seeds give identical worlds.
        conversion_rate: yearly hazard that an eligible parcel half (forest, field, grass, shrub or
            barren land) is converted to Developed, before a weighting by zone (towns grow fastest).
        conversions_after: conversions happen in the years after this one; the land cover of this year
            and earlier is the original one. With a high rate, set it just before the years of interest,
            or those years would start out mostly developed.
    """

    def __init__(self, seed: int = 0, conversion_rate: float = 0.008, conversions_after: int = 2000) -> None:
        if not 0 <= conversion_rate < 1:
            raise InputError(f"conversion rate must be in [0, 1), got {conversion_rate}")
        self.seed = int(seed)
        self.conversion_rate = float(conversion_rate)
        self.conversions_after = int(conversions_after)
        # The two directions of the world's major roads: roughly perpendicular, never quite.
        angle = _unit(_hash(self.seed, 7001)) * math.pi
        self._road_angles = (float(angle), float(angle + math.pi / 2 + (_unit(_hash(self.seed, 7002)) - 0.5)
                                                 * 0.5))

    def _key(self, salt: int) -> int:
        return int(_hash(self.seed, salt) & np.uint64(0x7FFFFFFFFFFF))

    # -- geometry ------------------------------------------------------------------------------------

    def _warp(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Domain-warped coordinates: parcel edges wander by tens of metres instead of being straight."""
        wx = (_value_noise(x, y, 230.0, self._key(1)) - 0.5) * 130 + (
            _value_noise(x, y, 55.0, self._key(2)) - 0.5) * 28
        wy = (_value_noise(x, y, 230.0, self._key(3)) - 0.5) * 130 + (
            _value_noise(x, y, 55.0, self._key(4)) - 0.5) * 28
        return x + wx, y + wy

    def _road_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Distance to the nearest major road: two families of gently curving roads across the world."""
        result = np.full(x.shape, np.inf, dtype=np.float32)
        if x.size == 0:
            return result
        for family, angle in enumerate(self._road_angles):
            c, s = math.cos(angle), math.sin(angle)
            u = x * c + y * s
            k = np.arange(math.floor(u.min() / _ROAD_SPACING) - 1, math.floor(u.max() / _ROAD_SPACING) + 1)
            h = _hash(self._key(10 + family), k)
            amp = 40 + 160 * _unit(_rehash(h, 2))
            base = (k + 0.25 + 0.5 * _unit(_rehash(h, 4))) * _ROAD_SPACING
            near = (_unit(h) < 0.75) & (base + amp + _ROAD_HALF_WIDTH > u.min()) & (
                base - amp - _ROAD_HALF_WIDTH < u.max())
            if not near.any():
                continue
            v = -x * s + y * c
            for j in np.flatnonzero(near):
                # Each road meanders around a straight line: u = base + amp * sin(2 pi v / wavelength + phase).
                phase = _unit(_rehash(h[j], 1)) * 2 * math.pi
                wavelength = 2500 + 3000 * _unit(_rehash(h[j], 3))
                centre = base[j] + amp[j] * np.sin(v * (2 * math.pi / wavelength) + phase)
                np.minimum(result, np.abs(u - centre), out=result, casting="unsafe")
        return result

    def _parcels(self, x: np.ndarray, y: np.ndarray, second_cell: bool = False) -> tuple[
            _Cells, dict[str, np.ndarray]]:
        """Parcel cells of points and the attributes of every parcel in the lattice table."""
        wx, wy = self._warp(x, y)
        cells = _cells(wx, wy, _PARCEL_SPACING, self._key(20), second_cell=second_cell)
        h = cells.hashes
        # Zones are Voronoi cells of a coarser grid evaluated at parcel seed points, so a parcel never
        # straddles two zones and zone edges follow parcel edges.
        zones = _cells(cells.fx, cells.fy, _ZONE_SPACING, self._key(21), jitter=0.8)
        zone_hash = zones.hash
        # Themes follow a low-discrepancy (R2) sequence over the zone lattice, lightly jittered: any few
        # kilometres hold every theme in about its share, where independent draws would leave some scenes
        # without fields or barren land.
        zx = np.floor(zones.fx[zones.cell] / _ZONE_SPACING)
        zy = np.floor(zones.fy[zones.cell] / _ZONE_SPACING)
        r2 = zx * 0.7548776662466927 + zy * 0.5698402909980532 + _unit(_hash(self.seed, 7003))
        theme = _choice((r2 + 0.05 * (_unit(zone_hash) - 0.5)) % 1.0, {i: t[1] for i, t in enumerate(_THEMES)})
        u = _unit(_rehash(h, 2))
        code = np.zeros(h.shape, dtype=np.uint8)
        for i, (_, _, odds) in enumerate(_THEMES):
            mine = theme == i
            code[mine] = _choice(u[mine], odds)
        # Conversions: each parcel half (split by a line through the seed point) has its own year.
        angle = _unit(_rehash(h, 3)) * 2 * math.pi
        eligible = np.isin(code, _CONVERTIBLE)
        rate = self.conversion_rate * _HAZARD_WEIGHT[theme]
        years = []
        for half in (0, 1):
            w = _unit(_rehash(h, 4 + half))
            with np.errstate(divide="ignore"):
                wait = -np.log1p(-w) / rate
            year = np.where(eligible & (rate > 0) & (wait < 200), self.conversions_after + 1 + np.floor(wait), 0)
            years.append(year.astype(np.int32))
        target = _choice(_unit(_rehash(h, 6)), {22: 0.55, 23: 0.25, 21: 0.10, 24: 0.10}).astype(np.uint8)
        attributes = {"code": code, "theme": theme, "zone": zone_hash, "anchor_x": zones.fx[zones.cell],
                      "anchor_y": zones.fy[zones.cell], "cos": np.cos(angle), "sin": np.sin(angle),
                      "year0": years[0], "year1": years[1], "target": target}
        return cells, attributes

    def _conversion(self, cells: _Cells, parcel: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per point: the half of its parcel it lies in (0/1) and that half's conversion year (0: never)."""
        c = cells.cell
        side = ((cells.dx * parcel["cos"][c] + cells.dy * parcel["sin"][c]) > 0).astype(np.int8)
        year = np.where(side == 0, parcel["year0"][c], parcel["year1"][c])
        return side, year

    def _cover(self, x: np.ndarray, y: np.ndarray, cells: _Cells, parcel: dict[str, np.ndarray],
               year: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Land cover in ``year``: (NLCD codes, road distance, conversion year of the point's part)."""
        c = cells.cell
        _, conv_year = self._conversion(cells, parcel)
        converted = (conv_year > 0) & (conv_year <= year)
        code = np.where(converted, parcel["target"][c], parcel["code"][c])
        road = self._road_distance(x, y)
        # Road corridors are mapped as Developed, Open Space (as in the real NLCD) except where a more
        # intense development class already holds the land, or on water (no roads across lakes).
        corridor = (road < _ROAD_HALF_WIDTH) & ~np.isin(code, (11, 22, 23, 24))
        code = np.where(corridor, 21, code).astype(np.uint8)
        return code, road, np.where(converted, conv_year, 0)

    def _sample(self, x: np.ndarray, y: np.ndarray, year: int) -> _Sample:
        """Land cover and the attributes rendering needs at points (EPSG:5070 metres) in ``year``."""
        x = np.asarray(x, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        if x.size == 0:  # e.g. a block wholly in the nodata collar
            empty = np.empty(0, dtype=np.float32)
            return _Sample(x=x, y=y, code=np.empty(0, np.uint8), parcel=np.empty(0, np.uint64),
                           zone=np.empty(0, np.uint64), anchor_x=x, anchor_y=y, edge=empty,
                           neighbour=np.empty(0, np.uint8), road=empty, age=np.empty(0, np.int16))
        cells, parcel = self._parcels(x, y, second_cell=True)
        code, road, conv_year = self._cover(x, y, cells, parcel, year)
        c, c2 = cells.cell, cells.cell2
        assert c2 is not None
        # Distance to the Voronoi edge between the two nearest seed points (in warped metres).
        gap = np.hypot(cells.fx[c] - cells.fx[c2], cells.fy[c] - cells.fy[c2]).astype(np.float32)
        edge = (cells.d2 ** 2 - cells.d1 ** 2) / (2 * np.maximum(gap, 1e-3))
        return _Sample(x=x, y=y, code=code, parcel=cells.hash, zone=parcel["zone"][c],
                       anchor_x=parcel["anchor_x"][c], anchor_y=parcel["anchor_y"][c], edge=edge,
                       neighbour=parcel["code"][c2], road=np.where(code == 11, np.inf, road).astype(np.float32),
                       age=np.where(conv_year > 0, year - conv_year, -1).astype(np.int16))

    def land_cover(self, x: np.ndarray, y: np.ndarray, year: int = 2016) -> np.ndarray:
        """NLCD codes (uint8) of the world at points ``(x, y)`` in EPSG:5070 metres in ``year``.

        Points should be local (within some tens of kilometres): lookups build lattice tables over the
        points' extent. Split large areas into blocks, as the NLCD writer does.
        """
        xf = np.asarray(x, dtype=np.float64).ravel()
        yf = np.asarray(y, dtype=np.float64).ravel()
        if xf.size == 0:
            return np.empty(np.shape(x), dtype=np.uint8)
        cells, parcel = self._parcels(xf, yf)
        return self._cover(xf, yf, cells, parcel, year)[0].reshape(np.shape(x))

    def conversion_parts(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                     np.ndarray]:
        """Which parcel half each point is in and when it is converted.

        Returns:
            ``(part, year, from_code, to_code)``: a uint64 id of the parcel half, the year it becomes
            Developed (0: never), the parcel's land cover before and the Developed code after. Road
            corridors through a converted half are already Developed and report year 0.
        """
        x = np.asarray(x, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        if x.size == 0:
            return np.empty(0, np.uint64), np.empty(0, np.int32), np.empty(0, np.uint8), np.empty(0, np.uint8)
        cells, parcel = self._parcels(x, y)
        side, year = self._conversion(cells, parcel)
        part = _hash(cells.hash, side)
        road = self._road_distance(x, y) < _ROAD_HALF_WIDTH
        year = np.where(road, 0, year)
        c = cells.cell
        return part, year, parcel["code"][c], parcel["target"][c]


# --------------------------------------------------------------------------------------------------------
# Rendering: land cover -> NAIP-like red, green, blue, near-infrared digital numbers.
# --------------------------------------------------------------------------------------------------------

def _rgbn(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)[:, None]


def _blend(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-point blend of two colours (4, 1) or (4, n) by weights ``t`` (n,) in [0, 1]."""
    return a + (b - a) * t[None, :]


# Base colours (R, G, B, NIR) in 8-bit NAIP digital numbers, summer, typical of New England scenes.
_DECIDUOUS = _rgbn(62, 94, 64, 190)
_EVERGREEN = _rgbn(36, 60, 50, 128)
_CANOPY_GAP = _rgbn(28, 38, 34, 60)
_LAWN = _rgbn(96, 128, 80, 178)
_DRY_GRASS = _rgbn(158, 148, 108, 160)
_GREEN_GRASS = _rgbn(104, 130, 84, 182)
_SOIL = _rgbn(150, 126, 98, 128)
_LIGHT_SOIL = _rgbn(172, 156, 124, 150)
_ASPHALT = _rgbn(92, 94, 98, 88)
_DARK_ASPHALT = _rgbn(68, 70, 74, 64)
_CONCRETE = _rgbn(168, 166, 158, 150)
_WATER = _rgbn(34, 52, 60, 16)
_SHRUB = _rgbn(56, 74, 50, 152)
_ROOFS = np.array([[72, 72, 78], [96, 92, 92], [132, 82, 66], [162, 152, 142], [54, 58, 70], [186, 182, 172],
                   [112, 102, 92], [120, 70, 60], [205, 205, 200]], dtype=np.float32)


@dataclass(frozen=True)
class _Look:
    """One year's acquisition: illumination, haze, phenology (all seeded by world seed and year)."""

    gain: np.ndarray  # (4, 1) band gains
    offset: np.ndarray  # (4, 1) band offsets (haze lifts blue most)
    greenness: float  # 0 dry summer .. 1 lush: shifts grass and crops
    leaf: float  # deciduous NIR multiplier
    date: dt.date

    @classmethod
    def of(cls, seed: int, year: int) -> _Look:
        h = _hash(seed, year, 9001)
        u = [float(_unit(_rehash(h, i))) for i in range(8)]
        gain = 0.92 + 0.16 * u[0]
        gains = np.array([gain, gain, gain, gain * (0.94 + 0.12 * u[1])], dtype=np.float32)[:, None]
        haze = 10 * u[2]
        offsets = np.array([haze * 0.5 - 3, haze * 0.7 - 3, haze - 3, -4 + 8 * u[3]], dtype=np.float32)[:, None]
        date = dt.date(year, 6, 15) + dt.timedelta(days=int(u[4] * 75))
        return cls(gains, offsets, greenness=u[5], leaf=0.9 + 0.2 * u[6], date=date)


def _crowns(s: _Sample, spacing: float, key: int, radius: tuple[float, float], cover: float = 1.0) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """Tree or bush crowns on a jittered grid, lit from the south-east.

    Returns:
        ``(inside, shade, crown_hash)``: whether a point is under a crown, a brightness factor that is
        1 on the lit side of a crown and ~0.55 on its shadowed side, and the crown's hash (for its colour).
    """
    cells = _cells(s.x, s.y, spacing, key)
    h = cells.hash
    r = (radius[0] + (radius[1] - radius[0]) * _unit(h)).astype(np.float32)
    present = _unit(_rehash(h, 1)) < cover
    d = cells.d1 / r
    inside = present & (d < 1)
    # A dome lit from the south-east: brighter where the surface faces the sun.
    lit = np.clip(1 - ((cells.dx - 0.35 * r) ** 2 + (cells.dy + 0.35 * r) ** 2) / (1.8 * r * r), 0, 1)
    shade = (0.55 + 0.55 * lit).astype(np.float32)
    return inside, shade, h


def _render_forest(s: _Sample, look: _Look, key: int, code: int) -> np.ndarray:
    """Closed canopy of lit crowns over shadowed gaps; swamps (90) are sparser, with water between."""
    spacing, radius = {41: (7.0, (2.8, 4.6)), 42: (4.5, (1.8, 2.8)), 43: (6.0, (2.2, 4.0)),
                       90: (7.0, (1.8, 3.6))}[code]
    inside, shade, h = _crowns(s, spacing, key, radius, cover=0.75 if code == 90 else 1.0)
    deciduous = _DECIDUOUS * np.array([[1], [1], [1], [look.leaf]], dtype=np.float32)
    if code == 41:
        crown = deciduous
    elif code == 42:
        crown = _EVERGREEN
    else:  # mixed forest and swamps: each crown is one or the other
        crown = np.where(_unit(_rehash(h, 2))[None] < (0.55 if code == 43 else 0.7), deciduous, _EVERGREEN)
    variation = (0.85 + 0.3 * _unit(_rehash(h, 3))).astype(np.float32)
    color = crown * (shade * variation)[None]
    gap = _CANOPY_GAP if code != 90 else _blend(_WATER, _CANOPY_GAP, _fbm(s.x, s.y, 12, key + 1, 2))
    color = np.where(inside[None], color, gap)
    # Stand-scale variation (age, density) over tens of metres.
    stand = 0.88 + 0.24 * _fbm(s.x, s.y, 60, key + 2, 2)
    return color * stand[None]


def _render_developed(s: _Sample, look: _Look, key: int, code: int) -> np.ndarray:
    """Street grids (one per zone) and lots with houses, driveways, lawns and yard trees.

    Commercial superblocks (24) have flat roofs and striped parking lots; parks (21) have footpaths and few
    buildings. Newly converted land shows raw soil and few trees for its first years.
    """
    n = s.x.size
    zone = s.zone
    angle = (_unit(_rehash(zone, 7)) * math.pi / 2).astype(np.float64)
    c, sn = np.cos(angle), np.sin(angle)
    dx, dy = s.x - s.anchor_x, s.y - s.anchor_y
    u, v = dx * c + dy * sn, -dx * sn + dy * c
    block_u = 100 + 50 * _unit(_rehash(zone, 8))
    block_v = 62 + 24 * _unit(_rehash(zone, 9))
    if code == 24:  # commercial superblocks
        block_u, block_v = block_u * 2, block_v * 2
    iu, iv = np.floor(u / block_u), np.floor(v / block_v)
    bu, bv = u - iu * block_u, v - iv * block_v  # position inside the block
    to_street = np.minimum(np.minimum(bu, block_u - bu), np.minimum(bv, block_v - bv)).astype(np.float32)
    half_street = {21: 3.0, 22: 4.5, 23: 5.0, 24: 7.0}[code]
    color = np.empty((4, n), dtype=np.float32)
    # Lawns: mown grass, greener in a lush year, with brown patches; new developments have raw soil.
    grass = _blend(_LAWN, _DRY_GRASS, 0.45 * (1 - look.greenness) + 0.4 * _fbm(s.x, s.y, 25, key, 2) - 0.15)
    # New subdivisions (converted this year or lately): streets first, then houses and sod; trees take
    # a decade to fill in.
    age = s.age.astype(np.float32)
    young = (s.age >= 0) & (s.age <= 2)
    grass = np.where(young[None], _blend(_SOIL, grass, 0.35 + 0.25 * age), grass)
    color[:] = grass
    # Lots: two rows per block, facing the street on each long side.
    lots_per_row = np.maximum(1, np.floor(block_u / {21: 60.0, 22: 26.0, 23: 17.0, 24: 90.0}[code]))
    lot_len = block_u / lots_per_row
    row = (bv > block_v / 2).astype(np.int64)
    il = np.floor(bu / lot_len)
    lot = _hash(key, zone, iu.astype(np.int64), iv.astype(np.int64), il.astype(np.int64), row)
    lu = bu - (il + 0.5) * lot_len  # lot-centred coordinates; lv grows away from the lot's street
    lv = np.where(row == 0, bv, block_v - bv)
    built = _unit(_rehash(lot, 1)) < {21: 0.15, 22: 0.92, 23: 0.97, 24: 0.95}[code]
    built &= ~young | (_unit(_rehash(lot, 9)) < 0.5 + 0.25 * age)
    if code == 24:
        width = lot_len * (0.45 + 0.35 * _unit(_rehash(lot, 2)))
        depth = (block_v / 2) * (0.45 + 0.3 * _unit(_rehash(lot, 3)))
        setback = half_street + 8 + (block_v / 2 - depth - half_street - 10) * _unit(_rehash(lot, 4))
    else:
        width = np.minimum(lot_len - 5, 9 + 7 * _unit(_rehash(lot, 2)))
        depth = 8 + 5 * _unit(_rehash(lot, 3))
        setback = half_street + 6 + 6 * _unit(_rehash(lot, 4))
    shift = (_unit(_rehash(lot, 5)) - 0.5) * np.maximum(lot_len - width - 6, 0)
    house_u = np.abs(lu - shift) < width / 2
    house_v = (lv > setback) & (lv < setback + depth)
    roof = built & house_u & house_v
    palette = _ROOFS[(_unit(_rehash(lot, 6)) * len(_ROOFS)).astype(np.int64)].T  # (3, n)
    if code == 24:
        palette = np.where(_unit(_rehash(lot, 7))[None] < 0.7, _ROOFS[8][:, None] * 0.95, palette)
        # Flat roofs with rooftop units: small dark squares on a grid.
        units = (np.abs(((lu - shift) % 9) - 4.5) < 1.2) & (np.abs(((lv - setback) % 11) - 5.5) < 1.0)
        ridge_shade = np.where(units, 0.7, 1.0)
    else:
        # Gable roofs: the ridge runs along the house; the two slopes catch the sun differently.
        ridge_shade = np.where(lv - setback < depth / 2, 1.12, 0.84)
    roof_rgb = palette * ridge_shade[None]
    # Roofs reflect NIR about as much as their brightest visible band (no chlorophyll).
    roof_nir = 0.5 * roof_rgb.mean(axis=0, keepdims=True) + 0.45 * roof_rgb.max(axis=0, keepdims=True)
    roof_color = np.concatenate([roof_rgb, roof_nir])
    # Driveways from the street to the house; parking lots around commercial buildings.
    if code == 24:
        paved = built & ~roof & (lv > half_street)
        stall = np.abs((lu % 2.7) - 1.35) < 0.18
        stall_line = paved & stall & (((lv - half_street) % 18) < 5.5)
        car = paved & ~stall & (((lv - half_street) % 18) > 0.5) & (((lv - half_street) % 18) < 5.0)
        car &= _unit(_hash(key + 1, np.floor(lu / 2.7).astype(np.int64), np.floor(
            (lv - half_street) / 18).astype(np.int64), lot)) < 0.55
        lot_paint = _blend(_DARK_ASPHALT, _ASPHALT, _fbm(s.x, s.y, 30, key + 3, 1))
        color = np.where(paved[None], lot_paint, color)
        color = np.where(stall_line[None], _rgbn(210, 210, 200, 190), color)
        car_rgb = _ROOFS[(_unit(_hash(key + 2, np.floor(lu / 2.7).astype(np.int64), lot))
                          * len(_ROOFS)).astype(np.int64)].T
        car_color = np.concatenate([car_rgb, car_rgb.mean(axis=0, keepdims=True)])
        color = np.where(car[None], car_color, color)
    else:
        drive_u = np.abs(lu - shift - width / 2 + 2.0) < 1.8
        drive = built & drive_u & (lv > half_street) & (lv < setback + 1)
        color = np.where(drive[None], _CONCRETE * 0.92, color)
    # Yard trees: more in older, lower-density neighbourhoods; few in new subdivisions.
    tree_cover = {21: 0.35, 22: 0.4, 23: 0.2, 24: 0.05}[code] * np.where(s.age >= 0, np.minimum(
        1.0, 0.1 + age / 10), 1.0)
    inside, shade, h = _crowns(s, 9.0, key + 4, (2.5, 5.0), cover=1.0)
    tree = inside & (_unit(_rehash(h, 5)) < tree_cover) & ~roof
    tree_color = np.where(_unit(_rehash(h, 2))[None] < 0.75, _DECIDUOUS, _EVERGREEN) * shade[None]
    color = np.where(tree[None], tree_color, color)
    color = np.where(roof[None], roof_color, color)
    # Streets with concrete sidewalks (parks get narrow footpaths only).
    street = to_street < half_street
    sidewalk = (to_street >= half_street) & (to_street < half_street + 1.5) & (code != 21)
    pavement = _blend(_ASPHALT, _DARK_ASPHALT, _fbm(s.x, s.y, 40, key + 5, 1))
    if code == 21:
        pavement = _CONCRETE * 0.9
    color = np.where(street[None], pavement, color)
    color = np.where(sidewalk[None], _CONCRETE, color)
    return color


def _render_roads(s: _Sample, look: _Look, key: int) -> np.ndarray:
    """Major roads: two-lane pavement with painted lines, mown verges to the corridor's edge."""
    verge = _blend(_LAWN, _DRY_GRASS, 0.3 + 0.4 * _fbm(s.x, s.y, 20, key, 2) * (1 - look.greenness))
    pavement = _blend(_DARK_ASPHALT, _ASPHALT, _fbm(s.x, s.y, 50, key + 1, 1))
    color = np.where((s.road < _PAVEMENT_HALF_WIDTH)[None], pavement, verge)
    lines = (np.abs(s.road - 5.0) < 0.35) | (s.road < 0.3)
    return np.where(lines[None], _rgbn(200, 195, 160, 175), color)


def _field_frame(s: _Sample, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates across (a) and along (b) each field's rows; the direction is per parcel."""
    angle = _unit(_rehash(s.parcel, salt)) * math.pi
    c, sn = np.cos(angle), np.sin(angle)
    return -s.x * sn + s.y * c, s.x * c + s.y * sn


def _hedgerows(s: _Sample, color: np.ndarray, key: int) -> np.ndarray:
    """Tree lines along field edges, on some parcels (a very New England look)."""
    has = (_unit(_rehash(s.parcel, 40)) < 0.6) & (s.edge < 5.0)
    if not has.any():
        return color
    inside, shade, _ = _crowns(s, 5.0, key, (2.0, 3.5))
    trees = has & inside
    return np.where(trees[None], _DECIDUOUS * shade[None], color)


def _render_cultivated(s: _Sample, look: _Look, key: int, code: int, year: int) -> np.ndarray:
    """Fields in strips along one direction per parcel; each strip's crop state changes by year."""
    a, b = _field_frame(s, 30)
    strip_width = 35 + 70 * _unit(_rehash(s.parcel, 31))
    strip = np.floor(a / strip_width).astype(np.int64)
    state_hash = _hash(key, s.parcel.view(np.int64), strip, year)
    u = _unit(state_hash)
    grain = _fbm(s.x, s.y, 3, key + 1, 2) - 0.5
    patches = _fbm(s.x, s.y, 45, key + 2, 2)
    if code == 82:
        # Crop rows ~3 m apart (what a 1 m pixel resolves of planter passes), tramlines every ~20 m.
        rows = 0.5 + 0.5 * np.sin(a * (2 * math.pi / 3.2)).astype(np.float32)
        tram = np.abs((a % 21.0) - 10.5) < 0.7
        green = _blend(_rgbn(78, 112, 70, 200), _rgbn(92, 120, 76, 215), rows * 0.5 + patches * 0.5)
        bare = _blend(_SOIL, _SOIL * 0.85, rows)
        young = _blend(_SOIL, _rgbn(90, 118, 74, 190), rows * (0.4 + 0.4 * look.greenness))
        stubble = _blend(_LIGHT_SOIL, _rgbn(190, 172, 128, 165), rows)
        p_green = 0.35 + 0.25 * look.greenness
        color = np.where((u < p_green)[None], green,
                         np.where((u < p_green + 0.22)[None], young,
                                  np.where((u < p_green + 0.45)[None], bare, stubble)))
        color = np.where(tram[None], color * 0.8, color)
    else:
        # Hay and pasture: mowing windrows ~7 m apart, greener or cut by year.
        rows = 0.5 + 0.5 * np.sin(a * (2 * math.pi / 7.0) + 0.3 * np.sin(b / 40)).astype(np.float32)
        pasture = _blend(_rgbn(98, 134, 80, 192), _rgbn(120, 140, 86, 180), patches)
        cut = _blend(_rgbn(168, 160, 104, 170), _rgbn(120, 132, 82, 176), rows)
        color = np.where((u < 0.45 + 0.3 * look.greenness)[None], pasture * (0.96 + 0.08 * rows)[None], cut)
    color = color * (1 + 0.08 * grain)[None]
    return _hedgerows(s, color, key + 3)


def _render_herbaceous(s: _Sample, look: _Look, key: int, code: int) -> np.ndarray:
    """Patchy grass, greener or drier by year, with lone shrubs; marshes (95) with pools of open water."""
    patches = _fbm(s.x, s.y, 50, key, 3)
    grain = _fbm(s.x, s.y, 2.5, key + 1, 2) - 0.5
    if code == 95:  # marsh: reeds with pools and channels of open water
        reeds = _blend(_rgbn(92, 108, 70, 150), _rgbn(64, 78, 56, 110), patches)
        pools = _fbm(s.x, s.y, 30, key + 2, 3) < 0.33
        color = np.where(pools[None], _WATER * 1.1, reeds)
    else:
        dryness = np.clip(patches * 1.2 - 0.1 + 0.35 * (1 - look.greenness), 0, 1)
        color = _blend(_GREEN_GRASS, _DRY_GRASS, dryness)
        # Lone shrubs and trees dotted across old fields.
        inside, shade, _ = _crowns(s, 14.0, key + 3, (1.5, 3.0), cover=0.1)
        color = np.where(inside[None], _SHRUB * shade[None], color)
    return color * (1 + 0.12 * grain)[None]


def _render_shrub(s: _Sample, look: _Look, key: int) -> np.ndarray:
    """Bushes scattered on light soil and dry grass, denser in places."""
    ground = _blend(_LIGHT_SOIL, _DRY_GRASS * 0.9, _fbm(s.x, s.y, 30, key, 3))
    grain = _fbm(s.x, s.y, 2, key + 1, 1) - 0.5
    cover = 0.4 + 0.35 * _fbm(s.x, s.y, 60, key + 2, 2)
    inside, shade, h = _crowns(s, 3.6, key + 3, (0.9, 1.7))
    bush = inside & (_unit(_rehash(h, 6)) < cover)
    bush_color = _SHRUB * (0.8 + 0.4 * _unit(_rehash(h, 7))).astype(np.float32)[None]
    color = np.where(bush[None], bush_color * shade[None], ground * (1 + 0.1 * grain)[None])
    return color


def _render_barren(s: _Sample, look: _Look, key: int) -> np.ndarray:
    """Bright, low-texture ground: sand and gravel plains, or pits and quarries cut into benches."""
    kind = _unit(_rehash(s.parcel, 50))
    sand = np.where((kind < 0.55)[None], _rgbn(204, 192, 166, 186), _rgbn(176, 174, 166, 170))
    relief = _fbm(s.x, s.y, 90, key, 3)
    grain = _fbm(s.x, s.y, 1.5, key + 1, 1) - 0.5
    color = sand * (0.9 + 0.16 * relief + 0.07 * grain)[None]
    # Pits and quarries: stepped contours of the relief cast thin, broken shadows along the benches.
    quarry = kind > 0.6
    wobble = _fbm(s.x, s.y, 25, key + 2, 2)
    bench = quarry & (((relief * 7 + 0.15 * wobble) % 1) < 0.03 + 0.04 * wobble)
    color = np.where(bench[None], color * 0.74, color)
    # Vehicle tracks: thin darker lines that wander across the open ground.
    track = ~quarry & (np.abs(_value_noise(s.x, s.y, 140, key + 3) - 0.5) < 0.006)
    color = np.where(track[None], color * 0.86, color)
    # Sparse debris and weeds.
    specks = _fbm(s.x, s.y, 2.0, key + 4, 1) > 0.9
    return np.where(specks[None], _SHRUB * 1.1, color)


def _render_water(s: _Sample, look: _Look, key: int) -> np.ndarray:
    """Dark water, near-black in NIR, with turbidity and lighter shallows along the shore."""
    color = _blend(_WATER, _rgbn(44, 66, 58, 24), _fbm(s.x, s.y, 60, key, 3))
    # Shallows along the shore, not along the invisible edges between two water parcels.
    shallow = np.where(s.neighbour != 11, np.clip(1 - s.edge / 8.0, 0, 1), 0).astype(np.float32)
    return _blend(color, _rgbn(70, 82, 66, 60), shallow * 0.7)


def _render(s: _Sample, look: _Look, seed: int, year: int) -> np.ndarray:
    """(4, n) float32 digital numbers for sampled points, before illumination and noise."""
    out = np.empty((4, s.x.size), dtype=np.float32)
    on_road = s.road < _ROAD_HALF_WIDTH
    for code in np.unique(s.code):
        code = int(code)
        index = np.flatnonzero((s.code == code) & ~on_road)
        if index.size == 0:
            continue
        part = s.take(index)
        key = seed * 1000 + code
        if code == 11:
            out[:, index] = _render_water(part, look, key)
        elif code in _DEVELOPED:
            out[:, index] = _render_developed(part, look, key, code)
        elif code == 31:
            out[:, index] = _render_barren(part, look, key)
        elif code in (41, 42, 43, 90):
            out[:, index] = _render_forest(part, look, key, code)
        elif code == 52:
            out[:, index] = _render_shrub(part, look, key)
        elif code in (71, 95):
            out[:, index] = _render_herbaceous(part, look, key, code)
        elif code in (81, 82):
            out[:, index] = _render_cultivated(part, look, key, code, year)
        else:  # pragma: no cover - the world only uses WORLD_CODES
            raise AssertionError(f"no renderer for NLCD code {code}")
    index = np.flatnonzero(on_road)
    if index.size:
        out[:, index] = _render_roads(s.take(index), look, seed * 1000 + 999)
    return out


# --------------------------------------------------------------------------------------------------------
# Scenes: UTM pixel grids, coordinate transforms, nodata collars, GeoTIFF writing.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticScene:
    """The files of one synthetic NAIP scene and what it shows.

    Attributes:
        naip: path of the NAIP-like GeoTIFF.
        nlcd: path of the NLCD-like GeoTIFF covering it (None if not written).
        conversions: path of the GeoJSON of conversions to Developed between the NLCD year and the scene
            year (None if not written).
        year: the scene's (acquisition) year.
        date: acquisition date (the ``ACQUISITION_DATE`` tag).
        crs: the scene's CRS, e.g. ``EPSG:26919``.
        bounds: (left, bottom, right, top) in the scene's CRS.
        shape: (height, width) in pixels.
        class_shares: share of the scene's valid pixels in each land-use class of the default scheme, plus
            ``"Water"`` (NLCD 11), in the world's land cover at full resolution.
        nodata_share: share of pixels in the nodata collar.
    """

    naip: Path
    nlcd: Path | None
    conversions: Path | None
    year: int
    date: dt.date
    crs: str
    bounds: tuple[float, float, float, float]
    shape: tuple[int, int]
    class_shares: dict[str, float] = field(default_factory=dict)
    nodata_share: float = 0.0


@dataclass(frozen=True)
class SyntheticSeries:
    """A time series of one place: NAIP scenes by year on one pixel grid, one NLCD, conversion truth.

    Attributes:
        scenes: year -> scene, in year order.
        nlcd: the NLCD-like raster (land cover of the first year).
        conversions: GeoJSON of the parts converted to Developed after the first year.
    """

    scenes: dict[int, SyntheticScene]
    nlcd: Path | None
    conversions: Path | None

    @property
    def naip(self) -> dict[int, Path]:
        """Year -> NAIP path."""
        return {year: scene.naip for year, scene in self.scenes.items()}


@dataclass(frozen=True)
class _Grid:
    """A north-up UTM pixel grid and its ties to the world (EPSG:5070) and to lon/lat."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    valid_lonlat: tuple[float, float, float, float] | None  # the quarter-quad's lon/lat box

    @property
    def bounds(self) -> tuple[float, float, float, float]:
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


def _bilinear(nodes: np.ndarray, step: int, nrows: int, ncols: int, sub: int = 1) -> np.ndarray:
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


def _scene_grid(size_m: float | tuple[float, float], resolution: float, crs: str | CRS,
                center: tuple[float, float], collar_m: float | None) -> _Grid:
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
    grid = _Grid(crs, transform, width, height, None)
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
    return _Grid(crs, transform, width, height, box)


_NAIP_PROFILE = {
    "driver": "GTiff", "count": 4, "dtype": "uint8", "nodata": 0, "tiled": True, "blockxsize": _BLOCK,
    "blockysize": _BLOCK, "compress": "deflate", "predictor": 2, "interleave": "pixel", "photometric": "RGB",
    "alpha": "unspecified", "bigtiff": "if_safer",
}


def _render_scene(world: SyntheticWorld, grid: _Grid, year: int, path: Path,
                  progress: Callable[[int, int], None] | None = None) -> tuple[dt.date, np.ndarray]:
    """Render one scene block by block into ``path``; returns the date and per-code sample counts.

    Pixels coarser than 1 m average ``sub x sub`` samples, as a sensor integrates the ground: point-sampling
    1 m textures at 4 m would alias them into noise.
    """
    look = _Look.of(world.seed, year)
    to_world = Transformer.from_crs(grid.crs, WORLD_CRS, always_xy=True)
    to_lonlat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    sub = min(4, max(1, math.ceil(abs(grid.transform.a) - 1e-6)))
    block = _BLOCK // sub  # keeps the samples per block (and memory) the same at every resolution
    counts = np.zeros(257, dtype=np.int64)  # NLCD codes, then nodata
    step = 64 // sub
    blocks = [(c, r) for r in range(0, grid.height, block) for c in range(0, grid.width, block)]
    profile = dict(_NAIP_PROFILE, width=grid.width, height=grid.height, crs=grid.crs, transform=grid.transform)
    # GDAL's block cache defaults to 5% of RAM and would hold most of a large scene before flushing it;
    # a small cache keeps memory flat whatever the scene size (blocks are written once, in order).
    with rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_BYTES), rasterio.open(path, "w", **profile) as dst:
        for done, (col, row) in enumerate(blocks):
            ncols, nrows = min(block, grid.width - col), min(block, grid.height - row)
            nx, ny = grid.nodes(col, row, ncols, nrows, step, to_world)
            x = _bilinear(nx, step, nrows, ncols, sub).ravel()
            y = _bilinear(ny, step, nrows, ncols, sub).ravel()
            valid = _valid_mask(grid, col, row, ncols, nrows, step, to_lonlat)
            inside = valid if sub == 1 else np.repeat(np.repeat(valid.reshape(nrows, ncols), sub, 0), sub, 1).ravel()
            sample = world._sample(x[inside], y[inside], year)
            color = np.zeros((4, inside.size), dtype=np.float32)
            color[:, inside] = _render(sample, look, world.seed, year)
            if sub > 1:
                color = color.reshape(4, nrows, sub, ncols, sub).mean(axis=(2, 4)).reshape(4, -1)
            color = color[:, valid] * look.gain + look.offset
            color += _sensor_noise(world.seed, year, col, row, ncols, nrows)[:, valid]
            pixels = np.zeros((4, nrows * ncols), dtype=np.uint8)
            # Valid pixels are never all-zero: 0 in every band is how NAIP marks nodata.
            pixels[:, valid] = np.clip(np.rint(color), 1, 255).astype(np.uint8)
            dst.write(pixels.reshape(4, nrows, ncols), window=Window(col, row, ncols, nrows))
            counts[:256] += np.bincount(sample.code, minlength=256)
            counts[256] += int((~inside).sum())
            if progress is not None:
                progress(done + 1, len(blocks))
        dst.descriptions = ("red", "green", "blue", "nir")
        dst.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined)
        dst.update_tags(ACQUISITION_DATE=look.date.isoformat(), SYNTH_YEAR=str(year), **_world_tags(world))
        factors = [f for f in (2, 4, 8, 16, 32, 64) if min(grid.width, grid.height) // f >= 64]
        if factors:
            dst.build_overviews(factors, Resampling.average)
            dst.update_tags(ns="rio_overview", resampling="average")
    return look.date, counts


def _world_tags(world: SyntheticWorld) -> dict[str, str]:
    """GeoTIFF tags that say which world a raster shows, so it can be made again."""
    return {"SYNTH_GENERATOR": "tiling.synth", "SYNTH_SEED": str(world.seed),
            "SYNTH_CONVERSION_RATE": str(world.conversion_rate),
            "SYNTH_CONVERSIONS_AFTER": str(world.conversions_after)}


def _valid_mask(grid: _Grid, col: int, row: int, ncols: int, nrows: int, step: int,
                to_lonlat: Transformer) -> np.ndarray:
    """Flat boolean mask of the block's pixels inside the quarter-quad's lon/lat box."""
    if grid.valid_lonlat is None:
        return np.ones(nrows * ncols, dtype=bool)
    west, south, east, north = grid.valid_lonlat
    lon_nodes, lat_nodes = grid.nodes(col, row, ncols, nrows, step, to_lonlat)
    if (lon_nodes.min() > west and lon_nodes.max() < east and lat_nodes.min() > south
            and lat_nodes.max() < north):
        return np.ones(nrows * ncols, dtype=bool)
    lon = _bilinear(lon_nodes, step, nrows, ncols)
    lat = _bilinear(lat_nodes, step, nrows, ncols)
    return ((lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)).ravel()


def _sensor_noise(seed: int, year: int, col: int, row: int, ncols: int, nrows: int) -> np.ndarray:
    """(4, n) float32 pixel noise (triangular, sd ~ 2.5 DN), from one 64-bit hash per pixel."""
    rows = np.arange(row, row + nrows, dtype=np.uint64)[:, None] << np.uint64(32)
    cols = np.arange(col, col + ncols, dtype=np.uint64)[None, :]
    base = _hash(seed, year, 424242)
    with np.errstate(over="ignore"):
        h = _mix((rows | cols).ravel() * _GOLDEN + base)
    noise = np.empty((4, h.size), dtype=np.float32)
    byte = np.uint64(0xFF)
    for band in range(4):
        a = ((h >> np.uint64(16 * band)) & byte).astype(np.float32)
        b = ((h >> np.uint64(16 * band + 8)) & byte).astype(np.float32)
        noise[band] = (a + b - 255.0) * (6.0 / 255.0)
    return noise


def _footprint_in_world(paths_or_grids: Iterable[_Grid | PathLike]) -> tuple[float, float, float, float]:
    """Bounds in EPSG:5070 covering every scene (edges densified: projected edges curve)."""
    xs, ys = [], []
    for item in paths_or_grids:
        if isinstance(item, _Grid):
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


def _snap_to_nlcd(bounds: tuple[float, float, float, float], margin_m: float) -> tuple[Affine, int, int]:
    """The NLCD-grid-aligned transform and size covering ``bounds`` plus a margin."""
    ox, oy = NLCD_ORIGIN
    left = ox + math.floor((bounds[0] - margin_m - ox) / NLCD_RES) * NLCD_RES
    right = ox + math.ceil((bounds[2] + margin_m - ox) / NLCD_RES) * NLCD_RES
    top = oy - math.floor((oy - bounds[3] - margin_m) / NLCD_RES) * NLCD_RES
    bottom = oy - math.ceil((oy - bounds[1] + margin_m) / NLCD_RES) * NLCD_RES
    width, height = round((right - left) / NLCD_RES), round((top - bottom) / NLCD_RES)
    return Affine(NLCD_RES, 0, left, 0, -NLCD_RES, top), width, height


def make_nlcd(out_path: PathLike, *, scenes: Sequence[PathLike] = (),
              bounds: tuple[float, float, float, float] | None = None, seed: int = 0, year: int = 2016,
              margin_m: float = 300.0, conversion_rate: float = 0.008, conversions_after: int = 2000) -> Path:
    """Write an NLCD-like land-cover GeoTIFF of the seeded world, covering scenes or bounds.

    The raster is uint8 NLCD codes at 30 m in EPSG:5070, snapped to the real NLCD grid, with MRLC's colour
    table and nodata 255; each cell holds the world's land cover at its centre in ``year``. One NLCD can
    cover scenes in several UTM zones: the world, not the scene, defines the land cover.

    Args:
        out_path: GeoTIFF to write.
        scenes: rasters to cover (any CRS), e.g. NAIP scenes made with the same seed.
        bounds: or (left, bottom, right, top) to cover, in EPSG:5070 metres.
        seed: the world's seed (match the scenes').
        year: land-cover year (conversions up to this year are Developed).
        margin_m: extra cover around the scenes or bounds, in metres.
        conversion_rate, conversions_after: the world's conversions (match the scenes').

    Returns:
        The path written.
    """
    if (bounds is None) == (not scenes):
        raise InputError("give either scenes or bounds to cover, not both or neither")
    cover = tuple(map(float, bounds)) if bounds is not None else _footprint_in_world(scenes)
    if not (cover[0] < cover[2] and cover[1] < cover[3]):
        raise InputError(f"bounds {cover} are empty; expected (left, bottom, right, top) in EPSG:5070")
    world = SyntheticWorld(seed, conversion_rate, conversions_after)
    return _write_nlcd(Path(out_path), world, cover, year, margin_m)


def _write_nlcd(path: Path, world: SyntheticWorld, cover: tuple[float, float, float, float], year: int,
                margin_m: float) -> Path:
    transform, width, height = _snap_to_nlcd(cover, margin_m)
    if width * height > 400_000_000:
        raise InputError(f"an NLCD of {width} x {height} cells is too large to synthesize")
    profile = {"driver": "GTiff", "count": 1, "dtype": "uint8", "nodata": NLCD_NODATA, "width": width,
               "height": height, "crs": WORLD_CRS, "transform": transform, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate", "bigtiff": "if_safer"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        colormap = {i: (0, 0, 0, 0) for i in range(256)}
        colormap.update({code: (*rgb, 255) for code, rgb in NLCD_COLORS.items()})
        dst.write_colormap(1, colormap)
        rows_per_block = max(1, 1_000_000 // width)
        for row in range(0, height, rows_per_block):
            nrows = min(rows_per_block, height - row)
            cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(row, row + nrows) + 0.5)
            x, y = transform * (cols, rows)
            codes = world.land_cover(x, y, year).astype(np.uint8)
            dst.write(codes[None], window=Window(0, row, width, nrows))
        dst.set_band_description(1, "land_cover")
        dst.update_tags(NLCD_YEAR=str(year), **_world_tags(world))
        dst.update_tags(1, **{f"CLASS_{code}": name for code, name in NLCD_NAMES.items() if code in WORLD_CODES})
    return path


def write_conversions(out_path: PathLike, *, scenes: Sequence[PathLike], seed: int = 0,
                      after: int, until: int, conversion_rate: float = 0.008, conversions_after: int = 2000,
                      resolution: float = 5.0) -> Path:
    """Write the truth of land converted to Developed in ``(after, until]`` over scenes, as GeoJSON.

    Each feature is one converted parcel part (possibly in pieces), its geometry traced on a ``resolution``
    metre grid in EPSG:5070 and clipped to the scenes' bounding box, with properties ``year`` (the first
    year it shows as Developed), ``from_code`` (its NLCD code before), ``to_code`` (its Developed code),
    ``area_m2`` and ``part`` (a stable id). The file names its CRS (EPSG:5070) the GeoJSON-2008 way, which
    GDAL and geopandas honour.

    Args:
        out_path: GeoJSON file to write.
        scenes: rasters whose footprint to cover.
        seed: the world's seed.
        after: the base year (e.g. the NLCD's); earlier conversions are part of the base land cover.
        until: the last year of interest.
        conversion_rate, conversions_after: the world's conversions (see :class:`SyntheticWorld`).
        resolution: tracing grid spacing in metres.

    Returns:
        The path written.
    """
    world = SyntheticWorld(seed, conversion_rate, conversions_after)
    return _write_conversions(Path(out_path), world, _footprint_in_world(scenes), after, until, resolution)


def _write_conversions(path: Path, world: SyntheticWorld, cover: tuple[float, float, float, float],
                       after: int, until: int, resolution: float) -> Path:
    from rasterio import features
    from shapely.geometry import mapping, shape
    from shapely.ops import unary_union

    left, bottom, right, top = cover
    width, height = math.ceil((right - left) / resolution), math.ceil((top - bottom) / resolution)
    transform = Affine(resolution, 0, left, 0, -resolution, top)
    labels = np.zeros((height, width), dtype=np.int32)
    parts: dict[int, dict[str, int]] = {}
    ids: dict[int, int] = {}
    rows_per_block = max(1, 500_000 // width)
    for row in range(0, height, rows_per_block):
        nrows = min(rows_per_block, height - row)
        cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(row, row + nrows) + 0.5)
        x, y = transform * (cols, rows)
        part, year, from_code, to_code = world.conversion_parts(x, y)
        hit = np.flatnonzero((year > after) & (year <= until))
        block = np.zeros(part.size, dtype=np.int32)
        if hit.size:
            keys, first, inverse = np.unique(part[hit], return_index=True, return_inverse=True)
            label_of = np.empty(keys.size, dtype=np.int32)
            for j, (key, i) in enumerate(zip(keys.tolist(), hit[first], strict=True)):
                if key not in ids:
                    ids[key] = len(ids) + 1
                    parts[ids[key]] = {"year": int(year[i]), "from_code": int(from_code[i]),
                                       "to_code": int(to_code[i]), "part": key}
                label_of[j] = ids[key]
            block[hit] = label_of[inverse]
        labels[row:row + nrows] = block.reshape(nrows, width)
    pieces: dict[int, list] = {}
    for geometry, value in features.shapes(labels, mask=labels > 0, transform=transform):
        pieces.setdefault(int(value), []).append(shape(geometry))
    feats = []
    for label, polygons in sorted(pieces.items(), key=lambda item: (parts[item[0]]["year"], item[0])):
        geometry = unary_union(polygons)
        props = dict(parts[label], part=f"{parts[label]['part']:016x}", area_m2=round(float(geometry.area), 1))
        feats.append({"type": "Feature", "properties": props, "geometry": mapping(geometry)})
    collection = {"type": "FeatureCollection", "name": "conversions",
                  "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::5070"}},
                  "features": feats}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(collection))
    return path


def _shares(counts: np.ndarray) -> tuple[dict[str, float], float]:
    """Land-use class shares of valid pixels (default scheme, plus Water) and the nodata share."""
    valid = counts[:256].sum()
    total = valid + counts[256]
    shares: dict[str, float] = {}
    for name, codes in ClassScheme.default().groups.items():
        shares[name] = float(counts[list(codes)].sum() / valid) if valid else 0.0
    shares["Water"] = float(counts[11] / valid) if valid else 0.0
    return shares, float(counts[256] / total) if total else 0.0


def make_scene(out_dir: PathLike, *, size_m: float | tuple[float, float] = 4480.0, resolution: float = 1.0,
               crs: str | CRS = "EPSG:26919", center: tuple[float, float] = DEFAULT_CENTER, year: int = 2016,
               seed: int = 0, nlcd: bool = True, nlcd_year: int | None = None, name: str = "naip",
               conversion_rate: float = 0.008, conversions_after: int = 2000, collar_m: float | None = None,
               progress: Callable[[int, int], None] | None = None) -> SyntheticScene:
    """Write a synthetic NAIP-like scene (and the NLCD-like raster under it) into ``out_dir``.

    The scene is a 4-band (red, green, blue, NIR) uint8 GeoTIFF: tiled 512 x 512, DEFLATE-compressed, with
    average overviews, nodata 0 in a slanted collar (a quarter-quad's lon/lat box seen in UTM), and the
    ``ACQUISITION_DATE`` tag. Same arguments, same bytes.

    Args:
        out_dir: output directory (created if missing).
        size_m: scene side in metres, or (width, height); the default is 20 x 20 chips of 224 m.
        resolution: pixel size in metres (NAIP: 1 m before 2018, 0.6 m after).
        crs: a projected CRS in metres, normally the UTM zone of ``center``.
        center: (lon, lat) of the scene centre, in degrees.
        year: acquisition year: sets the date, illumination, crop phenology and conversions shown.
        seed: the world's seed.
        nlcd: also write ``nlcd.tif`` covering the scene (300 m margin).
        nlcd_year: land-cover year of the NLCD (default: ``year``); if earlier, the conversions in between
            are written to ``conversions.geojson``.
        name: file stem of the NAIP raster.
        conversion_rate: the world's yearly hazard of conversion to Developed (see :class:`SyntheticWorld`).
        conversions_after: conversions happen after this year (see :class:`SyntheticWorld`).
        collar_m: width of the nodata collar at its narrowest, in metres (default 0.5% of the size; 0 for
            none).
        progress: called as ``progress(blocks_done, blocks_total)`` while rendering.

    Returns:
        The paths written and a summary of the scene.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(seed, conversion_rate, conversions_after)
    grid = _scene_grid(size_m, resolution, crs, center, collar_m)
    path = out / f"{name}.tif"
    date, counts = _render_scene(world, grid, int(year), path, progress)
    nlcd_year = int(year if nlcd_year is None else nlcd_year)
    nlcd_path = conversions = None
    if nlcd:
        nlcd_path = _write_nlcd(out / "nlcd.tif", world, _footprint_in_world([grid]), nlcd_year, 300.0)
    if nlcd_year < year:
        conversions = _write_conversions(out / "conversions.geojson", world, _footprint_in_world([grid]),
                                         nlcd_year, int(year), 5.0)
    shares, nodata = _shares(counts)
    return SyntheticScene(naip=path, nlcd=nlcd_path, conversions=conversions, year=int(year), date=date,
                          crs=grid.crs.to_string(), bounds=grid.bounds, shape=(grid.height, grid.width),
                          class_shares=shares, nodata_share=nodata)


def make_years(out_dir: PathLike, years: Sequence[int] = (2010, 2016), *,
               size_m: float | tuple[float, float] = 4480.0, resolution: float = 1.0,
               crs: str | CRS = "EPSG:26919", center: tuple[float, float] = DEFAULT_CENTER, seed: int = 0,
               conversion_rate: float = 0.008, conversions_after: int = 2000, collar_m: float | None = None,
               progress: Callable[[int, int], None] | None = None) -> SyntheticSeries:
    """Write a time series of one place: ``naip_<year>.tif`` per year, ``nlcd.tif``, ``conversions.geojson``.

    Every year uses the same pixel grid. The NLCD shows the first year's land cover; the conversions file
    lists the parcel parts that become Developed in each later year (up to the last), the truth for change
    and trend studies. Between years the imagery also changes in illumination, crop state and lawn
    greenness, as real NAIP does.

    Args:
        out_dir: output directory (created if missing).
        years: acquisition years, at least one; sorted and deduplicated.
        size_m, resolution, crs, center, seed, conversion_rate, conversions_after, collar_m: as in
            :func:`make_scene`.
        progress: called as ``progress(blocks_done, blocks_total)`` over all years.

    Returns:
        The scenes by year, the NLCD and the conversions paths.
    """
    years = sorted({int(y) for y in years})
    if not years:
        raise InputError("give at least one year")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = SyntheticWorld(seed, conversion_rate, conversions_after)
    grid = _scene_grid(size_m, resolution, crs, center, collar_m)
    per_year = math.ceil(grid.width / _BLOCK) * math.ceil(grid.height / _BLOCK)
    scenes: dict[int, SyntheticScene] = {}
    for i, year in enumerate(years):
        report = None if progress is None else (lambda done, _, i=i: progress(i * per_year + done,
                                                                             per_year * len(years)))
        path = out / f"naip_{year}.tif"
        date, counts = _render_scene(world, grid, year, path, report)
        shares, nodata = _shares(counts)
        scenes[year] = SyntheticScene(naip=path, nlcd=out / "nlcd.tif", conversions=None, year=year, date=date,
                                      crs=grid.crs.to_string(), bounds=grid.bounds,
                                      shape=(grid.height, grid.width), class_shares=shares,
                                      nodata_share=nodata)
    cover = _footprint_in_world([grid])
    nlcd_path = _write_nlcd(out / "nlcd.tif", world, cover, years[0], 300.0)
    conversions = _write_conversions(out / "conversions.geojson", world, cover, years[0], years[-1], 5.0)
    scenes = {year: replace(scene, conversions=conversions) for year, scene in scenes.items()}
    return SyntheticSeries(scenes=scenes, nlcd=nlcd_path, conversions=conversions)


#: Centres of :func:`make_utm_pair`'s scenes: either side of the UTM 18/19 boundary (72 W), ~9 km apart.
UTM_PAIR = (("EPSG:26918", (-72.06, 42.35)), ("EPSG:26919", (-71.94, 42.35)))


def make_utm_pair(out_dir: PathLike, *, size_m: float = 4480.0, resolution: float = 1.0, year: int = 2016,
                  seed: int = 0, conversion_rate: float = 0.008) -> tuple[list[SyntheticScene], Path]:
    """Write two scenes of one world in different UTM zones (18N and 19N) and one NLCD covering both.

    Files: ``naip_18.tif`` (EPSG:26918), ``naip_19.tif`` (EPSG:26919) and ``nlcd.tif`` (EPSG:5070).

    Returns:
        The two scenes and the NLCD path.
    """
    out = Path(out_dir)
    scenes = [make_scene(out, size_m=size_m, resolution=resolution, crs=crs, center=center, year=year,
                         seed=seed, nlcd=False, name=f"naip_{crs[-2:]}", conversion_rate=conversion_rate)
              for crs, center in UTM_PAIR]
    nlcd_path = make_nlcd(out / "nlcd.tif", scenes=[s.naip for s in scenes], seed=seed, year=year,
                          conversion_rate=conversion_rate)
    scenes = [replace(scene, nlcd=nlcd_path) for scene in scenes]
    return scenes, nlcd_path
