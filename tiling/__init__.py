"""tiling: NAIP rasters x NLCD land cover -> labeled chips on a snapped grid, with a GeoParquet index.

This package never imports torch: tiling a county needs rasterio, not a deep-learning stack. The synthetic
scene generator (:mod:`tiling.synth`) is loaded on first use of ``tiling.make_scene`` and friends, not by
``import tiling``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tiling.classes import NLCD_COLORS, NLCD_NAMES, ClassScheme
from tiling.errors import InputError
from tiling.grid import ChipGrid
from tiling.index import TileParams, index_hash, read_index, summarize, tile, validate_index, write_index
from tiling.io import ChipReader, SceneInfo, describe_naip, open_raster
from tiling.parallel import dask_client

if TYPE_CHECKING:
    from tiling.synth import make_nlcd, make_scene, make_utm_pair, make_years

#: Names served lazily from :mod:`tiling.synth`: the generator is only needed for synthetic scenes.
_LAZY = {"make_nlcd": "tiling.synth", "make_scene": "tiling.synth", "make_utm_pair": "tiling.synth",
         "make_years": "tiling.synth"}

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
    "validate_index",
    "write_index",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'tiling' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
