"""Benchmark: end-to-end scoring throughput vs the model's bare forward pass, worker memory vs area.

What it measures, all in one run (see benchmarks/README.md for the figures):

1. **Ratio, 1 and 2 workers.** On a LocalCluster made as the library makes one, alternating ``--repeats``
   times: the model's bare forward pass on random tensors inside the workers (all workers at once), then
   the real scoring stage — :class:`geoclf.score.ScoreTask` over ``--ratio-chips`` chips through
   :func:`geoclf.partitions.run_partitions`, i.e. raster windows read -> ``model.predict_proba`` ->
   partition written, with the torch threads :func:`geoclf.score.score` gives a LocalCluster. The ratio of
   each (bare, end-to-end) pair is taken, and the median pair reported. Target: >= 85%.
2. **Area run.** ``--chips`` chips (>= 20,000 for the README figure) scored on ``--area-workers`` workers,
   with the workers' resident memory sampled every half second against chips done: the peak by 5,000
   chips vs the peak by the end must be the same (memory must not grow with the area). Then
   :func:`geoclf.score.score` finishes the job (it finds every partition written and only assembles
   ``predictions.parquet`` and the maps), timed, so the whole pipeline's time per chip is known and
   projected to a county (65,000 chips).

The area is real rasters, not overlapping chips of one: the cached 10,000 x 10,000 px synthetic scene is
copied with shifted georeferences into as many distinct scenes as needed (~1,900 chips each), tiled on the
model's chip grid like ``score(naip=...)`` does. The model is a logistic regression on EfficientNet-Lite0
features (the default backbone, real weights) trained once on chips of that scene and cached.

Small run (``make bench``): ``.venv/bin/python benchmarks/score_throughput.py``.
README figures: ``.venv/bin/python benchmarks/score_throughput.py --chips 20000 --ratio-chips 1024
--repeats 2``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from common import (
    RssSampler,
    bare_forward,
    cached_scene,
    command_line,
    cpu_rate,
    cpu_split,
    default_work_dir,
    describe_load,
    local_cluster,
    log,
    machine_load,
    median,
    on_each_worker,
    pct,
    timed_rate,
    torch_threads_for,
    train_scoring_model,
    worker_peak_rss,
)

COUNTY_CHIPS = 65_000
TARGET = 0.85
SCENE_M = 10_000.0


def cached_model(work: Path, naip: Path, nlcd: Path, per_class: int = 30) -> Path:
    """A ``features`` model artifact (EfficientNet-Lite0 + logistic regression) trained once on the scene."""
    return train_scoring_model(work, naip, nlcd, "model-efficientnet_lite0-lr", per_class)


def area_scenes(work: Path, naip: Path, count: int) -> list[Path]:
    """``count`` distinct scenes side by side: copies of ``naip`` with shifted georeferences (cached)."""
    import rasterio
    from affine import Affine

    folder = work / "area"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with rasterio.open(naip) as src:
        transform, width_m = src.transform, src.width * src.transform.a
    step = width_m + 2240.0  # a gap between scenes keeps their chips distinct cells
    for i in range(count):
        path = folder / f"naip_{i:02d}.tif"
        if not path.exists():
            tmp = folder / f".{path.name}.tmp"
            shutil.copyfile(naip, tmp)
            with rasterio.open(tmp, "r+") as dst:
                dst.transform = Affine(transform.a, 0, transform.c + (i % 4) * step, 0, transform.e,
                                       transform.f - (i // 4) * step)
            tmp.replace(path)
        paths.append(path)
    return paths


def _score_network(model_dir: str, threads: int) -> Any:
    """The network ``ScoreTask`` runs, from the worker's model cache (so both measurements share it)."""
    from geoclf.score import ScoreTask

    return ScoreTask(model_dir=model_dir, torch_threads=threads).model().featurizer.network()


def bare_rate(client: Any, model_dir: str, threads: int, batches: int) -> tuple[float, float]:
    """Chips/s of the scoring network's forward pass on random tensors, on every worker at once; and chips
    per CPU-second."""
    results = on_each_worker(client, bare_forward, lambda: _score_network(model_dir, threads), threads, batches)
    return timed_rate(results), cpu_rate(results)


def scoring_rate(client: Any, table: Any, out: Path, model_dir: str, threads: int, per_partition: int,
                 settings: dict[str, Any] | None = None) -> tuple[float, float, float, float]:
    """The real scoring stage over ``table`` into ``out`` (fresh): chips/s, chips per CPU-second (workers and
    this process), chips per CPU-second of the workers alone, seconds."""
    from geoclf.partitions import run_partitions
    from geoclf.score import ScoreTask

    shutil.rmtree(out, ignore_errors=True)
    task = ScoreTask(model_dir=model_dir, batch_size=32, torch_threads=threads)
    (own, cpu), started = cpu_split(client), time.perf_counter()
    run_partitions(table, out, task, settings=settings or {"bench": True}, chips_per_partition=per_partition,
                   scheduler=client, desc="scoring", progress=False)
    seconds, (own_after, cpu_after) = time.perf_counter() - started, cpu_split(client)
    return (len(table) / seconds, len(table) / (own_after - own + cpu_after - cpu), len(table) / (cpu_after - cpu),
            seconds)


def ratio_runs(table: Any, work: Path, model_dir: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Bare forward vs end-to-end scoring, alternating, for each worker count."""
    rows = []
    for workers in args.workers:
        threads = torch_threads_for(workers)
        with local_cluster(workers) as client:
            pairs = []
            for repeat in range(args.repeats):
                bare, bare_cpu = bare_rate(client, model_dir, threads, args.bare_batches)
                e2e, e2e_cpu, e2e_workers, _ = scoring_rate(client, table, work / "ratio-out", model_dir, threads,
                                                            args.chips_per_partition)
                pairs.append((bare, e2e, bare_cpu, e2e_cpu, e2e_workers))
                log(f"{workers} worker(s), repeat {repeat + 1}: bare {bare:.1f} chips/s ({bare_cpu:.1f}/CPU-s), end "
                    f"to end {e2e:.1f} chips/s ({e2e_cpu:.1f}/CPU-s, workers alone {e2e_workers:.1f}): "
                    f"{pct(e2e / bare)} wall, {pct(e2e_cpu / bare_cpu)} CPU, "
                    f"{pct(e2e_workers / bare_cpu)} workers' CPU")
        rows.append({"workers": workers, "torch_threads": threads, "bare": median([p[0] for p in pairs]),
                     "e2e": median([p[1] for p in pairs]), "ratio": median([p[1] / p[0] for p in pairs]),
                     "bare_cpu": median([p[2] for p in pairs]), "e2e_cpu": median([p[3] for p in pairs]),
                     "ratio_cpu": median([p[3] / p[2] for p in pairs]),
                     "ratio_workers_cpu": median([p[4] / p[2] for p in pairs]), "pairs": pairs})
    return rows


def area_run(index_path: Path, work: Path, model_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    """Score the whole area on ``--area-workers``; worker memory against chips done; finish with ``score``."""
    import pandas as pd

    from geoclf.score import model_stamp, score
    from tiling.index import read_index

    out = work / "area-out"
    shutil.rmtree(out, ignore_errors=True)
    index = read_index(index_path)
    table = pd.DataFrame(index.drop(columns="geometry"))
    workers = args.area_workers
    threads = torch_threads_for(workers)
    per_partition = 512  # score()'s default: the resumed score() call must find the same partitions
    started = time.perf_counter()
    with local_cluster(workers) as client:
        cluster_seconds = time.perf_counter() - started
        bare_before, cpu_before = bare_rate(client, model_dir, threads, args.bare_batches)
        parts = out / "partitions"

        def chips_done() -> float:
            return len(list(parts.glob("part-*.parquet"))) * per_partition if parts.exists() else 0.0

        with RssSampler(client, chips_done) as sampler:
            # the same fingerprint score() computes, so that score() below resumes instead of redoing the work
            stamp = {"model": model_stamp(model_dir)}
            e2e, e2e_cpu, e2e_workers, seconds = scoring_rate(client, table, parts, model_dir, threads,
                                                              per_partition, settings=stamp)
        bare_after, cpu_after = bare_rate(client, model_dir, threads, args.bare_batches)
        peak = max(worker_peak_rss(client).values())
    started = time.perf_counter()
    score(model_dir, out, chips=index_path, scheduler="sync", progress=False)
    finish_seconds = time.perf_counter() - started
    small = min(5_000, len(table) // 4)
    return {"workers": workers, "chips": len(table), "seconds": seconds, "e2e": e2e,
            "bare": (bare_before + bare_after) / 2, "bare_before": bare_before, "bare_after": bare_after,
            "e2e_cpu": e2e_cpu, "e2e_workers_cpu": e2e_workers, "bare_cpu": (cpu_before + cpu_after) / 2,
            "cluster_seconds": cluster_seconds, "finish_seconds": finish_seconds, "small": small,
            "rss_small": sampler.peak_until(small), "rss_all": sampler.peak_until(float("inf")),
            "ru_maxrss": peak, "samples": len(sampler.samples),
            "rss_curve": [(done, sampler.peak_until(done)) for done in range(per_partition, len(table) + per_partition,
                                                                             max(per_partition, len(table) // 8))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=2_000, help="chips of the area run (README: 20000)")
    parser.add_argument("--ratio-chips", type=int, default=256, help="chips of each end-to-end ratio measurement")
    parser.add_argument("--chips-per-partition", type=int, default=128, help="partition size of the ratio runs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts of the ratio runs")
    parser.add_argument("--area-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--bare-batches", type=int, default=4, help="timed batches of 32 per bare measurement")
    parser.add_argument("--work", type=Path, default=default_work_dir(), help="cache of scenes and the model")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import tiling
    from geoclf.artifact import load_model, resolve_model_dir

    load_start = machine_load()
    naip, nlcd = cached_scene(args.work, SCENE_M)
    model_dir = str(resolve_model_dir(cached_model(args.work, naip, nlcd)))
    model = load_model(model_dir)

    # The area: enough scene copies for --chips, tiled as score(naip=...) tiles (no labels, the model's grid).
    work = args.work / "score"
    per_scene = 1_900
    scenes = area_scenes(args.work, naip, max(1, math.ceil(args.chips / per_scene)))
    params = tiling.TileParams(chip_size=model.chip_size, chip_size_m=model.chip_size_m, max_nodata=0.5)
    started = time.perf_counter()
    index = tiling.tile(scenes, None, params=params, scheduler="sync", progress=False)
    tile_seconds = time.perf_counter() - started
    if len(index) < args.chips:  # the per-scene estimate fell short: one more copy
        scenes = area_scenes(args.work, naip, len(scenes) + math.ceil((args.chips - len(index)) / per_scene))
        started = time.perf_counter()
        index = tiling.tile(scenes, None, params=params, scheduler="sync", progress=False)
        tile_seconds = time.perf_counter() - started
    tiled = len(index)
    index = index.sort_values("chip_id").head(args.chips).reset_index(drop=True)
    index_path = tiling.write_index(index, work / "area-chips" / "chips.parquet")
    log(f"area: {len(scenes)} scenes, {tiled} chips tiled in {tile_seconds:.1f} s, {len(index)} scored")

    import pandas as pd

    table = pd.DataFrame(index.drop(columns="geometry")).head(args.ratio_chips)
    ratios = ratio_runs(table, work, model_dir, args)
    area = area_run(index_path, work, model_dir, args)
    load_end = machine_load()

    per_chip = (tile_seconds / tiled + 1 / area["e2e"] + area["finish_seconds"] / area["chips"])
    county_minutes = (area["cluster_seconds"] + COUNTY_CHIPS * per_chip) / 60
    # the same with the scoring stage at its CPU cost spread over every core: the machine to itself
    cores = load_start["cores"] or 1
    idle_minutes = (area["cluster_seconds"] + COUNTY_CHIPS * (per_chip - 1 / area["e2e"]
                                                              + 1 / (area["e2e_cpu"] * cores))) / 60
    print(f"\nscoring, {model.name} (efficientnet_lite0 + logistic regression), batch 32, "
          f"{describe_load(load_start, load_end)}")
    print(f"command: {command_line()}")
    print(f"\nend to end (read -> predict_proba -> partition) vs bare forward, {len(table)} chips, "
          f"partitions of {args.chips_per_partition}, median of {args.repeats} alternating pair(s):")
    print(f"{'workers':>7} {'torch thr':>9} {'bare/s':>7} {'e2e/s':>7} {'wall ratio':>10} {'bare/CPU-s':>10} "
          f"{'e2e/CPU-s':>10} {'CPU ratio':>9} {'workers CPU':>11} {'vs 85%':>7}")
    for row in ratios:
        verdict = "met" if min(row["ratio"], row["ratio_cpu"]) >= TARGET else (
            "met/CPU" if row["ratio_cpu"] >= TARGET else "MISSED")
        print(f"{row['workers']:>7} {row['torch_threads']:>9} {row['bare']:>7.1f} {row['e2e']:>7.1f} "
              f"{pct(row['ratio']):>10} {row['bare_cpu']:>10.1f} {row['e2e_cpu']:>10.1f} {pct(row['ratio_cpu']):>9} "
              f"{pct(row['ratio_workers_cpu']):>11} {verdict:>7}")
    a = area
    print(f"\narea run: {a['chips']} chips from {len(scenes)} distinct scenes on {a['workers']} workers: "
          f"{a['e2e']:.1f} chips/s end to end vs bare {a['bare']:.1f} chips/s (before {a['bare_before']:.1f}, "
          f"after {a['bare_after']:.1f}): {pct(a['e2e'] / a['bare'])}; per CPU-second {a['e2e_cpu']:.1f} vs "
          f"{a['bare_cpu']:.1f}: {pct(a['e2e_cpu'] / a['bare_cpu'])} (workers alone "
          f"{pct(a['e2e_workers_cpu'] / a['bare_cpu'])})")
    flat = a["rss_all"] <= 1.1 * a["rss_small"]
    print(f"worker peak RSS: {a['rss_small']:.0f} MB by {a['small']} chips, {a['rss_all']:.0f} MB by "
          f"{a['chips']} chips ({'flat' if flat else 'GROWS'}; ru_maxrss {a['ru_maxrss']:.0f} MB, "
          f"{a['samples']} samples)")
    print("worker peak RSS by chips done: " + ", ".join(f"{done}: {rss:.0f} MB" for done, rss in a["rss_curve"]))
    print(f"pipeline stages: tiling {tiled / tile_seconds:.0f} chips/s, cluster start {a['cluster_seconds']:.1f} s, "
          f"scoring {a['seconds']:.0f} s, predictions + maps {a['finish_seconds']:.1f} s")
    print(f"county projection ({COUNTY_CHIPS} chips) on this machine at this load: {county_minutes:.0f} minutes; "
          f"with the machine to itself (scoring at its CPU cost on all {cores} cores): {idle_minutes:.0f} minutes")
    if args.json:
        args.json.write_text(json.dumps({"load_start": load_start, "load_end": load_end, "ratios": ratios,
                                         "area": area, "tile_seconds": tile_seconds, "tiled": tiled,
                                         "county_minutes": county_minutes, "idle_minutes": idle_minutes,
                                         "command": command_line()},
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
