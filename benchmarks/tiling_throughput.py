"""Benchmark: tiling throughput on a 10,000 x 10,000 px scene — labeling into the index, materializing PNGs.

For 1 and 2 worker processes (a LocalCluster made as the library makes one), alternating ``--repeats``
times, in one run:

* **window read** (the reference): every worker at once reads the index's chip windows with
  :class:`tiling.ChipReader`, a fresh reader per 256 chips as materializing opens one per task: 4 bands
  (224 x 224 x 4, the "~275/s on one core" figure) and the 3 RGB bands that PNG chips hold;
* **labeling**: :func:`tiling.tile` of the scene against its NLCD on the cluster (chips/s = grid cells
  labeled per second, the whole call: planning, labeling tasks, filters, geometry, split). At the default
  stride the scene is a single labeling task of 1,936 cells (tasks hold up to 2,048), so a second worker
  cannot help; the half-chip stride variant (4 tasks) shows the scaling;
* **materializing**: :func:`tiling.materialize.materialize_chips` of the labeled index (or its first
  ``--png-chips``) as PNG chips into a fresh directory (chips/s, and per core = per worker process).

Targets on this 2-core machine: labeling >= 2,000 chips/s; materializing >= 250 chips/s per core. Beside
each wall-clock rate the CPU time of this process and of the workers is counted: chips per CPU-second is
what one idle core would do, the figure to hold against a target when the machine is shared and loaded.

Run: ``.venv/bin/python benchmarks/tiling_throughput.py [--repeats 3]``. The scene is rendered once into
the work directory (``--work``) and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from common import (
    cached_scene,
    command_line,
    cpu_seconds,
    default_work_dir,
    describe_load,
    local_cluster,
    log,
    machine_load,
    median,
    on_each_worker,
    pct,
    timed_rate,
)

SCENE_M = 10_000.0
LABEL_TARGET = 2_000.0
MATERIALIZE_TARGET_PER_CORE = 250.0
READ_BATCH = 256  # tiling.materialize's chips per task: one ChipReader each


def read_windows(windows: list[tuple[str, int, int, int, int]], bands: tuple[int, ...]) -> dict[str, float]:
    """Read chip windows as materializing does (one reader per 256 chips); runs on a worker."""
    from tiling.io import ChipReader

    start, cpu = time.time(), time.process_time()
    for i in range(0, len(windows), READ_BATCH):
        with ChipReader(bands=bands, size=224) as reader:
            for source, *window in windows[i:i + READ_BATCH]:
                reader.read(source, tuple(window))
    return {"items": len(windows), "start": start, "end": time.time(), "cpu": time.process_time() - cpu}


def read_rate(client: Any, windows: list[tuple[str, int, int, int, int]], bands: tuple[int, ...]) -> tuple[
        float, float]:
    """Window reads per second on all workers at once, and per CPU-second."""
    results = on_each_worker(client, read_windows, windows, bands)
    return timed_rate(results), sum(r["items"] for r in results) / sum(r["cpu"] for r in results)


def label_rate(client: Any, naip: Path, nlcd: Path, stride_m: float | None) -> tuple[float, float, int, Any]:
    """Grid cells labeled per second by :func:`tiling.tile` on ``client`` and per CPU-second (client and
    workers); also the cell count and the index."""
    import tiling
    from tiling.index import plan_chips
    from tiling.labels import describe_nlcd

    params = tiling.TileParams(stride_m=stride_m)
    _, _, counts = plan_chips([naip], params, None, describe_nlcd(str(nlcd)))
    cpu, started = cpu_seconds(client), time.perf_counter()
    index = tiling.tile([naip], nlcd, params=params, scheduler=client, progress=False)
    seconds, cpu = time.perf_counter() - started, cpu_seconds(client) - cpu
    return counts["cells"] / seconds, counts["cells"] / cpu, counts["cells"], index


def materialize_rate(client: Any, index: Any, out: Path) -> tuple[float, float]:
    """PNG chips written by :func:`tiling.materialize.materialize_chips` into a fresh ``out``: per second and
    per CPU-second."""
    from tiling.materialize import materialize_chips

    shutil.rmtree(out, ignore_errors=True)
    cpu, started = cpu_seconds(client), time.perf_counter()
    written = materialize_chips(index, out, fmt="png", scheduler=client, progress=False)
    seconds, cpu = time.perf_counter() - started, cpu_seconds(client) - cpu
    if written != len(index):
        raise RuntimeError(f"materialized {written} of {len(index)} chips")
    return written / seconds, written / cpu


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """All measurements for every worker count."""
    naip, nlcd = cached_scene(args.work, SCENE_M)
    rows = []
    for workers in args.workers:
        with local_cluster(workers) as client:
            keys = ("label", "label_cpu", "label_half", "label_half_cpu", "read4", "read4_cpu", "read3", "read3_cpu",
                    "png", "png_cpu")
            samples: dict[str, list[float]] = {k: [] for k in keys}
            for repeat in range(args.repeats):
                label, label_cpu, cells, index = label_rate(client, naip, nlcd, None)
                half, half_cpu, half_cells, _ = label_rate(client, naip, nlcd, 112.0)
                chips = index.head(args.png_chips) if args.png_chips else index
                windows = [(r.source, int(r.col_off), int(r.row_off), int(r.width), int(r.height))
                           for r in chips.itertuples()]
                read4, read4_cpu = read_rate(client, windows, (1, 2, 3, 4))
                read3, read3_cpu = read_rate(client, windows, (1, 2, 3))
                png, png_cpu = materialize_rate(client, chips, args.work / "tiling" / "png")
                values = (label, label_cpu, half, half_cpu, read4, read4_cpu, read3, read3_cpu, png, png_cpu)
                for key, value in zip(keys, values, strict=True):
                    samples[key].append(value)
                log(f"{workers} worker(s), repeat {repeat + 1}: labeling {label:.0f}/s ({label_cpu:.0f}/CPU-s, "
                    f"{cells} cells), half stride {half:.0f}/s ({half_cpu:.0f}/CPU-s, {half_cells} cells), read 4 "
                    f"bands {read4:.0f}/s ({read4_cpu:.0f}/CPU-s), 3 bands {read3:.0f}/s ({read3_cpu:.0f}/CPU-s), "
                    f"PNG {png:.0f}/s ({png_cpu:.0f}/CPU-s, {len(chips)} chips)")
            rows.append({"workers": workers, "cells": cells, "half_cells": half_cells, "chips": len(chips),
                         **{k: median(v) for k, v in samples.items()},
                         "png_vs_read3": median([p / r for p, r in zip(samples["png"], samples["read3"], strict=True)]),
                         "samples": samples})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--png-chips", type=int, default=0, help="materialize only the first N chips (0: all)")
    parser.add_argument("--work", type=Path, default=default_work_dir(), help="cache of the synthetic scene")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    load_start = machine_load()
    rows = run(args)
    load_end = machine_load()
    print(f"\ntiling a {SCENE_M:.0f} x {SCENE_M:.0f} px synthetic scene, median of {args.repeats} repeat(s), "
          f"{describe_load(load_start, load_end)}")
    print(f"command: {command_line()}")
    print("wall clock (chips/s on this machine at this load):")
    print(f"{'workers':>7} {'label/s':>8} {'vs 2000':>8} {'half-stride/s':>14} {'read 4b/s':>10} {'read 3b/s':>10} "
          f"{'PNG/s':>7} {'PNG/s/core':>11} {'vs 250':>7} {'PNG/read3':>10}")
    for row in rows:
        per_core = row["png"] / row["workers"]
        print(f"{row['workers']:>7} {row['label']:>8.0f} {pct(row['label'] / LABEL_TARGET):>8} "
              f"{row['label_half']:>14.0f} {row['read4']:>10.0f} {row['read3']:>10.0f} {row['png']:>7.0f} "
              f"{per_core:>11.0f} {pct(per_core / MATERIALIZE_TARGET_PER_CORE):>7} {pct(row['png_vs_read3']):>10}")
    print("CPU time (chips per CPU-second of this process + workers: what one idle core does):")
    print(f"{'workers':>7} {'label':>8} {'half-stride':>12} {'read 4b':>8} {'read 3b':>8} {'PNG':>6} "
          f"{'PNG vs 250':>11} {'PNG/read3':>10}")
    for row in rows:
        png_vs_target = pct(row["png_cpu"] / MATERIALIZE_TARGET_PER_CORE)
        print(f"{row['workers']:>7} {row['label_cpu']:>8.0f} {row['label_half_cpu']:>12.0f} {row['read4_cpu']:>8.0f} "
              f"{row['read3_cpu']:>8.0f} {row['png_cpu']:>6.0f} {png_vs_target:>11} "
              f"{pct(row['png_cpu'] / row['read3_cpu']):>10}")
    print(f"(labeling: {rows[0]['cells']} cells at the default stride, {rows[0]['half_cells']} at half a chip; "
          f"materializing: {rows[0]['chips']} chips kept by the default filters)")
    if args.json:
        args.json.write_text(json.dumps({"load_start": load_start, "load_end": load_end, "rows": rows,
                                         "command": command_line()}, indent=2, default=str))


if __name__ == "__main__":
    main()
