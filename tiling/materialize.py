"""Materialized chips: PNG files in the seed study's ``split/Class/id.png`` layout, or georeferenced GeoTIFFs.

Downstream stages read chips straight from the source rasters through the index; materializing is for
people who want to look at chips, or for tools that expect an image folder.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from PIL import Image
from rasterio.transform import from_bounds

from tiling.classes import path_safe
from tiling.errors import InputError
from tiling.grid import parse_cell
from tiling.io import ChipReader, PathLike, atomic_path, describe_naip
from tiling.parallel import Scheduler, dask_client, for_tasks, map_tasks

FORMATS = ("png", "geotiff")

#: Chips per materializing task.
_CHIPS_PER_TASK = 256


def chip_filename(chip_id: str, fmt: str) -> str:
    """File name of a chip: its id with ``:`` replaced (not portable in file names)."""
    return chip_id.replace(":", "__") + (".png" if fmt == "png" else ".tif")


def chip_path(root: PathLike, row: Mapping[str, Any], fmt: str) -> Path:
    """Where a chip row is written under ``root`` (``split/label/`` when the index is labeled).

    Raises:
        InputError: the split, label or chip id cannot be a file name (``../x``, ``a/b``): the chip would be
            written outside ``root``.
    """
    parts = [str(row.get("split") or "all"), str(row.get("label") or "unlabeled")] if "label" in row else []
    name = chip_filename(row["chip_id"], fmt)
    for part in (*parts, name):
        if not path_safe(part):
            raise InputError(f"chip {row['chip_id']!r}: {part!r} cannot be a file or directory name (it would be "
                             "written outside the chip folder)")
    return Path(root, *parts, name)


def materialize_chips(index: gpd.GeoDataFrame, out_dir: PathLike, fmt: str = "png", size: int = 224,
                      scheduler: Scheduler = "sync", progress: bool = True) -> int:
    """Write every chip of ``index`` as an image file; existing files are kept (a rerun resumes).

    PNG chips hold the RGB bands (the seed study's layout); GeoTIFF chips hold the image bands (R, G, B and NIR
    where the source has it) and their footprint's georeference in the native CRS. Returns how many chips
    exist afterwards.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown chip format {fmt!r}; choose one of {', '.join(FORMATS)}")
    columns = [c for c in ("chip_id", "source", "col_off", "row_off", "width", "height", "crs", "split", "label",
                           "ix", "iy", "cell") if c in index.columns]
    frame = pd.DataFrame(index[columns])
    for row in frame.to_dict("records"):  # names that would leave out_dir are refused before any chip is written
        chip_path(out_dir, row, fmt)
    # Every source is opened once here: an unreadable one fails before any chip is written, and RGB-only
    # rasters (older NAIP) give 3-band GeoTIFF chips.
    bands = {source: min(describe_naip(source).count, 4) for source in frame["source"].unique()}
    frame["bands"] = frame["source"].map(bands) if fmt == "geotiff" else 3
    batches = [frame.iloc[i:i + _CHIPS_PER_TASK] for i in range(0, len(frame), _CHIPS_PER_TASK)]
    with dask_client(for_tasks(scheduler, len(batches))) as client:
        counts = map_tasks(_write_batch, batches, client, os.fspath(out_dir), fmt, size, desc=f"writing {fmt} chips",
                           progress=progress)
    return int(sum(counts))


def _write_batch(batch: pd.DataFrame, out_dir: str, fmt: str, size: int) -> int:
    written = 0
    readers = {count: ChipReader(bands=range(1, count + 1), size=size) for count in batch["bands"].unique()}
    with ExitStack() as stack:
        for reader in readers.values():
            stack.enter_context(reader)
        for row in batch.to_dict("records"):
            path = chip_path(out_dir, row, fmt)
            if path.exists():
                written += 1
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            chip = readers[row["bands"]].read(row["source"], (row["col_off"], row["row_off"], row["width"],
                                                              row["height"]))
            with atomic_path(path) as tmp:
                if fmt == "png":
                    # fast zlib settings: the default level costs 70% of materializing, for a 0.1% smaller file
                    Image.fromarray(np.moveaxis(chip, 0, -1)).save(tmp, format="PNG", compress_level=1,
                                                                   compress_type=zlib.Z_RLE)
                else:
                    _write_geotiff(tmp, chip, row)
            written += 1
    return written


def _write_geotiff(path: PathLike, chip: np.ndarray, row: Mapping[str, Any]) -> None:
    transform = from_bounds(*parse_cell(row["cell"]).bounds, chip.shape[2], chip.shape[1])
    with rasterio.open(path, "w", driver="GTiff", width=chip.shape[2], height=chip.shape[1], count=chip.shape[0],
                       dtype="uint8", crs=row["crs"], transform=transform, compress="deflate", nodata=0) as dst:
        dst.write(chip)
        dst.descriptions = ("red", "green", "blue", "nir")[: chip.shape[0]]


def read_png_folder(root: PathLike) -> pd.DataFrame:
    """List PNG chips in the seed study's ``split/Class/*.png`` layout: columns path, chip_id, split, label."""
    root = Path(root)
    rows = [{"path": str(p), "chip_id": p.stem.replace("__", ":"), "split": p.parent.parent.name,
             "label": p.parent.name} for p in sorted(root.glob("*/*/*.png"))]
    if not rows:
        raise InputError("holds no PNG chips in the split/Class/*.png layout", root)
    return pd.DataFrame(rows)
