"""Land-use maps that are never gathered: map tiles written by workers, mosaics of them, COGs from those.

A worker that scores a block of a raster (:class:`geoclf.score.ScoreBlockTask`) also writes that block's map:
a small GeoTIFF of class codes and one of probabilities (:func:`write_tile`), on the area's map lattice (the
chip grid itself, or a grid in the map CRS aligned to multiples of the pixel size, so tiles of neighbouring
blocks meet without resampling). The client writes a GDAL VRT of them (:func:`write_mosaic`: ``landuse.vrt``,
which GIS tools open as one raster, with the colour table and the class scheme as its metadata) and writes
``landuse.tif`` from the tiles themselves (:func:`tiles_to_cog`): they are painted into one GeoTIFF strip by
strip (:func:`paint_mosaic`, the raster the VRT shows) and that is copied with GDAL's COG driver
(:func:`mosaic_to_cog`), which builds the overviews. No process ever holds the area's map, let alone its
predictions table; a VRT of thousands of tiles would cost GDAL memory for each while the COG driver read it.

For one scene the result is the COG :func:`geoclf.landuse.write_landuse_cog` writes from the whole table.
Where tiles overlap (UTM zones warped into one CRS, several dates of one place), the tile of the earlier
block in the plan keeps the overlap: VRT sources paint in order, so they are listed last block first.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from geoclf.landuse.cog import color_table, copy_to_cog
from geoclf.landuse.grid import NODATA, LandUseGrid, majority_filter, smoothing_window
from geoclf.landuse.styles import write_styles
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.io import atomic_path

PathLike = str | os.PathLike[str]


class MapTile(NamedTuple):
    """Where one block's map tile lies: its files (relative to the output directory) and its georeferencing."""

    codes: str
    probs: str | None
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int
    crs: str

    @classmethod
    def from_summary(cls, value: dict[str, Any]) -> MapTile:
        """The tile a task summary describes (see :meth:`to_summary`)."""
        return cls(value["codes"], value.get("probs"), tuple(value["transform"]), int(value["width"]),
                   int(value["height"]), value["crs"])

    def to_summary(self) -> dict[str, Any]:
        """The tile as JSON, for a task summary."""
        return {**self._asdict(), "transform": list(self.transform)}


def write_tile(directory: PathLike, name: str, grid: LandUseGrid) -> MapTile:
    """Write one block's map tile: ``<name>.tif`` (class codes) and ``<name>.probs.tif`` (probabilities, if any).

    Plain tiled GeoTIFFs, DEFLATE, written atomically; the mosaic gives them their colours and class names.

    Args:
        directory: the output directory the returned paths are relative to.
        name: the tile's path without suffix, relative to ``directory`` (e.g. ``tiles/<scene>/part-00000``).
        grid: the block's land-use grid.
    """
    root = Path(directory)
    height, width = grid.codes.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "crs": grid.crs, "transform": grid.transform,
               "compress": "deflate", "tiled": width > 256 or height > 256}
    codes = f"{name}.tif"
    (root / codes).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / codes) as tmp, rasterio.open(tmp, "w", count=1, dtype="uint8", nodata=NODATA,
                                                         **profile) as dst:
        dst.write(np.asarray(grid.codes, dtype=np.uint8), 1)
    probs = None
    if grid.probs is not None:
        probs = f"{name}.probs.tif"
        with atomic_path(root / probs) as tmp, rasterio.open(tmp, "w", count=grid.probs.shape[0], dtype="float32",
                                                             nodata=float("nan"), **profile) as dst:
            dst.write(np.asarray(grid.probs, dtype=np.float32))
    return MapTile(codes, probs, tuple(grid.transform)[:6], width, height, grid.crs.to_string())


class _Lattice(NamedTuple):
    """The raster that a mosaic of tiles is: its CRS, pixel size, top left corner and size in pixels."""

    crs: str
    a: float  # pixel width
    e: float  # pixel height (negative)
    left: float
    top: float
    width: int
    height: int

    @classmethod
    def of(cls, tiles: Sequence[MapTile]) -> _Lattice:
        """The lattice holding every tile.

        Raises:
            InputError: no tiles, or tiles on different lattices (CRS or pixel size).
        """
        if not tiles:
            raise InputError("no map tiles to mosaic (no chip was scored)")
        first = tiles[0]
        a, e = first.transform[0], first.transform[4]
        for tile in tiles:
            if (tile.crs != first.crs or not math.isclose(tile.transform[0], a)
                    or not math.isclose(tile.transform[4], e)):
                raise InputError(f"map tile {tile.codes} is not on the lattice of {first.codes}")
        left = min(t.transform[2] for t in tiles)
        top = max(t.transform[5] for t in tiles)
        right = max(t.transform[2] + t.width * a for t in tiles)
        bottom = min(t.transform[5] + t.height * e for t in tiles)
        return cls(first.crs, a, e, left, top, round((right - left) / a), round((bottom - top) / e))

    def offset(self, tile: MapTile) -> tuple[int, int]:
        """The tile's top left pixel (column, row) in the mosaic."""
        return round((tile.transform[2] - self.left) / self.a), round((tile.transform[5] - self.top) / self.e)


def write_mosaic(path: PathLike, tiles: Sequence[MapTile], classes: ClassScheme, *,
                 probabilities: bool = False) -> Path:
    """Write a VRT placing every tile in one raster: ``landuse.vrt`` (codes) or, with ``probabilities``, the
    probabilities' ``landuse_probs.vrt``. Paths inside are relative to the VRT, so the output moves as a whole.

    The codes VRT carries what ``landuse.tif`` carries: the colour table, the class scheme as metadata tags, the
    band description and nodata 0; the probabilities' one band per class named after it, nodata NaN. The
    sources are written one at a time into what ElementTree writes of the rest: the file ElementTree writes of
    the whole tree, without a tree of every source in memory (+22 MB for the two VRTs of 2,060 tiles).

    Raises:
        InputError: no tiles, or tiles on different lattices (CRS or pixel size).
    """
    target = Path(path)
    lattice = _Lattice.of(tiles)
    sources = [tile.probs if probabilities else tile.codes for tile in tiles]
    for tile, source in zip(tiles, sources, strict=True):
        if source is None:
            raise InputError(f"map tile {tile.codes} has no probabilities")
    root = ET.Element("VRTDataset", rasterXSize=str(lattice.width), rasterYSize=str(lattice.height))
    ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = CRS.from_user_input(lattice.crs).to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(float(v)) for v in (lattice.left, lattice.a, 0.0, lattice.top, 0.0, lattice.e))
    metadata = ET.SubElement(root, "Metadata")
    for key, value in {"AREA_OR_POINT": "Area", **classes.to_tags()}.items():
        ET.SubElement(metadata, "MDI", key=key).text = value
    bands = range(1, len(classes.names) + 1) if probabilities else [1]
    for band in bands:
        element = ET.SubElement(root, "VRTRasterBand", dataType="Float32" if probabilities else "Byte",
                                band=str(band))
        ET.SubElement(element, "Description").text = classes.names[band - 1] if probabilities else "land_use_class"
        ET.SubElement(element, "NoDataValue").text = "nan" if probabilities else str(NODATA)
        if not probabilities:
            ET.SubElement(element, "ColorInterp").text = "Palette"
            table = ET.SubElement(element, "ColorTable")
            for rgba in color_table(classes)[:len(classes.names) + 1]:
                ET.SubElement(table, "Entry", c1=str(rgba[0]), c2=str(rgba[1]), c3=str(rgba[2]), c4=str(rgba[3]))
        ET.SubElement(element, _SOURCES)  # where the band's sources go, indented as they are
    ET.indent(root)
    head, *parts = ET.tostring(root, encoding="unicode").split(f"<{_SOURCES} />")
    with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as sink:
        sink.write(head)
        for band, rest in zip(bands, parts, strict=True):
            # later sources paint over earlier ones: the first block keeps an overlap
            for i, (tile, source) in enumerate(zip(reversed(tiles), reversed(sources), strict=True)):
                sink.write(("\n" + 2 * _INDENT if i else "")
                           + ET.tostring(_source(lattice, tile, target.parent, source, band, probabilities),
                                        encoding="unicode"))
            sink.write(rest)
    return target


#: The placeholder of a band's sources in :func:`write_mosaic`'s tree, and ElementTree's indentation.
_SOURCES, _INDENT = "geoclf-sources", "  "


def _source(lattice: _Lattice, tile: MapTile, folder: Path, source: str, band: int,
            probabilities: bool) -> ET.Element:
    """One tile's ``ComplexSource`` in band ``band`` of :func:`write_mosaic`'s VRT, indented as in it."""
    element = ET.Element("ComplexSource")
    # named from the VRT's folder, which the tiles' paths are relative to
    ET.SubElement(element, "SourceFilename", relativeToVRT="1").text = os.path.relpath(folder / source, folder)
    ET.SubElement(element, "SourceBand").text = str(band)
    ET.SubElement(element, "SrcRect", xOff="0", yOff="0", xSize=str(tile.width), ySize=str(tile.height))
    x, y = lattice.offset(tile)
    ET.SubElement(element, "DstRect", xOff=str(x), yOff=str(y), xSize=str(tile.width), ySize=str(tile.height))
    ET.SubElement(element, "NODATA").text = "nan" if probabilities else str(NODATA)
    ET.indent(element, _INDENT, level=2)
    return element


#: Most rows of the mosaic :func:`paint_mosaic` paints at a time.
_PAINT_ROWS = 1024

#: Most bytes of a strip :func:`paint_mosaic` holds (the probabilities' bands, 4 bytes a class, take fewer rows).
_PAINT_BYTES = 8 * 2**20

#: Rows of a tiled GeoTIFF's blocks (GDAL's default): strips are whole blocks of rows, so none is written twice.
_BLOCK_ROWS = 256


def paint_mosaic(path: PathLike, tiles: Sequence[MapTile], classes: ClassScheme, *,
                 probabilities: bool = False) -> Path:
    """Paint the tiles into one tiled GeoTIFF: the raster :func:`write_mosaic`'s VRT shows, with its colour
    table, tags, band descriptions and nodata, for a mosaic that is copied once (:func:`mosaic_to_cog`). With
    ``probabilities`` the tiles' probabilities, one float32 band per class (NaN nodata), instead of their codes.

    A VRT costs GDAL memory for every source while it is open (~10 kB each, and more while the COG driver
    reads it: +62 MB over 2,060 tiles, measured), so the client's memory would grow with the area; painting
    holds one strip (at most :data:`_PAINT_ROWS` rows and :data:`_PAINT_BYTES`) and one tile at a time.
    Where tiles overlap the earlier tile keeps its pixels (band by band), as in the VRT. Tile paths are
    relative to ``path``'s folder, as in :func:`write_mosaic`.

    Raises:
        InputError: no tiles, tiles on different lattices (CRS or pixel size), or (with ``probabilities``) a
            tile without probabilities.
    """
    target = Path(path)
    lattice = _Lattice.of(tiles)
    sources = [tile.probs if probabilities else tile.codes for tile in tiles]
    for tile, source in zip(tiles, sources, strict=True):
        if source is None:
            raise InputError(f"map tile {tile.codes} has no probabilities")
    places = [lattice.offset(tile) for tile in tiles]
    count = len(classes.names) if probabilities else 1
    dtype = np.dtype(np.float32 if probabilities else np.uint8)
    nodata = float("nan") if probabilities else NODATA
    profile = {"driver": "GTiff", "width": lattice.width, "height": lattice.height, "count": count,
               "dtype": dtype.name, "nodata": nodata, "crs": CRS.from_user_input(lattice.crs),
               "transform": Affine(lattice.a, 0.0, lattice.left, 0.0, lattice.e, lattice.top), "tiled": True,
               "compress": "deflate"}
    fitting = _PAINT_BYTES // (lattice.width * count * dtype.itemsize)
    step = min(_PAINT_ROWS, max(_BLOCK_ROWS, fitting // _BLOCK_ROWS * _BLOCK_ROWS))
    with atomic_path(target) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.update_tags(AREA_OR_POINT="Area", **classes.to_tags())
        if probabilities:
            for band, name in enumerate(classes.names, start=1):
                dst.set_band_description(band, name)
        else:
            table = color_table(classes)
            dst.set_band_description(1, "land_use_class")
            dst.write_colormap(1, {code: tuple(int(v) for v in table[code])
                                   for code in range(len(classes.names) + 1)})
        for top in range(0, lattice.height, step):
            rows = min(step, lattice.height - top)
            strip = np.full((count, rows, lattice.width), nodata, dtype=dtype)
            for tile, source, (x, y) in zip(tiles, sources, places, strict=True):
                start, stop = max(y, top), min(y + tile.height, top + rows)
                if start >= stop:
                    continue
                with rasterio.open(target.parent / source) as src:
                    pixels = src.read(window=Window(0, start - y, tile.width, stop - start))
                painted = strip[:, start - top:stop - top, x:x + tile.width]
                if probabilities:  # NaN is the nodata: no pixel equals it
                    np.copyto(painted, pixels, where=np.isnan(painted) & ~np.isnan(pixels))
                else:
                    np.copyto(painted, pixels, where=(painted == NODATA) & (pixels != NODATA))
            dst.write(strip, window=Window(0, top, lattice.width, rows))
    return target


def tiles_to_cog(path: PathLike, tiles: Sequence[MapTile], classes: ClassScheme, *, directory: PathLike,
                 smooth: bool | int = False, probabilities: bool = False) -> Path:
    """Write ``landuse.tif`` (or, with ``probabilities``, ``landuse_probs.tif``) from map tiles: painted into a
    temporary GeoTIFF (:func:`paint_mosaic`) that :func:`mosaic_to_cog` copies, then removed.

    What a VRT of the tiles copied to a COG gives, without GDAL holding every tile while the COG driver reads
    them. ``directory`` is the folder the tiles' paths are relative to, where the temporary file goes.
    """
    target = Path(path)
    painted = Path(directory) / f".{target.name}.{os.getpid()}.painted.tif"
    try:
        paint_mosaic(painted, tiles, classes, probabilities=probabilities)
        return mosaic_to_cog(painted, target, classes, smooth=smooth, probabilities=probabilities)
    finally:
        painted.unlink(missing_ok=True)


#: Rows of the mosaic the majority filter reads at a time (with a row of halo either side).
_SMOOTH_ROWS = 1024


def mosaic_to_cog(mosaic: PathLike, path: PathLike, classes: ClassScheme, *, smooth: bool | int = False,
                  probabilities: bool = False, blocksize: int = 256) -> Path:
    """Copy a mosaic (a painted GeoTIFF or a VRT) to ``landuse.tif`` (or, with ``probabilities``,
    ``landuse_probs.tif``) as a COG.

    GDAL's COG driver reads the mosaic block by block and builds the overviews (mode for classes,
    average for probabilities), as :func:`geoclf.landuse.write_landuse_cog` does from an array. With
    ``smooth`` (a window width, see :func:`geoclf.landuse.smoothing_window`; ``True`` is 3 x 3), the majority
    filter (:func:`geoclf.landuse.majority_filter`) runs over strips of rows with half a window of halo each
    side, which gives what it gives on the whole map, into a temporary GeoTIFF that is then copied. The class
    COG gets its GIS styles beside it (:func:`geoclf.landuse.write_styles`).
    """
    target = Path(path)
    window = smoothing_window(smooth)
    halo = window // 2
    if window == 1:
        copy_to_cog(mosaic, target, blocksize, "AVERAGE" if probabilities else "MODE", predictor=probabilities)
    else:
        smoothed_path = target.with_name(f".{target.name}.{os.getpid()}.smoothed.tif")
        try:
            with rasterio.open(mosaic) as src:
                profile = src.profile | {"driver": "GTiff", "tiled": True, "compress": "deflate"}
                profile.pop("blockxsize", None)
                profile.pop("blockysize", None)
                with rasterio.open(smoothed_path, "w", **profile) as dst:
                    dst.update_tags(**src.tags())
                    dst.set_band_description(1, src.descriptions[0] or "land_use_class")
                    dst.write_colormap(1, src.colormap(1))
                    for top in range(0, src.height, _SMOOTH_ROWS):
                        rows = min(_SMOOTH_ROWS, src.height - top)
                        start, stop = max(0, top - halo), min(src.height, top + rows + halo)
                        codes = src.read(1, window=Window(0, start, src.width, stop - start))
                        dst.write(majority_filter(codes, window)[top - start:top - start + rows], 1,
                                  window=Window(0, top, src.width, rows))
            copy_to_cog(smoothed_path, target, blocksize, "MODE", predictor=False)
        finally:
            smoothed_path.unlink(missing_ok=True)
    if not probabilities:
        write_styles(target, classes)
    return target


def read_map(path: PathLike, max_pixels: int | None = None) -> LandUseGrid:
    """A land-use COG as a grid, whole or, past ``max_pixels`` on its longer side, from its overviews (mode).

    What pictures of a large map need (the page's overlay, the PNG) without reading it at full resolution.
    """
    with rasterio.open(path) as src:
        scale = 1.0 if not max_pixels else max(1.0, max(src.width, src.height) / max_pixels)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        codes = src.read(1, out_shape=shape, resampling=Resampling.mode)
        transform = src.transform * Affine.scale(src.width / shape[1], src.height / shape[0])
        return LandUseGrid(codes, transform, src.crs)


__all__ = ["MapTile", "mosaic_to_cog", "paint_mosaic", "read_map", "tiles_to_cog", "write_mosaic",
           "write_tile"]
