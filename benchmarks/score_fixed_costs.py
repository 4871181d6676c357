"""Benchmark: the fixed costs of a whole ``geoclf score`` command, each measured on its own.

Issue 17 profiled a default ``geoclf score`` of 900 chips at 36 s wall where the forward pass needs 15.7 s.
This script measures each fixed cost separately, so a fix shows as one line getting shorter:

* **imports**, each in a fresh interpreter (median of ``--repeats``): ``geoclf.cli`` (what every command pays),
  ``skops.io`` (which calls scikit-learn's ``all_estimators()``), torch, torchvision, OpenVINO; and skops.io as
  skops imports itself against geoclf's import of it with the recorded estimator names, alternating
  (``--imports-only`` stops there);
* **model artifact**: ``geoclf.models.load_model`` of the scoring model in a fresh interpreter (skops import
  and classifier load), then ``prepare()`` (the network built and checked), as a client and every fresh worker
  pay them;
* **LocalCluster** of ``--workers`` workers: start (until every worker is up), and close;
* **worker's first task**: a one-batch ``ScoreTask`` on a fresh cluster (the model loaded in each worker)
  against the same task again (model cached): the difference is the per-worker model load on the critical path;
* **tiling** the area on the model's grid (as ``score(naip=...)`` does, on the client) and **maps** (``write_maps``
  on the predictions);
* **partitions**: the partition sizes ``score`` cuts ``--chips`` chips into, and how long the last one runs alone;
* **whole command**: ``geoclf score`` as a user runs it (a subprocess), default LocalCluster vs
  ``--scheduler sync``, each on torch and on ``--runtime openvino`` (the model exported once), alternating (ABBA).

The area is a synthetic scene of about ``--chips`` chips of 224 m (rendered once into the work directory),
the model a logistic regression on EfficientNet-Lite0 features trained once on chips of that scene.

Run: ``.venv/bin/python benchmarks/score_fixed_costs.py [--chips 900] [--repeats 3] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import REPO, cached_scene, command_line, default_work_dir, describe_load, log, machine_load

IMPORTS = {
    "geoclf.cli": "import geoclf.cli",
    "skops.io": "import skops.io",
    "torch": "import torch",
    "torchvision": "import torchvision",
    "openvino": "import openvino",
}


def fresh_seconds(code: str, setup: str = "") -> float:
    """Seconds ``code`` takes in a fresh interpreter (after ``setup``, not timed)."""
    program = (f"{setup}\nimport time\n_t = time.perf_counter()\n{code}\n"
               "print('SECONDS', time.perf_counter() - _t)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return float(done.stdout.strip().splitlines()[-1].split()[1])


def scoring_model(work: Path, naip: Path, nlcd: Path, per_class: int = 20) -> Path:
    """A ``features`` model (EfficientNet-Lite0 + logistic regression) trained once on chips of the scene."""
    import tiling
    from geoclf.classifiers import train_classifier
    from geoclf.features import featurize

    out = work / f"fixed-model-{naip.parent.name}"
    if (out / "model.json").exists():
        return out
    log("training the scoring model once")
    train = work / "fixed-model-training"
    shutil.rmtree(train, ignore_errors=True)
    index = tiling.tile([naip], nlcd, params=tiling.TileParams(), progress=False)
    subset = index.groupby(["label", "split"], group_keys=False).head(per_class)
    subset.attrs = index.attrs
    tiling.write_index(subset, train / "chips" / "chips.parquet")
    featurize(train / "chips", train / "features", scheduler="sync", record_run=False, progress=False)
    result = train_classifier(train / "features", "logistic_regression", runs_dir=train / "runs")
    shutil.copytree(result.artifact_dir, out)
    return out


#: The classifier's reader, after ``geoclf.artifact`` (not timed): skops' own import, which walks every
#: scikit-learn estimator, against geoclf's, which gives skops the recorded names (geoclf.artifact.import_skops_io).
SKOPS_IMPORTS = {
    "skops.io, skops' own import (all_estimators walk)": "import skops.io",
    "skops.io through geoclf (recorded estimator names)": "import_skops_io()",
}


def skops_import_costs(repeats: int) -> dict[str, float]:
    """Both ways of importing skops.io, alternating (ABAB...) in fresh interpreters: medians, and their ratio."""
    times: dict[str, list[float]] = {name: [] for name in SKOPS_IMPORTS}
    for _ in range(repeats):
        for name, code in SKOPS_IMPORTS.items():
            times[name].append(fresh_seconds(code, "from geoclf.artifact import import_skops_io"))
    rows = {name: statistics.median(values) for name, values in times.items()}
    own, ours = rows.values()
    log(f"skops.io: {own:.2f} s own import, {ours:.2f} s through geoclf ({own / ours:.2f}x)")
    return rows


def print_rows(start: Any, rows: dict[str, float]) -> None:
    print(f"\n{command_line()}")
    print(f"{describe_load(start, machine_load())}\n")
    print("| fixed cost | seconds |")
    print("|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.2f} |")


def median_of(repeats: int, measure: Any) -> float:
    return statistics.median(measure() for _ in range(repeats))


def cluster_costs(workers: int, model_dir: Path, table: Any, repeats: int) -> dict[str, float]:
    """LocalCluster start and close, and the first task of a fresh cluster against the same task again."""
    from geoclf.score import ScoreTask
    from tiling.parallel import dask_client

    starts, closes, firsts, seconds = [], [], [], []
    part = table.iloc[:32]
    task = ScoreTask(model_dir=str(model_dir), batch_size=32, torch_threads=1)
    for _ in range(repeats):
        started = time.perf_counter()
        context = dask_client(None, n_workers=workers)
        client = context.__enter__()
        try:
            client.wait_for_workers(workers)
            starts.append(time.perf_counter() - started)
            names = sorted(client.scheduler_info()["workers"])
            for attempt in (firsts, seconds):
                began = time.perf_counter()
                futures = [client.submit(task, part, workers=[w], pure=False) for w in names]
                client.gather(futures)
                attempt.append(time.perf_counter() - began)
        finally:
            began = time.perf_counter()
            context.__exit__(None, None, None)
            closes.append(time.perf_counter() - began)
    return {"cluster start": statistics.median(starts), "cluster close": statistics.median(closes),
            "first task (model load in each worker)": statistics.median(firsts),
            "same task again (model cached)": statistics.median(seconds)}


def command_seconds(model_dir: Path, naip: Path, out: Path, extra: list[str]) -> float:
    """Wall time of ``geoclf score`` as a subprocess, into a fresh output directory."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "GEOCLF_DASHBOARD": "off"}
    env.pop("GLIBC_TUNABLES", None)  # as a user's shell has it: the command sets its own
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "geoclf", "score", "--model", str(model_dir), "--naip", str(naip),
                           "--out", str(out), *extra], capture_output=True, text=True, env=env,
                          timeout=3600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"geoclf score {' '.join(extra)} failed: {done.stderr[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=900, help="chips of the area (a square scene)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds of the whole command")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--skip-command", action="store_true", help="leave out the whole-command runs")
    parser.add_argument("--imports-only", action="store_true", help="measure the imports only")
    args = parser.parse_args()
    work = (args.work or default_work_dir()).expanduser()
    start = machine_load()
    rows: dict[str, float] = {}
    for name, code in IMPORTS.items():
        rows[f"import {name}"] = median_of(args.repeats, lambda code=code: fresh_seconds(code))
        log(f"import {name}: {rows[f'import {name}']:.2f} s")
    rows.update(skops_import_costs(args.repeats))
    if args.imports_only:
        print_rows(start, rows)
        return 0
    side = math.isqrt(args.chips)
    naip, nlcd = cached_scene(work, side * 224.0)
    model_dir = scoring_model(work, naip, nlcd)
    setup = "from geoclf.models import load_model"
    rows["load model artifact (client)"] = median_of(
        args.repeats, lambda: fresh_seconds(f"load_model({str(model_dir)!r})", setup))
    rows["load + prepare (network built)"] = median_of(
        args.repeats, lambda: fresh_seconds(f"load_model({str(model_dir)!r}).prepare()", setup))

    import tiling
    from geoclf.maps import write_maps
    from geoclf.models import load_model
    from geoclf.partitions import split_partitions

    model = load_model(model_dir)
    began = time.perf_counter()
    index = tiling.tile([naip], None, work / "fixed-tiles", params=tiling.TileParams(
        chip_size=model.chip_size, chip_size_m=model.chip_size_m), scheduler="sync", progress=False)
    rows["tiling the area (client)"] = time.perf_counter() - began
    import pandas as pd

    table = pd.DataFrame(index.drop(columns="geometry"))
    rows.update(cluster_costs(args.workers, model_dir, table, args.repeats))
    sizes = [len(p) for p in split_partitions(table, 512)]
    log(f"partitions of {len(table)} chips at 512: {sizes}")

    rounds: list[dict[str, float]] = []
    if not args.skip_command:
        from geoclf.export import export_model

        export_model(model_dir)  # once; torch runs ignore it
        variants = {"geoclf score (LocalCluster)": [], "geoclf score --scheduler sync": ["--scheduler", "sync"],
                    "geoclf score --runtime openvino (LocalCluster)": ["--runtime", "openvino"],
                    "geoclf score --runtime openvino --scheduler sync": ["--runtime", "openvino", "--scheduler",
                                                                         "sync"]}
        names = list(variants)
        for r in range(args.rounds):
            result = {}
            for name in names if r % 2 == 0 else names[::-1]:
                result[name] = command_seconds(model_dir, naip, work / "fixed-out", variants[name])
                log(f"{name}: {result[name]:.1f} s")
            rounds.append(result)
        out = work / "fixed-out"
        from geoclf.landuse import read_predictions

        predictions = read_predictions(out)
        began = time.perf_counter()
        write_maps(predictions, model_classes(predictions), work / "fixed-maps")
        rows["maps (write_maps)"] = time.perf_counter() - began
    end = machine_load()
    print(f"\n{command_line()}")
    print(f"{describe_load(start, end)}; {len(table)} chips, partitions of 512: {sizes}\n")
    print("| fixed cost | seconds |")
    print("|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.2f} |")
    if rounds:
        print("\n| whole command | seconds (median) | chips/s | range |")
        print("|---|---|---|---|")
        for name in rounds[0]:
            values = [rd[name] for rd in rounds]
            med = statistics.median(values)
            print(f"| {name} | {med:.1f} | {len(table) / med:.1f} | {min(values):.1f}-{max(values):.1f} |")
    (work / "fixed-costs.json").write_text(json.dumps({"load": [start, end], "rows": rows, "rounds": rounds,
                                                       "partitions": sizes}, indent=2))
    return 0


def model_classes(predictions: Any) -> Any:
    from geoclf.landuse import classes_of

    return classes_of(predictions)


if __name__ == "__main__":
    sys.exit(main())
