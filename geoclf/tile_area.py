"""Tiling an area on Dask without the client holding its chips: ``geoclf tile`` past a county.

:func:`tiling.tile` gathers every labeled chip on the client and returns the index, which is what a county
needs and what a state cannot afford. :func:`tile_area` writes the same ``chips.parquet`` while the client
holds only task descriptions and counts:

1. the area is cut into scene blocks (:func:`tiling.blocks.plan_blocks`, from the rasters' headers);
2. each worker labels its block (:func:`tiling.blocks.label_block`: the chips, labels, nodata filter and
   overlapping rasters of :func:`tiling.tile`) and writes it as one GeoParquet partition, atomically and
   resumably (:func:`geoclf.partitions.run_plan`); it returns its chips per split group (spatial block or
   scene) and class;
3. the client splits the groups from those counts (:func:`tiling.split.assign_group_splits`, the rule of
   :func:`tiling.tile`) and, with ``balance``, chooses which chips of each split and class stay from the
   counts too (:func:`tiling.split.balanced_positions`);
4. the client streams the partitions, in plan order, into ``chips.parquet`` (row groups of
   :data:`tiling.index.INDEX_ROW_GROUP` rows, one row group in memory at a time), adding the split column.

Rows come in :func:`tiling.tile`'s order (scene by scene, top row first) for rasters up to
:data:`tiling.index.CELLS_PER_TASK` cells wide (blocks are whole rows of cells), so the file is the one
:func:`tiling.tile` writes: the same chips, labels, splits, balanced chips, row groups and metadata. The
partitions live in a hidden folder of the output directory until the file is written (a rerun after a crash or
Ctrl-C resumes from them; bad input leaves nothing behind).
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely

import tiling.index as index_module
from geoclf.partitions import check_plan_resumable, run_plan
from tiling.blocks import SceneBlock, label_block, plan_blocks
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.index import INDEX_ROW_GROUP, TileParams, check_cell_count, summarize_counts
from tiling.io import PathLike, atomic_path, normalize_source
from tiling.labels import NlcdInfo, describe_nlcd
from tiling.locks import locks_output
from tiling.parallel import Scheduler
from tiling.split import assign_group_splits, balanced_positions

#: The hidden folder of the output directory holding the labeled blocks until ``chips.parquet`` is written.
PARTS_DIR = ".chips-parts"

#: The tiling parameters a block's chips depend on (the others only choose the split and the balanced chips).
_SPLIT_PARAMS = ("split", "val_fraction", "balance", "seed")


@dataclass(frozen=True)
class AreaIndex:
    """What :func:`tile_area` wrote: the index file and its counts (never its rows).

    Attributes:
        path: ``chips.parquet``.
        chips: chips in it.
        scenes: rasters with at least one chip in it.
        counts: chips per ``label`` and ``split`` (column ``chips``); ``None`` for an unlabeled index.
        partitions: the labeled blocks (tasks) the area was cut into.
    """

    path: Path
    chips: int
    scenes: int
    counts: pd.DataFrame | None
    partitions: int

    def summary(self) -> pd.DataFrame:
        """Chips per class and split, with totals: :func:`tiling.summarize` of the index."""
        return summarize_counts(self.counts, self.chips)


@dataclass(frozen=True)
class TileBlockTask:
    """Label one block (runs on a worker): its partition and its chips per split group and class."""

    params: TileParams
    nlcd: NlcdInfo | None

    #: Two blocks may be labeled at once in one process (:func:`geoclf.partitions.run_plan`): GDAL decodes and
    #: warps without Python's lock, so they use two cores where one block at a time used one.
    side_by_side: ClassVar[bool] = True

    def __call__(self, block: SceneBlock) -> tuple[pa.Table, dict[str, Any]]:
        frame, counts = label_block(block, self.params, self.nlcd)
        summary: dict[str, Any] = dict(counts)
        if self.nlcd is not None and len(frame):
            group = frame["scene"] if self.params.split == "scene" else frame["block"]
            # in row order of first appearance: the client needs only the sums, the order costs nothing
            pairs = Counter(zip(group.astype(str), frame["label"].astype(str), strict=True))
            summary["groups"] = [[g, label, n] for (g, label), n in pairs.items()]
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)  # as write_index writes the whole index: the same column types
        return pq.read_table(io.BytesIO(buffer.getvalue())), summary


@locks_output("out", "tile")
def tile_area(naip: list[PathLike], nlcd: PathLike | None, out: PathLike, *, params: TileParams | None = None,
              aoi: PathLike | None = None, scheduler: Scheduler = "local", n_workers: int | None = None,
              progress: bool = True) -> AreaIndex:
    """Write ``out/chips.parquet``, the chip index :func:`tiling.tile` writes, without holding it on the client.

    Args:
        naip: NAIP raster paths or URLs.
        nlcd: the NLCD raster; ``None`` for unlabeled chips (no label, purity or split).
        out: the output directory.
        params: tiling parameters (defaults: 224 px chips, purity >= 0.6, block split).
        aoi: optional vector file; chips outside it are dropped.
        scheduler: see :func:`tiling.parallel.dask_client`.
        n_workers: worker processes of a new LocalCluster.
        progress: show a progress bar.

    Returns:
        The file and its counts.

    Raises:
        InputError: as :func:`tiling.tile` (unreadable rasters, no overlap, no chip left after a filter, ...).
    """
    params = params or TileParams()
    params.validate()
    scheme = ClassScheme.from_mapping(params.classes)
    nlcd_info = describe_nlcd(normalize_source(nlcd)) if nlcd is not None else None
    scenes, blocks = plan_blocks(naip, params, aoi, nlcd_info, cells_per_block=index_module.CELLS_PER_TASK)
    check_cell_count(sum(block.cells for block in blocks), blocks[0].grid, len(scenes))
    out = Path(out)
    parts = out / PARTS_DIR
    created = not out.exists()
    try:
        return _tile_blocks(scenes, blocks, nlcd_info, out, params, scheme, aoi, scheduler, n_workers, progress)
    except BaseException as exc:
        # bad input leaves nothing behind (its blocks could not make an index); a stopped run keeps its
        # labeled blocks to resume from, unless it labeled none
        if isinstance(exc, InputError) or not any(parts.rglob("part-*.parquet")):
            shutil.rmtree(parts, ignore_errors=True)
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise


def _tile_blocks(scenes: list[Any], blocks: list[SceneBlock], nlcd_info: NlcdInfo | None, out: Path,
                 params: TileParams, scheme: ClassScheme, aoi: PathLike | None, scheduler: Scheduler,
                 n_workers: int | None, progress: bool) -> AreaIndex:
    """Label the blocks into the partitions, then split and assemble the index (see :func:`tile_area`)."""
    parts = out / PARTS_DIR
    settings = {"tile": {k: v for k, v in asdict(params).items() if k not in _SPLIT_PARAMS},
                "nlcd": None if nlcd_info is None else nlcd_info.source}
    try:
        check_plan_resumable(blocks, parts, settings)
    except InputError:  # blocks of another run (other rasters or parameters): ours to replace
        shutil.rmtree(parts)
    summaries = run_plan(blocks, parts, TileBlockTask(params, nlcd_info), settings=settings, scheduler=scheduler,
                         n_workers=n_workers, desc="labeling chips", progress=progress)
    _refuse_empty(summaries, params, labeled=nlcd_info is not None, rasters=len(scenes), aoi=aoi)
    files = [parts / block.name for block in blocks]
    attrs = {"params": asdict(params), "naip": [s.source for s in scenes],
             "nlcd": None if nlcd_info is None else nlcd_info.source,
             "aoi": None if aoi is None else normalize_source(aoi), "classes": scheme.names,
             "chip_size_m": blocks[0].grid.size, "stride_m": blocks[0].grid.step}
    plan = _SplitPlan.of(summaries, params) if nlcd_info is not None else None
    index = _assemble(files, out / "chips.parquet", plan, json.loads(json.dumps({"geoclf": attrs}, default=str)))
    shutil.rmtree(parts, ignore_errors=True)
    return AreaIndex(path=out / "chips.parquet", chips=index["chips"], scenes=index["scenes"],
                     counts=index["counts"], partitions=len(blocks))


def _refuse_empty(summaries: list[dict[str, Any]], params: TileParams, labeled: bool, rasters: int,
                  aoi: PathLike | None) -> None:
    """:func:`tiling.tile`'s messages for an area the AOI or the filters leave without a chip."""
    candidates = sum(s["candidates"] for s in summaries)
    with_data = sum(s["with_data"] for s in summaries)
    if candidates == 0:  # blocks meet the AOI, none of their cells does (the "within" predicate)
        raise InputError(f"the AOI misses every chip of the {rasters} NAIP raster(s)", aoi)
    if with_data == 0:
        raise InputError(f"no chip left: all {candidates} candidate chips have more than "
                         f"{params.max_nodata:.0%} nodata (raise --max-nodata, or check the rasters overlap)")
    if labeled and sum(s["rows"] for s in summaries) == 0:
        raise InputError(f"no chip left: none of the {with_data} chips with data has a land-use class "
                         f"covering {params.min_purity:.0%} of it (lower --min-purity)")


@dataclass
class _SplitPlan:
    """The split of every group and, with balancing, which chips of each split and class are kept.

    Attributes:
        column: the group column (``block`` or ``scene``).
        splits: group -> ``"train"``/``"val"``.
        keep: ``(split, label)`` -> mask over that split and class's chips in index order (balancing only).
    """

    column: str
    splits: dict[str, str]
    keep: dict[tuple[str, str], np.ndarray] | None

    @classmethod
    def of(cls, summaries: list[dict[str, Any]], params: TileParams) -> _SplitPlan:
        rows = [row for s in summaries for row in s.get("groups", ())]
        counts = pd.DataFrame(rows, columns=["group", "label", "chips"])
        # pd.crosstab(groups, labels) of the whole index: groups and classes sorted
        table = counts.pivot_table(index="group", columns="label", values="chips", aggfunc="sum", fill_value=0)
        if params.split == "scene" and len(table) < 2:
            raise InputError("a split by scene needs at least two NAIP rasters; use --split blocks")
        splits = assign_group_splits(table.sort_index().sort_index(axis=1), params.val_fraction, params.seed)
        keep = None
        if params.balance:
            counts["split"] = counts["group"].map(splits)
            members = counts.groupby(["split", "label"])["chips"].sum()
            keep = {}
            for split, per_class in members.groupby(level="split"):
                smallest = int(per_class.min())
                for (_, label), n in per_class.items():
                    keep[(split, label)] = balanced_positions(int(n), smallest, params.seed)
        return cls("scene" if params.split == "scene" else "block", splits.to_dict(), keep)

    def apply(self, table: pa.Table, seen: Counter) -> pa.Table:
        """A partition with its ``split`` column, less the chips balancing drops (``seen``: chips per split and
        class in the partitions before this one, advanced here)."""
        groups = table.column(self.column).to_pandas()
        split = groups.map(self.splits).to_numpy(dtype=object)
        table = table.append_column(pa.field("split", pa.large_string()), pa.array(split, pa.large_string()))
        if self.keep is None:
            return table
        labels = table.column("label").to_numpy(zero_copy_only=False)
        kept = np.zeros(table.num_rows, dtype=bool)
        for key in sorted(set(zip(split, labels, strict=True))):
            rows = np.flatnonzero((split == key[0]) & (labels == key[1]))
            kept[rows] = self.keep[key][seen[key]:seen[key] + len(rows)]
            seen[key] += len(rows)
        return table.filter(pa.array(kept))


def _assemble(files: list[Path], path: Path, plan: _SplitPlan | None, attrs: dict[str, Any]) -> dict[str, Any]:
    """Stream the partitions, in plan order, into one GeoParquet file in row groups of ``INDEX_ROW_GROUP`` rows,
    with the metadata :func:`tiling.index.write_index` gives the whole index (bounding box of the chips kept,
    ``geoclf`` attributes); returns its chips, scenes and counts."""
    schemas = [pq.read_schema(file) for file in files]
    filled = [i for i, file in enumerate(files) if pq.read_metadata(file).num_rows]
    # a partition whose columns all have values (dated, labeled) shows how the whole index is typed
    sample = next((i for i in filled if not any(pa.types.is_null(f.type) for f in schemas[i])), filled[0])
    # the bounding box and geometry types of the chips kept (geopandas's, computed from the partitions)
    boxes, kinds, counts = [], set(), Counter()
    seen: Counter = Counter()
    for file, schema in zip(files, schemas, strict=True):
        if pq.read_metadata(file).num_rows == 0:
            continue
        column = json.loads(schema.metadata[b"geo"])["columns"]["geometry"]
        kinds.update(column.get("geometry_types", []))
        if plan is not None and plan.keep is not None:  # balancing drops chips: the box of those kept
            table = plan.apply(pq.read_table(file, columns=["geometry", "label", plan.column]), seen)
            if table.num_rows:
                bounds = shapely.bounds(shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False)))
                boxes.append([*bounds[:, :2].min(axis=0), *bounds[:, 2:].max(axis=0)])
        else:
            boxes.append(column["bbox"])
    target = _target_schema(files[sample], schemas, plan is not None, attrs, np.array(boxes, dtype=float), kinds)
    scenes: set[str] = set()
    chips, pending, held = 0, [], 0
    seen = Counter()
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, target) as writer:
        for file in files:
            table = pq.read_table(file)
            if plan is not None:
                table = plan.apply(table, seen)
            if table.num_rows == 0:
                continue
            table = table.select(target.names).cast(target)
            scenes.update(table.column("scene").unique().to_pylist())
            if plan is not None:
                keys = pa.Table.from_arrays([table.column("label"), table.column("split")], ["label", "split"])
                for row in keys.group_by(["label", "split"]).aggregate([([], "count_all")]).to_pylist():
                    counts[(row["label"], row["split"])] += row["count_all"]
            chips += table.num_rows
            pending.append(table)
            held += table.num_rows
            if held >= INDEX_ROW_GROUP:
                rest = _write_row_groups(writer, pa.concat_tables(pending), final=False)
                pending, held = [rest], rest.num_rows
        if held:
            _write_row_groups(writer, pa.concat_tables(pending), final=True)
    frame = None
    if plan is not None:
        frame = pd.DataFrame([(label, split, n) for (label, split), n in counts.items()],
                             columns=["label", "split", "chips"])
    return {"chips": chips, "scenes": len(scenes), "counts": frame}


def _write_row_groups(writer: pq.ParquetWriter, table: pa.Table, final: bool) -> pa.Table:
    """Write whole row groups of ``table`` (and, when ``final``, its remainder); return the rows left over."""
    whole = table.num_rows if final else table.num_rows - table.num_rows % INDEX_ROW_GROUP
    if whole:
        writer.write_table(table.slice(0, whole), row_group_size=INDEX_ROW_GROUP)
    return table.slice(whole)


def _target_schema(sample: Path, schemas: list[pa.Schema], split: bool, attrs: dict[str, Any], boxes: np.ndarray,
                   kinds: set[str]) -> pa.Schema:
    """The index file's schema: the columns and pandas metadata geopandas writes for the whole index (a
    partition's first chip, with the split column), a column that is all-missing in some partitions (the date
    of undated rasters) typed as the others have it, and the area's bounding box."""
    head = gpd.read_parquet(sample).iloc[:1]
    if split:
        head = head.assign(split="train")
    head.attrs = attrs
    buffer = io.BytesIO()
    head.to_parquet(buffer, index=False)
    schema = pq.read_schema(io.BytesIO(buffer.getvalue()))
    fields = []
    for field in schema:
        if pa.types.is_null(field.type):
            typed = [s.field(field.name).type for s in schemas
                     if field.name in s.names and not pa.types.is_null(s.field(field.name).type)]
            field = field.with_type(typed[0]) if typed else field
        fields.append(field)
    metadata = dict(schema.metadata)
    geo = json.loads(metadata[b"geo"])
    geo["columns"]["geometry"]["bbox"] = ([float(boxes[:, 0].min()), float(boxes[:, 1].min()),
                                           float(boxes[:, 2].max()), float(boxes[:, 3].max())] if len(boxes) else [])
    geo["columns"]["geometry"]["geometry_types"] = sorted(kinds)
    metadata[b"geo"] = json.dumps(geo).encode()
    return pa.schema(fields, metadata=metadata)


__all__ = ["PARTS_DIR", "AreaIndex", "tile_area"]
