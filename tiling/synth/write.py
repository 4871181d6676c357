"""Writing synthetic rasters: NAIP-like scenes rendered block by block into tiled GeoTIFFs, NLCD-like land
cover on the NLCD grid, and the conversions to Developed traced into GeoJSON.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.enums import ColorInterp, Resampling
from rasterio.windows import Window

from tiling.classes import NLCD_COLORS, NLCD_NAMES, NLCD_NODATA
from tiling.errors import InputError
from tiling.io import atomic_path
from tiling.synth.layout import SceneGrid, bilinear, snap_to_nlcd, valid_mask
from tiling.synth.render import Look, render, sensor_noise
from tiling.synth.world import WORLD_CODES, WORLD_CRS, SyntheticWorld

#: GeoTIFF tile side and rendering block side, in pixels.
BLOCK = 512
_GDAL_CACHE_BYTES = 64 * 2**20

_NAIP_PROFILE = {
    "driver": "GTiff", "count": 4, "dtype": "uint8", "nodata": 0, "tiled": True, "blockxsize": BLOCK,
    "blockysize": BLOCK, "compress": "deflate", "predictor": 2, "interleave": "pixel", "photometric": "RGB",
    "alpha": "unspecified", "bigtiff": "if_safer",
}


@dataclass(frozen=True)
class NaipFormat:
    """How a synthetic NAIP scene is stored: the variants real NAIP comes in.

    Attributes:
        bands: 4 (red, green, blue, NIR: NAIP since about 2009) or 3 (red, green, blue: older NAIP).
        nodata: how the collar is marked: ``"zero"`` (0 in every band, nodata 0 declared: NAIP's way),
            ``"alpha"`` (an alpha band after the image bands, as ``gdalwarp -dstalpha`` writes) or ``"mask"`` (a
            GDAL internal nodata mask). With a
            mask or an alpha band the collar holds imagery, as a mosaic's masked-out overlap does: only the
            mask says it has no data.
        date_in: where the acquisition date is recorded: ``"tag"`` (the ``ACQUISITION_DATE`` tag), ``"name"``
            (``_YYYYMMDD`` at the end of the file name, like NAIP's own names) or ``"none"`` (nowhere, like
            most hand-made clips and mosaics).
    """

    bands: int = 4
    nodata: str = "zero"
    date_in: str = "tag"

    def __post_init__(self) -> None:
        if self.bands not in (3, 4):
            raise InputError(f"a NAIP-like scene has 3 (RGB) or 4 (RGB + NIR) bands, not {self.bands}")
        if self.nodata not in NODATA_KINDS:
            raise InputError(f"unknown nodata kind {self.nodata!r}; choose one of {', '.join(NODATA_KINDS)}")
        if self.date_in not in DATE_PLACES:
            raise InputError(f"unknown date place {self.date_in!r}; choose one of {', '.join(DATE_PLACES)}")

    def file_name(self, stem: str, date: dt.date) -> str:
        """The scene's file name: ``<stem>.tif``, or ``<stem>_YYYYMMDD.tif`` with the date in the name."""
        return f"{stem}_{date:%Y%m%d}.tif" if self.date_in == "name" else f"{stem}.tif"


#: Ways of marking the nodata collar (see :class:`NaipFormat`).
NODATA_KINDS = ("zero", "alpha", "mask")
#: Where a scene's acquisition date can be recorded (see :class:`NaipFormat`).
DATE_PLACES = ("tag", "name", "none")


def render_naip(world: SyntheticWorld, grid: SceneGrid, year: int, path: Path,
                progress: Callable[[int, int], None] | None = None,
                fmt: NaipFormat = NaipFormat(), preset: str = "default") -> tuple[dt.date, np.ndarray]:
    """Render one scene block by block into ``path``; returns the date and per-code sample counts.

    Pixels coarser than 1 m average ``sub x sub`` samples, as a sensor integrates the ground: point-sampling
    1 m textures at 4 m would alias them into noise. Every pixel's value is a function of its place alone, so
    the variants of :class:`NaipFormat` hold the same values wherever they have data. ``preset`` is the
    rendering preset (:data:`tiling.synth.render.PRESETS`).
    """
    look = Look.of(world.seed, year, preset)
    to_world = Transformer.from_crs(grid.crs, WORLD_CRS, always_xy=True)
    to_lonlat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    sub = min(4, max(1, math.ceil(abs(grid.transform.a) - 1e-6)))
    block = BLOCK // sub  # keeps the samples per block (and memory) the same at every resolution
    counts = np.zeros(257, dtype=np.int64)  # NLCD codes, then nodata
    step = 64 // sub
    blocks = [(c, r) for r in range(0, grid.height, block) for c in range(0, grid.width, block)]
    zero_collar = fmt.nodata == "zero"
    alpha = fmt.nodata == "alpha"
    profile = dict(_NAIP_PROFILE, width=grid.width, height=grid.height, crs=grid.crs, transform=grid.transform,
                   count=fmt.bands + alpha, nodata=0 if zero_collar else None)
    # GDAL's block cache defaults to 5% of RAM and would hold most of a large scene before flushing it;
    # a small cache keeps memory flat whatever the scene size (blocks are written once, in order).
    with atomic_path(path) as tmp, rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_BYTES, GDAL_TIFF_INTERNAL_MASK=True), \
            rasterio.open(tmp, "w", **profile) as dst:
        for done, (col, row) in enumerate(blocks):
            ncols, nrows = min(block, grid.width - col), min(block, grid.height - row)
            nx, ny = grid.nodes(col, row, ncols, nrows, step, to_world)
            x = bilinear(nx, step, nrows, ncols, sub).ravel()
            y = bilinear(ny, step, nrows, ncols, sub).ravel()
            valid = valid_mask(grid, col, row, ncols, nrows, step, to_lonlat)
            inside = valid if sub == 1 else np.repeat(np.repeat(valid.reshape(nrows, ncols), sub, 0), sub, 1).ravel()
            sample = world.sample(x[inside], y[inside], year)
            color = np.zeros((4, inside.size), dtype=np.float32)
            color[:, inside] = render(sample, look, world.seed, year, preset)
            # A zero collar is left unrendered; a masked one holds imagery that only the mask hides. It is
            # rendered apart: texture coordinates are relative to the extent of the points rendered together,
            # and float32 rounding would otherwise move the valid pixels by a digital number here and there.
            drawn = valid
            if not zero_collar:
                drawn = np.ones_like(valid)
                collar = ~inside
                color[:, collar] = render(world.sample(x[collar], y[collar], year), look, world.seed, year,
                                          preset)
            if sub > 1:
                color = color.reshape(4, nrows, sub, ncols, sub).mean(axis=(2, 4)).reshape(4, -1)
            color = color[:, drawn] * look.gain + look.offset
            color += sensor_noise(world.seed, year, col, row, ncols, nrows)[:, drawn]
            pixels = np.zeros((4, nrows * ncols), dtype=np.uint8)
            # Valid pixels are never all-zero: 0 in every band is how NAIP marks nodata.
            pixels[:, drawn] = np.clip(np.rint(color), 1, 255).astype(np.uint8)
            window = Window(col, row, ncols, nrows)
            dst.write(pixels[:fmt.bands].reshape(fmt.bands, nrows, ncols), indexes=list(range(1, fmt.bands + 1)),
                      window=window)
            mask = np.where(valid, 255, 0).astype(np.uint8).reshape(nrows, ncols)
            if alpha:
                dst.write(mask, fmt.bands + 1, window=window)
            elif fmt.nodata == "mask":
                dst.write_mask(mask, window=window)
            counts[:256] += np.bincount(sample.code, minlength=256)
            counts[256] += int((~inside).sum())
            if progress is not None:
                progress(done + 1, len(blocks))
        names = ("red", "green", "blue", "nir")[:fmt.bands] + (("alpha",) if alpha else ())
        interp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined)[:fmt.bands]
        dst.descriptions = names
        dst.colorinterp = interp + ((ColorInterp.alpha,) if alpha else ())
        tags = {"ACQUISITION_DATE": look.date.isoformat()} if fmt.date_in == "tag" else {}
        # the default preset writes no tag: its scenes keep the bytes they had before presets existed
        preset_tag = {} if preset == "default" else {"SYNTH_PRESET": preset}
        dst.update_tags(**tags, SYNTH_YEAR=str(year), **_world_tags(world), **preset_tag)
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


def render_nlcd(path: Path, world: SyntheticWorld, cover: tuple[float, float, float, float], year: int,
                margin_m: float) -> Path:
    """Write the world's land cover in ``year`` as an NLCD-like GeoTIFF over ``cover`` (EPSG:5070) plus a margin."""
    transform, width, height = snap_to_nlcd(cover, margin_m)
    if width * height > 400_000_000:
        raise InputError(f"an NLCD of {width} x {height} cells is too large to synthesize")
    profile = {"driver": "GTiff", "count": 1, "dtype": "uint8", "nodata": NLCD_NODATA, "width": width,
               "height": height, "crs": WORLD_CRS, "transform": transform, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate", "bigtiff": "if_safer"}
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
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


def trace_conversions(path: Path, world: SyntheticWorld, cover: tuple[float, float, float, float],
                       after: int, until: int, resolution: float) -> Path:
    """Write the parcel parts converted to Developed in ``(after, until]`` over ``cover`` as GeoJSON.

    See :func:`tiling.synth.write_conversions` for the properties of each feature.
    """
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
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(collection))
    return path


