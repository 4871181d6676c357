"""Compare recorded runs: list them, pick the best by a metric, show its per-class scores and confusion matrix.

Reads a run history (a runs directory holding ``mlflow.db``, e.g. the one ``quickstart_api.py`` fills)
and writes into OUT:

    OUT/runs.csv                  every finished train run, best first, with its metrics
    OUT/confusion_matrix.png      the best run's validation confusion matrix (cells coloured by recall)

Usage::

    python examples/compare_runs.py RUNS_DIR OUT [--metric accuracy]

The same from the shell: ``geoclf runs list --runs-dir RUNS_DIR --sort kappa`` and
``geoclf runs show NAME --runs-dir RUNS_DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from geoclf import runs
from geoclf.artifact import load_model
from geoclf.metrics import evaluation_from_json, plot_confusion_matrix


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, help="runs directory (holds mlflow.db and mlruns/)")
    parser.add_argument("out", type=Path, help="output directory (created if missing)")
    parser.add_argument("--metric", default="accuracy",
                        help="metric to rank by: accuracy, balanced_accuracy, kappa, f1.<Class>, ... "
                             "(default: %(default)s)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    # Every finished train run, best first (lowest first for *loss / *error metrics).
    table = runs.list_runs(sort=args.metric, kind="train", runs_dir=args.runs_dir)
    table.to_csv(args.out / "runs.csv", index=False)
    shown = ["name", "classifier", "backbone", "accuracy", "balanced_accuracy", "kappa"]
    print(table[shown + ([args.metric] if args.metric not in shown else [])].to_string(
        index=False, float_format=lambda v: f"{v:.3f}"))

    # The best run, its validation evaluation (recorded as evaluation.json) and its model artifact.
    best = runs.best_run(args.metric, kind="train", runs_dir=args.runs_dir)
    print(f"\nbest by {args.metric}: {best.name} ({best.metrics[args.metric]:.3f}), run {best.run_id[:8]}")
    evaluation = evaluation_from_json(runs.read_json_artifact(best, "evaluation.json"))
    print("\nper class (validation):")
    print(evaluation["per_class"].to_string(float_format=lambda v: f"{v:.3f}"))
    print("\nconfusion matrix (rows: NLCD class, columns: predicted):")
    print(evaluation["confusion_matrix"].to_string())
    png = plot_confusion_matrix(evaluation["confusion_matrix"], args.out / "confusion_matrix.png",
                                title=f"{best.name}: {args.metric} {best.metrics[args.metric]:.3f}")
    print(f"\n-> {png}")

    # What scoring would load: the model artifact contract (classes, bands, chip size, predict_proba).
    model = load_model(runs.artifact_path(best))
    print(f"model artifact: {model.path}\n  classes {model.classes}, bands {model.bands}, chip {model.chip_size} px")


if __name__ == "__main__":
    main()
