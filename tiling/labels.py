"""Per-chip land-use fractions from NLCD, computed in NLCD's own grid by nearest-neighbour sampling.

Each chip footprint is sampled on a regular lattice of ``samples x samples`` points (32 x 32 by default:
about 7 m apart on a 224 m chip, four points per 30 m NLCD cell). NLCD is warped onto that lattice with
nearest-neighbour resampling, so codes are looked up, never interpolated, and the NAIP raster is read at
the same lattice (from its overviews when it has them) to find where it has no data. Fractions are
accurate to about 1/1000 of a chip, and labeling a scene costs one small warp, not one read per chip.
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NodataShadowWarning
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from tiling.classes import NLCD_NODATA, ClassScheme, valid_nlcd_codes
from tiling.errors import InputError
from tiling.grid import ChipGrid
from tiling.io import SceneInfo, WindowPixels, describe_naip, kept_dataset, open_dataset, open_raster, read_valid

#: Largest lattice (in sample points) warped at once; bounds memory to a few tens of MB per task.
_MAX_LATTICE = 4_000_000


@dataclass(frozen=True)
class NlcdInfo:
    """What labeling needs to know about an NLCD raster."""

    source: str
    crs: rasterio.crs.CRS
    bounds: tuple[float, float, float, float]
    nodata: int


def describe_nlcd(path: str) -> NlcdInfo:
    """Open an NLCD raster and check it: one 8-bit band and a CRS."""
    with open_raster(path) as ds:
        if ds.crs is None:
            raise InputError("has no CRS (a georeferenced NLCD raster is needed)", path)
        if ds.dtypes[0] != "uint8":
            raise InputError(f"has {ds.dtypes[0]} pixels; NLCD land cover is 8-bit codes (uint8)", path)
        nodata = NLCD_NODATA if ds.nodata is None else int(ds.nodata)
        return NlcdInfo(source=path, crs=ds.crs, bounds=tuple(ds.bounds), nodata=nodata)


def check_overlap(scene: SceneInfo, nlcd: NlcdInfo) -> None:
    """Raise an :class:`InputError` naming both files when a scene and the NLCD raster do not overlap."""
    left, bottom, right, top = transform_bounds(scene.crs, nlcd.crs, *scene.bounds, densify_pts=21)
    n_left, n_bottom, n_right, n_top = nlcd.bounds
    if left >= n_right or right <= n_left or bottom >= n_top or top <= n_bottom:
        raise InputError(f"does not overlap the NLCD raster {nlcd.source}", scene.source)


@dataclass
class ChipFractions:
    """Land-cover make-up of a set of chips.

    Attributes:
        classes: (n, k) fraction of each land-use class in the chip's valid area.
        unmapped: (n,) fraction of valid area in NLCD codes that are no land-use class (water, ice).
        nodata: (n,) fraction of the chip without NAIP data or without NLCD data.
    """

    classes: np.ndarray
    unmapped: np.ndarray
    nodata: np.ndarray


def chip_fractions(scene: SceneInfo, grid: ChipGrid, ix: np.ndarray, iy: np.ndarray, nlcd: NlcdInfo | None,
                   scheme: ClassScheme, samples: int = 32, pixels: WindowPixels | None = None) -> ChipFractions:
    """Fractions of each land-use class, of unmapped codes and of nodata in the chips ``(ix, iy)``.

    Without ``nlcd`` (scoring unlabeled imagery) only the NAIP nodata fraction is measured. ``pixels``: some of
    the raster's pixels already read (:func:`tiling.io.read_pixels`); a lattice strip that samples exactly
    pixels they hold is taken from them instead of read again (see :func:`_naip_nodata`).

    Raises:
        InputError: the NLCD raster holds values that are not NLCD codes.
    """
    n, k = len(ix), len(scheme.names)
    counts = np.zeros((n, k + 2), dtype=np.int64)  # columns: unmapped, classes..., nodata
    lut = scheme.lookup_table().astype(np.int64)
    valid = valid_nlcd_codes()
    if nlcd is not None:
        valid[nlcd.nodata] = True
    step = grid.size / samples
    rows = np.unique(iy)[::-1]
    # Cells of one row share a lattice strip; several rows go into one warp while it stays small.
    widest = int(np.unique(iy, return_counts=True)[1].max()) if n else 1
    rows_per_strip = max(1, _MAX_LATTICE // (samples * samples * widest))
    with ExitStack() as stack:
        naip_ds = kept_dataset(scene.source) or stack.enter_context(open_dataset(scene.source))
        nlcd_ds = stack.enter_context(open_dataset(nlcd.source)) if nlcd is not None else None
        for start in range(0, len(rows), rows_per_strip):
            strip_rows = rows[start:start + rows_per_strip]
            members = np.flatnonzero(np.isin(iy, strip_rows))
            bounds = grid.cell_bounds(ix[members], iy[members])
            left, top = bounds[:, 0].min(), bounds[:, 3].max()
            col0 = np.rint((bounds[:, 0] - left) / step).astype(np.int64)
            row0 = np.rint((top - bounds[:, 3]) / step).astype(np.int64)
            shape = (int(row0.max()) + samples, int(col0.max()) + samples)
            transform = Affine(step, 0, left, 0, -step, top)
            if nlcd is None:
                # nodata is all there is to count: each chip's count of nodata points from the lattice's
                # summed-area table (four look-ups a chip), the counts the bincount below gives
                nodata = _window_sums(_naip_nodata(naip_ds, scene, transform, shape, pixels), row0, col0, samples)
                counts[members, k + 1] = nodata
                counts[members, 0] = samples * samples - nodata
                continue
            codes = _warp_nlcd(nlcd_ds, nlcd, transform, scene.crs, shape)
            bad = ~valid[codes]
            if bad.any():
                values = ", ".join(map(str, np.unique(codes[bad])[:8]))
                raise InputError(f"holds values that are not NLCD codes ({values}); "
                                 "is it an NLCD land-cover raster?", nlcd.source)
            category = lut[codes]
            category[codes == nlcd.nodata] = k + 1
            category[_naip_nodata(naip_ds, scene, transform, shape, pixels)] = k + 1
            # Gather every chip's samples x samples block and count categories per chip in one bincount.
            rr = row0[:, None, None] + np.arange(samples)[None, :, None]
            cc = col0[:, None, None] + np.arange(samples)[None, None, :]
            blocks = category[rr, cc].reshape(len(members), -1)
            offsets = np.arange(len(members))[:, None] * (k + 2)
            counts[members] = np.bincount((blocks + offsets).ravel(),
                                          minlength=len(members) * (k + 2)).reshape(len(members), k + 2)
    total = samples * samples
    valid_counts = total - counts[:, k + 1]
    denom = np.maximum(valid_counts, 1)[:, None]
    return ChipFractions(classes=counts[:, 1:k + 1] / denom, unmapped=counts[:, 0] / denom[:, 0],
                         nodata=counts[:, k + 1] / total)


def _window_sums(mask: np.ndarray, row0: np.ndarray, col0: np.ndarray, side: int) -> np.ndarray:
    """How many points of ``mask`` are set in each ``side`` x ``side`` window at ``(row0, col0)``."""
    height, width = mask.shape
    if height % side == 0 and width % side == 0 and not (row0 % side).any() and not (col0 % side).any():
        # windows on a lattice of their own size (chips as far apart as they are wide): one sum per square
        squares = mask.reshape(height // side, side, width // side, side).sum(axis=(1, 3), dtype=np.int64)
        return squares[row0 // side, col0 // side]
    table = np.zeros((height + 1, width + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
    r1, c1 = row0 + side, col0 + side
    return table[r1, c1] - table[row0, c1] - table[r1, col0] + table[row0, col0]


def _warp_nlcd(nlcd_ds: rasterio.DatasetReader, nlcd: NlcdInfo, transform: Affine, crs, shape) -> np.ndarray:
    """NLCD codes at the lattice points (nearest neighbour); nodata outside the NLCD raster."""
    out = np.full(shape, nlcd.nodata, dtype=np.uint8)
    reproject(source=rasterio.band(nlcd_ds, 1), destination=out, src_nodata=nlcd.nodata,
              dst_transform=transform, dst_crs=crs, dst_nodata=nlcd.nodata, resampling=Resampling.nearest)
    return out


def _naip_nodata(naip_ds: rasterio.DatasetReader, scene: SceneInfo, transform: Affine, shape,
                 pixels: WindowPixels | None = None) -> np.ndarray:
    """True at lattice points where the NAIP raster has no data: outside it, 0 (or the declared nodata) in
    every image band, or marked so by its alpha band or nodata mask.

    NAIP marks its collar by 0 in every band. Mosaics and warped copies often mark it by an alpha band or a
    mask instead, with pixel values left in place; both count (see :func:`tiling.io.nodata_mask` for when a
    band tagged alpha is NIR instead, as in many NAIP files).

    A lattice whose points are the raster's pixels (its step the pixel size, its origin on a pixel corner)
    inside ``pixels`` is those pixels: it is taken from them, not read again.
    """
    step = transform.a
    res_x, res_y = scene.res
    left0, top0 = scene.transform.c, scene.transform.f
    col = (transform.c - left0) / res_x
    row = (top0 - transform.f) / res_y
    width, height = shape[1] * step / res_x, shape[0] * step / res_y
    window = Window(col, row, width, height)
    fill = 0 if scene.nodata is None else scene.nodata
    bands = [b for b in range(1, scene.count + 1 + (scene.alpha_band is not None)) if b != scene.alpha_band][:4]
    held = _held_lattice(pixels, scene, bands, col, row, step, shape)
    if held is not None:
        return held
    # a boundless read goes through a temporary VRT (~3x the time of the read itself, and its blocks decoded
    # again for every read: the VRT keeps no cache between reads). A lattice inside the raster samples the very
    # same pixels without it where it is no coarser than the pixels, or where the raster has no overviews; a
    # coarser lattice of a raster with overviews would be read from them (the VRT has none): other samples, so
    # it stays boundless
    inside = col >= 0 and row >= 0 and col + width <= naip_ds.width and row + height <= naip_ds.height
    boundless = not (inside and (step <= min(res_x, res_y) * (1 + 1e-9) or not naip_ds.overviews(1)))
    with warnings.catch_warnings():  # a declared nodata beside an alpha band: both are applied below
        warnings.simplefilter("ignore", NodataShadowWarning)
        pixels = naip_ds.read(bands, window=window, out_shape=(len(bands), *shape), boundless=boundless,
                              fill_value=fill, resampling=Resampling.nearest)
    nodata = _all_fill(pixels, range(len(bands)), slice(None), slice(None), fill)
    valid = read_valid(naip_ds, scene.mask, scene.alpha_band, window, shape, boundless=boundless)
    return nodata if valid is None else nodata | ~valid

def _held_lattice(pixels: WindowPixels | None, scene: SceneInfo, bands: list[int], col: float, row: float,
                  step: float, shape) -> np.ndarray | None:
    """:func:`_naip_nodata` of a lattice from ``pixels``, where it samples exactly pixels they hold: a step of
    exactly the pixel size and an origin exactly on a pixel corner (the plain read of that window, no
    resampling), else ``None``."""
    if pixels is None or step != scene.res[0] or step != scene.res[1] or col != int(col) or row != int(row):
        return None
    where = pixels.slices(scene.source, bands, int(col), int(row), shape[1], shape[0])
    if where is None:
        return None
    positions, rows, columns = where
    nodata = _all_fill(pixels.pixels, positions, rows, columns, 0 if scene.nodata is None else scene.nodata)
    return nodata if pixels.valid is None else nodata | ~pixels.valid[rows, columns]


def _all_fill(pixels: np.ndarray, bands, rows: slice, columns: slice, fill: float) -> np.ndarray:
    """Where every band ``bands`` of ``pixels[:, rows, columns]`` is ``fill``: ``np.all(pixels == fill, 0)``
    band by band, with ``fill`` in the pixels' own type (a float nodata makes ``==`` cast every pixel to
    float64: 8x the memory, most of the time)."""
    if np.issubdtype(pixels.dtype, np.integer):
        limits = np.iinfo(pixels.dtype)
        if not (float(fill).is_integer() and limits.min <= fill <= limits.max):  # no pixel can equal it
            return np.zeros(pixels[0, rows, columns].shape, dtype=bool)
        fill = pixels.dtype.type(fill)
    bands = list(bands)
    nodata = pixels[bands[0], rows, columns] == fill
    for band in bands[1:]:
        nodata &= pixels[band, rows, columns] == fill
    return nodata


__all__ = ["ChipFractions", "NlcdInfo", "check_overlap", "chip_fractions", "describe_naip", "describe_nlcd"]
