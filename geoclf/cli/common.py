"""Options shared by several commands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from geoclf.runs import HEADLINE_METRICS

F = TypeVar("F", bound=Callable[..., Any])

scheduler_option = click.option(
    "--scheduler", default="local", show_default=True,
    help="Where tasks run: 'local' (a LocalCluster of worker processes), 'sync' (this process), a Dask "
         "scheduler address such as tcp://10.0.0.5:8786, or (score) a cluster recipe file.")
score_scheduler_option = click.option(
    "--scheduler", default="auto", show_default=True,
    help="Where tasks run: 'auto' (this process where worker processes cannot pay off - a single partition, "
         "or 2 cores or fewer without --workers - else a LocalCluster), 'local' (a LocalCluster of worker "
         "processes), 'sync' (this process), a Dask scheduler address such as tcp://10.0.0.5:8786, or a "
         "cluster recipe file.")

# Counts are checked by click (a usage error, exit 2) before anything starts: a batch size of 0 would only
# fail on a worker, after tiling, with a traceback.
batch_size_option = click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
                                 help="Chips per forward pass.")
chips_per_partition_option = click.option("--chips-per-partition", default=512, show_default=True,
                                          type=click.IntRange(min=1), help="Chips per Dask task / output file.")
workers_option = click.option("--workers", "n_workers", type=click.IntRange(min=1), default=None,
                              help="Worker processes of the local cluster (default: one per core).")
runtime_option = click.option(
    "--runtime", type=click.Choice(["torch", "openvino"]), default="torch", show_default=True,
    help="Inference runtime of the network: torch, or openvino (the network exported to ONNX, on the CPU; "
         "scoring needs `geoclf models export MODEL` first).")
score_runtime_option = click.option(
    "--runtime", type=click.Choice(["auto", "torch", "openvino"]), default="auto", show_default=True,
    help="Inference runtime of the network: auto = openvino where the model holds an export (`geoclf models "
         "export MODEL`), openvino is installed and no CUDA GPU is visible, else torch; torch; or openvino (the "
         "exported network on the CPU).")
export_option = click.option(
    "--export/--no-export", "export", default=None,
    help="Export the model's network to ONNX into its artifact (as `geoclf models export` does), so that `geoclf "
         "score` runs it on OpenVINO. Default: export where the model has a network and the ONNX exporter is "
         "installed. A failed export keeps the trained model, on torch, with a one-line warning.")
precision_option = click.option(
    "--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
    help="Precision of the openvino runtime: auto = bf16 where the CPU has BF16 instructions, else fp32.")


def echo_evaluation(evaluation: dict[str, Any]) -> None:
    """Print a model's headline validation metrics and its per-class table (train and finetune)."""
    for key in HEADLINE_METRICS:
        value = evaluation.get(key)
        if value is not None:
            click.echo(f"  {key:<18} {value:.4f}")
    click.echo(evaluation["per_class"].to_string(float_format=lambda v: f"{v:.3f}"))


def echo_export(artifact_dir: Path) -> None:
    """Print where a just-trained model's export is, if it has one (train and finetune)."""
    from geoclf.artifact import read_model_json

    record = read_model_json(artifact_dir).get("export") or {}
    if record.get("file"):
        click.echo(f"exported network -> {artifact_dir / record['file']}  sha256 {str(record['sha256'])[:12]}...")


def _odd_window(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value % 2 == 0:
        raise click.BadParameter(f"{value} is not an odd number (1 for no smoothing)", ctx=ctx, param=param)
    return value


def smooth_option(what: str) -> Callable[[F], F]:
    """``--smooth N``, the same on every command: the window of the plurality filter, an odd width (1: none).

    ``--smooth`` alone is 3, and ``--no-smooth`` (the older flag spelling) is 1; ``what`` says what the
    window spans (pixels of a map, dates of a series).
    """
    def decorate(function: F) -> F:
        @functools.wraps(function)
        def command(*args: Any, no_smooth: bool = False, **kwargs: Any) -> Any:
            if no_smooth:
                kwargs["smooth"] = 1
            return function(*args, **kwargs)

        command = click.option("--no-smooth", "no_smooth", is_flag=True, default=False, hidden=True,
                               help="The same as --smooth 1.")(command)
        smooth = click.option("--smooth", type=click.IntRange(min=1), default=1, show_default=True, is_flag=False,
                              flag_value=3, metavar="N", callback=_odd_window,
                              help=f"Plurality filter over a window of N {what} (odd; --smooth alone: 3; 1: none).")
        return smooth(command)

    return decorate
