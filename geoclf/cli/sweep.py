"""``geoclf sweep``: a grid or random search over a classifier's parameters, fits on Dask, one parent run."""

from __future__ import annotations

import click

from geoclf.cli.common import workers_option
from geoclf.cli.runs import runs_dir_option
from geoclf.cluster import scheduler_from_option
from geoclf.registry import register_model


@click.command("sweep")
@click.option("--features", "features", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="Features directory (geoclf featurize output); repeatable. Directories of one featurizer are "
                   "read together; directories of different featurizers (backbones, spectral) are compared.")
@click.option("--classifier", "classifiers", multiple=True, default=("logistic_regression",), show_default=True,
              help="logistic_regression or random_forest (each after standard scaling); repeat to compare "
                   "classifiers (each takes the --param keys it has).")
@click.option("--param", "params", multiple=True, metavar="KEY=V1,V2,...",
              help="Values to try for one parameter, e.g. C=0.01,0.1,1,10 or max_depth=10,none; repeatable.")
@click.option("--search", type=click.Choice(["grid", "random"]), default="grid", show_default=True,
              help="Every combination, or --n-iter combinations drawn at random.")
@click.option("--n-iter", default=10, show_default=True, help="Combinations of a random search.")
@click.option("--metric", default="accuracy", show_default=True,
              help="Validation metric choosing the best fit (accuracy, balanced_accuracy, kappa, ...).")
@click.option("--cv-folds", type=int, default=None,
              help="Choose by spatial cross-validation on the train split (folds of whole spatial blocks).")
@click.option("--name", default=None, help="Sweep (parent run) name (default: sweep-<classifier>).")
@click.option("--seed", default=0, show_default=True, help="Random seed of the classifiers and the search.")
@click.option("--scheduler", "--cluster", "cluster", default="local", show_default=True,
              metavar="local|sync|ADDRESS|RECIPE",
              help="Where fits run: a LocalCluster, this process, a scheduler address (tcp://HOST:PORT) or a "
                   "cluster recipe file (YAML, see docs/scaling.md).")
@workers_option
@click.option("--register", "register_as", default=None, metavar="NAME",
              help="Register the best fit as the next version of this model name.")
@runs_dir_option
def sweep(features: tuple[str, ...], classifiers: tuple[str, ...], params: tuple[str, ...], search: str, n_iter: int,
          metric: str, cv_folds: int | None, name: str | None, seed: int, cluster: str, n_workers: int | None,
          register_as: str | None, runs_dir: str | None) -> None:
    """Fit classifiers for every parameter combination on every featurizer's features, on Dask; every fit is a
    child run of one sweep, and the best (by validation or spatial cross-validation) is its model."""
    # the library is imported when the command runs, not when the CLI lists commands or shows --help
    from geoclf.sweep import parse_space, run_sweep  # here: scikit-learn takes seconds to import

    space = parse_space(params)
    with scheduler_from_option(cluster) as scheduler:
        chosen = classifiers[0] if len(classifiers) == 1 else list(classifiers)
        result = run_sweep(list(features), chosen, space, search=search, n_iter=n_iter, metric=metric,
                           cv_folds=cv_folds, name=name, seed=seed, scheduler=scheduler, n_workers=n_workers,
                           runs_dir=runs_dir)
    shown = result.fits.drop(columns=["run_id"]).dropna(axis=1, how="all")
    click.echo(shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}"))
    click.echo(f"best by {result.metric}: {result.best_run_name}: {result.best_features}, {result.best_classifier} "
               f"{result.best_params} ({result.metric} {result.best_score:.4f})")
    click.echo(f"sweep {result.name}: {len(result.fits)} fits in {result.wall_seconds:.1f}s, "
               f"parent run {result.parent_id}")
    if register_as:
        version = register_model(result.best_run_id, register_as, runs_dir=runs_dir,
                                 description=f"best of sweep {result.name} by {result.metric}")
        click.echo(f"registered {result.best_run_name} as {version.ref}")
    else:
        click.echo(f"register it: geoclf models register best-of-sweep --run {result.parent_id[:8]} --name NAME")
