"""geoclf: land-use classification of NAIP aerial imagery.

The library's layers, from the bottom up: ``tiling`` (rasters, grids, labels, chip indexes; no torch),
then in ``geoclf`` the backbones and features, classifiers and fine-tuning, the model artifact, scoring,
maps and change analysis; the CLI sits on top.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geoclf")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
