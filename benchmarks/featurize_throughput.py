"""Benchmark: featurization throughput end to end vs the same model's bare forward pass, per backbone.

For each backbone and for 1 and 2 worker processes (a LocalCluster made as the library makes one),
alternating ``--repeats`` times in the same workers:

* **bare**: the backbone's feature extractor — the very network object the featurization task uses, taken
  from the worker's model cache — on a random ``(32, 3, 224, 224)`` channels_last batch under
  ``torch.inference_mode``, with the torch thread count :func:`geoclf.features.featurize` gives a
  LocalCluster of that size, on every worker at once;
* **end to end**: :class:`geoclf.features.FeaturizeTask` (what :func:`geoclf.features.featurize` runs) over
  chips of a 10,000 x 10,000 px synthetic scene's index through :func:`geoclf.partitions.run_partitions`:
  4-band windows read from the GeoTIFF (one batch ahead, in a thread), normalized, forward pass, NIR
  statistics, Parquet partitions written atomically. Dask scheduling and the partition tail are inside the
  clock; cluster start-up and the one-off model load are not (both are per run, not per chip).

The chip count of each end-to-end measurement is sized from the bare rate to last about ``--seconds``
(two partitions per worker), so slow and fast backbones get comparable clocks. The ratio of each
(bare, end-to-end) pair is taken and the median pair reported. Target: end to end >= 85% of bare.

Run: ``.venv/bin/python benchmarks/featurize_throughput.py [--backbones ...] [--repeats 2] [--seconds 60]``.
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
)

SCENE_M = 10_000.0
TARGET = 0.85
#: Backbones available offline: real ImageNet weights for the first two, random weights (same compute) else.
BACKBONES = {"efficientnet_lite0": "default", "mobilenet_v2": "default", "resnet18": "none", "alexnet": "none",
             "resnet50": "none"}


def chip_table(work: Path) -> Any:
    """Every chip of the cached scene with data (labels kept, purity not filtered), as featurize reads it."""
    import tiling
    from geoclf.features import load_chip_table

    naip, nlcd = cached_scene(work, SCENE_M)
    folder = work / "featurize" / "chips"
    if not (folder / "chips.parquet").exists():
        tiling.tile([naip], nlcd, folder, params=tiling.TileParams(min_purity=0.0), progress=False)
    table, _ = load_chip_table(folder)
    return table


def _extractor(backbone: str, weights: str, threads: int) -> Any:
    """The network ``FeaturizeTask`` runs, from the worker's model cache (so both measurements share it)."""
    from geoclf.featurizers import make_featurizer
    from geoclf.partitions import worker_model

    featurizer = make_featurizer(backbone, weights, device="cpu")
    return worker_model(featurizer.key, featurizer.load, threads).network()


def measure(client: Any, table: Any, out: Path, backbone: str, weights: str, workers: int,
            args: argparse.Namespace) -> dict[str, Any]:
    """Alternating bare / end-to-end measurements of one backbone on one cluster."""
    from geoclf.features import FeaturizeTask
    from geoclf.featurizers import make_featurizer
    from geoclf.partitions import run_partitions

    threads = torch_threads_for(workers)
    task = FeaturizeTask(make_featurizer(backbone, weights, device="cpu"), batch_size=32, torch_threads=threads)
    pairs = []
    chips = 0
    for repeat in range(args.repeats):
        results = on_each_worker(client, bare_forward, lambda: _extractor(backbone, weights, threads), threads,
                                 args.bare_batches)
        bare, bare_cpu = timed_rate(results), cpu_rate(results)
        if not chips:  # size the end-to-end clock from the first bare rate: ~--seconds, 2 partitions per worker
            per_partition = 32 * max(1, math.ceil(bare * args.seconds / (2 * workers) / 32))
            chips = min(len(table), 2 * workers * per_partition)
        shutil.rmtree(out, ignore_errors=True)
        (own, cpu), started = cpu_split(client), time.perf_counter()
        run_partitions(table.head(chips), out, task, settings={"bench": repeat}, chips_per_partition=per_partition,
                       scheduler=client, desc="featurizing", progress=False)
        seconds, (own_after, cpu_after) = time.perf_counter() - started, cpu_split(client)
        e2e, e2e_cpu = chips / seconds, chips / (own_after - own + cpu_after - cpu)
        e2e_workers = chips / (cpu_after - cpu)
        pairs.append((bare, e2e, bare_cpu, e2e_cpu, e2e_workers))
        log(f"{backbone}, {workers} worker(s), repeat {repeat + 1}: bare {bare:.1f} chips/s ({bare_cpu:.1f}/CPU-s), "
            f"end to end {e2e:.1f} chips/s ({e2e_cpu:.1f}/CPU-s, workers alone {e2e_workers:.1f}) over {chips} "
            f"chips: {pct(e2e / bare)} wall, {pct(e2e_cpu / bare_cpu)} CPU, {pct(e2e_workers / bare_cpu)} workers' CPU")
    return {"backbone": backbone, "weights": weights, "workers": workers, "torch_threads": threads, "chips": chips,
            "per_partition": per_partition, "bare": median([p[0] for p in pairs]),
            "e2e": median([p[1] for p in pairs]), "ratio": median([p[1] / p[0] for p in pairs]),
            "bare_cpu": median([p[2] for p in pairs]), "e2e_cpu": median([p[3] for p in pairs]),
            "ratio_cpu": median([p[3] / p[2] for p in pairs]),
            "ratio_workers_cpu": median([p[4] / p[2] for p in pairs]), "pairs": pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0, help="aimed length of each end-to-end measurement")
    parser.add_argument("--bare-batches", type=int, default=3, help="timed batches of 32 per bare measurement")
    parser.add_argument("--work", type=Path, default=default_work_dir(), help="cache of the synthetic scene")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    load_start = machine_load()
    table = chip_table(args.work)
    rows = []
    for workers in args.workers:
        with local_cluster(workers) as client:
            for backbone in args.backbones:
                rows.append(measure(client, table, args.work / "featurize" / "out", backbone, BACKBONES[backbone],
                                    workers, args))
    load_end = machine_load()
    print(f"\nfeaturization, batch 32, channels_last, median of {args.repeats} alternating pair(s), "
          f"{describe_load(load_start, load_end)}")
    print(f"command: {command_line()}")
    print("wall: chips/s; CPU: chips per CPU-second of the workers (+ this process, the client, for end to end); "
          "workers' CPU: the same without the client")
    print(f"{'backbone':<19} {'weights':<8} {'workers':>7} {'torch thr':>9} {'chips':>6} {'bare/s':>7} {'e2e/s':>7} "
          f"{'wall ratio':>10} {'bare/CPU-s':>10} {'e2e/CPU-s':>10} {'CPU ratio':>9} {'workers CPU':>11} {'vs 85%':>7}")
    for row in sorted(rows, key=lambda r: (list(BACKBONES).index(r["backbone"]), r["workers"])):
        verdict = "met" if min(row["ratio"], row["ratio_cpu"]) >= TARGET else (
            "met/CPU" if row["ratio_cpu"] >= TARGET else "MISSED")
        print(f"{row['backbone']:<19} {row['weights']:<8} {row['workers']:>7} {row['torch_threads']:>9} "
              f"{row['chips']:>6} {row['bare']:>7.1f} {row['e2e']:>7.1f} {pct(row['ratio']):>10} "
              f"{row['bare_cpu']:>10.1f} {row['e2e_cpu']:>10.1f} {pct(row['ratio_cpu']):>9} "
              f"{pct(row['ratio_workers_cpu']):>11} {verdict:>7}")
    if args.json:
        args.json.write_text(json.dumps({"load_start": load_start, "load_end": load_end, "rows": rows,
                                         "command": command_line()}, indent=2, default=str))


if __name__ == "__main__":
    main()
