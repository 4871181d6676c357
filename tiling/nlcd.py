"""NLCD for an area: the AOI's window of USGS's Annual NLCD land-cover COGs, read over HTTP by byte ranges.

``geoclf naip search`` finds the imagery; this finds the labels. Annual NLCD (Collection 1) is one
conterminous-US land-cover raster per year, 30 m in CONUS Albers, published as Cloud-Optimized GeoTIFFs. GDAL
reads a COG over HTTP(S) with range requests (``/vsicurl/``, which rasterio uses for ``http(s)://`` paths):
:func:`fetch_nlcd` reads the header and only the internal tiles under the AOI's bounding box -- a few hundred
kilobytes for a county, not the 1-2 GB file -- and writes them as a small GeoTIFF with the NLCD colour table.

Where the files are: :data:`DEFAULT_NLCD_URL`, the MRLC consortium's public bucket, where the Annual NLCD
land-cover COGs of 1985-2023 are ``Annual_NLCD_LndCov_<year>_CU_C1V0.tif`` (the address TorchGeo's ``NLCD``
dataset downloads from, with a checksum per year). USGS moves files between releases (a later version is
``C1V1``), so the template is configurable: ``url_template=`` / ``--url-template``, or the
``GEOCLF_NLCD_URL`` environment variable, with ``{year}`` where the year goes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError, WindowError
from rasterio.windows import Window, from_bounds

from tiling.classes import NLCD_COLORS
from tiling.errors import InputError
from tiling.index import read_aoi
from tiling.io import atomic_path

PathLike = str | os.PathLike[str]

#: Environment variable holding the URL template of the NLCD land-cover COGs (with ``{year}``).
NLCD_URL_ENV = "GEOCLF_NLCD_URL"
#: The Annual NLCD Collection 1 land-cover COGs on MRLC's public bucket (years 1985-2023).
DEFAULT_NLCD_URL = "https://s3-us-west-2.amazonaws.com/mrlc/Annual_NLCD_LndCov_{year}_CU_C1V0.tif"
#: NLCD's nodata value (Annual NLCD: 250).
NLCD_NODATA = 250

# GDAL settings for reading one COG over HTTP: no directory listing (a bucket answers it slowly or not at all),
# only .tif requests, a few retries for a flaky line, and a short connect timeout so offline fails fast.
_HTTP_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff",
             "GDAL_HTTP_MAX_RETRY": "2", "GDAL_HTTP_RETRY_DELAY": "1", "GDAL_HTTP_CONNECTTIMEOUT": "10",
             "GDAL_HTTP_TIMEOUT": "60"}


def nlcd_url(year: int, url_template: str | None = None) -> str:
    """The URL of one year's NLCD land cover: ``url_template``, else ``$GEOCLF_NLCD_URL``, else the default.

    Raises:
        InputError: a template without ``{year}``.
    """
    template = url_template or os.environ.get(NLCD_URL_ENV) or DEFAULT_NLCD_URL
    if "{year}" not in template:
        raise InputError(f"the NLCD URL template {template!r} has no {{year}} to put the year in")
    return template.format(year=int(year))


def fetch_nlcd(aoi: PathLike, year: int, out: PathLike, *, url_template: str | None = None,
               pad_pixels: int = 2) -> Path:
    """Write the NLCD land cover of an AOI's bounding box for one year, read from a COG over HTTP.

    Only the window under the AOI (and ``pad_pixels`` around it, so chips at its edge are labelled) is read;
    the output keeps the source's grid, CRS and codes (a pixel of it is a pixel of NLCD), with the NLCD colour
    table, nodata and the source URL and year as tags. Written atomically.

    Args:
        aoi: a vector file of the area, in any CRS.
        year: the NLCD year.
        out: the GeoTIFF to write.
        url_template: the COGs' URL with ``{year}`` (see :func:`nlcd_url`); a local path works too.
        pad_pixels: NLCD pixels added around the AOI's bounds.

    Returns:
        The path written.

    Raises:
        InputError: the AOI is unreadable, the COG cannot be reached (offline: one line, with the URL and
            how to point elsewhere) or is no single-band raster, or the AOI does not overlap it.
    """
    shapes = read_aoi(aoi)
    url = nlcd_url(year, url_template)
    out = Path(out)
    with rasterio.Env(**_HTTP_ENV):
        try:
            src = rasterio.open(url)
        except RasterioIOError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"cannot read NLCD {year} ({reason}); offline, or moved? Point --url-template or "
                             f"${NLCD_URL_ENV} at the land-cover COGs, with {{year}} in the URL", url) from exc
        with src:
            if src.count != 1 or src.crs is None:
                raise InputError(f"is not NLCD land cover ({src.count} bands, CRS {src.crs})", url)
            left, bottom, right, top = shapes.to_crs(src.crs).total_bounds
            exact = from_bounds(left, bottom, right, top, transform=src.transform)
            col, row = math.floor(exact.col_off) - pad_pixels, math.floor(exact.row_off) - pad_pixels
            window = Window(col, row, math.ceil(exact.col_off + exact.width) + pad_pixels - col,
                            math.ceil(exact.row_off + exact.height) + pad_pixels - row)
            try:
                window = window.intersection(Window(0, 0, src.width, src.height))
            except WindowError:  # no overlap at all
                window = None
            if window is None or window.width < 1 or window.height < 1:
                raise InputError(f"does not overlap NLCD {year} ({url})", os.fspath(aoi))
            data = src.read(1, window=window)
            transform = src.window_transform(window)
            crs, nodata = src.crs, src.nodata
            try:
                colormap = src.colormap(1)
            except ValueError:  # no colour table in the source: NLCD's own
                colormap = None
    table = {code: (*rgb, 255) for code, rgb in NLCD_COLORS.items()}
    if colormap:
        table = {int(k): tuple(v) for k, v in colormap.items() if any(v[:3])} | table
    profile = {"driver": "GTiff", "width": int(window.width), "height": int(window.height), "count": 1,
               "dtype": data.dtype.name, "crs": crs, "transform": transform,
               "nodata": NLCD_NODATA if nodata is None else nodata, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate"}
    if data.shape[0] < 256 or data.shape[1] < 256:
        profile.update(tiled=False, blockxsize=None, blockysize=None)
        profile = {k: v for k, v in profile.items() if v is not None}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary, rasterio.open(temporary, "w", **profile) as dst:
        dst.write(data, 1)
        if np.issubdtype(data.dtype, np.uint8):
            dst.write_colormap(1, table)
        dst.update_tags(NLCD_SOURCE=url, NLCD_YEAR=str(int(year)),
                        NLCD_WINDOW=json.dumps([int(window.col_off), int(window.row_off), int(window.width),
                                                int(window.height)]))
    return out


__all__ = ["DEFAULT_NLCD_URL", "NLCD_NODATA", "NLCD_URL_ENV", "fetch_nlcd", "nlcd_url"]
