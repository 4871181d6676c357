"""Benchmark: a whole ``geoclf score`` against torchgeo classifying the same raster chip by chip, side by side.

Issue 17's "Done when". Both sides run as a user runs them, one process tree each, timed from the start of the
process to its files written:

* **torchgeo**: ``benchmarks/torchgeo_predict.py`` in torchgeo's own virtual environment (``NAIP`` dataset +
  ``GridGeoSampler`` + ``DataLoader`` + ResNet-18 forward + predictions written as CSV and a class GeoTIFF).
  The environment is created once with ``python -m venv`` and ``pip install torch==<geoclf's> torchvision==<geoclf's>
  torchgeo psutil requests`` (torchgeo 0.8.1 imports requests without declaring it; cached, default
  ``<work>/torchgeo-venv``; no site packages shared with geoclf's environment, so the comparison is reproducible);
  when that fails the torchgeo rows are skipped with the reason;
* **geoclf**: ``geoclf score --model M --naip RASTER --out DIR`` with the default scheduler (``auto``: in-process on
  2 cores), on torch and on ``--runtime openvino`` (the model exported once with ``geoclf models export``); and
  both with ``--scheduler local`` (a LocalCluster of one worker per core) for the record (``--only`` chooses);
* **bare forward** of the runtime geoclf runs (torch fp32 and OpenVINO at ``--precision auto``), batch 32,
  channels_last, every core's thread, in a fresh process: the reference for "end to end >= 90% of the runtime's
  bare forward".

Same inputs for both: a 4-band uint8 GeoTIFF of ``n x n`` chips of 224 px at 1 m in UTM (900 chips = 6,720^2 px,
3,600 chips = 13,440^2 px), made from geoclf's cached synthetic scene (``tiling.synth``) as a mosaic of copies,
with its origin on the 224 m grid and no nodata, so that both sides score exactly ``n x n`` chips. Same model: a
ResNet-18 with random weights on RGB (geoclf: a ``features`` model of ``resnet18`` weights ``none`` + a logistic
regression on its 512 features, trained once on chips of the synthetic scene; torchgeo: torchvision's
``resnet18(num_classes=6)``, seeded), batch 32, channels_last, and the same glibc allocator tunables
(``GLIBC_TUNABLES`` of geoclf's workers) in the environment of both processes.

Per size, ``--rounds`` rounds run every variant once, in ABBA order (a round reverses the previous one). Each
variant's wall time, CPU time (user + system of its whole process tree, from ``getrusage`` of the waited
children) and peak memory (the sum of the resident memory of every process of its tree, sampled by psutil every
0.1 s) are recorded; ratios are taken within a round and the median over rounds reported. A county projection
(``--county`` chips, default 65,000) fits ``seconds = fixed + chips / rate`` through the two sizes' medians.

Targets (issue 17): geoclf >= 1.15x torchgeo at 900 chips and >= 1.5x at 3,600 (chips/s of the whole process,
best geoclf default-scheduler variant); end to end >= 90% of the runtime's bare forward; peak memory within 1.5x
of torchgeo's; a county (65k chips) with ResNet-18 < 15 min on this machine.

Run: ``.venv/bin/python benchmarks/torchgeo_compare.py [--chips 900 3600] [--rounds 2] [--work DIR]``.
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

from common import REPO, cached_scene, command_line, default_work_dir, describe_load, log, machine_load, run_tree

from tiling.parallel import WORKER_GLIBC_TUNABLES

HERE = Path(__file__).resolve().parent
CHIP = 224
#: Where the raster's origin goes (a multiple of 224 m, so that geoclf's grid, anchored at the CRS origin, and
#: torchgeo's, anchored at the raster's corner, lay the same cells).
ORIGIN = (224.0 * 1188, 224.0 * 20964)
CLASSES = 6
COUNTY = 65_000
TARGETS = {900: 1.15, 3600: 1.5}
TARGET_BARE = 0.90
TARGET_MEMORY = 1.5
TARGET_COUNTY_MIN = 15.0
#: geoclf's torch and torchvision releases; torchgeo's environment gets the same (pip finds them on local disk).
PINS = ("torch==2.14.1", "torchvision==0.29.1")

VARIANTS: dict[str, list[str]] = {
    "geoclf score (torch)": [],
    "geoclf score --runtime openvino": ["--runtime", "openvino"],
    "geoclf score --scheduler local": ["--scheduler", "local"],
    "geoclf score --runtime openvino --scheduler local": ["--runtime", "openvino", "--scheduler", "local"],
}
TORCHGEO = "torchgeo (NAIP + GridGeoSampler + DataLoader)"
BARE = {"bare forward torch fp32": "torch", "bare forward openvino": "openvino"}
#: Which bare forward each geoclf variant is measured against.
BARE_OF = {"geoclf score (torch)": "bare forward torch fp32",
           "geoclf score --runtime openvino": "bare forward openvino",
           "geoclf score --scheduler local": "bare forward torch fp32",
           "geoclf score --runtime openvino --scheduler local": "bare forward openvino"}


# --- torchgeo's environment -------------------------------------------------------------------------------

def torchgeo_python(venv: Path) -> tuple[Path | None, str]:
    """The Python of torchgeo's own virtual environment, created once; or ``None`` and why it cannot be made.

    The environment is built in a sibling directory and renamed when torchgeo imports, so an interrupted
    install is redone, never reused half-made. Only ``bin/python`` is used (the rename breaks console scripts'
    shebangs, not the interpreter).
    """
    python = venv / "bin" / "python"
    marker = venv / "geoclf-bench.json"
    if marker.exists():
        return python, json.loads(marker.read_text()).get("torchgeo", "?")
    tmp = venv.with_name(venv.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"creating torchgeo's virtual environment in {venv} (once; minutes, ~6.5 GB)")
    base = shutil.which("python3") or sys.executable
    steps = [[base, "-m", "venv", str(tmp)],
             [str(tmp / "bin" / "python"), "-m", "pip", "install", "--quiet", *PINS, "torchgeo", "psutil", "requests"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"torchgeo cannot be installed ({' '.join(step[2:5])}...: {last})"
    probe = subprocess.run([str(tmp / "bin" / "python"), "-c", "import torchgeo, torch; print(torchgeo.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"torchgeo does not import in its environment: {probe.stderr.strip().splitlines()[-1:]}"
    (tmp / "geoclf-bench.json").write_text(json.dumps({"torchgeo": probe.stdout.strip(), "pins": PINS}))
    shutil.rmtree(venv, ignore_errors=True)
    tmp.rename(venv)
    return python, probe.stdout.strip()


# --- inputs -----------------------------------------------------------------------------------------------

def bench_raster(work: Path, chips: int) -> Path:
    """A 4-band GeoTIFF of ``chips`` = n x n chips of 224 px at 1 m (copies of the cached synthetic scene).

    Alone in its folder (torchgeo's ``NAIP`` reads every ``m_*`` file of a folder), named as NAIP names its
    quarter quads, origin on the 224 m grid, zeros raised to 1 so that no pixel is nodata.
    """
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    side = math.isqrt(chips)
    if side * side != chips:
        raise SystemExit(f"--chips must be squares (900, 3600), not {chips}")
    folder = work / "torchgeo-compare" / f"naip-{chips}"
    path = folder / f"m_{chips:07d}_ne_19_1_20160801.tif"
    if path.exists():
        return path
    naip, _ = cached_scene(work, 6720.0)
    log(f"writing the {chips}-chip raster {path} (once)")
    with rasterio.open(naip) as src:
        scene = np.maximum(src.read(), 1)
        profile = src.profile
    pixels = side * CHIP
    profile.update(width=pixels, height=pixels, nodata=None, transform=from_origin(*ORIGIN, 1.0, 1.0),
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.tmp"
    n = scene.shape[1]
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, pixels, n):
            for col in range(0, pixels, n):
                h, w = min(n, pixels - row), min(n, pixels - col)
                dst.write(scene[:, :h, :w], window=Window(col, row, w, h))
    tmp.replace(path)
    return path


def resnet18_model(work: Path) -> Path:
    """A ``features`` model of ResNet-18 (random weights, RGB) + logistic regression, trained once, exported once."""
    import tiling
    from geoclf.classifiers import train_classifier
    from geoclf.export import export_model
    from geoclf.features import featurize

    out = work / "torchgeo-compare" / "model-resnet18-none-lr"
    if not (out / "model.json").exists():
        log("training the ResNet-18 (random weights) + logistic regression model once")
        naip, nlcd = cached_scene(work, 6720.0)
        train = work / "torchgeo-compare" / "model-training"
        shutil.rmtree(train, ignore_errors=True)
        index = tiling.tile([naip], nlcd, params=tiling.TileParams(), progress=False)
        subset = index.groupby(["label", "split"], group_keys=False).head(15)
        subset.attrs = index.attrs
        tiling.write_index(subset, train / "chips" / "chips.parquet")
        featurize(train / "chips", train / "features", backbone="resnet18", weights="none", nir=False,
                  scheduler="sync", record_run=False, progress=False)
        result = train_classifier(train / "features", "logistic_regression", runs_dir=train / "runs")
        shutil.copytree(result.artifact_dir, out)
    export_model(out)  # once: a valid recorded export is kept
    return out


# --- running one variant ----------------------------------------------------------------------------------

def base_env() -> dict[str, str]:
    """A user's environment with the allocator tunables both sides get (glibc reads them at process start)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["GLIBC_TUNABLES"] = WORKER_GLIBC_TUNABLES
    return env


def run_geoclf(extra: list[str], model: Path, raster: Path, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    env = {**base_env(), "PYTHONPATH": str(REPO), "GEOCLF_DASHBOARD": "off"}
    result = run_tree([sys.executable, "-m", "geoclf", "score", "--model", str(model), "--naip", str(raster),
                       "--out", str(out), *extra], env, out.parent)
    try:
        line = timeline(out, result)
    except Exception as error:  # the figures above stand without it
        log(f"warning: no timeline of {out}: {error!r}")
        line = {}
    parts = line.pop("parts", None)
    if parts is None:
        import pandas as pd

        from geoclf.landuse import read_predictions

        result["chips"] = len(pd.DataFrame(read_predictions(out)))
    else:
        result["chips"] = sum(part["rows"] for part in parts)
    return {**result, **line}


def timeline(out: Path, result: dict[str, Any]) -> dict[str, Any]:
    """Where a ``geoclf score`` run's wall time went, from its partitions' footers and files' times.

    ``before_tasks``: process start to the first partition task's start (imports, model load and check, cluster
    start, planning); ``tasks``: first task start to last partition written (workers' tile / model / write
    seconds summed over partitions beside it); ``after_tasks``: last partition to process end (mosaic, COG,
    polygons, HTML map, cluster close, exit).
    """
    from geoclf.landuse import ScoreOutput
    from geoclf.partitions import read_summary

    files = ScoreOutput(out).dataset_files()
    if not files:
        return {}
    parts = [read_summary(f) for f in files]
    written = [f.stat().st_mtime for f in files]
    first = min(m - p["task_s"] for m, p in zip(written, parts, strict=True))
    end = result["epoch"] + result["seconds"]
    return {"parts": parts, "partitions": len(parts), "before_tasks": first - result["epoch"],
            "tasks": max(written) - first, "after_tasks": end - max(written),
            **{f"{k}_s": sum(p["seconds"][k] for p in parts) for k in ("tile", "model", "write")}}


def run_torchgeo(python: Path, raster: Path, out: Path, loader_workers: int) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    result = run_tree([str(python), str(HERE / "torchgeo_predict.py"), "--naip-dir", str(raster.parent), "--out",
                       str(out), "--classes", str(CLASSES), "--workers", str(loader_workers)], base_env(), out.parent)
    inside = json.loads(result["stdout"].strip().splitlines()[-1])
    inside["seconds_inside"] = inside.pop("seconds")  # the script's own clock; the wall time is the parent's
    return {**result, **inside}


def bare_forward(runtime: str, model: str, batches: int, threads: int) -> None:
    """(In a fresh process) the bare forward pass of the model's network on ``runtime``; prints chips/s as JSON."""
    import numpy as np

    from geoclf.backbones import load_backbone
    from geoclf.runtime import open_runner, resolve_precision, verified_onnx

    if runtime == "torch":
        import torch

        runner = open_runner("torch", network=load_backbone("resnet18", weights="none").feature_extractor(),
                             threads=threads)
        x = torch.randn(32, 3, CHIP, CHIP).contiguous(memory_format=torch.channels_last)
    else:
        # uint8 chips into the network as geoclf compiles it (its normalization in OpenVINO's graph):
        # the forward pass scoring runs, with nothing of Python's around it
        spec = json.loads((Path(model) / "model.json").read_text())
        compiled = open_runner("openvino", onnx=verified_onnx(model, spec["export"]), precision="auto",
                               threads=threads, normalization=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        x = np.random.default_rng(0).integers(0, 256, (32, 3, CHIP, CHIP), dtype=np.uint8)
        runner = compiled.chips
    for _ in range(2):
        runner(x)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        runner(x)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"chips": 32 * batches, "seconds": seconds, "cpu": cpu,
                      "precision": resolve_precision(runtime, "auto")}))


def run_bare(runtime: str, model: Path, batches: int, threads: int) -> dict[str, Any]:
    env = {**base_env(), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, __file__, "--bare", runtime, "--model", str(model), "--batches",
                           str(batches), "--threads", str(threads)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"bare forward {runtime} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def per_chip_floor(work: Path, model: Path, chips: int, rounds: int, threads: int) -> None:
    """What no run that decodes the raster can avoid, beside the bare forward, in CPU-ms a chip (one process).

    Alternating ``rounds`` times: the raster's decode (every internal tile read once, as GDAL decodes it for
    the chips), the spectral statistics of the combined default (on 256 chips of the raster) and the bare
    OpenVINO forward of the network (on the same chips, 2 threads). The ceiling of "end to end vs bare forward"
    on a machine the forward keeps busy is ``forward / (forward + decode + spectral)``: per CPU-second, before
    any Python, planning, output or map of the command.
    """
    import numpy as np
    import rasterio

    from geoclf.featurizers.spectral import SpectralFeaturizer
    from geoclf.runtime import open_runner, verified_onnx

    raster = bench_raster(work, chips)
    spec = json.loads((model / "model.json").read_text())
    runner = open_runner("openvino", onnx=verified_onnx(model, spec["export"]), precision="auto", threads=threads,
                         normalization=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    spectral = SpectralFeaturizer()
    with rasterio.open(raster) as dataset:
        windows = [w for _, w in dataset.block_windows(1)]
        sample = np.stack([dataset.read(window=((r * CHIP, (r + 1) * CHIP), (c * CHIP, (c + 1) * CHIP)))
                           for r in range(16) for c in range(16)])
    batches = [sample[i:i + 32] for i in range(0, len(sample), 32)]
    for batch in batches[:2]:
        runner.chips(np.ascontiguousarray(batch[:, :3]))

    def cpu_ms(run: Any, n: int) -> float:
        started = time.process_time()
        run()
        return 1000 * (time.process_time() - started) / n

    def decode() -> None:
        with rasterio.open(raster) as dataset:
            for window in windows:
                dataset.read(window=window)

    rows: dict[str, list[float]] = {"decode": [], "spectral": [], "forward": []}
    for r in range(rounds):
        steps = {"decode": (decode, chips),
                 "spectral": (lambda: [spectral.featurize(b) for b in batches], len(sample)),
                 "forward": (lambda: [runner.chips(np.ascontiguousarray(b[:, :3])) for b in batches], len(sample))}
        for name in steps if r % 2 == 0 else list(steps)[::-1]:
            rows[name].append(cpu_ms(*steps[name]))
    med = {k: statistics.median(v) for k, v in rows.items()}
    ceiling = med["forward"] / sum(med.values())
    print(f"\n{command_line()} — {chips} chips, {rounds} rounds\n")
    print("| step | CPU ms a chip (median) | runs | vs forward |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {med[name]:.3f} | {', '.join(f'{v:.3f}' for v in values)} | "
              f"{100 * med[name] / med['forward']:.1f}% |")
    print(f"\nCeiling of end to end vs the bare forward, per CPU-second: {100 * ceiling:.1f}% "
          f"(target {100 * TARGET_BARE:.0f}%)")


# --- the comparison ---------------------------------------------------------------------------------------

def compare(chips: int, rounds: int, work: Path, model: Path, python: Path | None, args: argparse.Namespace,
            done: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``rounds`` ABBA rounds of every variant on the ``chips``-chip raster: one dict of results per round.

    Each finished round is also added to ``done`` and saved (``rounds.json``), so that ``--report`` can print
    the tables of a run stopped before its end.
    """
    raster = bench_raster(work, chips)
    out = work / "torchgeo-compare" / "out"
    out.mkdir(parents=True, exist_ok=True)
    names = [*BARE, *VARIANTS] + ([TORCHGEO] if python is not None else [])
    results = []
    for r in range(rounds):
        result: dict[str, Any] = {}
        for name in names if r % 2 == 0 else names[::-1]:
            if name in BARE:
                result[name] = run_bare(BARE[name], model, args.bare_batches, args.threads)
                rate = result[name]["chips"] / result[name]["seconds"]
                log(f"[{chips}] round {r + 1}: {name}: {rate:.1f} chips/s")
                continue
            if name == TORCHGEO:
                result[name] = run_torchgeo(python, raster, out / "torchgeo", args.loader_workers)
            else:
                result[name] = run_geoclf(VARIANTS[name], model, raster, out / "geoclf")
            got = result[name]
            if got["chips"] != chips:
                log(f"warning: {name} scored {got['chips']} chips, not {chips}")
            log(f"[{chips}] round {r + 1}: {name}: {got['seconds']:.1f} s, {got['chips'] / got['seconds']:.1f} "
                f"chips/s, CPU {got['cpu']:.0f} s, peak {got['peak_mb']:.0f} MB")
        results.append(result)
        done[chips] = results
        (work / "torchgeo-compare" / "rounds.json").write_text(json.dumps(
            {"start": args.start, "end": machine_load(), "versions": args.versions,
             "rounds": {str(k): v for k, v in done.items()}}, default=str))
    return results


def rate(result: dict[str, Any]) -> float:
    return result["chips"] / result["seconds"]


def report(sizes: dict[int, list[dict[str, Any]]], start: dict[str, Any], versions: dict[str, str],
           county: int, end: dict[str, Any] | None = None) -> dict[str, Any]:
    """Print the tables (markdown, for benchmarks/README.md) and return the figures."""
    end = end or machine_load()
    print(f"\n{command_line()} — {describe_load(start, end)}; {versions}\n")
    print("| chips | run | seconds | chips/s | vs torchgeo | per CPU-s vs torchgeo | vs bare forward | per CPU-s vs "
          "bare | CPU s | peak MB | vs torchgeo's |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    figures: dict[str, Any] = {"load": [start, end], "versions": versions, "sizes": {}}
    for chips, rounds in sizes.items():
        fig: dict[str, Any] = {}
        for name in rounds[0]:
            runs = [rd[name] for rd in rounds]
            row: dict[str, Any] = {"chips_per_s": statistics.median(rate(r) for r in runs)}
            if name in BARE:
                row["chips_per_cpu_s"] = statistics.median(r["chips"] / r["cpu"] for r in runs)
                print(f"| {chips} | {name} ({runs[0]['precision']}, 2 threads) |  | {row['chips_per_s']:.1f} |  |  |  "
                      f"| {row['chips_per_cpu_s']:.1f} chips/CPU-s |  |  |  |")
                fig[name] = row
                continue
            row.update({key: statistics.median(r[key] for r in runs) for key in ("seconds", "cpu", "peak_mb")})
            cells = [""] * 5
            if TORCHGEO in rounds[0] and name != TORCHGEO:
                pairs = list(zip(runs, [rd[TORCHGEO] for rd in rounds], strict=True))
                row["vs_torchgeo"] = statistics.median(rate(a) / rate(b) for a, b in pairs)
                row["cpu_vs_torchgeo"] = statistics.median((a["chips"] / a["cpu"]) / (b["chips"] / b["cpu"])
                                                           for a, b in pairs)
                row["memory_vs_torchgeo"] = statistics.median(a["peak_mb"] / b["peak_mb"] for a, b in pairs)
                cells[0] = f"**{row['vs_torchgeo']:.2f}x**"
                cells[1] = f"{row['cpu_vs_torchgeo']:.2f}x"
                cells[4] = f"{row['memory_vs_torchgeo']:.2f}x"
            if name in BARE_OF and BARE_OF[name] in rounds[0]:
                pairs = list(zip(runs, [rd[BARE_OF[name]] for rd in rounds], strict=True))
                row["vs_bare"] = statistics.median(rate(a) / rate(b) for a, b in pairs)
                row["cpu_vs_bare"] = statistics.median((a["chips"] / a["cpu"]) / (b["chips"] / b["cpu"])
                                                       for a, b in pairs)
                cells[2] = f"{100 * row['vs_bare']:.0f}%"
                cells[3] = f"{100 * row['cpu_vs_bare']:.0f}%"
            print(f"| {chips} | {name} | {row['seconds']:.1f} | {row['chips_per_s']:.1f} | {cells[0]} | {cells[1]} | "
                  f"{cells[2]} | {cells[3]} | {row['cpu']:.0f} | {row['peak_mb']:.0f} | {cells[4]} |")
            fig[name] = row
        figures["sizes"][chips] = fig
    print("\nWhere geoclf's wall time went (medians; model / tile / write: the workers' seconds summed over "
          "partitions, from their footers):\n")
    print("| chips | run | partitions | before tasks s | tasks s | after tasks s | model s | tile s | write s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for chips, rounds in sizes.items():
        for name in VARIANTS:
            runs = [rd[name] for rd in rounds if name in rd and "tasks" in rd[name]]
            if not runs:
                continue
            cells = [statistics.median(r[k] for r in runs) for k in ("before_tasks", "tasks", "after_tasks",
                                                                       "model_s", "tile_s", "write_s")]
            print(f"| {chips} | {name} | {runs[0]['partitions']} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    if len(sizes) >= 2:
        small, large = sorted(sizes)[:1][0], sorted(sizes)[-1]
        print(f"\nCounty projection ({county:,} chips), seconds = fixed + chips / rate through the {small}- and "
              f"{large}-chip medians:\n")
        print("| run | fixed s | chips/s beyond it | county minutes | target |")
        print("|---|---|---|---|---|")
        figures["county"] = {}
        for name in figures["sizes"][small]:
            if name in BARE:
                continue
            t1, t2 = figures["sizes"][small][name]["seconds"], figures["sizes"][large][name]["seconds"]
            per_chip = (t2 - t1) / (large - small)
            fixed = t1 - small * per_chip
            minutes = (fixed + county * per_chip) / 60
            figures["county"][name] = {"fixed_s": fixed, "rate": 1 / per_chip, "minutes": minutes}
            verdict = "met" if minutes < TARGET_COUNTY_MIN else "missed"
            print(f"| {name} | {fixed:.1f} | {1 / per_chip:.1f} | {minutes:.1f} | "
                  f"{verdict} (< {TARGET_COUNTY_MIN:g}) |")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, nargs="+", default=[900, 3600], help="chips of each raster (squares)")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds per size")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--venv", type=Path, default=None, help="torchgeo's environment (default <work>/torchgeo-venv)")
    parser.add_argument("--loader-workers", type=int, default=1, help="torchgeo DataLoader worker processes")
    parser.add_argument("--bare-batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="bare forward threads (all cores)")
    parser.add_argument("--county", type=int, default=COUNTY)
    parser.add_argument("--only", nargs="+", default=None, help="run only these variants (names, or 'torchgeo')")
    parser.add_argument("--report", type=Path, default=None,
                        help="print the tables of the rounds saved in this rounds.json (of a stopped run), run nothing")
    parser.add_argument("--floor", action="store_true",
                        help="print the per-chip CPU of decode, spectral statistics and bare forward, run nothing else")
    parser.add_argument("--bare", choices=["torch", "openvino"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare_forward(args.bare, args.model, args.batches, args.threads)
        return 0
    if args.report:
        saved = json.loads(args.report.read_text())
        report({int(k): v for k, v in saved["rounds"].items()}, saved["start"], saved["versions"], args.county,
               saved["end"])
        return 0
    work = (args.work or default_work_dir()).expanduser()
    if args.floor:
        per_chip_floor(work, resnet18_model(work), max(args.chips), 2 * args.rounds, args.threads)
        return 0
    start = args.start = machine_load()
    python, version = torchgeo_python(args.venv or work / "torchgeo-venv")
    if python is None:
        log(f"skipping the torchgeo rows: {version}")
    import torch

    versions = args.versions = {"torchgeo": version if python is not None else f"skipped: {version}",
                                "torch": torch.__version__}
    model = resnet18_model(work)
    if args.only:
        keep = set(args.only)
        for table in (VARIANTS, BARE):
            for name in list(table):
                if name not in keep:
                    del table[name]
        if "torchgeo" not in keep:
            python = None
    sizes: dict[int, list[dict[str, Any]]] = {}
    for chips in args.chips:
        compare(chips, args.rounds, work, model, python, args, sizes)
    figures = report(sizes, start, versions, args.county)
    (work / "torchgeo-compare" / "figures.json").write_text(json.dumps(
        {"figures": figures, "rounds": {str(k): v for k, v in sizes.items()}}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
