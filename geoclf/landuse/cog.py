"""Land-use COGs: ``landuse.tif`` (class codes, colour table, the class scheme as tags) and ``landuse_probs.tif``.

A GeoTIFF colour table lives on a single-band palette image, so class codes go to ``landuse.tif`` and the
per-class probabilities, when wanted, to a float32 sibling ``landuse_probs.tif`` on the very same grid. The
class scheme travels as tags (:meth:`ClassScheme.to_tags() <tiling.classes.ClassScheme.to_tags>`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from geoclf.landuse.grid import NODATA, LandUseGrid
from geoclf.landuse.styles import write_styles
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.io import atomic_path, open_raster

PathLike = str | os.PathLike[str]


class Legend(Protocol):
    """What drawing a map needs of its classes: names in code order (code ``i + 1`` is ``names[i]``) and a
    colour for each. A :class:`~tiling.classes.ClassScheme` is one; so is a legend of other codes (transitions)."""

    @property
    def names(self) -> list[str]: ...

    def color(self, name: str) -> tuple[int, int, int]: ...


class LandUseHeader(NamedTuple):
    """What a land-use COG's header says, read without its pixels (:func:`read_header`)."""

    classes: ClassScheme
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    tags: dict[str, str]


def color_table(classes: Legend) -> np.ndarray:
    """``(256, 4)`` uint8 RGBA by map code: class ``i``'s colour at ``i + 1``, opaque; everything else (nodata
    included) transparent black. The COG's colour table and every picture of a map use it."""
    table = np.zeros((256, 4), dtype=np.uint8)
    for i, name in enumerate(classes.names):
        table[i + 1] = (*classes.color(name), 255)
    return table


def _as_scheme(classes: Any) -> ClassScheme:
    """A ClassScheme of a scheme-like legend (``names``, ``color(name)``, ``to_dict()``), e.g. of transitions."""
    if isinstance(classes, ClassScheme):
        return classes
    return ClassScheme(classes.to_dict(), {name: classes.color(name) for name in classes.names})


def _write_cog(path: PathLike, profile: dict[str, Any], write: Callable[[Any], None], blocksize: int,
               resampling: str, predictor: bool = False) -> None:
    """Build the raster in memory with ``write(dataset)``, then copy it to a COG atomically.

    ``predictor`` turns on DEFLATE's predictor (the COG driver picks the floating-point one, 3, for float data):
    neighbouring probabilities differ little, and differences compress far better than raw IEEE floats.
    """
    with MemoryFile() as memfile, memfile.open(driver="GTiff", **profile) as dataset:
        write(dataset)
        copy_to_cog(dataset, path, blocksize, resampling, predictor)


def copy_to_cog(source: Any, path: PathLike, blocksize: int, resampling: str, predictor: bool) -> None:
    """Copy a raster (an open dataset or a path, e.g. a VRT mosaic) to a COG at ``path``, atomically."""
    with atomic_path(path) as temporary:
        # The COG driver writes overviews until they fit in one block, with the resampling given, and
        # puts the IFDs before the data so a client reads the header with one range request.
        rasterio.shutil.copy(source, temporary, driver="COG", BLOCKSIZE=blocksize, COMPRESS="DEFLATE",
                             RESAMPLING=resampling, OVERVIEWS="AUTO", PREDICTOR="YES" if predictor else "NO")


def write_landuse_cog(path: PathLike, grid: LandUseGrid, classes: ClassScheme, *, blocksize: int = 256) -> Path:
    """Write the class codes as a Cloud-Optimized GeoTIFF with a colour table and the class names.

    Band 1 holds code ``i + 1`` for class ``i``, nodata 0, with the scheme's colours as the colour table and
    the class names, codes, NLCD grouping and colours as JSON tags (:meth:`ClassScheme.to_tags()
    <tiling.classes.ClassScheme.to_tags>`). Overviews use mode resampling, so zoomed-out views stay classes.
    Beside it go the styles that make GIS tools show class names (:func:`geoclf.landuse.styles.write_styles`:
    ``<name>.tif.aux.xml`` with GDAL category names and a raster attribute table, ``<name>.qml``,
    ``<name>.sld``). Probabilities, if any, are not written here (see :func:`write_probability_cog`).

    Args:
        path: output file; written to a temporary name and renamed, so a reader never sees half a file.
        grid: the land-use grid.
        classes: the scheme the codes refer to (or a legend with ``names``, ``color(name)`` and ``to_dict()``,
            e.g. of the transitions of a change map).
        blocksize: COG tile side in pixels (a multiple of 16).

    Returns:
        ``path`` as a Path.
    """
    codes = np.asarray(grid.codes, dtype=np.uint8)
    if codes.ndim != 2:
        raise InputError(f"class codes must be a 2-D array, got shape {codes.shape}")
    if codes.max(initial=0) > len(classes.names):
        raise InputError(f"class code {int(codes.max())} is past the scheme's {len(classes.names)} classes")
    height, width = codes.shape
    profile = {"width": width, "height": height, "count": 1, "dtype": "uint8", "crs": grid.crs,
               "transform": grid.transform, "nodata": NODATA}
    scheme = _as_scheme(classes)
    table = color_table(scheme)
    colormap = {code: tuple(int(v) for v in table[code]) for code in range(len(scheme.names) + 1)}

    def write(dataset: rasterio.io.DatasetWriter) -> None:
        dataset.write(codes, 1)
        dataset.write_colormap(1, colormap)
        dataset.update_tags(**scheme.to_tags())
        dataset.set_band_description(1, "land_use_class")

    _write_cog(path, profile, write, blocksize, "MODE")
    write_styles(path, scheme)
    return Path(path)


def write_probability_cog(path: PathLike, grid: LandUseGrid, classes: ClassScheme, *,
                          blocksize: int = 256) -> Path:
    """Write the per-class probabilities as a float32 COG on the same grid, one band per class.

    Band ``i + 1`` is class ``i``'s probability (its description is the class name), NaN where there is no
    chip. Kept apart from ``landuse.tif`` because a GeoTIFF colour table needs a single-band image. DEFLATE with
    the floating-point predictor.

    Args:
        path: output file, written atomically.
        grid: a land-use grid with ``probs``.
        classes: the scheme, in band order.
        blocksize: COG tile side in pixels.

    Returns:
        ``path`` as a Path.
    """
    if grid.probs is None:
        raise InputError("the land-use grid has no probabilities (predictions lack prob_<Class> columns)")
    probs = np.asarray(grid.probs, dtype=np.float32)
    if probs.shape != (len(classes.names), *grid.codes.shape):
        raise InputError(f"probabilities have shape {probs.shape}, expected "
                         f"{(len(classes.names), *grid.codes.shape)}")
    profile = {"width": probs.shape[2], "height": probs.shape[1], "count": probs.shape[0],
               "dtype": "float32", "crs": grid.crs, "transform": grid.transform, "nodata": float("nan")}

    def write(dataset: rasterio.io.DatasetWriter) -> None:
        dataset.write(probs)
        dataset.update_tags(**_as_scheme(classes).to_tags())
        for i, name in enumerate(classes.names):
            dataset.set_band_description(i + 1, name)

    _write_cog(path, profile, write, blocksize, "AVERAGE", predictor=True)
    return Path(path)


def read_header(path: PathLike) -> LandUseHeader:
    """The class scheme and georeferencing of a land-use COG, from its header only (no pixel is read).

    Raises:
        InputError: no such file, not a raster, or no readable class scheme tags.
    """
    with open_raster(path) as dataset:
        tags = dataset.tags()
        return LandUseHeader(ClassScheme.from_tags(tags, path), dataset.crs, dataset.transform, dataset.width,
                             dataset.height, tags)


def read_landuse(path: PathLike, probs_path: PathLike | None = None) -> tuple[LandUseGrid, ClassScheme]:
    """Read a land-use COG written by :func:`write_landuse_cog` (and optionally its probabilities).

    Args:
        path: ``landuse.tif``.
        probs_path: ``landuse_probs.tif`` on the same grid, if wanted.

    Returns:
        The grid (with ``probs`` when ``probs_path`` is given) and the class scheme stored in the file.

    Raises:
        InputError: a missing or unreadable file, no class scheme tags, probabilities on another grid.
    """
    with open_raster(path) as dataset:
        classes = ClassScheme.from_tags(dataset.tags(), path)
        grid = LandUseGrid(dataset.read(1), dataset.transform, dataset.crs)
    if probs_path is not None:
        with open_raster(probs_path) as dataset:
            if (dataset.transform, dataset.crs, dataset.shape) != (grid.transform, grid.crs, grid.codes.shape):
                raise InputError(f"is not on the grid of {os.fspath(path)}", probs_path)
            grid = grid._replace(probs=dataset.read().astype(np.float32))
    return grid, classes
