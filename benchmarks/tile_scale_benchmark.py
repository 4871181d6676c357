"""Benchmark: ``geoclf tile`` of 100k and 1M chips without the client holding the index (issue 16).

The area is :mod:`scale_benchmark`'s: virtual scenes (GDAL VRTs reading one synthetic 22,400 m scene at 7 m
pixels at other places, 9,801 chips each), labeled against one NLCD-like raster under the largest mosaic
(written once: 300 m squares of one class each, see :func:`area_nlcd`). Each
size runs :func:`geoclf.tile_area.tile_area` (what ``geoclf tile`` runs: scene blocks labeled and written by
the workers, split and balanced from their counts, streamed into ``chips.parquet`` by the client) on a fresh
LocalCluster of ``--workers`` workers into a fresh output directory, with the default block split. Measured:

- **client peak RSS**: this process (the client and the Dask scheduler), sampled every 0.2 s; the figure that
  must stay flat (<= 1.5x from 100k to 1M chips), also split into the peak while the blocks are labeled and
  the peak while the client splits and writes ``chips.parquet``;
- **total time**, **time to first partition**, the labeling phase (first task start to last partition) and
  the assembly (last partition to the end: the split from the counts and the streamed file);
- with ``--in-memory``, the same sizes through :func:`tiling.tile` (the whole index in the client), for the
  client memory the block path saves.

``.venv/bin/python benchmarks/tile_scale_benchmark.py --chips 100000 1000000`` (run it with nohup when the load
is low). Results go to stdout as a table and to ``--json`` as one record per size and path.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from common import command_line, default_work_dir, describe_load, local_cluster, log, machine_load
from scale_benchmark import CELL_M, ClientMemory, base_scene, cells_per_scene


def area_nlcd(work: Path, scenes: list[Path]) -> Path:
    """An NLCD-like raster under the largest mosaic (written once; smaller mosaics lie inside it).

    Not the seeded world (:func:`tiling.synth.make_nlcd` renders it cell by cell: tens of millions of 30 m
    cells under a million chips): squares of 10 x 10 cells (300 m) of one class each, drawn from the seed
    classes' codes with a seeded generator, so that most 224 m chips are pure enough to keep and every class
    is there. The labels do not match the pixels; the run measures the system, not a classifier.
    """
    import numpy as np
    import rasterio

    from tiling.synth.layout import footprint_in_world, snap_to_nlcd
    from tiling.synth.world import WORLD_CRS

    out = work / f"scale-nlcd-{len(scenes)}-scenes.tif"
    if out.exists():
        return out
    transform, width, height = snap_to_nlcd(footprint_in_world(scenes), margin_m=600.0)
    codes = np.array([21, 22, 31, 41, 42, 52, 71, 82, 11], dtype=np.uint8)
    squares = np.random.default_rng(5).choice(codes, size=(math.ceil(height / 10), math.ceil(width / 10)))
    pixels = np.kron(squares, np.ones((10, 10), dtype=np.uint8))[:height, :width]
    partial = out.with_suffix(".partial.tif")
    with rasterio.open(partial, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8",
                       crs=WORLD_CRS, transform=transform, nodata=255, tiled=True, compress="deflate") as dst:
        dst.write(pixels, 1)
    partial.rename(out)
    return out


class PartitionClock(ClientMemory):
    """:class:`ClientMemory` that also notes when the partitions stopped growing (the end of labeling)."""

    def __init__(self, dataset: Path, interval: float = 0.2) -> None:
        super().__init__(dataset, interval)
        self.last_partition: float | None = None
        self._count = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._process.memory_info().rss / 2**20
            self.peak = max(self.peak, rss)
            now = time.time()
            self.samples.append((now, rss))
            if self._dataset.is_dir():
                count = sum(1 for _ in self._dataset.glob("*/part-*.parquet"))
                if count and self.first_partition is None:
                    self.first_partition = time.perf_counter()
                if count > self._count:
                    self._count, self.last_partition = count, now
            self._stop.wait(self._interval)


def run_size(scenes: list[Path], nlcd: Path, out: Path, workers: int, in_memory: bool) -> dict[str, Any]:
    """Tile ``scenes`` into a fresh ``out`` on a fresh LocalCluster and measure the run."""
    import pyarrow.parquet as pq

    import tiling
    from geoclf.tile_area import PARTS_DIR, tile_area

    shutil.rmtree(out, ignore_errors=True)
    parts = out / PARTS_DIR
    params = tiling.TileParams(chip_size=32, chip_size_m=CELL_M)  # the base scene's 7 m pixels: 32 px chips
    with local_cluster(workers) as client, PartitionClock(parts) as memory:
        started = time.perf_counter()
        wall = time.time()
        if in_memory:
            tiling.tile(scenes, nlcd, out, params=params, scheduler=client, progress=False)
        else:
            tile_area(scenes, nlcd, out, params=params, scheduler=client, progress=False)
        total = time.perf_counter() - started
    chips = pq.read_metadata(out / "chips.parquet").num_rows
    row: dict[str, Any] = {
        "path": "tiling.tile (in memory)" if in_memory else "tile_area (blocks)", "chips": chips,
        "scenes": len(scenes), "workers": workers, "total_s": round(total, 1),
        "client_rss_baseline_mb": round(memory.baseline), "client_rss_peak_mb": round(memory.peak),
    }
    if not in_memory:
        row["first_partition_s"] = round(memory.first_partition - started, 2) if memory.first_partition else None
        # the client's peak while the workers label and while it writes the file: the phases' own figures
        labeled = memory.last_partition or wall
        row["labeling_s"] = round(labeled - wall, 1)
        row["assembly_s"] = round(wall + total - labeled, 1)
        row["client_rss_peak_labeling_mb"] = round(max((rss for when, rss in memory.samples if when <= labeled),
                                                       default=memory.baseline))
        row["client_rss_peak_assembly_mb"] = round(max((rss for when, rss in memory.samples if when > labeled),
                                                       default=memory.baseline))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--in-memory", type=int, nargs="*", default=[],
                        help="also tile these sizes with tiling.tile (the whole index in the client)")
    parser.add_argument("--work", type=Path, default=default_work_dir())
    parser.add_argument("--json", type=Path, default=None, help="append one JSON record per run here")
    args = parser.parse_args()
    from tiling.synth import virtual_scenes

    args.work.mkdir(parents=True, exist_ok=True)
    naip = base_scene(args.work)
    per_scene = cells_per_scene(naip)
    counts = {chips: max(1, math.ceil(chips / per_scene)) for chips in sorted({*args.chips, *args.in_memory})}
    largest = max(counts.values())
    nlcd = area_nlcd(args.work, virtual_scenes(naip, args.work / f"scale-vrts-{largest}", largest))
    rows = []
    runs = [(chips, False) for chips in args.chips] + [(chips, True) for chips in args.in_memory]
    for chips, in_memory in runs:
        count = counts[chips]
        # the mosaic of `count` scenes laid out as the largest one is, so that the NLCD covers it
        scenes = virtual_scenes(naip, args.work / f"scale-vrts-{count}-in-{largest}", count,
                                columns=math.ceil(math.sqrt(largest)))
        load = machine_load()
        log(f"{count * per_scene:,} cells in {count} virtual scenes on {args.workers} workers"
            f"{' (in memory)' if in_memory else ''}")
        row = run_size(scenes, nlcd, args.work / f"tile-scale-out-{count}", args.workers, in_memory)
        row["load"] = describe_load(load, machine_load())
        row["command"] = command_line()
        rows.append(row)
        log(json.dumps(row))
        if args.json is not None:
            with args.json.open("a") as sink:
                sink.write(json.dumps(row) + "\n")
    print("| path | chips | scenes | total s | labeling s | assembly s | first partition s | client peak MB "
          "(labeling / assembly) | baseline MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        phases = (f"{r['client_rss_peak_mb']} ({r['client_rss_peak_labeling_mb']} / "
                  f"{r['client_rss_peak_assembly_mb']})" if "labeling_s" in r else f"{r['client_rss_peak_mb']}")
        print(f"| {r['path']} | {r['chips']:,} | {r['scenes']} | {r['total_s']} | {r.get('labeling_s', '')} "
              f"| {r.get('assembly_s', '')} | {r.get('first_partition_s', '')} | {phases} "
              f"| {r['client_rss_baseline_mb']} |")
    blocks = {r["chips"]: r for r in rows if "labeling_s" in r}
    if len(blocks) >= 2:
        small, big = min(blocks), max(blocks)
        ratio = blocks[big]["client_rss_peak_mb"] / blocks[small]["client_rss_peak_mb"]
        log(f"client memory {big:,} / {small:,} chips: {ratio:.2f}x (target <= 1.5x: "
            f"{'met' if ratio <= 1.5 else 'not met'})")


if __name__ == "__main__":
    main()
