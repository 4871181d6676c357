"""The generator's entry points: a scene, a time series, a UTM pair, an NLCD, the conversions' truth."""

from __future__ import annotations

import datetime as dt
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS

from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.io import PathLike
from tiling.synth.layout import DEFAULT_CENTER, footprint_in_world, scene_grid
from tiling.synth.render import acquisition_date, check_preset
from tiling.synth.world import SyntheticWorld
from tiling.synth.write import BLOCK, NaipFormat, render_naip, render_nlcd, trace_conversions


@dataclass(frozen=True)
class SyntheticScene:
    """The files of one synthetic NAIP scene and what it shows.

    Attributes:
        naip: path of the NAIP-like GeoTIFF.
        nlcd: path of the NLCD-like GeoTIFF covering it (None if not written).
        conversions: path of the GeoJSON of conversions to Developed between the NLCD year and the scene
            year (None if not written).
        year: the scene's (acquisition) year.
        date: acquisition date as the raster records it (``ACQUISITION_DATE`` tag or file name); None when
            it records none (``date_in="none"``), though the imagery still shows ``year``.
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
    date: dt.date | None
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
    cover = tuple(map(float, bounds)) if bounds is not None else footprint_in_world(scenes)
    if not (cover[0] < cover[2] and cover[1] < cover[3]):
        raise InputError(f"bounds {cover} are empty; expected (left, bottom, right, top) in EPSG:5070")
    world = SyntheticWorld(seed, conversion_rate, conversions_after)
    return render_nlcd(Path(out_path), world, cover, year, margin_m)


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
    return trace_conversions(Path(out_path), world, footprint_in_world(scenes), after, until, resolution)


def _shares(counts: np.ndarray) -> tuple[dict[str, float], float]:
    """Land-use class shares of valid pixels (default scheme, plus Water) and the nodata share."""
    valid = counts[:256].sum()
    total = valid + counts[256]
    shares: dict[str, float] = {}
    for name, codes in ClassScheme.default().groups.items():
        shares[name] = float(counts[list(codes)].sum() / valid) if valid else 0.0
    shares["Water"] = float(counts[11] / valid) if valid else 0.0
    return shares, float(counts[256] / total) if total else 0.0


def _prepare(out_dir: PathLike, preset: str, fmt: NaipFormat, world: SyntheticWorld,
             grid_args: tuple[Any, ...]) -> tuple[NaipFormat, Path, SyntheticWorld, Any]:
    """What make_scene and make_years start from: the preset checked, the output directory made, the pixel grid."""
    check_preset(preset)
    grid = scene_grid(*grid_args)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return fmt, out, world, grid


def make_scene(out_dir: PathLike, *, size_m: float | tuple[float, float] = 4480.0, resolution: float = 1.0,
               crs: str | CRS = "EPSG:26919", center: tuple[float, float] = DEFAULT_CENTER, year: int = 2016,
               seed: int = 0, nlcd: bool = True, nlcd_year: int | None = None, name: str = "naip",
               conversion_rate: float = 0.008, conversions_after: int = 2000, collar_m: float | None = None,
               bands: int = 4, nodata: str = "zero", date_in: str = "tag", preset: str = "default",
               progress: Callable[[int, int], None] | None = None) -> SyntheticScene:
    """Write a synthetic NAIP-like scene (and the NLCD-like raster under it) into ``out_dir``.

    The scene is a 4-band (red, green, blue, NIR) uint8 GeoTIFF: tiled 512 x 512, DEFLATE-compressed, with
    average overviews, nodata 0 in a slanted collar (a quarter-quad's lon/lat box seen in UTM), and the
    ``ACQUISITION_DATE`` tag. Same arguments, same bytes. ``bands``, ``nodata`` and ``date_in`` make the
    variants users' rasters come in (RGB only, an alpha band or a nodata mask, no date or a date in the name):
    wherever they have data, they hold the very pixels of the default scene.

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
        bands: 4 (red, green, blue, NIR) or 3 (red, green, blue, as older NAIP).
        nodata: how the collar is marked: ``"zero"`` (0 in all bands), ``"alpha"`` (an alpha band last) or
            ``"mask"`` (a GDAL internal mask); with an alpha band or a mask the collar holds imagery.
        date_in: where the date is recorded: ``"tag"`` (``ACQUISITION_DATE``), ``"name"`` (the file is
            ``<name>_YYYYMMDD.tif``) or ``"none"``.
        preset: ``"default"`` or ``"hard"``: per-parcel radiometric variety, larger year-to-year shifts and
            patches of other cover inside parcels, a world that ranks methods (:mod:`tiling.synth.render`).
            The land cover, and so the NLCD, is the same.
        progress: called as ``progress(blocks_done, blocks_total)`` while rendering.

    Returns:
        The paths written and a summary of the scene.
    """
    fmt, out, world, grid = _prepare(out_dir, preset, NaipFormat(bands=bands, nodata=nodata, date_in=date_in),
                                     SyntheticWorld(seed, conversion_rate, conversions_after),
                                     (size_m, resolution, crs, center, collar_m))
    path = out / fmt.file_name(name, acquisition_date(world.seed, int(year)))
    date, counts = render_naip(world, grid, int(year), path, progress, fmt, preset)
    nlcd_year = int(year if nlcd_year is None else nlcd_year)
    nlcd_path = conversions = None
    if nlcd:
        nlcd_path = render_nlcd(out / "nlcd.tif", world, footprint_in_world([grid]), nlcd_year, 300.0)
    if nlcd_year < year:
        conversions = trace_conversions(out / "conversions.geojson", world, footprint_in_world([grid]),
                                         nlcd_year, int(year), 5.0)
    shares, nodata_share = _shares(counts)
    return SyntheticScene(naip=path, nlcd=nlcd_path, conversions=conversions, year=int(year),
                          date=None if date_in == "none" else date, crs=grid.crs.to_string(), bounds=grid.bounds,
                          shape=(grid.height, grid.width), class_shares=shares, nodata_share=nodata_share)


def make_years(out_dir: PathLike, years: Sequence[int] = (2010, 2016), *,
               size_m: float | tuple[float, float] = 4480.0, resolution: float = 1.0,
               crs: str | CRS = "EPSG:26919", center: tuple[float, float] = DEFAULT_CENTER, seed: int = 0,
               conversion_rate: float = 0.008, conversions_after: int = 2000, collar_m: float | None = None,
               bands: int = 4, nodata: str = "zero", date_in: str = "tag", preset: str = "default",
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
        bands, nodata, date_in: as in :func:`make_scene`; with ``date_in="name"`` the files are
            ``naip_<year>_YYYYMMDD.tif``.
        preset: as in :func:`make_scene`.
        progress: called as ``progress(blocks_done, blocks_total)`` over all years.

    Returns:
        The scenes by year, the NLCD and the conversions paths.
    """
    years = sorted({int(y) for y in years})
    if not years:
        raise InputError("give at least one year")
    fmt, out, world, grid = _prepare(out_dir, preset, NaipFormat(bands=bands, nodata=nodata, date_in=date_in),
                                     SyntheticWorld(seed, conversion_rate, conversions_after),
                                     (size_m, resolution, crs, center, collar_m))
    per_year = math.ceil(grid.width / BLOCK) * math.ceil(grid.height / BLOCK)
    scenes: dict[int, SyntheticScene] = {}
    for i, year in enumerate(years):
        report = None if progress is None else (lambda done, _, i=i: progress(i * per_year + done,
                                                                             per_year * len(years)))
        path = out / fmt.file_name(f"naip_{year}", acquisition_date(world.seed, year))
        date, counts = render_naip(world, grid, year, path, report, fmt, preset)
        shares, nodata_share = _shares(counts)
        scenes[year] = SyntheticScene(naip=path, nlcd=out / "nlcd.tif", conversions=None, year=year,
                                      date=None if date_in == "none" else date, crs=grid.crs.to_string(),
                                      bounds=grid.bounds, shape=(grid.height, grid.width), class_shares=shares,
                                      nodata_share=nodata_share)
    cover = footprint_in_world([grid])
    nlcd_path = render_nlcd(out / "nlcd.tif", world, cover, years[0], 300.0)
    conversions = trace_conversions(out / "conversions.geojson", world, cover, years[0], years[-1], 5.0)
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


def virtual_scenes(base: PathLike, out_dir: PathLike, count: int, *, columns: int | None = None,
                   name: str = "vscene") -> list[Path]:
    """Write ``count`` virtual scenes: GDAL VRTs that all read the pixels of ``base``, laid side by side.

    A large area without its pixels: scene ``i`` is ``base`` moved by whole scene widths and heights to
    column ``i % columns`` and row ``i // columns`` of a mosaic (``columns`` default: about the square root of
    ``count``), so the scenes tile the plane without overlapping and each is a raster of its own for every
    reader (its name ``<name>_<i>``, its georeferencing, the base's date tag and nodata). Each VRT is a few
    hundred bytes; the base is read through them. Its side should be a multiple of the chip grid's step, so
    that every scene holds the same chips.

    Args:
        base: a GeoTIFF (e.g. :func:`make_scene`'s NAIP raster).
        out_dir: directory the VRTs are written into (created if missing).
        count: how many scenes.
        columns: scenes per row of the mosaic.
        name: the VRTs' file stem before their number.

    Returns:
        The VRT paths, in scene order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = columns or max(1, math.ceil(math.sqrt(count)))
    source = Path(base).resolve()
    with rasterio.open(source) as ds:
        transform, width, height, crs, tags = ds.transform, ds.width, ds.height, ds.crs, ds.tags()
        bands = [(ds.dtypes[b - 1], ds.nodatavals[b - 1], ds.colorinterp[b - 1].name) for b in range(1, ds.count + 1)]
        block_x, block_y = ds.block_shapes[0][1], ds.block_shapes[0][0]
    paths = []
    for i in range(count):
        column, row = i % columns, i // columns
        left = transform.c + column * width * transform.a
        top = transform.f + row * height * transform.e
        root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
        ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = crs.to_wkt()
        ET.SubElement(root, "GeoTransform").text = ", ".join(
            repr(float(v)) for v in (left, transform.a, 0.0, top, 0.0, transform.e))
        metadata = ET.SubElement(root, "Metadata")
        for key, value in tags.items():
            ET.SubElement(metadata, "MDI", key=key).text = value
        for band, (dtype, nodata, interp) in enumerate(bands, start=1):
            element = ET.SubElement(root, "VRTRasterBand", dataType=_GDAL_TYPES[dtype], band=str(band))
            if nodata is not None:
                ET.SubElement(element, "NoDataValue").text = repr(float(nodata))
            ET.SubElement(element, "ColorInterp").text = interp.capitalize()
            simple = ET.SubElement(element, "SimpleSource")
            ET.SubElement(simple, "SourceFilename", relativeToVRT="0").text = str(source)
            ET.SubElement(simple, "SourceBand").text = str(band)
            ET.SubElement(simple, "SourceProperties", RasterXSize=str(width), RasterYSize=str(height),
                          DataType=_GDAL_TYPES[dtype], BlockXSize=str(block_x), BlockYSize=str(block_y))
            for rect in ("SrcRect", "DstRect"):
                ET.SubElement(simple, rect, xOff="0", yOff="0", xSize=str(width), ySize=str(height))
        path = out / f"{name}_{i:05d}.vrt"
        ET.ElementTree(root).write(path, encoding="utf-8")
        paths.append(path)
    return paths


_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "float32": "Float32"}
