"""Rendering: land cover -> NAIP-like red, green, blue, near-infrared digital numbers.

Textures are anchored to world coordinates (roofs and streets, tree crowns, field rows, bushes, ...); each
year brings its own illumination, haze and phenology (:class:`Look`), and every pixel its sensor noise.

Two presets (:data:`PRESETS`): ``default``, the scenes of the demo and the tests, where colour alone tells the
classes apart; and ``hard``, a world made to rank methods: every parcel gets its own radiometry (brightness,
tint, NIR vigour, contrast: roof materials, crop stages, forest types, soils), years differ more (sun, sensor,
haze, phenology), and patches of the neighbouring parcel's cover lie inside parcels (mixed chips, and cover the
30 m land-cover map does not show). Band statistics then overlap between classes, and texture is what is left
to tell them apart (:func:`parcel_radiometry`, :func:`inclusions`).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

from tiling.errors import InputError
from tiling.synth.noise import GOLDEN, fbm, hash_keys, mix, rehash, unit, value_noise, worley
from tiling.synth.world import ROAD_HALF_WIDTH, Sample

_PAVEMENT_HALF_WIDTH = 5.5
_DEVELOPED = (21, 22, 23, 24)

#: Rendering presets: the default world, and one hard enough to rank methods (see the module docstring).
PRESETS = ("default", "hard")


def check_preset(preset: str) -> str:
    """``preset`` if it is one of :data:`PRESETS`, else a one-line InputError."""
    if preset not in PRESETS:
        raise InputError(f"unknown synthetic preset {preset!r}; valid: {', '.join(PRESETS)}")
    return preset


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
class Look:
    """One year's acquisition: illumination, haze, phenology (all seeded by world seed and year)."""

    gain: np.ndarray  # (4, 1) band gains
    offset: np.ndarray  # (4, 1) band offsets (haze lifts blue most)
    greenness: float  # 0 dry summer .. 1 lush: shifts grass and crops
    leaf: float  # deciduous NIR multiplier
    date: dt.date

    @classmethod
    def of(cls, seed: int, year: int, preset: str = "default") -> Look:
        """The acquisition of ``year`` in the world of ``seed``; the ``hard`` preset varies more by year."""
        h = hash_keys(seed, year, 9001)
        u = [float(unit(rehash(h, i))) for i in range(12)]
        date = dt.date(year, 6, 15) + dt.timedelta(days=int(u[4] * 75))
        if check_preset(preset) == "hard":
            # Another sensor and sun each year: overall gain +-20%, band balance +-8%, NIR +-15%, heavy haze.
            gain = 0.8 + 0.4 * u[0]
            gains = np.array([gain * (0.92 + 0.16 * u[8]), gain * (0.92 + 0.16 * u[9]), gain * (0.92 + 0.16 * u[10]),
                              gain * (0.85 + 0.3 * u[1])], dtype=np.float32)[:, None]
            haze = 25 * u[2]
            offsets = np.array([haze * 0.5 - 5, haze * 0.7 - 5, haze - 5, -10 + 20 * u[3]],
                               dtype=np.float32)[:, None]
            return cls(gains, offsets, greenness=u[5], leaf=0.75 + 0.5 * u[6], date=date)
        gain = 0.92 + 0.16 * u[0]
        gains = np.array([gain, gain, gain, gain * (0.94 + 0.12 * u[1])], dtype=np.float32)[:, None]
        haze = 10 * u[2]
        offsets = np.array([haze * 0.5 - 3, haze * 0.7 - 3, haze - 3, -4 + 8 * u[3]], dtype=np.float32)[:, None]
        return cls(gains, offsets, greenness=u[5], leaf=0.9 + 0.2 * u[6], date=date)



def acquisition_date(seed: int, year: int) -> dt.date:
    """The date of the synthetic acquisition of ``year`` in the world of ``seed`` (mid June to August)."""
    return Look.of(seed, year).date

def _crowns(s: Sample, spacing: float, key: int, radius: tuple[float, float], cover: float = 1.0) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """Tree or bush crowns on a jittered grid, lit from the south-east.

    Returns:
        ``(inside, shade, crown_hash)``: whether a point is under a crown, a brightness factor that is
        1 on the lit side of a crown and ~0.55 on its shadowed side, and the crown's hash (for its colour).
    """
    cells = worley(s.x, s.y, spacing, key)
    h = cells.hash
    r = (radius[0] + (radius[1] - radius[0]) * unit(h)).astype(np.float32)
    present = unit(rehash(h, 1)) < cover
    d = cells.d1 / r
    inside = present & (d < 1)
    # A dome lit from the south-east: brighter where the surface faces the sun.
    lit = np.clip(1 - ((cells.dx - 0.35 * r) ** 2 + (cells.dy + 0.35 * r) ** 2) / (1.8 * r * r), 0, 1)
    shade = (0.55 + 0.55 * lit).astype(np.float32)
    return inside, shade, h


def _render_forest(s: Sample, look: Look, key: int, code: int) -> np.ndarray:
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
        crown = np.where(unit(rehash(h, 2))[None] < (0.55 if code == 43 else 0.7), deciduous, _EVERGREEN)
    variation = (0.85 + 0.3 * unit(rehash(h, 3))).astype(np.float32)
    color = crown * (shade * variation)[None]
    gap = _CANOPY_GAP if code != 90 else _blend(_WATER, _CANOPY_GAP, fbm(s.x, s.y, 12, key + 1, 2))
    color = np.where(inside[None], color, gap)
    # Stand-scale variation (age, density) over tens of metres.
    stand = 0.88 + 0.24 * fbm(s.x, s.y, 60, key + 2, 2)
    return color * stand[None]


def _render_developed(s: Sample, look: Look, key: int, code: int) -> np.ndarray:
    """Street grids (one per zone) and lots with houses, driveways, lawns and yard trees.

    Commercial superblocks (24) have flat roofs and striped parking lots; parks (21) have footpaths and few
    buildings. Newly converted land shows raw soil and few trees for its first years.
    """
    n = s.x.size
    zone = s.zone
    angle = (unit(rehash(zone, 7)) * math.pi / 2).astype(np.float64)
    c, sn = np.cos(angle), np.sin(angle)
    dx, dy = s.x - s.anchor_x, s.y - s.anchor_y
    u, v = dx * c + dy * sn, -dx * sn + dy * c
    block_u = 100 + 50 * unit(rehash(zone, 8))
    block_v = 62 + 24 * unit(rehash(zone, 9))
    if code == 24:  # commercial superblocks
        block_u, block_v = block_u * 2, block_v * 2
    iu, iv = np.floor(u / block_u), np.floor(v / block_v)
    bu, bv = u - iu * block_u, v - iv * block_v  # position inside the block
    to_street = np.minimum(np.minimum(bu, block_u - bu), np.minimum(bv, block_v - bv)).astype(np.float32)
    half_street = {21: 3.0, 22: 4.5, 23: 5.0, 24: 7.0}[code]
    color = np.empty((4, n), dtype=np.float32)
    # Lawns: mown grass, greener in a lush year, with brown patches; new developments have raw soil.
    grass = _blend(_LAWN, _DRY_GRASS, 0.45 * (1 - look.greenness) + 0.4 * fbm(s.x, s.y, 25, key, 2) - 0.15)
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
    lot = hash_keys(key, zone, iu.astype(np.int64), iv.astype(np.int64), il.astype(np.int64), row)
    lu = bu - (il + 0.5) * lot_len  # lot-centred coordinates; lv grows away from the lot's street
    lv = np.where(row == 0, bv, block_v - bv)
    built = unit(rehash(lot, 1)) < {21: 0.15, 22: 0.92, 23: 0.97, 24: 0.95}[code]
    built &= ~young | (unit(rehash(lot, 9)) < 0.5 + 0.25 * age)
    if code == 24:
        width = lot_len * (0.45 + 0.35 * unit(rehash(lot, 2)))
        depth = (block_v / 2) * (0.45 + 0.3 * unit(rehash(lot, 3)))
        setback = half_street + 8 + (block_v / 2 - depth - half_street - 10) * unit(rehash(lot, 4))
    else:
        width = np.minimum(lot_len - 5, 9 + 7 * unit(rehash(lot, 2)))
        depth = 8 + 5 * unit(rehash(lot, 3))
        setback = half_street + 6 + 6 * unit(rehash(lot, 4))
    shift = (unit(rehash(lot, 5)) - 0.5) * np.maximum(lot_len - width - 6, 0)
    house_u = np.abs(lu - shift) < width / 2
    house_v = (lv > setback) & (lv < setback + depth)
    roof = built & house_u & house_v
    palette = _ROOFS[(unit(rehash(lot, 6)) * len(_ROOFS)).astype(np.int64)].T  # (3, n)
    if code == 24:
        palette = np.where(unit(rehash(lot, 7))[None] < 0.7, _ROOFS[8][:, None] * 0.95, palette)
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
        car &= unit(hash_keys(key + 1, np.floor(lu / 2.7).astype(np.int64), np.floor(
            (lv - half_street) / 18).astype(np.int64), lot)) < 0.55
        lot_paint = _blend(_DARK_ASPHALT, _ASPHALT, fbm(s.x, s.y, 30, key + 3, 1))
        color = np.where(paved[None], lot_paint, color)
        color = np.where(stall_line[None], _rgbn(210, 210, 200, 190), color)
        car_rgb = _ROOFS[(unit(hash_keys(key + 2, np.floor(lu / 2.7).astype(np.int64), lot))
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
    tree = inside & (unit(rehash(h, 5)) < tree_cover) & ~roof
    tree_color = np.where(unit(rehash(h, 2))[None] < 0.75, _DECIDUOUS, _EVERGREEN) * shade[None]
    color = np.where(tree[None], tree_color, color)
    color = np.where(roof[None], roof_color, color)
    # Streets with concrete sidewalks (parks get narrow footpaths only).
    street = to_street < half_street
    sidewalk = (to_street >= half_street) & (to_street < half_street + 1.5) & (code != 21)
    pavement = _blend(_ASPHALT, _DARK_ASPHALT, fbm(s.x, s.y, 40, key + 5, 1))
    if code == 21:
        pavement = _CONCRETE * 0.9
    color = np.where(street[None], pavement, color)
    color = np.where(sidewalk[None], _CONCRETE, color)
    return color


def _render_roads(s: Sample, look: Look, key: int) -> np.ndarray:
    """Major roads: two-lane pavement with painted lines, mown verges to the corridor's edge."""
    verge = _blend(_LAWN, _DRY_GRASS, 0.3 + 0.4 * fbm(s.x, s.y, 20, key, 2) * (1 - look.greenness))
    pavement = _blend(_DARK_ASPHALT, _ASPHALT, fbm(s.x, s.y, 50, key + 1, 1))
    color = np.where((s.road < _PAVEMENT_HALF_WIDTH)[None], pavement, verge)
    lines = (np.abs(s.road - 5.0) < 0.35) | (s.road < 0.3)
    return np.where(lines[None], _rgbn(200, 195, 160, 175), color)


def _field_frame(s: Sample, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates across (a) and along (b) each field's rows; the direction is per parcel."""
    angle = unit(rehash(s.parcel, salt)) * math.pi
    c, sn = np.cos(angle), np.sin(angle)
    return -s.x * sn + s.y * c, s.x * c + s.y * sn


def _hedgerows(s: Sample, color: np.ndarray, key: int) -> np.ndarray:
    """Tree lines along field edges, on some parcels (a very New England look)."""
    has = (unit(rehash(s.parcel, 40)) < 0.6) & (s.edge < 5.0)
    if not has.any():
        return color
    inside, shade, _ = _crowns(s, 5.0, key, (2.0, 3.5))
    trees = has & inside
    return np.where(trees[None], _DECIDUOUS * shade[None], color)


def _render_cultivated(s: Sample, look: Look, key: int, code: int, year: int) -> np.ndarray:
    """Fields in strips along one direction per parcel; each strip's crop state changes by year."""
    a, b = _field_frame(s, 30)
    strip_width = 35 + 70 * unit(rehash(s.parcel, 31))
    strip = np.floor(a / strip_width).astype(np.int64)
    state_hash = hash_keys(key, s.parcel.view(np.int64), strip, year)
    u = unit(state_hash)
    grain = fbm(s.x, s.y, 3, key + 1, 2) - 0.5
    patches = fbm(s.x, s.y, 45, key + 2, 2)
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


def _render_herbaceous(s: Sample, look: Look, key: int, code: int) -> np.ndarray:
    """Patchy grass, greener or drier by year, with lone shrubs; marshes (95) with pools of open water."""
    patches = fbm(s.x, s.y, 50, key, 3)
    grain = fbm(s.x, s.y, 2.5, key + 1, 2) - 0.5
    if code == 95:  # marsh: reeds with pools and channels of open water
        reeds = _blend(_rgbn(92, 108, 70, 150), _rgbn(64, 78, 56, 110), patches)
        pools = fbm(s.x, s.y, 30, key + 2, 3) < 0.33
        color = np.where(pools[None], _WATER * 1.1, reeds)
    else:
        dryness = np.clip(patches * 1.2 - 0.1 + 0.35 * (1 - look.greenness), 0, 1)
        color = _blend(_GREEN_GRASS, _DRY_GRASS, dryness)
        # Lone shrubs and trees dotted across old fields.
        inside, shade, _ = _crowns(s, 14.0, key + 3, (1.5, 3.0), cover=0.1)
        color = np.where(inside[None], _SHRUB * shade[None], color)
    return color * (1 + 0.12 * grain)[None]


def _render_shrub(s: Sample, look: Look, key: int) -> np.ndarray:
    """Bushes scattered on light soil and dry grass, denser in places."""
    ground = _blend(_LIGHT_SOIL, _DRY_GRASS * 0.9, fbm(s.x, s.y, 30, key, 3))
    grain = fbm(s.x, s.y, 2, key + 1, 1) - 0.5
    cover = 0.4 + 0.35 * fbm(s.x, s.y, 60, key + 2, 2)
    inside, shade, h = _crowns(s, 3.6, key + 3, (0.9, 1.7))
    bush = inside & (unit(rehash(h, 6)) < cover)
    bush_color = _SHRUB * (0.8 + 0.4 * unit(rehash(h, 7))).astype(np.float32)[None]
    color = np.where(bush[None], bush_color * shade[None], ground * (1 + 0.1 * grain)[None])
    return color


def _render_barren(s: Sample, look: Look, key: int) -> np.ndarray:
    """Bright, low-texture ground: sand and gravel plains, or pits and quarries cut into benches."""
    kind = unit(rehash(s.parcel, 50))
    sand = np.where((kind < 0.55)[None], _rgbn(204, 192, 166, 186), _rgbn(176, 174, 166, 170))
    relief = fbm(s.x, s.y, 90, key, 3)
    grain = fbm(s.x, s.y, 1.5, key + 1, 1) - 0.5
    color = sand * (0.9 + 0.16 * relief + 0.07 * grain)[None]
    # Pits and quarries: stepped contours of the relief cast thin, broken shadows along the benches.
    quarry = kind > 0.6
    wobble = fbm(s.x, s.y, 25, key + 2, 2)
    bench = quarry & (((relief * 7 + 0.15 * wobble) % 1) < 0.03 + 0.04 * wobble)
    color = np.where(bench[None], color * 0.74, color)
    # Vehicle tracks: thin darker lines that wander across the open ground.
    track = ~quarry & (np.abs(value_noise(s.x, s.y, 140, key + 3) - 0.5) < 0.006)
    color = np.where(track[None], color * 0.86, color)
    # Sparse debris and weeds.
    specks = fbm(s.x, s.y, 2.0, key + 4, 1) > 0.9
    return np.where(specks[None], _SHRUB * 1.1, color)


def _render_water(s: Sample, look: Look, key: int) -> np.ndarray:
    """Dark water, near-black in NIR, with turbidity and lighter shallows along the shore."""
    color = _blend(_WATER, _rgbn(44, 66, 58, 24), fbm(s.x, s.y, 60, key, 3))
    # Shallows along the shore, not along the invisible edges between two water parcels.
    shallow = np.where(s.neighbour != 11, np.clip(1 - s.edge / 8.0, 0, 1), 0).astype(np.float32)
    return _blend(color, _rgbn(70, 82, 66, 60), shallow * 0.7)


def parcel_radiometry(s: Sample, year: int) -> np.ndarray:
    """(4, n) per-parcel gains of the ``hard`` preset: brightness, tint, NIR vigour, drawn per parcel.

    Brightness 0.6-1.4 (roof materials, soils, stand age), per-band tint +-15%, NIR 0.6-1.4 (vigour, forest
    type, crop stage), a part of which changes from year to year (phenology).
    """
    h = s.parcel
    brightness = 0.6 + 0.8 * unit(rehash(h, 60))
    gains = np.empty((4, h.size), dtype=np.float32)
    for band in range(3):
        gains[band] = brightness * (0.85 + 0.3 * unit(rehash(h, 61 + band)))
    yearly = unit(hash_keys(h.view(np.int64), year, 67))
    gains[3] = brightness * (0.6 + 0.6 * unit(rehash(h, 64)) + 0.2 * yearly)
    return gains


def inclusions(s: Sample, seed: int) -> np.ndarray:
    """Points of the ``hard`` preset rendered as the nearest other parcel's cover: blobs of tens of metres
    (a wood lot in a field, a house in the forest, a pond), on up to a third of the ground of most parcels."""
    share = unit(rehash(s.parcel, 66))
    blobs = fbm(s.x, s.y, 40, seed * 1000 + 777, 2)
    return (s.neighbour != s.code) & (share < 0.8) & (blobs > 0.52 + 0.15 * share)


def render(s: Sample, look: Look, seed: int, year: int, preset: str = "default") -> np.ndarray:
    """(4, n) float32 digital numbers for sampled points, before illumination and noise."""
    out = np.empty((4, s.x.size), dtype=np.float32)
    on_road = s.road < ROAD_HALF_WIDTH
    hard = check_preset(preset) == "hard"
    codes = np.where(inclusions(s, seed), s.neighbour, s.code) if hard else s.code
    for code in np.unique(codes):
        code = int(code)
        index = np.flatnonzero((codes == code) & ~on_road)
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
    if hard:
        # contrast around a mid grey, then the parcel's gains: band means and spreads overlap between classes
        ground = np.flatnonzero(~on_road)
        part = s.take(ground)
        contrast = (0.6 + 0.8 * unit(rehash(part.parcel, 68))).astype(np.float32)
        out[:, ground] = (100.0 + (out[:, ground] - 100.0) * contrast[None]) * parcel_radiometry(part, year)
    index = np.flatnonzero(on_road)
    if index.size:
        out[:, index] = _render_roads(s.take(index), look, seed * 1000 + 999)
    return out




def sensor_noise(seed: int, year: int, col: int, row: int, ncols: int, nrows: int) -> np.ndarray:
    """(4, n) float32 pixel noise (triangular, sd ~ 2.5 DN), from one 64-bit hash per pixel."""
    rows = np.arange(row, row + nrows, dtype=np.uint64)[:, None] << np.uint64(32)
    cols = np.arange(col, col + ncols, dtype=np.uint64)[None, :]
    base = hash_keys(seed, year, 424242)
    with np.errstate(over="ignore"):
        h = mix((rows | cols).ravel() * GOLDEN + base)
    noise = np.empty((4, h.size), dtype=np.float32)
    byte = np.uint64(0xFF)
    for band in range(4):
        a = ((h >> np.uint64(16 * band)) & byte).astype(np.float32)
        b = ((h >> np.uint64(16 * band + 8)) & byte).astype(np.float32)
        noise[band] = (a + b - 255.0) * (6.0 / 255.0)
    return noise

