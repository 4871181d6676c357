"""Options shared by several commands."""

from __future__ import annotations

from typing import Any

import click

from geoclf.runs import HEADLINE_METRICS

scheduler_option = click.option(
    "--scheduler", default="local", show_default=True,
    help="Where tasks run: 'local' (a LocalCluster of worker processes), 'sync' (this process), a Dask "
         "scheduler address such as tcp://10.0.0.5:8786, or (score) a cluster recipe file.")

# Counts are checked by click (a usage error, exit 2) before anything starts: a batch size of 0 would only
# fail on a worker, after tiling, with a traceback.
batch_size_option = click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
                                 help="Chips per forward pass.")
chips_per_partition_option = click.option("--chips-per-partition", default=512, show_default=True,
                                          type=click.IntRange(min=1), help="Chips per Dask task / output file.")
workers_option = click.option("--workers", "n_workers", type=click.IntRange(min=1), default=None,
                              help="Worker processes of the local cluster (default: one per core).")


def echo_evaluation(evaluation: dict[str, Any]) -> None:
    """Print a model's headline validation metrics and its per-class table (train and finetune)."""
    for key in HEADLINE_METRICS:
        value = evaluation.get(key)
        if value is not None:
            click.echo(f"  {key:<18} {value:.4f}")
    click.echo(evaluation["per_class"].to_string(float_format=lambda v: f"{v:.3f}"))
