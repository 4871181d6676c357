"""``geoclf runs``: list, compare and inspect recorded runs (``runs list``, ``runs show``)."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from geoclf import runs as history
from geoclf.metrics import evaluation_from_json
from geoclf.runs import HEADLINE_METRICS

#: ``--runs-dir``, for every command that records or reads runs.
runs_dir_option = click.option(
    "--runs-dir", default=None, metavar="DIR",
    help="Run history: a directory holding mlflow.db and mlruns/ (default: $GEOCLF_RUNS, else the current "
         "directory), or an MLflow tracking URI. Browse it with `mlflow ui` started in that directory.")

_TABLE_COLUMNS = ("name", "kind", "backbone", "classifier", "accuracy", "balanced_accuracy", "kappa",
                  "accuracy_3class")


@click.group("runs")
def runs() -> None:
    """Recorded featurize, train and fine-tune runs."""


@runs.command("list")
@click.option("--sort", "sort", default="accuracy", show_default=True, metavar="METRIC",
              help="Metric to rank by, best first (lowest first for *loss and *error metrics).")
@click.option("--kind", type=click.Choice(["featurize", "train", "finetune"]), default=None,
              help="Only runs of this kind.")
@click.option("--all", "include_unfinished", is_flag=True, help="Also list running, failed and killed runs.")
@click.option("--parent", default=None, metavar="RUN",
              help="Only the child runs of this run (name or id): the fits of one sweep.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON list.")
@runs_dir_option
def list_command(sort: str, kind: str | None, include_unfinished: bool, parent: str | None, as_json: bool,
                 runs_dir: str | None) -> None:
    """List runs, best first; the fits of a sweep show their sweep in the 'parent' column."""
    records = history.list_run_records(sort=sort, kind=kind, runs_dir=runs_dir,
                                       include_unfinished=include_unfinished)
    if parent is not None:
        parent_id = history.get_run(parent, runs_dir=runs_dir).run_id
        records = [r for r in records if r.parent_id == parent_id]
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records], indent=2))
        return
    if not records:
        click.echo(f"no runs recorded in {history.run_store(runs_dir).location}", err=True)
        return
    table = history.runs_table(records)
    columns = [*_TABLE_COLUMNS, *([sort] if sort not in _TABLE_COLUMNS else []), "start_time", "run_id"]
    shown = table[columns].copy()
    shown["start_time"] = shown["start_time"].map(lambda t: t.strftime("%Y-%m-%d %H:%M") if t else "")
    shown["run_id"] = shown["run_id"].str[:8]
    if include_unfinished:
        shown.insert(2, "status", table["status"])
    if table["parent_id"].notna().any():
        names = {r.run_id: r.name for r in history.list_run_records(sort=None, runs_dir=runs_dir,
                                                                    include_unfinished=True)}
        shown.insert(2, "parent", table["parent_id"].map(lambda i: names.get(i, i[:8]) if isinstance(i, str) else None))
    click.echo(shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3f}"))


@runs.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@runs_dir_option
def show_command(name: str, as_json: bool, runs_dir: str | None) -> None:
    """Show a run's parameters, metrics, confusion matrix and model artifact (NAME: run name or id)."""
    record = history.get_run(name, runs_dir=runs_dir)
    evaluation = history.read_json_artifact(record, "evaluation.json")
    try:
        model = str(history.artifact_path(record))
    except Exception:  # a run without a model (featurize) simply has none to show
        model = None
    curves = {key: history.metric_history(record, key, runs_dir=runs_dir) for key in record.metrics}
    curves = {key: points for key, points in curves.items() if len(points) > 1}
    if as_json:
        click.echo(json.dumps({**record.to_dict(), "model_artifact": model, "evaluation": evaluation,
                               "curves": {k: [[s, v] for s, v in p] for k, p in curves.items()}}, indent=2))
        return
    when = record.start_time.strftime("%Y-%m-%d %H:%M UTC") if record.start_time else "?"
    click.echo(f"run       {record.name}  ({record.kind}, {record.status}, {when})")
    click.echo(f"run id    {record.run_id}")
    if record.parent_id:
        click.echo(f"parent    {record.parent_id}")
    click.echo(f"model     {model or '-'}")
    click.echo(f"artifacts {record.artifact_uri}")
    _section("parameters", {k: _text(v) for k, v in record.params.items()})
    _section("metrics", {k: _number(v) for k, v in _ordered(record.metrics).items()})
    if curves:
        _section("curves", {k: f"{len(p)} steps, last {_number(p[-1][1])}" for k, p in curves.items()})
    if evaluation:
        result = evaluation_from_json(evaluation)
        click.echo("\nper class (validation)")
        click.echo(_indent(result["per_class"].to_string(float_format=lambda v: f"{v:.3f}")))
        click.echo("\nconfusion matrix (rows: true class, columns: predicted)")
        click.echo(_indent(result["confusion_matrix"].to_string()))


def _ordered(metrics: dict[str, float]) -> dict[str, float]:

    head = {k: metrics[k] for k in HEADLINE_METRICS if k in metrics}
    return {**head, **{k: v for k, v in sorted(metrics.items()) if k not in head}}


def _section(title: str, items: dict[str, str]) -> None:
    click.echo(f"\n{title}")
    width = max((len(k) for k in items), default=0)
    for key, value in items.items():
        click.echo(f"  {key:<{width}}  {value}")


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
