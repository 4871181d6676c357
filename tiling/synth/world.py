"""The synthetic world: NLCD land cover as a function of EPSG:5070 location and year.

Jittered-grid Voronoi *parcels* on domain-warped coordinates (so boundaries are irregular and ignore any chip
grid), grouped into *zones* whose theme (urban, agricultural, forest, barrens, scrub, wet) sets the parcel
land-cover odds, plus a network of major roads. A parcel half can be converted to Developed in a given year (a
seeded hazard), which gives time series with a known change schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rasterio.crs import CRS

from tiling.errors import InputError
from tiling.synth.noise import Cells, hash_keys, rehash, unit, value_noise, worley

#: CRS of the world and of every NLCD raster written here.
WORLD_CRS = CRS.from_epsg(5070)

#: The NLCD codes the world uses (no ice, no Alaska-only classes).
WORLD_CODES = (11, 21, 22, 23, 24, 31, 41, 42, 43, 52, 71, 81, 82, 90, 95)

#: Half width of a major road's corridor (pavement + verges), in metres; mapped as Developed, Open Space.
ROAD_HALF_WIDTH = 15.0

_PARCEL_SPACING = 320.0  # mean parcel diameter (m): most parcels exceed a 224 m chip
_ZONE_SPACING = 960.0  # zones group ~9 parcels under one land-use theme
_ROAD_SPACING = 1700.0  # major roads, per direction
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


def _choice(u: np.ndarray, weights: dict[int, float]) -> np.ndarray:
    """Map uniforms to keys of ``weights`` in proportion to the weights."""
    keys = np.array(list(weights))
    cumulative = np.cumsum(list(weights.values()))
    return keys[np.searchsorted(cumulative / cumulative[-1], u, side="right").clip(0, len(keys) - 1)]




@dataclass
class Sample:
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

    def take(self, index: np.ndarray) -> Sample:
        """The sample restricted to ``index``."""
        return Sample(**{name: value[index] for name, value in vars(self).items()})


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
        angle = unit(hash_keys(self.seed, 7001)) * math.pi
        self._road_angles = (float(angle), float(angle + math.pi / 2 + (unit(hash_keys(self.seed, 7002)) - 0.5)
                                                 * 0.5))

    def _key(self, salt: int) -> int:
        return int(hash_keys(self.seed, salt) & np.uint64(0x7FFFFFFFFFFF))

    # -- geometry ------------------------------------------------------------------------------------

    def _warp(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Domain-warped coordinates: parcel edges wander by tens of metres instead of being straight."""
        wx = (value_noise(x, y, 230.0, self._key(1)) - 0.5) * 130 + (
            value_noise(x, y, 55.0, self._key(2)) - 0.5) * 28
        wy = (value_noise(x, y, 230.0, self._key(3)) - 0.5) * 130 + (
            value_noise(x, y, 55.0, self._key(4)) - 0.5) * 28
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
            h = hash_keys(self._key(10 + family), k)
            amp = 40 + 160 * unit(rehash(h, 2))
            base = (k + 0.25 + 0.5 * unit(rehash(h, 4))) * _ROAD_SPACING
            near = (unit(h) < 0.75) & (base + amp + ROAD_HALF_WIDTH > u.min()) & (
                base - amp - ROAD_HALF_WIDTH < u.max())
            if not near.any():
                continue
            v = -x * s + y * c
            for j in np.flatnonzero(near):
                # Each road meanders around a straight line: u = base + amp * sin(2 pi v / wavelength + phase).
                phase = unit(rehash(h[j], 1)) * 2 * math.pi
                wavelength = 2500 + 3000 * unit(rehash(h[j], 3))
                centre = base[j] + amp[j] * np.sin(v * (2 * math.pi / wavelength) + phase)
                np.minimum(result, np.abs(u - centre), out=result, casting="unsafe")
        return result

    def _parcels(self, x: np.ndarray, y: np.ndarray, second_cell: bool = False) -> tuple[
            Cells, dict[str, np.ndarray]]:
        """Parcel cells of points and the attributes of every parcel in the lattice table."""
        wx, wy = self._warp(x, y)
        cells = worley(wx, wy, _PARCEL_SPACING, self._key(20), second_cell=second_cell)
        h = cells.hashes
        # Zones are Voronoi cells of a coarser grid evaluated at parcel seed points, so a parcel never
        # straddles two zones and zone edges follow parcel edges.
        zones = worley(cells.fx, cells.fy, _ZONE_SPACING, self._key(21), jitter=0.8)
        zone_hash = zones.hash
        # Themes follow a low-discrepancy (R2) sequence over the zone lattice, lightly jittered: any few
        # kilometres hold every theme in about its share, where independent draws would leave some scenes
        # without fields or barren land.
        zx = np.floor(zones.fx[zones.cell] / _ZONE_SPACING)
        zy = np.floor(zones.fy[zones.cell] / _ZONE_SPACING)
        r2 = zx * 0.7548776662466927 + zy * 0.5698402909980532 + unit(hash_keys(self.seed, 7003))
        theme = _choice((r2 + 0.05 * (unit(zone_hash) - 0.5)) % 1.0, {i: t[1] for i, t in enumerate(_THEMES)})
        u = unit(rehash(h, 2))
        code = np.zeros(h.shape, dtype=np.uint8)
        for i, (_, _, odds) in enumerate(_THEMES):
            mine = theme == i
            code[mine] = _choice(u[mine], odds)
        # Conversions: each parcel half (split by a line through the seed point) has its own year.
        angle = unit(rehash(h, 3)) * 2 * math.pi
        eligible = np.isin(code, _CONVERTIBLE)
        rate = self.conversion_rate * _HAZARD_WEIGHT[theme]
        years = []
        for half in (0, 1):
            w = unit(rehash(h, 4 + half))
            with np.errstate(divide="ignore"):
                wait = -np.log1p(-w) / rate
            year = np.where(eligible & (rate > 0) & (wait < 200), self.conversions_after + 1 + np.floor(wait), 0)
            years.append(year.astype(np.int32))
        target = _choice(unit(rehash(h, 6)), {22: 0.55, 23: 0.25, 21: 0.10, 24: 0.10}).astype(np.uint8)
        attributes = {"code": code, "theme": theme, "zone": zone_hash, "anchor_x": zones.fx[zones.cell],
                      "anchor_y": zones.fy[zones.cell], "cos": np.cos(angle), "sin": np.sin(angle),
                      "year0": years[0], "year1": years[1], "target": target}
        return cells, attributes

    def _conversion(self, cells: Cells, parcel: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per point: the half of its parcel it lies in (0/1) and that half's conversion year (0: never)."""
        c = cells.cell
        side = ((cells.dx * parcel["cos"][c] + cells.dy * parcel["sin"][c]) > 0).astype(np.int8)
        year = np.where(side == 0, parcel["year0"][c], parcel["year1"][c])
        return side, year

    def _cover(self, x: np.ndarray, y: np.ndarray, cells: Cells, parcel: dict[str, np.ndarray],
               year: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Land cover in ``year``: (NLCD codes, road distance, conversion year of the point's part)."""
        c = cells.cell
        _, conv_year = self._conversion(cells, parcel)
        converted = (conv_year > 0) & (conv_year <= year)
        code = np.where(converted, parcel["target"][c], parcel["code"][c])
        road = self._road_distance(x, y)
        # Road corridors are mapped as Developed, Open Space (as in the real NLCD) except where a more
        # intense development class already holds the land, or on water (no roads across lakes).
        corridor = (road < ROAD_HALF_WIDTH) & ~np.isin(code, (11, 22, 23, 24))
        code = np.where(corridor, 21, code).astype(np.uint8)
        return code, road, np.where(converted, conv_year, 0)

    def sample(self, x: np.ndarray, y: np.ndarray, year: int) -> Sample:
        """Land cover and the attributes rendering needs at points (EPSG:5070 metres) in ``year``."""
        x = np.asarray(x, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        if x.size == 0:  # e.g. a block wholly in the nodata collar
            empty = np.empty(0, dtype=np.float32)
            return Sample(x=x, y=y, code=np.empty(0, np.uint8), parcel=np.empty(0, np.uint64),
                           zone=np.empty(0, np.uint64), anchor_x=x, anchor_y=y, edge=empty,
                           neighbour=np.empty(0, np.uint8), road=empty, age=np.empty(0, np.int16))
        cells, parcel = self._parcels(x, y, second_cell=True)
        code, road, conv_year = self._cover(x, y, cells, parcel, year)
        c, c2 = cells.cell, cells.cell2
        assert c2 is not None
        # Distance to the Voronoi edge between the two nearest seed points (in warped metres).
        gap = np.hypot(cells.fx[c] - cells.fx[c2], cells.fy[c] - cells.fy[c2]).astype(np.float32)
        edge = (cells.d2 ** 2 - cells.d1 ** 2) / (2 * np.maximum(gap, 1e-3))
        return Sample(x=x, y=y, code=code, parcel=cells.hash, zone=parcel["zone"][c],
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
        part = hash_keys(cells.hash, side)
        road = self._road_distance(x, y) < ROAD_HALF_WIDTH
        year = np.where(road, 0, year)
        c = cells.cell
        return part, year, parcel["code"][c], parcel["target"][c]


