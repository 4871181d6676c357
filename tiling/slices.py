"""Slices of a chip index file: the unit of planning of work over an existing index, read by the worker.

A stage that works through a chip index (``geoclf featurize``) need not hold the index on the client: the
file's Parquet footer says how many rows each row group has, so the client cuts each row group into slices of
at most a partition's rows (:func:`plan_index_slices`, a few numbers per slice whatever the index's size) and
each worker reads its own slice's rows (:meth:`IndexSlice.read`), one row group at a time.

The index is still refused before any work when a row is bad: :func:`check_index_file` reads it one row group
at a time and checks each as :func:`tiling.index.read_index` checks the whole (the same messages, the same
row numbers), holding only a hash per chip id for the check that ids are unique.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tiling.errors import InputError
from tiling.index import REQUIRED_COLUMNS, index_file, validate_index
from tiling.io import PathLike


@dataclass(frozen=True)
class IndexSlice:
    """Rows ``[start, stop)`` of row group ``row_group`` of a chip index file: one task, one partition.

    Attributes:
        path: the index file.
        row_group: its row group.
        start, stop: the rows within the row group.
        number: the slice's number in the plan (its partition is ``part-<NNNNN>.parquet``).
        first_row: the row number of the slice's first row in the file.
    """

    path: str
    row_group: int
    start: int
    stop: int
    number: int
    first_row: int = field(default=0)

    @property
    def name(self) -> str:
        """The slice's partition name: ``part-<NNNNN>.parquet``."""
        return f"part-{self.number:05d}.parquet"

    @property
    def cells(self) -> int:
        """Chips in the slice."""
        return self.stop - self.start

    def describe(self) -> dict[str, Any]:
        """Which rows of the file the slice is (the file's content is fingerprinted by its caller)."""
        return {"row_group": self.row_group, "rows": [self.start, self.stop]}

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The slice's rows (without the footprint geometry unless asked for), as a plain DataFrame."""
        parquet = pq.ParquetFile(self.path)
        if columns is None:
            columns = [name for name in parquet.schema_arrow.names if name != _geometry_column(parquet)]
        table = parquet.read_row_group(self.row_group, columns=columns)
        return table.slice(self.start, self.stop - self.start).to_pandas().reset_index(drop=True)


def _geometry_column(parquet: pq.ParquetFile) -> str | None:
    geo = (parquet.schema_arrow.metadata or {}).get(b"geo")
    return json.loads(geo).get("primary_column") if geo else None


def index_attrs(path: PathLike) -> dict[str, Any]:
    """The run parameters an index file records (``attrs["geoclf"]`` of :func:`tiling.index.read_index`), from
    its footer."""
    metadata = pq.read_schema(index_file(path)).metadata or {}
    attrs = json.loads(metadata[b"PANDAS_ATTRS"]) if b"PANDAS_ATTRS" in metadata else {}
    return attrs.get("geoclf", {})


@dataclass(frozen=True)
class IndexFacts:
    """What :func:`check_index_file` learnt of an index: its rows, columns and source rasters."""

    path: Path
    rows: int
    columns: tuple[str, ...]
    sources: tuple[str, ...]


def check_index_file(path: PathLike, *, check_rasters: bool = False) -> IndexFacts:
    """Check a chip index file as :func:`tiling.index.read_index` does, one row group in memory at a time.

    Raises:
        InputError: as :func:`tiling.index.read_index` (missing, no chip index, a bad row, a repeated chip id).
    """
    path = index_file(path)
    if not path.exists():
        raise InputError("no such chip index", path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise InputError(f"is not a chip index ({str(exc).splitlines()[0]})", path) from exc
    names = parquet.schema_arrow.names
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise InputError(f"is not a chip index (missing columns: {', '.join(missing)})", path)
    if parquet.metadata.num_rows == 0:
        raise InputError("holds no chips", path)
    geometry = _geometry_column(parquet)
    sources: dict[str, None] = {}
    hashes, first = [], 0
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group)
        if table.num_rows == 0:
            continue
        frame = table.to_pandas()
        if geometry in frame.columns:
            frame = gpd.GeoDataFrame(frame.drop(columns=geometry), geometry=gpd.GeoSeries.from_wkb(frame[geometry]))
        validate_index(frame, path, check_rasters=check_rasters, first_row=first)
        sources.update(dict.fromkeys(frame["source"].astype(str).unique()))
        hashes.append(pd.util.hash_array(frame["chip_id"].astype(str).to_numpy(dtype=object)))
        first += len(frame)
    _refuse_repeated_ids(parquet, np.concatenate(hashes), path)
    return IndexFacts(path, parquet.metadata.num_rows, tuple(names), tuple(sources))


def _refuse_repeated_ids(parquet: pq.ParquetFile, hashes: np.ndarray, path: Path) -> None:
    """Refuse a chip id that repeats one in another row group (within one, ``validate_index`` did)."""
    if not pd.Series(hashes).duplicated().any():
        return
    # a repeated hash: the ids themselves tell a repeat from a collision (the only place the ids are all read)
    ids = parquet.read(columns=["chip_id"]).column("chip_id").to_pandas().astype(str)
    repeated = ids.duplicated()
    if repeated.any():
        row = int(np.flatnonzero(repeated.to_numpy())[0])
        raise InputError(f"row {row} (chip_id {ids.iloc[row]!r}): chip_id repeats an earlier row's; chip ids must "
                         "be unique", path)


def plan_index_slices(path: PathLike, rows_per_slice: int) -> list[IndexSlice]:
    """Cut every row group of an index file into slices of at most ``rows_per_slice`` rows and even sizes.

    Read from the file's footer only. A row group of 900 rows at 512 is two slices of 450; slices never span
    two row groups, so a task reads one row group.
    """
    if rows_per_slice < 1:
        raise InputError(f"chips per partition must be at least 1, not {rows_per_slice}")
    path = index_file(path)
    metadata = pq.read_metadata(path)
    plan: list[IndexSlice] = []
    first = 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        parts = math.ceil(rows / rows_per_slice)
        edges = [(rows * k) // parts for k in range(parts + 1)] if parts else [0]
        for start, stop in itertools.pairwise(edges):
            plan.append(IndexSlice(str(path), group, start, stop, len(plan), first + start))
        first += rows
    return plan


__all__ = ["IndexFacts", "IndexSlice", "check_index_file", "index_attrs", "plan_index_slices"]
