"""Benchmark: a sweep of 8 fits on 1 vs 2 worker processes, and the bytes sent to workers per fit.

Run: ``.venv/bin/python benchmarks/sweep_speedup.py [--chips 6000] [--dim 256]``. Prints the wall time of
the fits on each cluster (cluster start-up excluded: both clusters are started first), the speed-up, and
what went over the network: the features once (scattered), then per fit only its parameters. Bytes
received by the workers are read from Dask's own counters, so the "once" is measured, not assumed.

The fits are random forests on features like a CNN's (Gaussian class clusters), long enough (seconds)
that the fixed costs of a task are small beside them. Recording runs (MLflow, artifacts) happens on the
client as results arrive, overlapping the fits still running; it is part of the wall time measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geoclf import runs
from geoclf.sweep import run_sweep
from tiling.parallel import worker_environment

CLASSES = ["Developed", "Forest", "Herbaceous", "Cultivated"]


def write_features(out: Path, n: int, dim: int, seed: int = 0) -> Path:
    """A features directory in the documented format (docs/architecture.md): noisy class clusters."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, len(CLASSES), n)
    x = (rng.normal(0, 0.6, (len(CLASSES), dim))[codes] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    out.mkdir(parents=True)
    pq.write_table(pa.table({
        "chip_id": pa.array([f"s:{i}_0" for i in range(n)], pa.string()),
        "label": pa.array(np.asarray(CLASSES, dtype=object)[codes].tolist(), pa.string()),
        "split": pa.array(np.where(rng.random(n) < 0.25, "val", "train").tolist(), pa.string()),
        "features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim),
    }), out / "part-00000.parquet")
    (out / "features.json").write_text(json.dumps({
        "backbone": "efficientnet_lite0", "weights": "default", "feature_layer": "pool", "feature_dim": dim,
        "bands": [1, 2, 3], "mean": [0.5] * 3, "std": [0.5] * 3, "chip_size": 224, "chips": n,
        "source": {"kind": "index", "path": str(out / "chips.parquet"), "sha256": "bench"}}))
    return out


def peer_bytes(client: Any) -> int:
    """Bytes workers sent each other (Dask's counters); what the client scatters is counted by the sweep."""
    def count(dask_worker: Any) -> int:
        return int(dask_worker.transfer_outgoing_bytes_total)

    return sum(client.run(count).values())


def fits_only(client: Any, feats: Path, trees: int, space: dict[str, list[Any]]) -> float:
    """Wall time of the sweep's fit tasks alone (features scattered, results gathered, nothing recorded)."""
    from geoclf.classifiers import load_features
    from geoclf.sweep import FitData, fit_one, grid

    data = load_features(feats)
    x_train, y_train = data.split("train")
    x_val, _ = data.split("val")
    future = client.scatter(FitData(x_train, y_train, x_val), broadcast=True, hash=False)
    combos = grid({"n_estimators": [trees], **space})
    started = time.perf_counter()
    client.gather([client.submit(fit_one, future, i, "random_forest", p, 0, None, pure=False)
                   for i, p in enumerate(combos)])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=6000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--trees", type=int, default=30)
    args = parser.parse_args()

    import dask
    from distributed import Client, LocalCluster, get_task_stream

    space = {"max_depth": [8, 16, None, 24], "max_features": ["sqrt", 0.1]}  # 8 fits
    with tempfile.TemporaryDirectory(prefix="geoclf-bench-") as tmp:
        feats = write_features(Path(tmp) / "feats", args.chips, args.dim)
        runs_dir = Path(tmp) / "history"
        runs.mlflow_client(runs_dir)  # create the database before timing
        # warm the client: imports (skops, matplotlib) and the first recorded run are not the sweep's cost
        run_sweep(feats, "random_forest", {"n_estimators": [5]}, name="warm-up", scheduler="sync",
                  runs_dir=runs_dir, progress=False)
        results = {}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment()}):
            for workers in (1, 2):
                with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, Client(cluster) as client:
                    client.run(lambda: __import__("sklearn.ensemble") and __import__("geoclf.sweep"))
                    before = peer_bytes(client)
                    load = os.getloadavg()[0]
                    started = time.perf_counter()
                    with get_task_stream(client) as stream:
                        result = run_sweep(feats, "random_forest", {"n_estimators": [args.trees], **space},
                                           name=f"bench-{workers}w", scheduler=client, runs_dir=runs_dir,
                                           progress=False)
                    wall = time.perf_counter() - started
                    per_worker = Counter(t["worker"] for t in stream.data if t["key"].startswith("fit_one"))
                    compute = fits_only(client, feats, args.trees, space)
                    results[workers] = (wall, result, peer_bytes(client) - before, sorted(per_worker.values()),
                                        load, compute)
    (t1, r1, _, _, load1, c1), (t2, r2, peer2, spread2, load2, c2) = results[1], results[2]
    fits = len(r1.fits)
    print(f"sweep of {fits} random-forest fits ({args.trees} trees) on {args.chips} chips x {args.dim} features, "
          f"{os.cpu_count()} cores")
    print(f"  1 worker process : {t1:6.1f} s   (load average at start {load1:.1f})")
    print(f"  2 worker processes: {t2:6.1f} s   (load average at start {load2:.1f}), fits per worker {spread2}")
    print(f"  speed-up {t1 / t2:.2f}x  (meaningful only on an otherwise idle machine: load average below 1)")
    print(f"  the fits alone (same tasks, no run recording): {c1:.1f} s vs {c2:.1f} s, speed-up {c1 / c2:.2f}x")
    print(f"  fit time summed over fits: {r1.fits['fit_seconds'].sum():.1f} s (1 worker), "
          f"{r2.fits['fit_seconds'].sum():.1f} s (2 workers)")
    features = r1.data_bytes  # one copy, on the single worker
    total = r2.data_bytes + peer2 + r2.task_bytes * fits
    print(f"  features: {features / 1e6:.2f} MB; sent to 2 workers: {r2.data_bytes / 1e6:.2f} MB (one copy each), "
          f"between workers: {peer2 / 1e6:.2f} MB")
    print(f"  task arguments per fit: {r2.task_bytes:.0f} bytes")
    print(f"  bytes sent to workers per fit (2 workers): {total / fits / 1e6:.3f} MB "
          f"(shipping the features with every fit would be {features / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
