"""tiling: NAIP rasters x NLCD land cover -> labeled chips on a snapped grid, with a GeoParquet index.

This package never imports torch: tiling a county needs rasterio, not a deep-learning stack.
"""

from tiling.classes import NLCD_COLORS, NLCD_NAMES, ClassScheme
from tiling.errors import InputError
from tiling.grid import ChipGrid
from tiling.index import TileParams, index_hash, read_index, summarize, tile, write_index
from tiling.io import ChipReader, SceneInfo, describe_naip, open_raster
from tiling.parallel import dask_client
from tiling.synth import make_nlcd, make_scene, make_utm_pair, make_years

__all__ = [
    "NLCD_COLORS",
    "NLCD_NAMES",
    "ChipGrid",
    "ChipReader",
    "ClassScheme",
    "InputError",
    "SceneInfo",
    "TileParams",
    "dask_client",
    "describe_naip",
    "index_hash",
    "make_nlcd",
    "make_scene",
    "make_utm_pair",
    "make_years",
    "open_raster",
    "read_index",
    "summarize",
    "tile",
    "write_index",
]
