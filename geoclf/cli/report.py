"""``geoclf report``: a trained run's results analysis -> metrics, confusion matrix, gallery, map, report.html."""

from __future__ import annotations

import click

from geoclf.cli.runs import runs_dir_option


@click.command("report")
@click.option("--run", "run", required=True, help="Run name or id of a train or finetune run.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@runs_dir_option
@click.option("--chips", type=click.Path(), default=None,
              help="Chip index the run was trained on (default: the one the run recorded); gallery chips are "
                   "read through it.")
@click.option("--features", "features", multiple=True, type=click.Path(), default=(),
              help="Feature directories of a features model (default: the ones the run recorded; when gone, the "
                   "validation chips are predicted from the imagery). Repeat for several.")
@click.option("--predictions", type=click.Path(exists=True), default=None,
              help="A `geoclf score` output directory: its landuse.tif becomes the area map of the report.")
@click.option("--gallery", default=24, show_default=True, type=click.IntRange(min=0),
              help="Most misclassified validation chips to draw (most confident mistakes first); 0 for none.")
@click.option("--trust", is_flag=True, default=False,
              help="Load a model artifact whose classifier needs types geoclf does not trust by default.")
def report(run: str, out: str, runs_dir: str | None, chips: str | None, features: tuple[str, ...],
           predictions: str | None, gallery: int, trust: bool) -> None:
    """Results of a trained run: metrics.csv, per_class.csv, confusion matrix, misclassified-chip gallery,
    area map and one self-contained report.html."""
    import json
    from pathlib import Path

    from geoclf.analysis import results_report  # here: matplotlib and scikit-learn take seconds

    written = results_report(run, out, runs_dir=runs_dir, chips=chips, features=list(features) or None,
                             predictions=predictions, gallery=gallery, trusted=trust)
    info = json.loads(Path(written["json"]).read_text(encoding="utf-8"))
    scores = info["metrics"]
    click.echo(f"{info['run']}: accuracy {_number(scores['accuracy'])}, kappa {_number(scores['kappa'])} on "
               f"{info['n_val']} validation chips; {info['misclassified']} misclassified, {info['gallery_chips']} "
               "in the gallery")
    for note in info["notes"]:
        click.echo(f"note: {note}")
    for name, path in written.items():
        click.echo(f"  {name}: {path}")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
