"""``geoclf train``: a scikit-learn classifier on CNN features, evaluated, saved and recorded."""

from __future__ import annotations

import click

from geoclf.cli.common import echo_evaluation, echo_export, export_option
from geoclf.cli.runs import runs_dir_option


@click.command("train")
@click.option("--features", "features", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="Features directory (geoclf featurize output); repeat to train on several made with the "
                   "same backbone.")
@click.option("--classifier", default="logistic_regression", show_default=True,
              help="logistic_regression or random_forest (each after standard scaling).")
@click.option("--name", default=None, help="Run name (default: <classifier>-<backbone>).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Classifier parameter, e.g. C=0.5, n_estimators=500, class_weight=balanced; repeatable.")
@click.option("--seed", default=0, show_default=True, help="Random seed of the classifier.")
@export_option
@runs_dir_option
def train(features: tuple[str, ...], classifier: str, name: str | None, params: tuple[str, ...], seed: int,
          export: bool | None, runs_dir: str | None) -> None:
    """Train a classifier on the train split of features, evaluate it on the validation split."""
    # the library is imported when the command runs, not when the CLI lists commands or shows --help
    from geoclf.classifiers import parse_params, train_classifier  # here: scikit-learn takes seconds to import

    result = train_classifier(list(features), classifier=classifier, params=parse_params(params), name=name,
                              seed=seed, runs_dir=runs_dir, export=export)
    for note in result.warnings:
        click.echo(f"geoclf: warning: {note}", err=True)
    click.echo(f"{result.name}: {classifier} on {result.n_train} train chips, "
               f"evaluated on {result.n_val} validation chips")
    echo_evaluation(result.evaluation)
    compared = result.comparison or {}
    rows = [("model", compared.get("model"))]
    if compared.get("baseline"):
        rows.append(("spectral baseline", compared["baseline"]["interval"]))
    for label, interval in rows:
        if interval:
            click.echo(f"  {label:<18} accuracy {interval['accuracy']:.4f} ({interval['confidence']:.0%} CI "
                       f"{interval['low']:.3f}-{interval['high']:.3f})")
    if compared and not compared.get("baseline"):
        click.echo("  (no spectral baseline: these features predate it; featurize again to get one)")
    click.echo(f"model artifact -> {result.artifact_dir}")
    echo_export(result.artifact_dir)
    click.echo(f"run {result.run_id}  (geoclf runs show {result.name})")
