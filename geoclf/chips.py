"""Reading batches of chips for models: from the source rasters through the index, or from PNG folders."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from PIL import Image

from geoclf.partitions import check_stopped
from tiling.errors import InputError
from tiling.io import ChipReader


def read_batch(rows: pd.DataFrame, reader: ChipReader) -> np.ndarray:
    """Chips of ``rows`` as one ``(N, bands, size, size)`` uint8 array.

    Rows from a chip index are read from their source raster window; rows with a ``path`` column (the PNG
    layout of :func:`tiling.materialize.read_png_folder`) are read from the image file, RGB only.
    """
    out = np.empty((len(rows), len(reader.bands), reader.size, reader.size), dtype=np.uint8)
    if "path" in rows.columns and "source" not in rows.columns:
        if max(reader.bands) > 3:
            raise InputError("PNG chips hold only the RGB bands; this model also needs NIR (band 4)")
        for i, path in enumerate(rows["path"]):
            out[i] = _read_png(path, reader.bands, reader.size)
        return out
    windows = rows[["col_off", "row_off", "width", "height"]].to_numpy()
    for i, (source, window) in enumerate(zip(rows["source"], windows, strict=True)):
        out[i] = reader.read(source, tuple(window))
    return out


def _read_png(path: str, bands: Sequence[int], size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR)
            array = np.asarray(rgb)
    except OSError as exc:
        raise InputError(f"cannot be read as an image ({exc})", path) from exc
    return np.moveaxis(array, -1, 0)[[b - 1 for b in bands]]


def iter_batches(rows: pd.DataFrame, reader: ChipReader, batch_size: int = 32):
    """Yield ``(rows, chips)`` batches of at most ``batch_size`` chips, reading one batch ahead in a thread.

    Reading (GDAL decoding, releases the GIL) overlaps the model's work on the previous batch.
    """
    starts = list(range(0, len(rows), batch_size))
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read_batch, rows.iloc[0:batch_size], reader)
        for n, start in enumerate(starts):
            chips = pending.result()
            if n + 1 < len(starts):
                nxt = starts[n + 1]
                pending = pool.submit(read_batch, rows.iloc[nxt:nxt + batch_size], reader)
            check_stopped()  # a run stopped beside this task (an error, Ctrl-C): end here, not after the block
            yield rows.iloc[start:start + batch_size], chips
