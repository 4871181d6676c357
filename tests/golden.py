"""Fingerprints of a pipeline's outputs, for golden-output tests that survive refactoring.

A fingerprint keeps what a user of an output relies on and drops what legitimately varies between two runs
of the same code (absolute paths of the working directory, run ids, creation times, folium's random element
ids). Exact things (class codes, chip ids, labels, tags, shapes, georeferencing) are hashed; floating-point
columns and bands are summarized by order-sensitive moments, compared with a tolerance, because a change of
batching or summation order may move the last bits of a float without changing any result.

Regenerate a golden file deliberately (after an intended change of outputs) with
``GEOCLF_UPDATE_GOLDEN=1 pytest tests/test_golden.py``, and say why in the commit message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from PIL import Image

#: Keys whose values differ between two identical runs (or are hashes of files that embed paths).
VOLATILE_KEYS = {"created", "run_id", "sha256", "chip_index_sha256", "geoclf_version", "duration_s", "elapsed_s",
                 "mlflow_run_id", "start_time", "end_time",
                 # a planned output's fingerprint hashes its rasters' paths; its partitions' summaries hold timings
                 "plan_sha256", "task_s", "seconds"}
#: Files that are not compared byte by byte: their content is covered by the data files beside them.
SKIPPED_SUFFIXES = {".html", ".db", ".skops", ".pt", ".ckpt", ".lock"}

RTOL = 1e-5


def _digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:16]


def _moments(values: np.ndarray) -> dict[str, Any]:
    """Order-sensitive summary of a float array: NaN count, sum, sum of squares, min, max, index-weighted sum."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    finite = flat[np.isfinite(flat)]
    weights = np.arange(1, flat.size + 1, dtype=np.float64)[np.isfinite(flat)]
    if finite.size == 0:
        return {"n": int(flat.size), "nan": int(flat.size)}
    return {"n": int(flat.size), "nan": int(flat.size - finite.size), "sum": float(finite.sum()),
            "sumsq": float((finite ** 2).sum()), "min": float(finite.min()), "max": float(finite.max()),
            "wsum": float((finite * weights).sum() / flat.size)}


def _normalize(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {k: _normalize(v, root) for k, v in sorted(value.items()) if k not in VOLATILE_KEYS}
    if isinstance(value, list | tuple):
        return [_normalize(v, root) for v in value]
    if isinstance(value, str):
        return _RUN_ID.sub("<run>", value.replace(root, "<workdir>"))
    return value


_RUN_ID = re.compile(r"(?<=/)[0-9a-f]{32}(?=/|$)")


def _column(column: pa.ChunkedArray | pa.Array, root: str) -> dict[str, Any]:
    kind = column.type
    if pa.types.is_floating(kind):
        return {"float": _moments(column.to_numpy(zero_copy_only=False))}
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind):
        rows = [np.asarray(v, dtype=np.float64) for v in column.to_pylist()]
        if rows and pa.types.is_floating(kind.value_type):
            matrix = np.stack(rows) if len({r.size for r in rows}) == 1 else np.concatenate(rows)
            return {"float_list": _moments(matrix), "row_sums": _moments(matrix.reshape(len(rows), -1).sum(axis=1))}
    values = [_normalize(v, root) if not isinstance(v, bytes) else _digest(v) for v in column.to_pylist()]
    return {"exact": _digest(json.dumps(values, default=str).encode())}


def table_fingerprint(table: pa.Table, root: str) -> dict[str, Any]:
    """Column names, types and a fingerprint per column (geo metadata included, paths made relative)."""
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k != b"pandas"}
    parsed = {}
    for key, text in meta.items():
        try:
            parsed[key] = _normalize(json.loads(text), root)
        except ValueError:
            parsed[key] = text.replace(root, "<workdir>")
    return {"rows": table.num_rows, "schema": [f"{f.name}:{f.type}" for f in table.schema],
            "metadata": _digest(json.dumps(parsed, sort_keys=True, default=str).encode()),
            "columns": {name: _column(table.column(name), root) for name in table.column_names}}


def raster_fingerprint(path: Path, root: str) -> dict[str, Any]:
    """Georeferencing, tags, colour table, overviews and per-band content of a GeoTIFF."""
    with rasterio.open(path) as ds:
        bands = {}
        for band in range(1, ds.count + 1):
            data = ds.read(band)
            bands[str(band)] = ({"float": _moments(data)} if np.issubdtype(data.dtype, np.floating)
                                else {"exact": _digest(data.tobytes())})
        colormap = None
        with contextlib.suppress(ValueError):  # no colour table
            colormap = {str(k): list(v) for k, v in sorted(ds.colormap(1).items()) if any(v)}
        return {"crs": ds.crs.to_string() if ds.crs else None, "transform": list(ds.transform)[:6],
                "shape": [ds.count, ds.height, ds.width], "dtypes": list(ds.dtypes), "nodata": ds.nodata,
                "tags": _normalize(ds.tags(), root), "band_tags": [_normalize(ds.tags(b), root)
                                                                   for b in range(1, ds.count + 1)],
                "descriptions": list(ds.descriptions), "colormap": colormap, "overviews": ds.overviews(1),
                "blocks": [list(s) for s in ds.block_shapes], "bands": bands}


def file_fingerprint(path: Path, root: str) -> dict[str, Any] | None:
    """The fingerprint of one output file, or None for files not compared by content."""
    suffix = path.suffix.lower()
    if suffix in SKIPPED_SUFFIXES:
        return None
    if suffix == ".parquet":
        return {"parquet": table_fingerprint(pq.read_table(path), root)}
    if suffix in (".tif", ".tiff"):
        return {"raster": raster_fingerprint(path, root)}
    if suffix == ".csv":
        return {"csv": table_fingerprint(pa.Table.from_pandas(pd.read_csv(path), preserve_index=False), root)}
    if suffix == ".geojson":
        return {"geojson": _digest(json.dumps(_normalize(json.loads(path.read_text()), root)).encode())}
    if suffix == ".json":
        return {"json": _normalize(json.loads(path.read_text()), root)}
    if suffix == ".png":
        with Image.open(path) as image:
            return {"png": {"size": list(image.size), "mode": image.mode, "pixels": _digest(image.tobytes())}}
    return {"bytes": _digest(path.read_bytes())}


def tree_fingerprint(root: Path, folders: list[str]) -> dict[str, Any]:
    """Fingerprints of every file under ``folders`` of ``root`` (hidden files and Zarr chunks by variable)."""
    out: dict[str, Any] = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if any(part.startswith(".") for part in path.relative_to(root).parts) or ".zarr/" in rel:
                continue
            if path.suffix == ".zarr" and path.is_dir():
                out[rel] = {"zarr": zarr_fingerprint(path, str(root))}
            elif path.is_file():
                out[rel] = file_fingerprint(path, str(root))
    return out


def zarr_fingerprint(path: Path, root: str) -> dict[str, Any]:
    """Variables of a Zarr store: dims, dtype, attributes and content."""
    import xarray as xr

    with xr.open_zarr(path, decode_coords="all") as ds:
        variables = {}
        for name in sorted([*ds.data_vars, *ds.coords]):
            array = ds[name].values
            if np.issubdtype(array.dtype, np.floating):
                content = {"float": _moments(array)}
            elif array.dtype.kind in "OUST":  # T: numpy 2 StringDType (its bytes are pointers)
                strings = _normalize([str(v) for v in array.ravel().tolist()], root)
                content = {"exact": _digest(json.dumps(strings).encode())}
            else:
                content = {"exact": _digest(np.ascontiguousarray(array).tobytes())}
            variables[str(name)] = {"dims": list(ds[name].dims), "dtype": str(array.dtype),
                                    "attrs": _normalize({k: str(v) for k, v in ds[name].attrs.items()}, root),
                                    **content}
        return {"attrs": _normalize({k: str(v) for k, v in ds.attrs.items()}, root), "variables": variables}


def differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    """Human-readable differences between two fingerprints (floats compared with a relative tolerance)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key in sorted(set(expected) | set(actual)):
            if key not in actual:
                found.append(f"{where}/{key}: missing")
            elif key not in expected:
                found.append(f"{where}/{key}: new")
            else:
                found.extend(differences(expected[key], actual[key], f"{where}/{key}"))
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual, strict=True))
                for d in differences(e, a, f"{where}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, float) and math.isnan(expected) and math.isnan(actual):
        return []  # e.g. a float raster's nodata
    if isinstance(expected, float) and isinstance(actual, float | int):
        scale = max(abs(expected), abs(float(actual)), 1e-9)
        if math.isclose(expected, float(actual), rel_tol=RTOL, abs_tol=RTOL * 1e-3) or \
                abs(expected - float(actual)) <= RTOL * scale:
            return []
    if expected == actual:
        return []
    return [f"{where}: {str(expected)[:80]} != {str(actual)[:80]}"]
