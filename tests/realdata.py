"""The real rasters of ../shared/data as users have them, the variants users make of them, and an independent truth.

Nothing here uses tiling's grid, labeling or reading code: the expected chips and labels of a raster are
computed from its pixels with plain rasterio and numpy, so that the conformance suite can tell when geoclf
gets a real file wrong. Variants (renamed, re-tagged, RGB-only, masked, mosaicked, served over HTTP, NLCD
without its palette or in another CRS) are written from the real files into a temporary directory.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import shutil
import threading
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import calculate_default_transform, reproject, transform_bounds
from rasterio.windows import Window

from tiling.classes import ClassScheme

ND = "naip-nd-m_4709963_se-opengeos"
STACTOOLS = "naip-samples-stactools"
WV = "naip-nlcd-wv-calebrob6"
CT_NLCD = ("nlcd-ct-ma-jhollist", "nlcd.tif")

#: Every real NAIP raster, with the acquisition date its NAIP name states (``None``: no date anywhere) and a
#: chip size in pixels that gives a few to a few hundred whole chips on it.
NAIP_FILES: dict[str, tuple[tuple[str, str], dt.date | None, int]] = {
    **{f"nd-{name[-8:-4]}": ((ND, f"m_4709963_se_14_1_{name}"), dt.date(int(name[:4]), int(name[4:6]),
                                                                      int(name[6:8])), 64)
       for name in ("20090818.tif", "20100629.tif", "20120731.tif", "20140720.tif", "20150926.tif",
                    "20160816.tif", "20170827.tif", "20180716.tif", "20190904.tif", "20200831.tif")},
    "zone16-1m-shrunk": ((STACTOOLS, "m_3008501_ne_16_1_20110815.tif"), dt.date(2011, 8, 15), 32),
    "zone11-0.6m": ((STACTOOLS, "m_3211605_ne_11_060_20200415.tif"), dt.date(2020, 4, 15), 64),
    "zone13-0.6m-downsampled": ((STACTOOLS, "m_3610332_se_13_060_20200903-downsampled.tif"), dt.date(2020, 9, 3), 32),
    "zone17-0.6m-downsampled": ((STACTOOLS, "m_3907864_sw_17_060_20210912_downsampled.tif"), dt.date(2021, 9, 12),
                                16),
    "zone10-0.6m-downsampled": ((STACTOOLS, "m_4112001_sw_10_060_20220716.tif"), dt.date(2022, 7, 16), 32),
    "zone16-0.6m": ((STACTOOLS, "m_4208701_ne_16_060_20200902.tif"), dt.date(2020, 9, 2), 48),
    "wv-1m-dateless": ((WV, "naip.tif"), None, 48),
}

#: A two-class grouping of NLCD codes for the forest-dominated West Virginia sample: with the six default
#: classes its few non-forest chips cannot fill both a train and a validation split.
FOREST_OPEN = {"Forest": [41, 42, 43, 90], "Open": [21, 22, 23, 24, 31, 52, 71, 81, 82, 95]}


# --------------------------------------------------------------------------------------------------------------
# independent truth


@dataclass
class Truth:
    """What a raster's chips should be, from its own pixels: one row per whole grid cell.

    Attributes:
        cells: columns ``ix``, ``iy``, ``nodata`` (share of the cell's pixels without NAIP or NLCD data) and,
            with NLCD, ``label`` (majority class of the pixels with data), ``purity`` and ``margin``
            (majority share minus the runner-up's).
        size_m: cell side.
    """

    cells: pd.DataFrame
    size_m: float

    def expected(self, max_nodata: float, min_purity: float | None = None, slack: float = 0.03) -> tuple[set, set]:
        """Cells a tiling with these thresholds surely keeps, and cells too close to a threshold to call.

        With ``min_purity`` (labeled tiling) a cell also needs a land-use class: one all water, or other codes
        of no class, has no label to learn from.
        """
        cells = self.cells
        sure = cells["nodata"] <= max_nodata - slack
        maybe = cells["nodata"] < max_nodata + slack
        if min_purity is not None:
            sure &= cells["label"].notna() & (cells["purity"] >= max(min_purity, 0.02) + slack)
            maybe &= cells["label"].notna() & (cells["purity"] > min_purity - slack)
        return cells_of(cells[sure]), cells_of(cells[maybe & ~sure])


def whole_cells(naip: Path, size_m: float) -> list[tuple[int, int]]:
    """Every cell of side ``size_m`` on the CRS-anchored grid lying inside the raster (within half a pixel)."""
    with rasterio.open(naip) as ds:
        left, bottom, right, top = ds.bounds
        half_x, half_y = ds.res[0] / 2, ds.res[1] / 2
    xs = range(math.ceil((left - half_x) / size_m), math.floor((right + half_x) / size_m))
    ys = range(math.ceil((bottom - half_y) / size_m), math.floor((top + half_y) / size_m))
    return [(ix, iy) for iy in ys for ix in xs]


def naip_valid(naip: Path) -> np.ndarray:
    """True where the raster has data: not 0 in every band, and not masked by an internal mask."""
    with rasterio.open(naip) as ds:
        pixels = ds.read(list(range(1, min(ds.count, 4) + 1)))
        valid = pixels.any(axis=0)
        flags = ds.mask_flag_enums[0]
        if rasterio.enums.MaskFlags.per_dataset in flags and rasterio.enums.MaskFlags.alpha not in flags:
            valid &= ds.dataset_mask() > 0
        if ds.count >= 5 and ds.colorinterp[-1] == rasterio.enums.ColorInterp.alpha:
            valid &= ds.read(ds.count) > 0
    return valid


def truth(naip: Path, nlcd: Path | None, size_m: float, classes: dict[str, list[int]] | None = None,
          valid: np.ndarray | None = None) -> Truth:
    """Per-cell nodata share and NLCD majority from the raster's own pixels.

    NLCD is warped onto the NAIP raster's pixel grid once (nearest neighbour), then each cell's pixels are
    counted: the label of a chip is the class most of its pixels with data fall in.
    """
    scheme = ClassScheme.from_mapping(classes) if classes else ClassScheme.default()
    code_to_class = {code: i for i, codes in enumerate(scheme.groups.values()) for code in codes}
    valid = naip_valid(naip) if valid is None else valid
    with rasterio.open(naip) as ds:
        transform, crs, shape = ds.transform, ds.crs, (ds.height, ds.width)
    classes_px = np.full(shape, -1, dtype=np.int16)  # -1: NLCD nodata, -2: a code of no class (water)
    if nlcd is not None:
        with rasterio.open(nlcd) as src:
            nodata = 255 if src.nodata is None else int(src.nodata)
            codes = np.full(shape, nodata, dtype=np.uint8)
            reproject(rasterio.band(src, 1), codes, dst_transform=transform, dst_crs=crs, src_nodata=nodata,
                      dst_nodata=nodata, resampling=Resampling.nearest)
        lut = np.full(256, -2, dtype=np.int16)
        for code, i in code_to_class.items():
            lut[code] = i
        lut[nodata] = -1
        classes_px = lut[codes]
        valid = valid & (classes_px != -1)
    rows = []
    for ix, iy in whole_cells(naip, size_m):
        col0, row0 = ~transform * (ix * size_m, (iy + 1) * size_m)
        col1, row1 = ~transform * ((ix + 1) * size_m, iy * size_m)
        c0, c1 = max(0, round(col0)), min(shape[1], round(col1))
        r0, r1 = max(0, round(row0)), min(shape[0], round(row1))
        cell_valid = valid[r0:r1, c0:c1]
        row = {"ix": ix, "iy": iy, "nodata": 1 - cell_valid.mean()}
        if nlcd is not None:
            found = classes_px[r0:r1, c0:c1][cell_valid]
            shares = np.bincount(found[found >= 0], minlength=len(scheme.names)) / max(len(found), 1)
            ranked = np.sort(shares)[::-1]
            row.update(label=scheme.names[int(shares.argmax())] if ranked[0] > 0 else None, purity=ranked[0],
                       margin=ranked[0] - ranked[1])
        rows.append(row)
    return Truth(pd.DataFrame(rows), size_m)


def cells_of(index: pd.DataFrame) -> set[tuple[int, int]]:
    """The (ix, iy) cells of a chip index."""
    return set(zip(index["ix"].astype(int), index["iy"].astype(int), strict=True))


# --------------------------------------------------------------------------------------------------------------
# NLCD for imagery that has none


def relocated_nlcd(naip: Path, out: Path, *, nlcd: Path, margin_m: float = 600) -> Path:
    """The real NLCD clip's codes (and palette) moved under a NAIP raster's footprint, on a 30 m Albers grid.

    Mechanics only: the labels do not describe that imagery. The window is taken from the clip's interior,
    where it has no nodata, so every chip of the raster has NLCD data.
    """
    with rasterio.open(naip) as ds:
        left, bottom, right, top = transform_bounds(ds.crs, "EPSG:5070", *ds.bounds, densify_pts=21)
    left, top = math.floor((left - margin_m) / 30) * 30, math.ceil((top + margin_m) / 30) * 30
    width, height = math.ceil((right + margin_m - left) / 30), math.ceil((top - bottom + margin_m) / 30)
    with rasterio.open(nlcd) as src:
        row0, col0 = (src.height - height) // 2, (src.width - width) // 2
        assert row0 >= 0 and col0 >= 0, f"{naip} is larger than the NLCD clip"
        codes = src.read(1, window=Window(col0, row0, width, height))
        assert not (codes == src.nodata).any(), "the NLCD window reaches the clip's nodata"
        profile = src.profile | {"width": width, "height": height, "transform": from_origin(left, top, 30, 30)}
        colormap = src.colormap(1)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(codes, 1)
        dst.write_colormap(1, colormap)
    return out


def nlcd_without_palette(nlcd: Path, out: Path) -> Path:
    """The same NLCD codes with no colour table (grey, as many clipping tools write them)."""
    with rasterio.open(nlcd) as src:
        profile = src.profile
        profile.pop("photometric", None)
        codes = src.read(1)
        assert src.colorinterp[0] == rasterio.enums.ColorInterp.palette
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(codes, 1)
        dst.colorinterp = [rasterio.enums.ColorInterp.gray]
    with rasterio.open(out) as check:
        assert check.colorinterp[0] != rasterio.enums.ColorInterp.palette
    return out


def nlcd_in_crs(nlcd: Path, out: Path, crs: str) -> Path:
    """NLCD warped to another CRS with nearest neighbour (codes untouched), keeping its palette."""
    with rasterio.open(nlcd) as src:
        transform, width, height = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        profile = src.profile | {"crs": crs, "transform": transform, "width": width, "height": height}
        codes = np.full((height, width), src.nodata, dtype=np.uint8)
        reproject(rasterio.band(src, 1), codes, dst_transform=transform, dst_crs=crs, src_nodata=src.nodata,
                  dst_nodata=src.nodata, resampling=Resampling.nearest)
        colormap = src.colormap(1)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(codes, 1)
        dst.write_colormap(1, colormap)
    return out


# --------------------------------------------------------------------------------------------------------------
# NAIP variants


def undated_copy(naip: Path, out: Path) -> Path:
    """A copy under a name without ``_YYYYMMDD`` (as hand-made clips and renamed downloads are)."""
    assert not re.search(r"(19|20)\d{6}", out.stem)
    shutil.copy(naip, out)
    return out


def tagged_copy(naip: Path, out: Path, date: str) -> Path:
    """A copy without a date in its name and the acquisition date only in an ``ACQUISITION_DATE`` tag."""
    undated_copy(naip, out)
    with rasterio.open(out, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:  # the ND files are laid out as COGs
        ds.update_tags(ACQUISITION_DATE=date)
    return out


def rgb_copy(naip: Path, out: Path) -> Path:
    """Bands 1-3 only, as older NAIP (RGB) comes."""
    with rasterio.open(naip) as src:
        profile = src.profile | {"count": 3}
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read([1, 2, 3]))
            dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                               rasterio.enums.ColorInterp.blue]
    return out


def _junk(shape: tuple[int, ...]) -> np.ndarray:
    """Non-zero values for pixels without data: what a mask or alpha band hides instead of a zero collar."""
    return np.random.default_rng(0).integers(1, 256, shape, dtype=np.uint8)


def masked_copy(naip: Path, out: Path) -> Path:
    """No zero collar: pixels without data hold other values, and an internal TIFF mask marks them."""
    valid = naip_valid(naip)
    with rasterio.open(naip) as src:
        pixels = src.read()
        profile = src.profile | {"nodata": None}
    pixels[:, ~valid] = _junk(pixels.shape)[:, ~valid]
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(out, "w", **profile) as dst:
        dst.write(pixels)
        dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    with rasterio.open(out) as check:
        assert rasterio.enums.MaskFlags.per_dataset in check.mask_flag_enums[0]
        assert not (check.read().any(axis=0) == valid).all()  # zeros no longer tell where the data ends
    return out


def alpha_copy(naip: Path, out: Path) -> Path:
    """No zero collar: RGBN plus a fifth, alpha band (as ``gdalwarp -dstalpha`` writes 4-band NAIP)."""
    valid = naip_valid(naip)
    with rasterio.open(naip) as src:
        pixels = src.read()
        profile = src.profile | {"nodata": None, "count": src.count + 1}
    pixels[:, ~valid] = _junk(pixels.shape)[:, ~valid]
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.concatenate([pixels, alpha[None]]))
        dst.colorinterp = [rasterio.enums.ColorInterp.red, rasterio.enums.ColorInterp.green,
                           rasterio.enums.ColorInterp.blue, rasterio.enums.ColorInterp.undefined,
                           rasterio.enums.ColorInterp.alpha]
    with rasterio.open(out) as check:
        assert check.count == 5 and check.colorinterp[4] == rasterio.enums.ColorInterp.alpha
    return out


def split_halves(naip: Path, folder: Path) -> tuple[Path, Path]:
    """The raster cut into two adjacent rasters (west and east), as neighbouring tiles of one mosaic are."""
    with rasterio.open(naip) as src:
        half = src.width // 2 + 7  # not on a chip boundary
        paths = []
        for name, window in (("west", Window(0, 0, half, src.height)),
                             ("east", Window(half, 0, src.width - half, src.height))):
            profile = src.profile | {"width": int(window.width), "height": int(window.height),
                                     "transform": src.window_transform(window)}
            path = folder / f"{name}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(window=window))
            paths.append(path)
    return paths[0], paths[1]


def mosaic_vrt(parts: list[Path], out: Path) -> Path:
    """A GDAL VRT mosaic of adjacent rasters of one CRS and resolution (what ``gdalbuildvrt`` writes)."""
    with rasterio.open(parts[0]) as first:
        crs, res, count, dtype, nodata = first.crs, first.res, first.count, first.dtypes[0], first.nodata
    bounds = []
    for part in parts:
        with rasterio.open(part) as ds:
            assert ds.crs == crs and ds.res == res
            bounds.append(ds.bounds)
    left, top = min(b.left for b in bounds), max(b.top for b in bounds)
    width = round((max(b.right for b in bounds) - left) / res[0])
    height = round((top - min(b.bottom for b in bounds)) / res[1])
    bands = []
    for band in range(1, count + 1):
        sources = []
        for part, b in zip(parts, bounds, strict=True):
            w, h = round((b.right - b.left) / res[0]), round((b.top - b.bottom) / res[1])
            x, y = round((b.left - left) / res[0]), round((top - b.top) / res[1])
            sources.append(f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(str(part))}</SourceFilename>'
                           f'<SourceBand>{band}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                           f'<DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/></SimpleSource>')
        nodata_tag = f"<NoDataValue>{nodata:g}</NoDataValue>" if nodata is not None else ""
        bands.append(f'<VRTRasterBand dataType="{"Byte" if dtype == "uint8" else dtype}" band="{band}">'
                     f'{nodata_tag}{"".join(sources)}</VRTRasterBand>')
    geotransform = f"{left!r}, {res[0]!r}, 0, {top!r}, 0, {-res[1]!r}"
    out.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{escape(crs.to_wkt())}</SRS>'
                   f'<GeoTransform>{geotransform}</GeoTransform>{"".join(bands)}</VRTDataset>')
    return out


def cog_copy(naip: Path, out: Path) -> Path:
    """A Cloud-Optimized GeoTIFF (tiled, with overviews, header first), as NAIP is served from the cloud."""
    with rasterio.open(naip) as src:
        profile = src.profile | {"driver": "COG", "blocksize": 128, "compress": "deflate", "overviews": "auto"}
        for key in ("tiled", "blockxsize", "blockysize", "interleave"):
            profile.pop(key, None)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read())
    return out


# --------------------------------------------------------------------------------------------------------------
# HTTP with range requests


class _RangeHandler(BaseHTTPRequestHandler):
    """GET and HEAD of files under a folder, honouring single ``Range: bytes=a-b`` requests."""

    protocol_version = "HTTP/1.1"

    def __init__(self, *args, server_state: RangeServer, **kwargs) -> None:
        self.state = server_state
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._reply(body=False)

    def do_GET(self) -> None:
        self._reply(body=True)

    def _reply(self, body: bool) -> None:
        path = self.state.root / unquote(urlparse(self.path).path).lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, stop, status = 0, len(data), 200
        wanted = self.headers.get("Range")
        if wanted:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
            if not match:  # several ranges in one request: not needed by GDAL, refused so a test would notice
                self.send_error(416)
                return
            start = int(match.group(1))
            stop = min(len(data), int(match.group(2)) + 1) if match.group(2) else len(data)
            status = 206
        chunk = data[start:stop]
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Content-Length", str(len(chunk)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(chunk)
            with self.state.lock:
                self.state.bytes_sent += len(chunk)
                self.state.requests.append(wanted)


class RangeServer:
    """A local HTTP server on 127.0.0.1 serving a folder with range requests, counting what it sends.

    Python's ``http.server`` always sends whole files; GDAL's ``/vsicurl/`` reads a COG by byte ranges, and
    this server lets a test check that it did (``bytes_sent`` smaller than the file).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.lock = threading.Lock()
        self.bytes_sent = 0
        self.requests: list[str | None] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_RangeHandler, server_state=self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        """The URL of a file of the folder."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


# --------------------------------------------------------------------------------------------------------------
# maps


def map_codes_at_cells(landuse: Path, index: pd.DataFrame, size_m: float) -> np.ndarray:
    """The class code of a land-use map at the centre of each chip's cell (by coordinates, not by the grid)."""
    with rasterio.open(landuse) as ds:
        xs = (index["ix"].to_numpy() + 0.5) * size_m
        ys = (index["iy"].to_numpy() + 0.5) * size_m
        return np.array([value[0] for value in ds.sample(zip(xs, ys, strict=True))])


def same_transform(a: Affine, b: Affine, tolerance: float = 1e-6) -> bool:
    """Two affine transforms within ``tolerance``."""
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


def retyped_copy(naip: Path, out: Path, dtype: str) -> Path:
    """The same pixels stored as another data type (16-bit imagery as some providers deliver it)."""
    with rasterio.open(naip) as src:
        profile = src.profile | {"dtype": dtype}
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read().astype(dtype) * (257 if dtype == "uint16" else 1))
    return out


def warped_copy(naip: Path, out: Path, crs: str) -> Path:
    """The raster warped to another CRS (bilinear, as imagery is warped), e.g. to geographic EPSG:4326."""
    with rasterio.open(naip) as src:
        transform, width, height = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        profile = src.profile | {"crs": crs, "transform": transform, "width": width, "height": height}
        with rasterio.open(out, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(rasterio.band(src, band), rasterio.band(dst, band), resampling=Resampling.bilinear)
    return out


def band_subset(naip: Path, out: Path, bands: list[int]) -> Path:
    """Only some bands of the raster."""
    with rasterio.open(naip) as src:
        profile = src.profile | {"count": len(bands), "photometric": None}
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(bands))
    return out
