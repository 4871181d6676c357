"""``geoclf models``: the model registry (register, list, show, promote) and exports for inference runtimes."""

from __future__ import annotations

import json

import click

from geoclf.cli.runs import runs_dir_option
from geoclf.registry import EXPORT_TAG, list_models, promote, register_model, show_model


@click.group("models")
def models() -> None:
    """Registered models: named, numbered versions with aliases such as production."""


@models.command("register")
@click.argument("what", type=click.Choice(["run", "best-of-sweep"]), default="run")
@click.option("--run", "run", required=True, metavar="RUN",
              help="Run name or id whose model artifact to register; with best-of-sweep, the sweep's parent run.")
@click.option("--name", required=True, help="Registered model name, e.g. landuse-naip.")
@click.option("--description", default=None, help="Free text stored with the version.")
@click.option("--export", is_flag=True, default=False,
              help="First export the model's network to ONNX into the run's artifact (as `geoclf models export` "
                   "does), so the version scores on OpenVINO; nothing is registered if the export fails.")
@click.option("--trust", is_flag=True, default=False,
              help="With --export: load a classifier whose types geoclf does not trust by default.")
@runs_dir_option
def register_command(what: str, run: str, name: str, description: str | None, export: bool, trust: bool,
                     runs_dir: str | None) -> None:
    """Register a run's model (or the best fit of a sweep) as the next version of NAME."""
    if what == "best-of-sweep":
        from geoclf.sweep import best_of_sweep  # here: scikit-learn takes seconds to import

        best = best_of_sweep(run, runs_dir=runs_dir)
        run = best.run_id
        description = description or f"best of sweep {run}"
    version = register_model(run, name, description=description, runs_dir=runs_dir, export=export, trusted=trust)
    exported = version.tags.get(EXPORT_TAG)
    click.echo(f"registered run {version.tags.get('geoclf.source_run_name')} ({version.run_id[:8]}) as "
               f"{name} version {version.version}  ({version.ref})"
               + (f", exported network sha256 {exported[:12]}..." if exported else ""))


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the models as JSON.")
@runs_dir_option
def list_command(as_json: bool, runs_dir: str | None) -> None:
    """List registered models."""
    table = list_models(runs_dir=runs_dir)
    if as_json:
        click.echo(table.to_json(orient="records", date_format="iso", indent=2))
        return
    if table.empty:
        click.echo("no registered models", err=True)
        return
    table["updated"] = table["updated"].map(lambda t: t.strftime("%Y-%m-%d %H:%M") if t else "")
    click.echo(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3f}"))


@models.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
@runs_dir_option
def show_command(name: str, as_json: bool, runs_dir: str | None) -> None:
    """Show every version of a registered model with its aliases, source run, data and metrics."""
    versions = show_model(name, runs_dir=runs_dir)
    if as_json:
        click.echo(json.dumps([v.to_dict() for v in versions], indent=2))
        return
    click.echo(f"{name}: {len(versions)} version(s)")
    for v in versions:
        d = v.to_dict()
        aliases = f" [{', '.join(v.aliases)}]" if v.aliases else ""
        accuracy = v.metrics.get("accuracy")
        click.echo(f"  version {v.version}{aliases}: run {d['source_run_name']} ({(v.run_id or '')[:8]}), "
                   f"{d['kind']} model, accuracy {'-' if accuracy is None else f'{accuracy:.4f}'}, "
                   f"chip index {(d['chip_index_sha256'] or '-')[:12]}, geoclf {d['geoclf_version']}, "
                   f"{d['created'][:16] if d['created'] else ''}")


@models.command("promote")
@click.argument("name")
@click.option("--version", "version", type=int, required=True, help="Version number to promote.")
@click.option("--stage", default="production", show_default=True,
              help="Alias to point at it (production, staging, ...); it moves from any other version.")
@runs_dir_option
def promote_command(name: str, version: int, stage: str, runs_dir: str | None) -> None:
    """Point an alias (stage) of NAME at a version: then NAME@STAGE loads it."""
    promoted = promote(name, version, stage, runs_dir=runs_dir)
    click.echo(f"{name}@{stage} -> version {promoted.version}")


@models.command("export")
@click.argument("model")
@click.option("--force", is_flag=True, default=False, help="Export again even if a valid export is recorded.")
@click.option("--trust", is_flag=True, default=False,
              help="Load a model artifact whose classifier needs types geoclf does not trust by default.")
@runs_dir_option
def export_command(model: str, force: bool, trust: bool, runs_dir: str | None) -> None:
    """Export MODEL's network to ONNX (network.onnx in the artifact, its hash in model.json) for --runtime openvino.

    MODEL is a model artifact directory, a run name or id, or a registered model (NAME@ALIAS, NAME/VERSION).
    """
    from geoclf.export import export_model  # here: torch and the ONNX exporter take seconds to import

    record = export_model(model, runs_dir=runs_dir, trusted=trust, force=force)
    click.echo(f"{record['file']}  sha256 {record['sha256'][:12]}...  opset {record['opset']}  "
               f"input {record['input_shape']}")
