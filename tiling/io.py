"""Raster I/O: open NAIP and NLCD rasters with clear errors, describe scenes, read chip windows."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import secrets
import shutil
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import CRSError, NodataShadowWarning, RasterioError
from rasterio.io import MemoryFile
from rasterio.windows import Window

from tiling import signing
from tiling.errors import InputError

PathLike = str | os.PathLike[str]

#: Band numbers (1-based) of NAIP's red, green, blue and near-infrared. Some NAIP files tag band 4 as
#: "alpha"; it holds NIR all the same, so band meaning is taken from position, never from colour tags.
NAIP_BANDS: dict[str, int] = {"red": 1, "green": 2, "blue": 3, "nir": 4}

_DATE_IN_NAME = re.compile(r"(?:^|_)((?:19|20)\d{2})(\d{2})(\d{2})(?=$|[_.-])")

# GDAL settings that make reading COGs over HTTP cheap: no directory listing, no sidecar probing. They are
# set as environment defaults (GDAL reads its config from there) so worker processes inherit them; a user's
# own setting wins.
_GDAL_HTTP_ENV = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "VSI_CACHE": "TRUE",
}
for _key, _value in _GDAL_HTTP_ENV.items():
    os.environ.setdefault(_key, _value)

#: GDAL's block cache (megabytes), unless the environment sets ``GDAL_CACHEMAX``. GDAL's own default is 5% of
#: the machine's memory, per process: a worker scoring a raster decodes each of its tiles into a new cache
#: block until that much is held, so every tile costs fresh pages (page faults, the kernel zeroing them) and
#: the process grows by the raster's decoded size. 512 MB holds the tiles of the blocks a process reads at
#: once (two blocks of 512 chips of 224 px in 4 bands: ~110 MB each) with room to spare; beyond it, freed
#: cache blocks are reused. Measured on 3,600 chips: system CPU 5.3 -> 2.4 s, peak memory 1.9 -> 1.3 GB
#: (benchmarks/README.md).
GDAL_CACHE_MB = 512
os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))


def is_remote(path: PathLike) -> bool:
    """True for URLs GDAL reads over the network (http, https, s3, gs, az, /vsi...)."""
    text = os.fspath(path)
    return bool(re.match(r"^(https?|s3|gs|az|abfs)://", text)) or text.startswith("/vsi")


def normalize_source(path: PathLike) -> str:
    """An absolute path for local files; for remote ones the URL, without a blob-storage SAS token (tokens
    expire: geoclf stores URLs bare and signs them when it reads, see :mod:`tiling.signing`)."""
    return signing.unsigned(os.fspath(path)) if is_remote(path) else str(Path(path).resolve())


def open_dataset(source: str) -> rasterio.DatasetReader:
    """``rasterio.open`` for reading, signing blob-storage URLs first, and once more if that fails.

    A refused token shows as HTTP 403/409 when opening but only as "read failed" when reading blocks, so
    any failure on a signed URL earns one retry with a fresh token; a file that is really broken fails
    the second time too.

    Raises:
        RasterioError: as ``rasterio.open`` (callers turn it into a one-line :class:`InputError`).
        InputError: a blob-storage URL for which no token can be had.
    """
    try:
        return rasterio.open(signing.for_reading(source))
    except RasterioError:
        if not signing.signable(source):
            raise
        return rasterio.open(signing.for_reading(source, renew=True))


@contextmanager
def atomic_path(path: PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only when the block succeeds.

    Every geoclf writer goes through this: a reader never sees half a file, a failed or interrupted write
    leaves the previous version (or nothing), and a rerun starts clean. The writer creates the temporary
    file itself, so it gets the permissions the user's umask gives any new file (``mkstemp`` would make it
    0600). With ``directory=True`` the temporary path is a fresh empty directory (mode from the umask too)
    and an existing directory at ``path`` is replaced as a whole.

    Args:
        path: the final file or directory.
        directory: yield an empty directory to fill instead of a file name.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    if directory:
        temporary.mkdir()
    try:
        yield temporary
        if directory and target.is_dir():
            old = target.with_name(f"{temporary.name}.old")
            os.replace(target, old)
            os.replace(temporary, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, target)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)


@contextmanager
def staged_directory(path: PathLike, *, stale: Sequence[str] = ()) -> Iterator[Path]:
    """Yield an empty directory beside ``path`` to write a command's outputs into; they move into ``path``
    (created if needed) only when the block succeeds, each replacing the entry of the same name.

    What a report, change or trend command writes is computed in one go, and some bad input is found only
    halfway (a reference sample too small, a chip that cannot be read for the gallery): a failed or
    interrupted run leaves ``path`` as it was, never half of a new set of outputs beside the old. Other files
    in ``path`` are kept (it may be a folder the user keeps other things in).

    Args:
        path: the output directory.
        stale: names of earlier output files that this run removes when it does not write them again (e.g. a
            report's gallery, when this one has none).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    staging.mkdir()
    try:
        yield staging
        target.mkdir(exist_ok=True)
        entries = sorted(staging.iterdir())
        for entry in entries:
            final = target / entry.name
            if final.is_dir() and not final.is_symlink():
                old = target / f".{entry.name}.{secrets.token_hex(4)}.old"
                os.replace(final, old)
                os.replace(entry, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(entry, final)
        for name in set(stale) - {entry.name for entry in entries}:
            (target / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def relocated(written: Mapping[str, Path], staging: Path, target: PathLike) -> dict[str, Path]:
    """The paths of ``written`` (name -> path inside ``staging``) where :func:`staged_directory` moved them."""
    return {name: Path(target) / Path(path).relative_to(staging) for name, path in written.items()}


@contextmanager
def open_raster(path: PathLike) -> Iterator[rasterio.DatasetReader]:
    """Open a raster for reading; any failure becomes an :class:`InputError` naming the file."""
    source = os.fspath(path)
    if not is_remote(source) and not Path(source).exists():
        raise InputError("no such file", source)
    try:
        with open_dataset(source) as dataset:
            yield dataset
    except RasterioError as exc:
        raise InputError(f"cannot be read as a raster ({_first_line(exc)})", source) from exc


def _first_line(exc: BaseException) -> str:
    text = signing.redact(str(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass(frozen=True)
class SceneInfo:
    """What tiling needs to know about one NAIP raster.

    Attributes:
        source: absolute path or URL.
        name: the file's stem, used as the scene name in chip ids.
        crs: the raster's CRS.
        transform: pixel -> CRS affine transform.
        width, height: size in pixels.
        count: number of image bands (an alpha band used as a mask is not one of them).
        nodata: declared nodata value, if any.
        date: acquisition date, from the ``ACQUISITION_DATE`` tag or the file name (NAIP's ``_YYYYMMDD``).
        mask: how nodata is marked besides 0 (or the declared nodata) in every band: ``"alpha"`` (an alpha
            band), ``"mask"`` (a GDAL nodata mask, internal or ``.msk``) or None.
        alpha_band: the alpha band's number when ``mask == "alpha"``.
        overviews: how many overview levels the raster has (0: a decimated read decodes all of its pixels).
    """

    source: str
    name: str
    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    nodata: float | None
    date: dt.date | None
    mask: str | None = None
    alpha_band: int | None = None
    overviews: int = 0

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units, both positive."""
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the raster's CRS."""
        left, top = self.transform.c, self.transform.f
        return left, top - self.height * self.res[1], left + self.width * self.res[0], top


#: Tags that state when imagery was acquired. ``TIFFTAG_DATETIME`` is not one: TIFF writers set it to the time
#: the file was written (a NAIP sample in ../shared/data says 2021-11-11 for imagery flown on 2021-09-12).
DATE_TAGS = ("ACQUISITION_DATE", "acquisition_date")

_DATE_IN_TAG = re.compile(r"\s*((?:19|20)\d{2})[-:/]?(\d{2})[-:/]?(\d{2})(?!\d)")


def scene_date(name: str, tags: dict[str, str] | None = None) -> dt.date | None:
    """Acquisition date of a scene from an ``ACQUISITION_DATE`` tag, else from its NAIP-style name.

    The tag may be written ``2016-08-16``, ``2016:08:16 10:30:00`` (TIFF style) or ``20160816``; the name
    carries it as NAIP's ``_YYYYMMDD`` (``m_4709963_se_14_1_20160816``). ``None`` when neither has one: a
    missing date is a normal value (hand-made clips, mosaics and renamed downloads have none).
    """
    tags = tags or {}
    for key in DATE_TAGS:
        match = _DATE_IN_TAG.match(str(tags.get(key, "")))
        if match:
            with suppress(ValueError):
                return dt.date(*map(int, match.groups()))
    for match in _DATE_IN_NAME.finditer(name):
        with suppress(ValueError):
            return dt.date(*map(int, match.groups()))
    return None


def nodata_mask(dataset: rasterio.DatasetReader) -> tuple[str | None, int | None]:
    """How a NAIP-like raster marks nodata besides 0 in every band: ``(kind, alpha band)``.

    ``("alpha", band)`` for an alpha band, ``("mask", None)`` for a GDAL nodata mask (internal, or a ``.msk``
    file), ``(None, None)`` otherwise. Many NAIP files tag their NIR band as alpha, so a band tagged alpha is
    taken as a mask only when it looks like one: at least 90% of a sample spread over the raster is 0 or 255
    (overviews average the mask's edge), where NIR is neither but in rare pixels.

    The answer is kept for the rest of the process, per file and version (path, size, modification time), as
    tiling, chip reading and maps all ask it about the same rasters.
    """
    key = _mask_key(dataset)
    known = _MASKS.get(key)
    if known is None:
        known = _nodata_mask(dataset)
        if len(_MASKS) >= _MASKS_KEPT:
            _MASKS.clear()
        _MASKS[key] = known
    return known


#: nodata_mask's answers by raster version, (kind, alpha band); bounded, as a long-lived worker may see many
_MASKS: dict[tuple, tuple[str | None, int | None]] = {}
_MASKS_KEPT = 4096
#: nodata_mask samples a raster without overviews in a grid of this many x this many windows of _SAMPLE_SIDE px
_SAMPLE_GRID = 4
_SAMPLE_SIDE = 16


def _mask_key(dataset: rasterio.DatasetReader) -> tuple:
    shape = (dataset.width, dataset.height, dataset.count, tuple(dataset.colorinterp))
    name = dataset.name
    if is_remote(name):  # no modification time to ask cheaply; a URL's token is not part of what it is
        return (signing.unsigned(name), *shape)
    try:
        stat = os.stat(name)
    except OSError:
        return (name, *shape)
    return (name, stat.st_size, stat.st_mtime_ns, stat.st_ino, *shape)


def _nodata_mask(dataset: rasterio.DatasetReader) -> tuple[str | None, int | None]:
    for band, interp in enumerate(dataset.colorinterp, start=1):
        if interp != ColorInterp.alpha:
            continue
        if np.isin(_band_sample(dataset, band), (0, 255)).mean() >= 0.9:
            return "alpha", band
    flags = dataset.mask_flag_enums[0]
    if MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags:
        return "mask", None
    return None, None


def _band_sample(dataset: rasterio.DatasetReader, band: int) -> np.ndarray:
    """About 4,096 pixels of ``band`` spread over the raster, read without decoding all of it.

    With overviews a 64x64 decimated read is cheap (GDAL reads the nearest overview). Without, the same read
    decodes every block the sampled rows and columns cross, which is all of them (0.6 s for a 6,720 px NAIP
    quarter-quad): there a grid of small windows, each inside one block where it can be, decodes a few.
    """
    height, width = dataset.height, dataset.width
    if dataset.overviews(band) or height * width <= 4 * (_SAMPLE_GRID * _SAMPLE_SIDE) ** 2:
        return dataset.read(band, out_shape=(min(height, 64), min(width, 64)), resampling=Resampling.nearest)
    block_rows, block_cols = dataset.block_shapes[band - 1]
    rows = _sample_starts(height, block_rows)
    cols = _sample_starts(width, block_cols)
    return np.concatenate([dataset.read(band, window=Window(col, row, min(width, _SAMPLE_SIDE),
                                                            min(height, _SAMPLE_SIDE))).ravel()
                           for row in rows for col in cols])


def _sample_starts(length: int, block: int) -> list[int]:
    """Where _SAMPLE_GRID windows of _SAMPLE_SIDE px start along an axis: spread evenly, each moved into the
    next block when it would straddle two (reading it then decodes one block, not two)."""
    side = min(length, _SAMPLE_SIDE)
    starts = []
    for i in range(_SAMPLE_GRID):
        start = min(max(int((i + 0.5) * length / _SAMPLE_GRID) - side // 2, 0), length - side)
        if block > side and start // block != (start + side - 1) // block:
            start = min((start + side - 1) // block * block, length - side)
        starts.append(start)
    return starts


def read_valid(dataset: rasterio.DatasetReader, mask: str | None, alpha_band: int | None, window: Window,
               out_shape: tuple[int, int], boundless: bool = False) -> np.ndarray | None:
    """Where a window has data by the raster's mask (see :func:`nodata_mask`), nearest-sampled to ``out_shape``.

    Returns None for a raster without a mask; outside the raster (``boundless``) has no data.
    """
    if mask is None:
        return None
    if mask == "alpha":
        with warnings.catch_warnings():  # a declared nodata beside the alpha band: rasterio's warning is noise here
            warnings.simplefilter("ignore", NodataShadowWarning)
            values = dataset.read(alpha_band, window=window, out_shape=out_shape, boundless=boundless,
                                  fill_value=0, resampling=Resampling.nearest)
    else:
        values = dataset.read_masks(1, window=window, out_shape=out_shape, boundless=boundless,
                                    resampling=Resampling.nearest)
    return values > 0


#: The local raster last opened by each thread through :func:`kept_dataset`, kept open.
_KEPT = threading.local()


def kept_dataset(source: str) -> rasterio.DatasetReader | None:
    """The local raster ``source`` open for reading, kept open for this thread's next call (``None`` for a URL
    or a GDAL path that is not a file: the caller opens those itself, and closes them).

    A worker's next block is mostly of the same raster and its strips share the raster's internal blocks with
    this one's; GDAL keeps decoded blocks per open dataset, so a raster reopened for every block decodes them
    again (measured: 2-3x the time of a strip's read). The file's size, modification time and inode are part of
    what is kept: a raster rewritten in place is opened again. URLs are opened per call (a signed URL's token
    may expire while kept open).
    """
    if is_remote(source):
        return None
    try:
        stat = os.stat(source)
    except OSError:
        return None
    key = (source, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    kept = getattr(_KEPT, "dataset", None)
    if kept is not None and kept[0] == key and not kept[1].closed:
        return kept[1]
    if kept is not None:
        kept[1].close()
    _KEPT.dataset = None
    dataset = open_dataset(source)
    _KEPT.dataset = (key, dataset)
    return dataset


@dataclass(frozen=True)
class WindowPixels:
    """A window of one raster's pixels read once, for several readers of the same pixels: the nodata lattice
    of a block's cells (:func:`tiling.labels.chip_fractions`) and its chips (:meth:`ChipReader.hold`).

    Attributes:
        source: the raster (as :attr:`SceneInfo.source`).
        col_off, row_off: the window's first pixel column and row in the raster (the window lies inside it).
        bands: the band numbers read, in the order of ``pixels``.
        pixels: ``(len(bands), height, width)`` array of the raster's values, as read (nodata not zeroed).
        valid: ``(height, width)``: where the raster's alpha band or nodata mask says there is data (see
            :func:`read_valid`); ``None`` for a raster without one.
    """

    source: str
    col_off: int
    row_off: int
    bands: tuple[int, ...]
    pixels: np.ndarray
    valid: np.ndarray | None

    def slices(self, source: str, bands: Sequence[int], col_off: int, row_off: int, width: int,
               height: int) -> tuple[list[int], slice, slice] | None:
        """Where the window ``(col_off, row_off, width, height)`` of ``bands`` of ``source`` lies in these
        pixels, as ``(band positions, rows, columns)``; ``None`` when they do not hold all of it."""
        if source != self.source or not set(bands) <= set(self.bands):
            return None
        r0, c0 = row_off - self.row_off, col_off - self.col_off
        if r0 < 0 or c0 < 0 or r0 + height > self.pixels.shape[1] or c0 + width > self.pixels.shape[2]:
            return None
        return [self.bands.index(b) for b in bands], slice(r0, r0 + height), slice(c0, c0 + width)


def read_pixels(dataset: rasterio.DatasetReader, source: str, window: Window, bands: Sequence[int],
                mask: str | None, alpha_band: int | None) -> WindowPixels:
    """Read ``bands`` and the mask (``mask``, ``alpha_band``: see :func:`nodata_mask`) of a window inside
    ``dataset`` once, for the readers of :class:`WindowPixels`.

    Raises:
        InputError: the window cannot be read.
    """
    col, row, width, height = (int(window.col_off), int(window.row_off), int(window.width), int(window.height))
    inside = Window(col, row, width, height)
    try:
        pixels = dataset.read(list(bands), window=inside)
        valid = read_valid(dataset, mask, alpha_band, inside, (height, width))
    except RasterioError as exc:
        raise InputError(f"window {inside} cannot be read ({_first_line(exc)})", source) from exc
    return WindowPixels(source, col, row, tuple(bands), pixels, valid)


def _bands_text(count: int, alpha_band: int | None) -> str:
    return f"{count} band(s)" if alpha_band is None else f"{count} image band(s) and an alpha band (band {alpha_band})"


def check_metric_crs(crs: CRS, bounds: tuple[float, float, float, float], source: str) -> None:
    """Refuse a raster whose CRS is not projected in metres (degrees, US survey feet, ...).

    Chip sizes, strides and blocks are metres, and so are the areas later stages report; in a geographic CRS
    "224 m" would be 224 degrees. The message names a UTM zone to reproject to (NAD83 in North America).
    """
    if crs.is_projected:
        try:
            units, factor = crs.linear_units_factor
        except CRSError:  # a projected CRS without defined units
            units, factor = "unknown", 0.0
        if factor == 1.0:
            return
        what = f"is in {crs.to_string()}, whose units are {units}, not metres"
    else:
        what = f"is in {crs.to_string()}, a geographic CRS (degrees, not metres)"
    hint = ""
    with suppress(Exception):  # the hint is a courtesy: an odd CRS still gets the refusal
        x, y = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2
        lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
        zone = int((lon + 180) // 6) % 60 + 1
        epsg = 26900 + zone if lat >= 0 and zone <= 23 else (32600 if lat >= 0 else 32700) + zone
        hint = f", e.g. gdalwarp -t_srs EPSG:{epsg} {Path(source.split('?')[0]).name} utm.tif"
    raise InputError(f"{what}; geoclf sizes chips in metres: reproject it to its UTM zone first{hint}", source)


def describe_naip(path: PathLike, min_bands: int = 3) -> SceneInfo:
    """Open a NAIP-like raster and check it can be tiled: a CRS in metres, a north-up transform, >= ``min_bands``."""
    source = normalize_source(path)
    with open_raster(source) as ds:
        if ds.crs is None:
            raise InputError("has no CRS (a georeferenced raster is needed)", source)
        check_metric_crs(ds.crs, tuple(ds.bounds), source)
        mask, alpha_band = nodata_mask(ds)
        count = ds.count - (alpha_band is not None)
        if count < min_bands:
            raise InputError(f"has {_bands_text(count, alpha_band)}; NAIP imagery needs at least {min_bands} "
                             "(R, G, B[, NIR])", source)
        if ds.transform.b != 0 or ds.transform.d != 0 or ds.transform.e >= 0:
            raise InputError("is rotated or not north-up; warp it to a north-up grid first", source)
        if ds.dtypes[0] != "uint8":
            raise InputError(f"has {ds.dtypes[0]} pixels; NAIP imagery is 8-bit (uint8)", source)
        stem = Path(source.split("?")[0]).stem
        return SceneInfo(source=source, name=stem, crs=ds.crs, transform=ds.transform, width=ds.width,
                         height=ds.height, count=count, nodata=ds.nodata, date=scene_date(stem, ds.tags()),
                         mask=mask, alpha_band=alpha_band, overviews=len(ds.overviews(1)))


class ChipReader:
    """Reads chip windows from many rasters, keeping each raster open between reads.

    Opening a GeoTIFF costs far more than reading one 224x224 window from it, so a reader holds its
    datasets until :meth:`close` (or the end of a ``with`` block). Not thread-safe: use one per worker.
    Pixels a raster's alpha band or nodata mask marks as nodata read as 0, as NAIP's own collars are.

    Args:
        bands: 1-based band numbers to read, in output order (default: R, G, B, NIR).
        size: output side length in pixels; windows of another size are resampled (bilinear).
    """

    def __init__(self, bands: Sequence[int] = (1, 2, 3, 4), size: int = 224) -> None:
        self.bands = list(bands)
        self.size = int(size)
        self._open: dict[str, tuple[rasterio.DatasetReader, str | None, int | None]] = {}
        self._held: WindowPixels | None = None
        self._lent: set[str] = set()

    def lend(self, source: str, dataset: rasterio.DatasetReader) -> None:
        """Read ``source`` through ``dataset``, a reader of it the caller keeps open (and closes): the chips then
        come from the blocks GDAL already decoded for it (its block cache is per open dataset), e.g. for the
        block's nodata lattice. The caller must not use ``dataset`` while this reader reads.

        Raises:
            InputError: as :meth:`read` for a raster without the bands asked for.
        """
        if source in self._open and source not in self._lent:
            self._open.pop(source)[0].close()
        self._open[source] = self._checked(dataset, source, close=False)
        self._lent.add(source)

    def hold(self, pixels: WindowPixels | None) -> None:
        """Serve the chips that lie inside ``pixels`` (a window of one raster, already read) from them, until
        the next call (``None``: none).

        A chip window inside ``pixels`` at the reader's own size is those very pixels, its masked ones 0: the
        array :meth:`read` gives from the raster, without opening it or decoding its blocks again. Others
        (resampled, crossing the window's edge, of another raster) are read from the raster as before.
        """
        self._held = pixels

    def _dataset(self, source: str, renew: bool = False) -> tuple[rasterio.DatasetReader, str | None, int | None]:
        opened = self._open.get(source)
        if opened is None:
            try:
                dataset = rasterio.open(signing.for_reading(source, renew=True)) if renew else open_dataset(source)
            except RasterioError as exc:
                raise InputError(f"cannot be read as a raster ({_first_line(exc)})", source) from exc
            opened = self._open[source] = self._checked(dataset, source, close=True)
        return opened

    def _checked(self, dataset: rasterio.DatasetReader, source: str,
                 close: bool) -> tuple[rasterio.DatasetReader, str | None, int | None]:
        """``dataset`` with its nodata mask, once it has the bands asked for (else closed, if ``close``)."""
        try:
            mask, alpha_band = nodata_mask(dataset)
        except RasterioError as exc:
            if close:
                dataset.close()
            raise InputError(f"cannot be read as a raster ({_first_line(exc)})", source) from exc
        count = dataset.count - (alpha_band is not None)
        if count < max(self.bands) or alpha_band in self.bands:
            if close:
                dataset.close()
            raise InputError(f"has {_bands_text(count, alpha_band)}; band {max(self.bands)} was asked for", source)
        return dataset, mask, alpha_band

    def read(self, source: str, window: Window | tuple[int, int, int, int]) -> np.ndarray:
        """Read one chip as a ``(bands, size, size)`` uint8 array; parts outside the raster are 0.

        Args:
            source: raster path or URL.
            window: a rasterio ``Window`` or ``(col_off, row_off, width, height)`` in source pixels.
        """
        if not isinstance(window, Window):
            window = Window(*window)
        if self._held is not None:
            chip = self._held_chip(source, window)
            if chip is not None:
                return chip
        opened = self._dataset(source)
        try:
            return self._read(opened, source, window)
        except InputError:
            if not signing.signable(source) or source in self._lent:
                raise
            # the token may have expired while the raster was open: reopen it with a fresh one, once
            self._open.pop(source)[0].close()
            return self._read(self._dataset(source, renew=True), source, window)

    def _held_chip(self, source: str, window: Window) -> np.ndarray | None:
        """The chip ``window`` of ``source`` from the held pixels, or ``None`` when they do not hold it."""
        held = self._held
        col, row, width, height = (int(window.col_off), int(window.row_off), int(window.width),
                                   int(window.height))
        if (width, height) != (self.size, self.size) or (col, row, width, height) != tuple(window.flatten()):
            return None
        where = held.slices(source, self.bands, col, row, width, height)
        if where is None:
            return None
        positions, rows, columns = where
        chip = held.pixels[positions, rows, columns]  # a copy (fancy indexing on the bands)
        if held.valid is not None:
            chip[:, ~held.valid[rows, columns]] = 0
        return chip

    def _read(self, opened: tuple[rasterio.DatasetReader, str | None, int | None], source: str,
              window: Window) -> np.ndarray:
        dataset, mask, alpha_band = opened
        col, row = int(window.col_off), int(window.row_off)
        width, height = int(window.width), int(window.height)
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + width, dataset.width), min(row + height, dataset.height)
        if c1 <= c0 or r1 <= r0:
            return np.zeros((len(self.bands), self.size, self.size), dtype=np.uint8)
        inside = Window(c0, r0, c1 - c0, r1 - r0)
        try:
            if (c0, r0, c1, r1) == (col, row, col + width, row + height):
                resampled = (width, height) != (self.size, self.size)
                if mask is not None and resampled and MaskFlags.per_dataset not in dataset.mask_flag_enums[0]:
                    return self._read_alpha_resampled(dataset, alpha_band, inside)
                chip = dataset.read(self.bands, window=inside, out_shape=(len(self.bands), self.size, self.size),
                                    resampling=Resampling.bilinear)
                # GDAL's resampling already leaves out what its per-dataset mask hides, as it leaves out zero
                # collars: zeroing by a nearest-sampled mask on top would make edges differ from those
                if not resampled:
                    valid = read_valid(dataset, mask, alpha_band, inside, (self.size, self.size))
                    if valid is not None:
                        chip[:, ~valid] = 0
                return chip
            block = dataset.read(self.bands, window=inside)
            valid = read_valid(dataset, mask, alpha_band, inside, block.shape[1:])
            if valid is not None:
                block[:, ~valid] = 0
        except RasterioError as exc:
            raise InputError(f"window {window} cannot be read ({_first_line(exc)})", source) from exc
        full = np.zeros((len(self.bands), height, width), dtype=block.dtype)
        full[:, r0 - row:r1 - row, c0 - col:c1 - col] = block
        if (height, width) == (self.size, self.size):
            return full
        return _resize(full, self.size)

    def _read_alpha_resampled(self, dataset: rasterio.DatasetReader, alpha: int, window: Window) -> np.ndarray:
        """A resampled chip of a raster whose alpha band GDAL does not take as a mask (one after the fourth).

        The pixels the alpha band hides are set to nodata (0) before resampling, with a margin of context around
        the window, so that the chip is exactly what the same raster with zero-valued collars gives.
        """
        pad = math.ceil(max(window.width, window.height) / self.size) + 1
        c0, r0 = max(int(window.col_off) - pad, 0), max(int(window.row_off) - pad, 0)
        c1 = min(int(window.col_off + window.width) + pad, dataset.width)
        r1 = min(int(window.row_off + window.height) + pad, dataset.height)
        context = Window(c0, r0, c1 - c0, r1 - r0)
        block = dataset.read(self.bands, window=context)
        block[:, dataset.read(alpha, window=context) == 0] = 0
        with MemoryFile() as memory:
            with memory.open(driver="GTiff", width=block.shape[2], height=block.shape[1], count=block.shape[0],
                             dtype=block.dtype, nodata=0, crs=dataset.crs,
                             transform=dataset.window_transform(context)) as copy:
                copy.write(block)
            with memory.open() as copy:
                inner = Window(window.col_off - c0, window.row_off - r0, window.width, window.height)
                return copy.read(window=inner, out_shape=(len(self.bands), self.size, self.size),
                                 resampling=Resampling.bilinear)

    def close(self) -> None:
        """Close every raster this reader opened (not those lent to it: :meth:`lend`)."""
        for source, (dataset, _, _) in self._open.items():
            if source not in self._lent:
                dataset.close()
        self._open.clear()
        self._lent.clear()

    def __enter__(self) -> ChipReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a reader left to the garbage collector still releases its files
        with suppress(Exception):
            self.close()


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a (bands, h, w) uint8 array to (bands, size, size)."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(b).resize((size, size), Image.BILINEAR)) for b in array])
