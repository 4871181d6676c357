"""Change over an area of many partitions: each after-date partition paired with the before-date ones it touches.

A score output of a large area is a GeoParquet dataset, one file per block of a scene, each with its bounding
box in its footer (:meth:`geoclf.landuse.ScoreOutput.dataset_files`). A chip can only pair with a before-date
chip whose footprint it overlaps (:func:`geoclf.change.align_dates`), so the pairs of one after-date partition
are found among the before-date partitions whose boxes meet its box: :func:`partition_pairs` reads one
after-date partition and those neighbours at a time, aligns them, and hands the pairs on. What the change
products need of the whole area is added up as the partitions go by (:class:`ChangeTally`): the transition
matrix, the changed chips (the products list every one), the figures of ``change.json``, the zonal summary,
and a map tile of transition codes per partition, painted into one raster that is copied to ``change.tif``
(:func:`geoclf.landuse.mosaic.paint_mosaic`: the raster a VRT mosaic of the tiles shows). The client holds one
partition and its neighbours, never the area's table; the results are those of the whole table, read at once
(same pairs, same order).

Two things of the whole-table rule are taken per neighbourhood: a grid cell predicted twice keeps its most
confident prediction among the copies in one partition and its neighbours (copies of one cell overlap, so all
of a before-date cell's copies are there; ``geoclf score`` writes no cell twice anyway), and
``unpaired_before`` counts the before-date chips no partition paired.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from pyproj import CRS, Transformer
from shapely import box

from geoclf.area import equal_area_crs
from geoclf.change.maps import transition_grid, transition_legend
from geoclf.change.pairs import MIN_OVERLAP, pair_dates
from geoclf.change.summaries import TransitionTally, zonal_summary
from geoclf.landuse import ScoreOutput, prediction_classes
from geoclf.landuse.mosaic import MapTile, tiles_to_cog, write_tile
from tiling.classes import ClassScheme
from tiling.errors import InputError

PathLike = str | os.PathLike[str]

#: Slack added to every partition's box (degrees, about a metre) before testing whether two boxes meet: a box
#: reprojected to longitude and latitude is approximate, and neighbouring partitions share edges.
BOX_SLACK_DEG = 1e-5


#: How many partitions' changed pairs :class:`ChangeTally` keeps as frames of their own before it joins them into
#: one: a frame of a few changed pairs costs the client far more than its rows (its blocks, index and the heap
#: it pins between the partitions' passing tables: ~100 kB of resident memory each, measured), so a tally that
#: kept one per partition grew with the area.
CHANGED_BATCH = 32


#: Columns of a dataset partition that ``predictions.parquet`` leaves to ``chips.parquet`` (the chip index's
#: windows and labels): not read, so that a partition's pairs are the predictions table's.
INDEX_ONLY = frozenset({"label", "col_off", "row_off", "width", "height", "nodata_frac", "block"})


@dataclass(frozen=True)
class Partition:
    """One part of a date's predictions: a dataset file, or (``path`` None) the whole table of an output."""

    output: ScoreOutput
    path: Path | None = None
    rows: int = 0
    bounds: tuple[float, float, float, float] | None = None  # longitude/latitude box; None: not known

    @property
    def name(self) -> str:
        """What messages call it."""
        return str(self.path if self.path is not None else self.output.predictions)


def date_partitions(path: PathLike) -> list[Partition]:
    """The partitions of one date's predictions: a score output's dataset files (empty ones left out) when it
    has a dataset, else its predictions table (or the ``.parquet`` file given) as one partition."""
    output = ScoreOutput(path)
    files = output.dataset_files() if output.predictions.name == ScoreOutput.PREDICTIONS else []
    parts = []
    for file in files:
        rows, bounds = _footer(file)
        if rows:
            parts.append(Partition(output, file, rows, bounds))
    if parts:
        return parts
    return [whole_partition(output)]


def whole_partition(output: ScoreOutput) -> Partition:
    """A date's predictions table as one partition (its box from its footer, when it can be read)."""
    rows, bounds = 0, None
    if output.predictions.is_file():
        with contextlib.suppress(InputError):  # reading the table gives the error people should see
            rows, bounds = _footer(output.predictions)
    return Partition(output, None, rows, bounds)


def _footer(file: Path) -> tuple[int, tuple[float, float, float, float] | None]:
    """A partition's row count and longitude/latitude box, from its footer (no row is read)."""
    try:
        metadata = pq.read_metadata(file)
        geo = json.loads((metadata.schema.to_arrow_schema().metadata or {}).get(b"geo", b"{}"))
    except Exception as exc:
        raise InputError(f"cannot be read as GeoParquet ({str(exc).strip().splitlines()[0]})", file) from exc
    column = geo.get("columns", {}).get(geo.get("primary_column", "geometry"), {})
    bbox = column.get("bbox")
    if not bbox or len(bbox) != 4:
        return metadata.num_rows, None
    crs = json.dumps(column["crs"], sort_keys=True) if column.get("crs") else None
    west, south, east, north = _to_lonlat(crs).transform_bounds(*bbox, densify_pts=21)
    return metadata.num_rows, (west, south, east, north)


@functools.lru_cache(maxsize=32)
def _to_lonlat(crs: str | None) -> Transformer:
    """The transformer of footer boxes in a CRS (its PROJJSON; None: OGC:CRS84) to longitude/latitude, made once
    per CRS: making one takes ~30 ms, two minutes and more over the 4,254 partitions of a 1M-chip area's two
    dates, which share a CRS or a few."""
    source = CRS.from_json(crs) if crs is not None else CRS.from_user_input("OGC:CRS84")
    return Transformer.from_crs(source, "EPSG:4326", always_xy=True)


def map_grid(after: Sequence[Partition]) -> tuple[str | None, float | None]:
    """The CRS and pixel size the change map of these partitions is drawn in (:func:`change_grids`'s): ``None``
    (each chip in its grid cell) when the chips share one grid CRS, as the whole table's map would be, else the
    mosaic CRS at the first grid's stride. Read from the ``cell`` keys only."""
    from geoclf.landuse import MOSAIC_CRS
    from tiling.grid import parse_cell

    crs_seen: set[str] = set()
    stride = None
    for part in after:
        if part.path is None:
            return None, None
        names = pq.read_schema(part.path).names
        if "crs" in names:  # the chips' grid CRS, a short column
            crs_seen.update(pq.read_table(part.path, columns=["crs"]).column(0).drop_null().unique().to_pylist())
        if stride is None or "crs" not in names:
            cells = pq.read_table(part.path, columns=["cell"]).column(0).drop_null().unique().to_pylist()
            parsed = parse_cell(pd.Series(cells, dtype=object))
            if "crs" not in names:
                crs_seen.update(parsed["grid_crs"].dropna().unique())
            if stride is None and len(parsed):
                stride = float(parsed["stride"].iloc[0])
    if len(crs_seen) <= 1:
        return None, None
    return MOSAIC_CRS.to_string(), stride


def _meet(a: Partition, b: Partition) -> bool:
    if a.bounds is None or b.bounds is None:
        return True
    s = BOX_SLACK_DEG
    return (a.bounds[0] - s <= b.bounds[2] and b.bounds[0] - s <= a.bounds[2]
            and a.bounds[1] - s <= b.bounds[3] and b.bounds[1] - s <= a.bounds[3])


def read_partition(partition: Partition) -> gpd.GeoDataFrame:
    """Read one partition as the predictions table's columns (a dataset file also holds the chip index's)."""
    if partition.path is None:
        return partition.output.read_predictions()
    file = partition.path
    try:
        names = pq.read_schema(file).names
        frame = gpd.read_parquet(file, columns=[c for c in names if c not in INDEX_ONLY])
    except Exception as exc:
        raise InputError(f"cannot be read as GeoParquet ({str(exc).strip().splitlines()[0]})", file) from exc
    prediction_classes(frame, name=str(file))
    return frame


#: What reads a partition: :func:`read_partition`, or a wrapper that watches the reads (tests, benchmarks).
Reader = Callable[[Partition], gpd.GeoDataFrame]


def area_crs(partitions: Sequence[Partition]) -> CRS | None:
    """The equal-area CRS of the whole area from the partitions' boxes (None when a box is unknown): the
    partitions measure in the CRS the whole table would (:func:`geoclf.area.equal_area_crs`)."""
    boxes = [p.bounds for p in partitions]
    if not boxes or any(b is None for b in boxes):
        return None
    area = np.array(boxes, dtype=float)
    whole = gpd.GeoDataFrame(geometry=[box(area[:, 0].min(), area[:, 1].min(), area[:, 2].max(),
                                           area[:, 3].max())], crs="EPSG:4326")
    return equal_area_crs(whole)


@dataclass
class PartitionPairs:
    """The pairs of one after-date partition (:func:`align_dates` over it and its before-date neighbours).

    Attributes:
        aligned: the pairs.
        after: the after-date partition and ``after_rows`` its rows.
        before: positions (in the before partitions) of the neighbours read.
        rows: per neighbour, its rows and its rows with a prediction.
        paired: per neighbour, the row positions that pairs took.
        dropped: per neighbour, the row positions left out as another copy of a cell.
    """

    aligned: gpd.GeoDataFrame
    after: Partition
    after_rows: int
    before: list[int]
    rows: dict[int, tuple[int, int]]
    paired: dict[int, np.ndarray]
    dropped: dict[int, np.ndarray]


def partition_pairs(before: Sequence[Partition], after: Sequence[Partition], *, min_overlap: float = MIN_OVERLAP,
                    crs: CRS | None = None, reader: Reader = read_partition,
                    prepare: Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame] | None = None) -> Iterator[PartitionPairs]:
    """Each after-date partition's pairs, in order: the partition read with the before-date partitions whose
    boxes meet its box (those kept from the previous partition are not read again), aligned, then let go.

    Args:
        before: the earlier date's partitions (:func:`date_partitions`).
        after: the later date's.
        min_overlap: as :func:`geoclf.change.align_dates`.
        crs: the equal-area CRS of areas and overlaps (:func:`area_crs`; default: each partition's own).
        reader: reads a partition (:func:`read_partition`).
        prepare: applied to every table read (both dates), before pairing.
    """
    held: dict[int, gpd.GeoDataFrame] = {}
    for part in after:
        near = [i for i, b in enumerate(before) if _meet(part, b)]
        held = {i: held[i] if i in held else _read(reader, before[i], prepare) for i in near}
        table = _read(reader, part, prepare)
        # the before rows are labelled 0..n-1 across the neighbours, so the pairs tell which rows they took
        sizes = np.array([len(held[i]) for i in near], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        if near:
            tables = [held[i] for i in near]
            neighbours = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0].reset_index(drop=True)
        else:
            neighbours = table.iloc[:0]
        aligned, taken, kept = pair_dates(neighbours, table, min_overlap, crs)
        taken, kept = np.asarray(taken, dtype=np.int64), np.asarray(kept, dtype=np.int64)
        with_pred = np.flatnonzero(neighbours["pred"].notna().to_numpy()) if len(neighbours) else np.empty(0, int)
        dropped = np.setdiff1d(with_pred, kept)
        rows, paired, left_out = {}, {}, {}
        for k, i in enumerate(near):
            lo, hi = offsets[k], offsets[k + 1]
            rows[i] = (int(sizes[k]), int(((with_pred >= lo) & (with_pred < hi)).sum()))
            paired[i] = taken[(taken >= lo) & (taken < hi)] - lo
            left_out[i] = dropped[(dropped >= lo) & (dropped < hi)] - lo
        yield PartitionPairs(aligned, part, len(table), near, rows, paired, left_out)
        del table, neighbours, aligned


def _read(reader: Reader, part: Partition, prepare: Callable | None) -> gpd.GeoDataFrame:
    frame = reader(part)
    return prepare(frame) if prepare is not None else frame


@dataclass
class ChangeTally:
    """What the change products need of the whole area, added up over the partitions' pairs (in order)."""

    classes: list[str]
    zones: gpd.GeoDataFrame | None = None
    zone_column: str | None = None
    developed: str = "Developed"
    tiles: Path | None = None  # where the transition map tiles go (None: no map)
    scheme: ClassScheme | None = None
    map_crs: str | None = None
    resolution: float | None = None
    transitions: TransitionTally = field(init=False)
    changed: list[gpd.GeoDataFrame] = field(default_factory=list)  # the changed pairs, in order, a few frames
    map_tiles: list[MapTile] = field(default_factory=list)
    zone_table: pd.DataFrame | None = None
    # per before-date partition met, a mask of its rows that pairs took / left out as another copy of a cell
    paired_before: dict[int, np.ndarray] = field(default_factory=dict)
    dropped_before: dict[int, np.ndarray] = field(default_factory=dict)
    before_rows: dict[int, tuple[int, int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: {
        "paired": 0, "paired_by_cell": 0, "unpaired_after": 0, "dropped_after": 0, "after_chips": 0})
    compared_km2: float = 0.0
    years: dict[str, set[int]] = field(default_factory=lambda: {"before": set(), "after": set()})
    sources: dict[str, list[str]] = field(default_factory=lambda: {"before": [], "after": []})
    models: set[str] = field(default_factory=set)
    crs: object = None
    columns: gpd.GeoDataFrame | None = None  # no pairs, the pairs' columns: what the ranking of no change reads
    _fresh: int = field(default=0, init=False, repr=False)  # frames at the end of ``changed`` of one partition each

    def __post_init__(self) -> None:
        self.transitions = TransitionTally(self.classes)

    def add(self, pairs: PartitionPairs) -> None:
        """Add one partition's pairs."""
        aligned = pairs.aligned
        info = aligned.attrs["geoclf_change"]
        self.counts["paired"] += len(aligned)
        self.counts["paired_by_cell"] += info["paired_by_cell"]
        self.counts["unpaired_after"] += info["unpaired_after"]
        self.counts["dropped_after"] += info["duplicate_cells_dropped"]["after"]
        self.counts["after_chips"] += pairs.after_rows
        self.before_rows.update(pairs.rows)
        for store, found in ((self.paired_before, pairs.paired), (self.dropped_before, pairs.dropped)):
            for i, rows in found.items():
                # a mask of the partition's rows, not the positions: a byte a row, not eight a row taken
                if i not in store:
                    store[i] = np.zeros(pairs.rows[i][0], dtype=bool)
                store[i][rows] = True
        if not len(aligned):
            return
        if self.crs is None:
            self.crs = aligned.crs
            self.columns = aligned.iloc[:0]
        elif aligned.crs != self.crs:
            aligned = aligned.to_crs(self.crs)
        self.transitions.add(aligned)
        self.compared_km2 += float(aligned["area_km2"].sum())
        changed = aligned[aligned["class_before"].astype(str) != aligned["class_after"].astype(str)]
        if len(changed):
            self._keep_changed(changed)
        for which in ("before", "after"):
            column = f"date_{which}"
            if column in aligned.columns:
                self.years[which].update(pd.Timestamp(d).year for d in aligned[column].dropna().unique())
            column = f"source_{which}"
            if column in aligned.columns:
                known = self.sources[which]
                known.extend(s for s in (str(v) for v in aligned[column].dropna().unique()) if s not in known)
            column = f"model_{which}"
            if column in aligned.columns:
                self.models.update(str(m) for m in aligned[column].dropna().unique())
        if self.zones is not None:
            table = zonal_summary(aligned, self.zones, self.classes, self.zone_column, self.developed)
            self.zone_table = table if self.zone_table is None else self.zone_table + table
        if self.tiles is not None and self.scheme is not None:
            grid = transition_grid(aligned, self.scheme, crs=self.map_crs, resolution=self.resolution)
            name = f"part-{len(self.map_tiles):06d}"
            self.map_tiles.append(write_tile(self.tiles.parent, f"{self.tiles.name}/{name}", grid))

    def _keep_changed(self, changed: gpd.GeoDataFrame) -> None:
        """Keep a partition's changed pairs; every :data:`CHANGED_BATCH` partitions' frames become one."""
        self.changed.append(changed)
        self._fresh += 1
        if self._fresh >= CHANGED_BATCH:
            self.changed[-self._fresh:] = [_joined(self.changed[-self._fresh:])]
            self._fresh = 0

    def changed_pairs(self) -> gpd.GeoDataFrame:
        """The changed pairs of the whole area, in the pairs' order (none: no row, the pairs' columns)."""
        if not self.changed:
            return self.columns if self.columns is not None else gpd.GeoDataFrame(geometry=[], crs=self.crs)
        frame = pd.concat(self.changed, ignore_index=True) if len(self.changed) > 1 else self.changed[0]
        return gpd.GeoDataFrame(frame.reset_index(drop=True), geometry=frame.geometry.name, crs=self.crs)

    def date_label(self, which: str) -> str:
        """As :func:`geoclf.change.date_label` of the whole area's pairs."""
        years = sorted(self.years[which])
        if not years:
            return which
        return str(years[0]) if len(years) == 1 else f"{years[0]}-{years[-1]}"

    def info(self, before: Sequence[Partition], min_overlap: float) -> dict[str, object]:
        """The alignment figures of ``change.json`` (:func:`geoclf.change.align_dates`'s ``attrs``); the rows of
        before-date partitions no after-date partition met are counted from their footers."""
        rows = [self.before_rows[i] if i in self.before_rows else _pred_rows(p) for i, p in enumerate(before)]
        dropped = sum(int(r.sum()) for r in self.dropped_before.values())
        paired_before = sum(int(r.sum()) for r in self.paired_before.values())
        return {"classes": list(self.classes), "before_chips": sum(r[0] for r in rows),
                "after_chips": self.counts["after_chips"],
                "duplicate_cells_dropped": {"before": dropped, "after": self.counts["dropped_after"]},
                "paired": self.counts["paired"], "paired_by_cell": self.counts["paired_by_cell"],
                "unpaired_after": self.counts["unpaired_after"],
                "unpaired_before": int(sum(r[1] for r in rows) - dropped - paired_before),
                "min_overlap": float(min_overlap)}

    def write_map(self, path: Path) -> Path:
        """``change.tif`` from the tiles: painted into one GeoTIFF (not a VRT of them, whose every tile costs GDAL
        memory while it is copied) and copied to a COG, as ``landuse.tif`` is written
        (:func:`geoclf.landuse.mosaic.tiles_to_cog`)."""
        if self.tiles is None or self.scheme is None:
            raise ValueError("this tally keeps no map tiles")
        return tiles_to_cog(path, self.map_tiles, _legend_scheme(self.scheme), directory=self.tiles.parent)


def _joined(frames: list[gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    """The frames as one, each Arrow-backed column (pandas' strings) in one piece: ``pd.concat`` keeps such a
    column as a chunked array, a chunk of a few strings a frame, each with its own buffers and headers."""
    frame = pd.concat(frames, ignore_index=True)
    for name, dtype in frame.dtypes.items():
        if isinstance(dtype, pd.StringDtype):
            frame[name] = frame[name].astype(object).astype(dtype)
    return frame


def _pred_rows(partition: Partition) -> tuple[int, int]:
    """A partition's rows and rows with a prediction, from the ``pred`` column's statistics when it has them."""
    if partition.path is None:
        frame = read_partition(partition)
        return len(frame), int(frame["pred"].notna().sum())
    metadata = pq.read_metadata(partition.path)
    position = metadata.schema.to_arrow_schema().get_field_index("pred")
    nulls = 0
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(position).statistics
        if stats is None or not stats.has_null_count:
            nulls = int(pq.read_table(partition.path, columns=["pred"]).column(0).null_count)
            break
        nulls += stats.null_count
    return metadata.num_rows, metadata.num_rows - nulls


def _legend_scheme(scheme: ClassScheme) -> ClassScheme:
    return transition_legend(scheme).to_scheme()


__all__ = ["BOX_SLACK_DEG", "INDEX_ONLY", "ChangeTally", "Partition", "PartitionPairs", "area_crs", "date_partitions",
           "partition_pairs", "read_partition"]
