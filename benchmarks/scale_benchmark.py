"""Benchmark: scoring 10k, 100k and 1M chips of many scenes without the client holding the area (issue 16).

The area is a mosaic of virtual scenes (:func:`tiling.synth.virtual_scenes`: GDAL VRTs that read one
synthetic scene at other places), so a million chips need no million chips' worth of pixels on disk. The
base scene is 22,400 m square at 7 m pixels (3,200 x 3,200 px, no collar): 100 x 100 cells of 224 m, so
each virtual scene holds 10,000 chips and 1M chips are 100 scenes. The model is cheap per chip so that the
run measures the system, not a CNN: a logistic regression on the spectral featurizer's 22 numbers per chip
(band statistics of 32 x 32 px chips: the artifact is set to read chips at their 32 px, where featurize
read them upsampled to 224 px), trained once on the base scene and cached.

Each size runs :func:`geoclf.score.score` (the library's own path: blocks planned on the client from the
rasters' headers, tiled, scored and written by the workers, the VRT mosaics and ``landuse.tif`` written by
the client) on a fresh LocalCluster of ``--workers`` workers, into a fresh output directory, with
``html_map=False`` (the page's imagery layers read every raster's overviews: a cost of its own). Measured:

- **client peak RSS**: this process (the client and, with a LocalCluster, the Dask scheduler), sampled every
  0.2 s during ``score``; the figure that must stay flat (<= 1.5x from 100k to 1M chips); also split into the
  peak while partitions are computed and the peak after the last one (the mosaic, COG, polygons and PNG);
- **total time** of ``score`` and **time to first partition** (the first partition file's appearance);
- **task time** split as the workers' summaries report it (each partition's footer): ``model`` (chip windows
  read + ``predict_proba``: the model's share), ``tile`` (the block's cells laid out and their nodata
  measured), ``write`` (map tile and partition);
- **scheduler overhead per task**: the workers' wall time not spent inside tasks while partitions were
  being computed, per task: ``(workers x (last partition - first task start) - sum of task times) / tasks``;
- **overhead outside the model**: ``1 - sum(model seconds) / (workers x total time)``, the share of the
  workers' time the whole run spent on anything but the model (target <= 10% at 1M chips).

With ``--change``, each size is then compared with a later date by :func:`geoclf.change.run_change` (the
change step: each after-date partition paired with the before-date partitions it touches, the products
added up, ``change.tif`` from per-partition tiles). The later date is the scored dataset with 2% of its
chips' classes changed, partition by partition (:func:`later_date`: the change step reads predictions and
does not care how they were made, and a second scoring would double the run). Measured: the client's peak
RSS during the change step (this process: the change runs in the client, there are no workers), its
time, and the partitions read.

With ``--maps-only --map-method painted|vrt``, each size's client map step is run again in this process over
the score output an earlier run left in ``--work`` (nothing is scored): the tiles' places read from the
partitions' footers, ``landuse.vrt`` and ``landuse_probs.vrt`` written, then ``landuse.tif`` and
``landuse_probs.tif`` either painted from the tiles and copied (``painted``: what ``score`` does,
:func:`geoclf.landuse.mosaic.tiles_to_cog`) or copied from the VRTs (``vrt``: what it did before). Measured:
the client's RSS at the start of the step and its peak during it, and the seconds of each part. Run the
two methods as separate processes, one after the other, for figures side by side.

``.venv/bin/python benchmarks/scale_benchmark.py --chips 10000 100000`` for the small sizes; add 1000000
(hours on this shared 2-core machine: run it with nohup when the load is low). Results go to stdout as a
table and to ``--json`` as one record per size.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from common import command_line, default_work_dir, describe_load, local_cluster, log, machine_load

SCENE_CELLS = 100  # cells per side of the base scene
CELL_M = 224.0
PIXEL_M = 7.0  # 32 px chips of 224 m


def base_scene(work: Path) -> Path:
    """The base scene every virtual scene reads (rendered once, cached)."""
    from tiling.synth import make_scene

    out = work / f"scale-base-{SCENE_CELLS}cells-{PIXEL_M:g}m"
    marker = out / "scene.json"
    if marker.exists():
        return Path(json.loads(marker.read_text())["naip"])
    log(f"rendering the {SCENE_CELLS * CELL_M:g} m base scene at {PIXEL_M:g} m (once)")
    scene = make_scene(out, size_m=SCENE_CELLS * CELL_M, resolution=PIXEL_M, collar_m=0, seed=5)
    marker.write_text(json.dumps({"naip": str(scene.naip), "nlcd": str(scene.nlcd)}))
    return scene.naip


def cells_per_scene(naip: Path) -> int:
    """Grid cells of 224 m inside the base scene (its origin is not on the grid: one row and column fewer)."""
    import tiling
    from tiling.grid import ChipGrid

    scene = tiling.describe_naip(naip)
    return ChipGrid(scene.crs, CELL_M, CELL_M).count_within(scene.bounds, tolerance=0.5 * scene.res[0])


def cached_model(work: Path, naip: Path) -> Path:
    """The cheap model: logistic regression on spectral features of 32 px chips of the base scene (cached)."""
    import tiling
    from geoclf.classifiers import train_classifier
    from geoclf.features import featurize

    out = work / "scale-model-spectral-lr"
    if (out / "model.json").exists():
        return out
    log("training the spectral logistic regression once")
    train = work / "scale-model-training"
    shutil.rmtree(train, ignore_errors=True)
    nlcd = naip.parent / "nlcd.tif"
    index = tiling.tile([naip], nlcd, params=tiling.TileParams(chip_size=32, chip_size_m=CELL_M, min_purity=0.5),
                        progress=False)
    subset = index.groupby(["label", "split"], group_keys=False).head(200)
    subset.attrs = index.attrs
    tiling.write_index(subset, train / "chips" / "chips.parquet")
    featurize(train / "chips", train / "features", backbone="spectral", scheduler="sync", record_run=False,
              progress=False)
    result = train_classifier(train / "features", "logistic_regression", runs_dir=train / "runs")
    shutil.copytree(result.artifact_dir, out)
    # featurize reads every chip at 224 px: here the 32 px windows upsampled (bilinear). The copy scores at the
    # windows' own 32 px: the same pixel distributions, 49x fewer pixels to histogram per chip.
    meta = json.loads((out / "model.json").read_text())
    meta["chip_size"] = 32
    (out / "model.json").write_text(json.dumps(meta, indent=2))
    return out


class ClientMemory:
    """Peak resident memory of this process, sampled in a thread; and when the first partition appeared."""

    def __init__(self, dataset: Path, interval: float = 0.2) -> None:
        import psutil

        self._process = psutil.Process()
        self._dataset = dataset
        self._interval = interval
        self.baseline = self._process.memory_info().rss / 2**20
        self.peak = self.baseline
        self.first_partition: float | None = None
        self.samples: list[tuple[float, float]] = []  # (epoch seconds, RSS MB): the peak of each phase
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._process.memory_info().rss / 2**20
            self.peak = max(self.peak, rss)
            self.samples.append((time.time(), rss))
            if self.first_partition is None and self._dataset.is_dir() and next(
                    self._dataset.glob("*/part-*.parquet"), None) is not None:
                self.first_partition = time.perf_counter()
            self._stop.wait(self._interval)

    def __enter__(self) -> ClientMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_size(model: Path, scenes: list[Path], out: Path, workers: int, chips_per_partition: int) -> dict[str, Any]:
    """Score ``scenes`` into a fresh ``out`` on a fresh LocalCluster and measure the run."""
    from geoclf.landuse import ScoreOutput
    from geoclf.partitions import read_summary
    from geoclf.score import score

    shutil.rmtree(out, ignore_errors=True)
    output = ScoreOutput(out)
    with local_cluster(workers) as client, ClientMemory(output.dataset) as memory:
        started = time.perf_counter()
        score(str(model), out, naip=scenes, scheduler=client, chips_per_partition=chips_per_partition,
              html_map=False, progress=False)
        total = time.perf_counter() - started
    files = output.dataset_files()
    summaries = [read_summary(f) for f in files]
    mtimes = [f.stat().st_mtime for f in files]
    chips = sum(s["rows"] for s in summaries)
    task_s = sum(s["task_s"] for s in summaries)
    parts = {k: sum(s["seconds"][k] for s in summaries) for k in ("tile", "model", "write")}
    wall_epoch = time.time() - (time.perf_counter() - started)  # perf_counter origin -> epoch
    first_start = min(m - s["task_s"] for m, s in zip(mtimes, summaries, strict=True))
    computing = max(mtimes) - first_start
    # the client's peak while partitions were computed (planning included) and after the last one (mosaic, COG,
    # polygons, PNG): what grows with the area shows in one of them
    during = max((rss for when, rss in memory.samples if when <= max(mtimes)), default=memory.baseline)
    after = max((rss for when, rss in memory.samples if when > max(mtimes)), default=memory.baseline)
    return {
        "chips": chips, "scenes": len(scenes), "tasks": len(files), "workers": workers,
        "total_s": round(total, 1),
        "first_partition_s": round(memory.first_partition - started, 2) if memory.first_partition else None,
        "planning_s": round(first_start - wall_epoch, 2),
        "after_last_partition_s": round(wall_epoch + total - max(mtimes), 1),
        "client_rss_baseline_mb": round(memory.baseline), "client_rss_peak_mb": round(memory.peak),
        "client_rss_peak_partitions_mb": round(during), "client_rss_peak_after_mb": round(after),
        "task_s": round(task_s, 1), **{f"{k}_s": round(v, 1) for k, v in parts.items()},
        "scheduler_overhead_per_task_ms": round(1000 * (workers * computing - task_s) / len(files), 1),
        "model_share": round(parts["model"] / (workers * total), 3),
        "overhead_outside_model": round(1 - parts["model"] / (workers * total), 3),
        "model_ms_per_chip": round(1000 * parts["model"] / max(chips, 1), 3),
    }


def later_date(before: Path, after: Path, share: float = 0.02, seed: int = 0) -> Path:
    """A later date of a scored area: its dataset with ``share`` of the chips given another class (their
    probabilities swapped with it), written partition by partition with the same footers (boxes, summaries)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from geoclf.landuse import ScoreOutput

    source = ScoreOutput(before)
    shutil.rmtree(after, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for file in source.dataset_files():
        table = pq.read_table(file)
        frame = table.to_pandas()
        classes = [c[len("prob_"):] for c in frame.columns if c.startswith("prob_")]
        rows = np.flatnonzero(frame["pred"].notna().to_numpy() & (rng.random(len(frame)) < share))
        for row in rows:
            old = frame.at[row, "pred"]
            new = classes[(classes.index(old) + 1 + int(rng.integers(len(classes) - 1))) % len(classes)]
            frame.at[row, f"prob_{old}"], frame.at[row, f"prob_{new}"] = (frame.at[row, f"prob_{new}"],
                                                                         frame.at[row, f"prob_{old}"])
            frame.at[row, "pred"] = new
        target = after / ScoreOutput.DATASET / file.relative_to(source.dataset)
        target.parent.mkdir(parents=True, exist_ok=True)
        changed = pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False)
        pq.write_table(changed.replace_schema_metadata(table.schema.metadata), target)
    return after


def run_change_size(before: Path, after: Path, out: Path) -> dict[str, Any]:
    """Run the change step from ``before`` to ``after`` in this process and measure it."""
    from geoclf.change import partitioned, run_change

    shutil.rmtree(out, ignore_errors=True)
    reads: list[int] = []
    real = partitioned.read_partition

    import psutil

    process = psutil.Process()
    started = time.perf_counter()

    def counted(partition: Any) -> Any:
        table = real(partition)
        reads.append(len(table))
        if len(reads) % 500 == 0:  # a trace of the client's memory as the partitions go by
            log(f"change: {len(reads)} partitions read, {time.perf_counter() - started:.0f} s, "
                f"RSS {process.memory_info().rss / 2**20:.0f} MB")
        return table

    partitioned.read_partition = counted  # the module's reader is looked up at each run: count what is read
    try:
        with ClientMemory(out / "none") as memory:
            started = time.perf_counter()
            run_change(before, after, out, html_map=False)
            total = time.perf_counter() - started
    finally:
        partitioned.read_partition = real
    info = json.loads((out / "change.json").read_text())
    return {"change_s": round(total, 1), "change_rss_start_mb": round(memory.baseline),
            "change_rss_peak_mb": round(memory.peak), "change_reads": len(reads),
            "change_largest_read_rows": max(reads, default=0), "change_paired": info["paired"],
            "change_changed_chips": info["changed_chips"]}


def run_maps_size(out: Path, method: str) -> dict[str, Any]:
    """The client's map step over the score output ``out``, in this process (``method``: ``painted`` or ``vrt``,
    see the module docstring); the COGs go to ``out/bench-maps-<method>/``."""
    from geoclf.landuse import ScoreOutput
    from geoclf.landuse.cog import read_header
    from geoclf.landuse.mosaic import MapTile, mosaic_to_cog, tiles_to_cog, write_mosaic
    from geoclf.partitions import read_summary

    output = ScoreOutput(out)
    scheme = read_header(output.landuse).classes
    target = out / f"bench-maps-{method}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    ends: dict[str, float] = {}  # part -> epoch seconds at its end
    with ClientMemory(out / "none") as memory:
        started = time.time()
        # sorted by name, not in plan order: the virtual scenes do not overlap, so the order changes no pixel
        tiles = [MapTile.from_summary(tile) for f in output.dataset_files() if (tile := read_summary(f).get("tile"))]
        ends["footers"] = time.time()
        write_mosaic(output.mosaic, tiles, scheme)
        write_mosaic(output.probability_mosaic, tiles, scheme, probabilities=True)
        ends["vrts"] = time.time()
        for name, probabilities in (("landuse.tif", False), ("landuse_probs.tif", True)):
            if method == "painted":
                tiles_to_cog(target / name, tiles, scheme, directory=output.directory, probabilities=probabilities)
            else:
                mosaic_to_cog(output.probability_mosaic if probabilities else output.mosaic, target / name, scheme,
                              probabilities=probabilities)
            ends[name] = time.time()
    row: dict[str, Any] = {"chips": sum(read_summary(f)["rows"] for f in output.dataset_files()),
                           "tiles": len(tiles), "map_method": method, "map_step_s": round(time.time() - started, 2),
                           "map_rss_start_mb": round(memory.baseline), "map_rss_peak_mb": round(memory.peak)}
    begin = started
    for part, end in ends.items():  # each part's seconds and the peak while it ran
        row[f"{part}_s"] = round(end - begin, 2)
        row[f"{part}_peak_mb"] = round(max((rss for when, rss in memory.samples if begin <= when <= end),
                                           default=memory.baseline))
        begin = end
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chips-per-partition", type=int, default=512)
    parser.add_argument("--work", type=Path, default=default_work_dir())
    parser.add_argument("--json", type=Path, default=None, help="append one JSON record per size here")
    parser.add_argument("--change", action="store_true", help="also run the change step against a later date")
    parser.add_argument("--change-only", action="store_true",
                        help="the change step only, over the outputs an earlier --change run left in --work")
    parser.add_argument("--maps-only", action="store_true",
                        help="the client's map step only, over the score outputs an earlier run left in --work")
    parser.add_argument("--map-method", choices=["painted", "vrt"], default="painted",
                        help="with --maps-only: COGs painted from the tiles (score's way) or copied from the VRTs")
    args = parser.parse_args()
    import pyarrow.parquet as pq

    from geoclf.landuse import ScoreOutput
    from tiling.synth import virtual_scenes

    if args.maps_only:  # nothing scored: the sizes' outputs are there
        for chips in args.chips:
            load = machine_load()
            # the scenes a scoring run of that size had (cells_per_scene: one row and column fewer than the base)
            out = args.work / f"scale-out-{max(1, math.ceil(chips / (SCENE_CELLS - 1) ** 2))}"
            row = {**run_maps_size(out, args.map_method), "load": describe_load(load, machine_load()),
                   "command": command_line()}
            log(json.dumps(row))
            if args.json is not None:
                with args.json.open("a") as sink:
                    sink.write(json.dumps(row) + "\n")
        return
    args.work.mkdir(parents=True, exist_ok=True)
    naip = base_scene(args.work)
    model = cached_model(args.work, naip)
    per_scene = cells_per_scene(naip)
    rows = []
    for chips in args.chips:
        count = max(1, math.ceil(chips / per_scene))
        scenes = virtual_scenes(naip, args.work / f"scale-vrts-{count}", count)
        load = machine_load()
        log(f"{count * per_scene:,} chips in {count} virtual scenes on {args.workers} workers")
        out = args.work / f"scale-out-{count}"
        if args.change_only:
            row = {"chips": sum(pq.read_metadata(f).num_rows for f in ScoreOutput(out).dataset_files()),
                   "scenes": count}
        else:
            row = run_size(model, scenes, out, args.workers, args.chips_per_partition)
        if args.change or args.change_only:
            later = args.work / f"scale-later-{count}"
            if not (args.change_only and (later / ScoreOutput.DATASET).is_dir()):
                later = later_date(out, later)
            log(f"change step over {row['chips']:,} chips")
            row.update(run_change_size(out, later, args.work / f"scale-change-{count}"))
        row["load"] = describe_load(load, machine_load())
        row["command"] = command_line()
        rows.append(row)
        log(json.dumps(row))
        if args.json is not None:
            with args.json.open("a") as sink:
                sink.write(json.dumps(row) + "\n")
    scored = [] if args.change_only else rows  # a change-only run has no scoring figures
    print("| chips | scenes | tasks | total s | first partition s | client peak MB | model s | tile s | write s "
          "| scheduler ms/task | outside model |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in scored:
        print(f"| {r['chips']:,} | {r['scenes']} | {r['tasks']} | {r['total_s']} | {r['first_partition_s']} "
              f"| {r['client_rss_peak_mb']} | {r['model_s']} | {r['tile_s']} | {r['write_s']} "
              f"| {r['scheduler_overhead_per_task_ms']} | {r['overhead_outside_model']:.1%} |")
    if args.change or args.change_only:
        print("| chips | change s | client RSS start / peak MB | partitions read | largest read (rows) | paired |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['chips']:,} | {r['change_s']} | {r['change_rss_start_mb']} / {r['change_rss_peak_mb']} "
                  f"| {r['change_reads']} | {r['change_largest_read_rows']} | {r['change_paired']:,} |")
    changes = rows if args.change or args.change_only else []
    for step, key, measured in (("", "client_rss_peak_mb", scored), ("change step ", "change_rss_peak_mb", changes)):
        by_chips = {r["chips"]: r for r in measured}
        big = [c for c in by_chips if c >= 1_000_000]
        mid = [c for c in by_chips if 100_000 <= c < 1_000_000]
        if big and mid:
            ratio = by_chips[big[0]][key] / by_chips[mid[0]][key]
            log(f"{step}client memory 1M / 100k: {ratio:.2f}x (target <= 1.5x: {'met' if ratio <= 1.5 else 'not met'})")


if __name__ == "__main__":
    main()
