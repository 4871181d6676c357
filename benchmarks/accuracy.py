"""Accuracy benchmark: featurizers x classifiers, validation accuracy with 95% confidence intervals (issue 13).

Featurizers (each through ``geoclf.features.featurize``, as ``geoclf featurize`` runs them): EfficientNet-Lite0
with random weights, Lite0 with its ImageNet weights, MobileNetV2 with its ImageNet weights (the CNN's
features alone, ``--no-spectral``), the spectral statistics (``--backbone spectral``) and the default (Lite0 +
spectral, blocks scaled). Classifiers: ``geoclf train``'s logistic regression and random forest, each fitted on
the train split and scored on the spatial validation split, with the interval of
:func:`geoclf.metrics.accuracy_interval` (Wilson, n reduced by the design effect of the validation blocks).

Datasets:

* ``hard``: the hard synthetic world (``make_scene(preset="hard")``, ``--hard-size-m``, default 3,200 m, 64 px
  chips at 1 m): large enough that its validation split holds ~20 spatial blocks of 320 m, so that the
  intervals (widened by the design effect of those blocks) can separate featurizers; a 1,344 m scene holds 5
  and cannot;
* ``quickstart``: the quickstart's scene (4,480 m, 224 px chips, the 2010 flight);
* ``wv``: the real West Virginia NAIP patches with their real NLCD (``../shared/data/naip-nlcd-wv-calebrob6``,
  32 m chips: 363, 92% forest), skipped when the folder is absent.

Also the cost of the spectral block per chip against a Lite0 forward pass per chip (224 px, batch 32, same
process, alternating, median of ``--repeats``): it must stay under 10%.

    python benchmarks/accuracy.py [--work DIR] [--only hard quickstart wv] [--runs default random mobilenet]
                                  [--hard-size-m 3200] [--json out.json]

``--runs default`` featurizes once per chip (the Lite0-alone, spectral and default rows); ``random`` and
``mobilenet`` add their rows at one more network pass per chip each.

Prints a markdown table (benchmarks/README.md holds the last one). Orderings, not these numbers, are what the
tests assert (tests/test_spectral.py, tests/test_features.py, tests/test_hard_world.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from common import REPO, default_work_dir, machine_load

import tiling
from tiling.synth import make_scene

#: The three featurizations a dataset gets (``geoclf featurize`` options); the default one also gives the
#: Lite0-alone rows (its CNN block) and the spectral rows (its spectral block, which is the spectral
#: featurizer's vector, also stored as the baseline column), so each network runs once per chip.
RUNS: dict[str, dict[str, Any]] = {
    "random": {"backbone": "efficientnet_lite0", "weights": "none", "spectral": False},
    "mobilenet": {"backbone": "mobilenet_v2", "spectral": False},
    "default": {"backbone": "efficientnet_lite0"},
}
#: Featurizer rows: (featurization, which columns).
FEATURIZERS: dict[str, tuple[str, str]] = {
    "Lite0, random init": ("random", "all"),
    "Lite0 (ImageNet)": ("default", "cnn"),
    "MobileNetV2 (ImageNet)": ("mobilenet", "all"),
    "spectral statistics": ("default", "spectral"),
    "Lite0 + spectral (default)": ("default", "all"),
}
CLASSIFIERS = {"LR": "logistic_regression", "RF": "random_forest"}
DEFAULT, BASELINE = "Lite0 + spectral (default)", "spectral statistics"
#: The row of the default's accuracy minus the baseline's, chip by chip on the same validation chips.
DIFFERENCE = "default - spectral (paired)"
#: Side of the hard scene: 10 x 10 blocks of 320 m (five 64 m chips), ~20 of them in the validation split.
HARD_SIZE_M = 3200
WV = REPO.parent / "shared" / "data" / "naip-nlcd-wv-calebrob6"


def dataset_dir(dataset: str, work: Path, hard_size_m: int = HARD_SIZE_M) -> Path:
    """Where a dataset's chips and features are cached (the hard scene's by its size)."""
    return work / (f"accuracy-hard-{hard_size_m}" if dataset == "hard" else f"accuracy-{dataset}")


def chips_of(dataset: str, work: Path, hard_size_m: int = HARD_SIZE_M) -> Path | None:
    """The chip index of a dataset, tiled once into ``work``."""
    root = dataset_dir(dataset, work, hard_size_m)
    out = root / "chips"
    if (out / "chips.parquet").exists():
        return out
    if dataset == "hard":
        scene = make_scene(root / "scene", size_m=hard_size_m, seed=0, preset="hard")
        naip, nlcd, params = [scene.naip], scene.nlcd, tiling.TileParams(chip_size=64)
    elif dataset == "quickstart":
        scene = make_scene(root / "scene", size_m=4480, seed=0, year=2010,
                           conversion_rate=0.02, conversions_after=2009)  # the quickstart recipe's first year
        naip, nlcd, params = [scene.naip], scene.nlcd, tiling.TileParams()
    elif dataset == "wv":
        if not WV.is_dir():
            return None
        naip, nlcd = [WV / "naip.tif"], WV / "nlcd.tif"
        params = tiling.TileParams(chip_size=32, block_size_m=64)
    else:
        raise SystemExit(f"unknown dataset {dataset!r}")
    tiling.tile(naip, nlcd, out, params=params, progress=False)
    return out


def measure(dataset: str, chips: Path, root: Path, runs: list[str]) -> list[dict[str, Any]]:
    """Every featurizer x classifier on one dataset's split: ``geoclf train``'s pipelines (block-scaled for the
    combined vectors), fitted on the train split, scored on the validation split with its interval."""
    import numpy as np

    from geoclf.classifiers import make_classifier
    from geoclf.features import featurize
    from geoclf.metrics import accuracy_interval
    from geoclf.training import load_features, prepare_split

    loaded, seconds = {}, {}
    for run in runs:
        options = RUNS[run]
        out = root / f"features-{run}"
        started = time.perf_counter()
        featurize(chips, out, scheduler="sync", progress=False, record_run=False, **options)
        seconds[run] = time.perf_counter() - started
        loaded[run] = load_features(out)
    rows, hits = [], {}
    for label, (run, columns) in FEATURIZERS.items():
        if run not in loaded:
            continue
        data = loaded[run]
        split = prepare_split(data)
        val_blocks = 0 if split.val_groups is None else len(set(split.val_groups))
        blocks = data.meta.get("blocks") if columns == "all" else None
        train, val = data.rows["split"].eq("train") & data.rows["label"].notna(), data.rows["split"].eq("val")
        val &= data.rows["label"].notna()
        matrix = {"all": data.features, "cnn": data.features[:, :1280], "spectral": data.baseline}[columns]
        for short, classifier in CLASSIFIERS.items():
            pipeline = make_classifier(classifier, blocks=blocks).fit(matrix[train.to_numpy()], split.y_train)
            predicted = pipeline.predict(matrix[val.to_numpy()])
            interval = accuracy_interval(predicted == split.y_val, split.val_groups)
            hits[label, short] = (predicted == split.y_val, split.val_groups)
            rows.append({"dataset": dataset, "featurizer": label, "classifier": short,
                         **interval.to_json(), "featurize_s": seconds[run], "chips": len(data.rows),
                         "val_chips": int(val.sum()), "val_blocks": val_blocks,
                         "majority": float(max(np.mean(split.y_val == c) for c in split.classes))})
            print(f"{dataset:10s} {label:28s} {short}: {interval.text()}", flush=True)
    for short in CLASSIFIERS:  # the bar: the default above the spectral baseline, on the same chips
        default, spectral = hits.get((DEFAULT, short)), hits.get((BASELINE, short))
        if default is not None and spectral is not None:
            diff = paired_difference(default[0], spectral[0], default[1])
            rows.append({"dataset": dataset, "featurizer": DIFFERENCE, "classifier": short,
                         "accuracy": diff["difference"], **diff})
            print(f"{dataset:10s} {DIFFERENCE:28s} {short}: {diff['difference']:+.3f} "
                  f"(95% CI {diff['low']:+.3f} to {diff['high']:+.3f}, {diff['blocks']} blocks)", flush=True)
    return rows


def paired_difference(better: Any, worse: Any, blocks: Any, confidence: float = 0.95) -> dict[str, float]:
    """Accuracy of one fit minus another's on the same validation chips, with a normal interval whose variance
    is taken over whole spatial blocks (the clustered variance of a mean, as
    :func:`geoclf.metrics.accuracy_interval` takes it): two fits' separate intervals may overlap while their
    difference, measured chip by chip on the same chips, is clear of zero."""
    import numpy as np
    import pandas as pd

    from geoclf.area import z_value

    d = np.asarray(better, dtype=float) - np.asarray(worse, dtype=float)
    n, mean = len(d), float(d.mean())
    per_block = pd.DataFrame({"block": np.asarray(blocks, dtype=object), "d": d}).groupby("block")["d"]
    sums, sizes = per_block.sum().to_numpy(float), per_block.size().to_numpy(float)
    count = len(sums)
    se = float(np.sqrt(count / (count - 1) * ((sums - mean * sizes) ** 2).sum()) / n) if count > 1 else float("nan")
    z = z_value(confidence)
    return {"difference": mean, "low": mean - z * se, "high": mean + z * se, "blocks": count}


def spectral_cost(repeats: int = 5) -> dict[str, float]:
    """Milliseconds per chip of the spectral block and of a Lite0 forward pass, side by side (224 px, batch 32)."""
    import numpy as np

    from geoclf.featurizers import make_featurizer
    from geoclf.featurizers.spectral import SpectralFeaturizer

    rng = np.random.default_rng(0)
    chips = rng.integers(1, 256, size=(32, 4, 224, 224), dtype=np.uint8)
    cnn, spectral = make_featurizer("efficientnet_lite0", device="cpu"), SpectralFeaturizer()
    cnn.featurize(chips[:, :3])  # warm up
    ratios, cnn_ms, spectral_ms = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        cnn.featurize(chips[:, :3])
        a = (time.perf_counter() - started) / len(chips) * 1000
        started = time.perf_counter()
        spectral.featurize(chips)
        b = (time.perf_counter() - started) / len(chips) * 1000
        cnn_ms.append(a)
        spectral_ms.append(b)
        ratios.append(b / a)
    return {"lite0_ms_per_chip": statistics.median(cnn_ms), "spectral_ms_per_chip": statistics.median(spectral_ms),
            "ratio": statistics.median(ratios)}


def markdown(rows: list[dict[str, Any]]) -> str:
    """The README table: one line per dataset and featurizer, LR and RF side by side."""
    lines = ["| dataset | featurizer | LR accuracy (95% CI) | RF accuracy (95% CI) |", "|---|---|---|---|"]
    keyed = {(r["dataset"], r["featurizer"], r["classifier"]): r for r in rows}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for label in (*FEATURIZERS, DIFFERENCE):
            if not any((dataset, label, short) in keyed for short in CLASSIFIERS):
                continue
            cells = []
            for short in CLASSIFIERS:
                r = keyed.get((dataset, label, short))
                if r is None:
                    cells.append("-")
                elif label == DIFFERENCE:
                    cells.append(f"{r['accuracy']:+.3f} ({r['low']:+.3f} to {r['high']:+.3f})")
                else:
                    cells.append(f"{r['accuracy']:.3f} ({r['low']:.3f}-{r['high']:.3f})")
            lines.append(f"| {dataset} | {label} | {' | '.join(cells)} |")
        first = next(r for r in rows if r["dataset"] == dataset and "val_chips" in r)
        lines.append(f"| {dataset} | majority class ({first['val_chips']} validation chips in "
                     f"{first['val_blocks']} blocks) | {first['majority']:.3f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=default_work_dir())
    parser.add_argument("--only", nargs="*", default=["hard", "quickstart", "wv"])
    parser.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--hard-size-m", type=int, default=HARD_SIZE_M)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load = machine_load()
    cost = spectral_cost(args.repeats)
    print(f"spectral block {cost['spectral_ms_per_chip']:.2f} ms/chip, Lite0 forward {cost['lite0_ms_per_chip']:.1f} "
          f"ms/chip: {cost['ratio']:.1%} (target < 10%)", flush=True)
    rows = []
    for dataset in args.only:
        chips = chips_of(dataset, args.work, args.hard_size_m)
        if chips is None:
            print(f"{dataset}: skipped ({WV} is absent)")
            continue
        rows += measure(dataset, chips, dataset_dir(dataset, args.work, args.hard_size_m), args.runs)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "spectral_cost": cost, "load": load}, indent=2, default=str))


if __name__ == "__main__":
    main()
