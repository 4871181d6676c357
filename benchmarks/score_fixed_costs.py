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
* **memory of one scoring process**, step by step (``/proc/self/smaps_rollup`` in a fresh interpreter: imports,
  model load, network, two partitions of 256 chips scored as a worker scores them, one torch thread), on torch
  and on OpenVINO, with and without the glibc malloc tunables workers run with (``--memory-only``: this alone, as
  it takes minutes);
* **whole command**: ``geoclf score`` as a user runs it (a subprocess): the default (``--scheduler auto``), a
  LocalCluster whose workers start while the client loads the model and which closes while the maps are written,
  the same LocalCluster started and closed around the partitions only (``geoclf.score.OVERLAP_CLUSTER = False``),
  and OpenVINO in-process; alternating (ABBA); wall and CPU seconds and the peak memory of the whole process tree
  (client + workers).

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

from common import (
    REPO,
    cached_scene,
    command_line,
    default_work_dir,
    describe_load,
    log,
    machine_load,
    run_tree,
    train_scoring_model,
)

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
    return train_scoring_model(work, naip, nlcd, f"fixed-model-{naip.parent.name}", per_class)


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


def raster_costs(naip: Path, repeats: int) -> dict[str, float]:
    """What the client pays per raster around the scoring: the nodata-mask question (first call in a fresh
    interpreter, then answered from the process's cache) and the page's imagery layers, natural colour and
    colour infrared, read in one pass (``imagery_images``) against one read per layer, alternating."""
    setup = f"import rasterio\nfrom tiling.io import nodata_mask\nds = rasterio.open({str(naip)!r})"
    # what nodata_mask read before it sampled windows: a 64 x 64 decimated read of the band (last one here)
    decimated = "ds.read(ds.count, out_shape=(min(ds.height, 64), min(ds.width, 64)))"
    rows = {"64 x 64 decimated read of one band (the former mask test)": median_of(
                repeats, lambda: fresh_seconds(decimated, setup)),
            "nodata_mask, first call": median_of(repeats, lambda: fresh_seconds("nodata_mask(ds)", setup)),
            "nodata_mask, again (cached)": median_of(
                repeats, lambda: fresh_seconds("nodata_mask(ds)", setup + "\nnodata_mask(ds)"))}
    from geoclf.webmap import CIR_BANDS, RGB_BANDS, imagery_image, imagery_images

    times: dict[str, list[float]] = {"page imagery, both layers in one pass": [],
                                     "page imagery, one read per layer": []}
    for _ in range(repeats):
        began = time.perf_counter()
        imagery_images([str(naip)], band_sets=(RGB_BANDS, CIR_BANDS))
        times["page imagery, both layers in one pass"].append(time.perf_counter() - began)
        began = time.perf_counter()
        for bands in (RGB_BANDS, CIR_BANDS):
            imagery_image([str(naip)], bands=bands)
        times["page imagery, one read per layer"].append(time.perf_counter() - began)
    rows.update({name: statistics.median(values) for name, values in times.items()})
    for name, seconds in rows.items():
        log(f"{name}: {seconds:.2f} s")
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


#: Runs ``geoclf score`` with the LocalCluster started and closed around the partitions only (as before the
#: overlap): the reference of the overlapped start and close, in the same run.
NO_OVERLAP = ("import sys\nimport geoclf.score\ngeoclf.score.OVERLAP_CLUSTER = False\n"
              "from geoclf.cli import main\nmain(sys.argv[1:])\n")

#: The whole-command variants: name -> (options, run without the overlap).
VARIANTS: dict[str, tuple[list[str], bool]] = {
    "geoclf score (default: --scheduler auto)": ([], False),
    "geoclf score --scheduler local (workers start while the client loads, close beside the maps)":
        (["--scheduler", "local"], False),
    "geoclf score --scheduler local, cluster around the partitions only": (["--scheduler", "local"], True),
    "geoclf score --runtime openvino --scheduler sync": (["--runtime", "openvino", "--scheduler", "sync"], False),
}
OVERLAPPED, AROUND = list(VARIANTS)[1:3]


def run_command(model_dir: Path, naip: Path, out: Path, extra: list[str], no_overlap: bool) -> dict[str, Any]:
    """``geoclf score`` as a subprocess into a fresh output: wall and CPU seconds, peak memory of its process
    tree (client + workers, summed resident memory; ``common.run_tree``)."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "GEOCLF_DASHBOARD": "off"}
    env.pop("GLIBC_TUNABLES", None)  # as a user's shell has it: the command sets its own
    entry = ["-c", NO_OVERLAP] if no_overlap else ["-m", "geoclf"]
    out.parent.mkdir(parents=True, exist_ok=True)
    return run_tree([sys.executable, *entry, "score", "--model", str(model_dir), "--naip", str(naip), "--out",
                     str(out), *extra], env, out.parent)


#: One scoring process, step by step (run in a fresh interpreter by :func:`memory_steps`): what it holds after
#: each step, and its peak.
MEMORY_PROBE = """
import json, resource, sys
def roll():
    fields = {}
    for line in open("/proc/self/smaps_rollup"):
        parts = line.split()
        if parts[0] in ("Rss:", "Anonymous:"):
            fields[parts[0][:-1]] = int(parts[1]) / 1024
    return fields
model_dir, index_path, runtime = sys.argv[1:4]
steps = {"python": roll()}
import pandas as pd
import tiling
from geoclf.score import ScoreTask
from geoclf.models import load_model
steps["import geoclf.score"] = roll()
model = load_model(model_dir)
steps["load_model (classifier)"] = roll()
model.use_runtime(runtime, "auto", 1).prepare()
steps["network ready (" + runtime + ")"] = roll()
table = pd.DataFrame(tiling.read_index(index_path).drop(columns="geometry")).sort_values("chip_id")
task = ScoreTask(model_dir=model_dir, batch_size=32, torch_threads=1, runtime=runtime, loaded=model)
for i in range(2):
    task(table.iloc[i * 256:(i + 1) * 256])
    steps["partition %d scored (256 chips)" % (i + 1)] = roll()
steps["peak"] = {"Rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
steps["torch imported"] = "torch" in sys.modules
print(json.dumps(steps))
"""


def memory_steps(model_dir: Path, index: Path, runtime: str, tunables: bool) -> dict[str, Any]:
    """:data:`MEMORY_PROBE` in a fresh interpreter: resident and anonymous MB after each step, and the peak."""
    from tiling.parallel import WORKER_GLIBC_TUNABLES

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("GLIBC_TUNABLES", None)
    if tunables:
        env["GLIBC_TUNABLES"] = WORKER_GLIBC_TUNABLES
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(model_dir), str(index), runtime],
                          capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_table(model_dir: Path, index: Path) -> dict[str, dict[str, Any]]:
    """The memory probe on torch and OpenVINO, with and without the tunables; printed as one table."""
    from geoclf.export import export_model

    export_model(model_dir)  # once (kept when valid)
    runs = {f"{runtime}, {'tunables' if tunables else 'no tunables'}": memory_steps(model_dir, index, runtime,
                                                                                       tunables)
            for runtime in ("torch", "openvino") for tunables in (True, False)}
    names = list(runs)
    print("\n| step (RSS / anonymous MB) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    steps = [key for key in next(iter(runs.values())) if key != "torch imported"]
    for step in steps:
        cells = []
        for name in names:
            row = next((v for k, v in runs[name].items() if k.split(" (")[0] == step.split(" (")[0]), {})
            cells.append(" / ".join(f"{row[f]:.0f}" for f in ("Rss", "Anonymous") if f in row))
        print(f"| {step.split(' (')[0]} | " + " | ".join(cells) + " |")
    print("| torch imported | " + " | ".join(str(runs[name]["torch imported"]) for name in names) + " |")
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=900, help="chips of the area (a square scene)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds of the whole command")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--skip-command", action="store_true", help="leave out the whole-command runs")
    parser.add_argument("--imports-only", action="store_true", help="measure the imports only")
    parser.add_argument("--memory-only", action="store_true", help="measure one scoring process's memory only")
    parser.add_argument("--raster", type=Path, default=None,
                        help="measure the per-raster client costs (nodata mask, page imagery) of this raster only "
                             "(e.g. one without overviews, as many NAIP downloads come)")
    args = parser.parse_args()
    work = (args.work or default_work_dir()).expanduser()
    start = machine_load()
    rows: dict[str, float] = {}
    if args.raster is not None:
        rows.update(raster_costs(args.raster, args.repeats))
        print_rows(start, rows)
        return 0
    for name, code in IMPORTS.items() if not args.memory_only else ():
        rows[f"import {name}"] = median_of(args.repeats, lambda code=code: fresh_seconds(code))
        log(f"import {name}: {rows[f'import {name}']:.2f} s")
    if not args.memory_only:
        rows.update(skops_import_costs(args.repeats))
    if args.imports_only:
        print_rows(start, rows)
        return 0
    side = math.isqrt(args.chips)
    naip, nlcd = cached_scene(work, side * 224.0)
    model_dir = scoring_model(work, naip, nlcd)
    setup = "from geoclf.models import load_model"
    if not args.memory_only:
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
    if args.memory_only:
        print(f"\n{command_line()}")
        memory = memory_table(model_dir, work / "fixed-tiles")
        print(f"\n{describe_load(start, machine_load())}")
        (work / "fixed-memory.json").write_text(json.dumps(memory, indent=2))
        return 0
    rows.update(cluster_costs(args.workers, model_dir, table, args.repeats))
    sizes = [len(p) for p in split_partitions(table, 512)]
    log(f"partitions of {len(table)} chips at 512: {sizes}")

    rounds: list[dict[str, float]] = []
    if not args.skip_command:
        from geoclf.export import export_model

        export_model(model_dir)  # once; torch runs ignore it
        names = list(VARIANTS)
        for r in range(args.rounds):
            result = {}
            for name in names if r % 2 == 0 else names[::-1]:
                extra, no_overlap = VARIANTS[name]
                result[name] = run_command(model_dir, naip, work / "fixed-out", extra, no_overlap)
                log(f"{name}: {result[name]['seconds']:.1f} s, peak {result[name]['peak_mb']:.0f} MB")
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
        print("\n| whole command | seconds (median) | chips/s | range | CPU s | peak MB (client + workers) |")
        print("|---|---|---|---|---|---|")
        for name in rounds[0]:
            values = [rd[name]["seconds"] for rd in rounds]
            med = statistics.median(values)
            cpu = statistics.median(rd[name]["cpu"] for rd in rounds)
            peak = max(rd[name]["peak_mb"] for rd in rounds)
            print(f"| {name} | {med:.1f} | {len(table) / med:.1f} | {min(values):.1f}-{max(values):.1f} | "
                  f"{cpu:.1f} | {peak:.0f} |")
        ratios = ", ".join(f"{rd[AROUND]['seconds'] / rd[OVERLAPPED]['seconds']:.2f}x" for rd in rounds)
        print(f"\nLocalCluster around the partitions only / overlapped, per round: {ratios}")
    for rd in rounds:
        for value in rd.values():
            value.pop("stdout", None)
    (work / "fixed-costs.json").write_text(json.dumps({"load": [start, end], "rows": rows, "rounds": rounds,
                                                       "partitions": sizes}, indent=2))
    return 0


def model_classes(predictions: Any) -> Any:
    from geoclf.landuse import classes_of

    return classes_of(predictions)


if __name__ == "__main__":
    sys.exit(main())
