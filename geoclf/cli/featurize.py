"""``geoclf featurize``: chips -> feature vectors (a pretrained CNN, band statistics) in Parquet partitions, on Dask."""

from __future__ import annotations

import click

from geoclf.cli.common import (
    batch_size_option,
    chips_per_partition_option,
    precision_option,
    runtime_option,
    scheduler_option,
    workers_option,
)
from geoclf.cli.runs import runs_dir_option


@click.command("featurize")
@click.option("--chips", required=True, type=click.Path(exists=True),
              help="Chip index (chips.parquet or its directory) or a PNG folder in the split/Class/*.png layout.")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="CNN: resnet18, alexnet, resnet50, mobilenet_v2, efficientnet_lite0 or any torchvision "
                   "classification model name; or 'spectral' (band statistics and NDVI of every band, no CNN).")
@click.option("--weights", default="default", show_default=True,
              help="'default' (embedded offline ImageNet weights where the backbone has them, else torchvision's), "
                   "'imagenet' (torchvision, needs internet once), a local weights file, or 'none' (random).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory (partitions + features.json); a rerun resumes.")
@batch_size_option
@chips_per_partition_option
@workers_option
@click.option("--nir/--no-nir", default=True, show_default=True,
              help="Also store NDVI/NIR statistics per chip (from NAIP's 4th band).")
@click.option("--spectral/--no-spectral", default=True, show_default=True,
              help="Feed the classifier the CNN's features beside the spectral statistics of every band (NIR "
                   "included where every chip has it); --no-spectral: the CNN's alone.")
@click.option("--name", default=None, help="Run name in the run history (default: featurize-<backbone>).")
@runtime_option
@precision_option
@scheduler_option
@runs_dir_option
def featurize(chips: str, backbone: str, weights: str, out: str, batch_size: int, chips_per_partition: int,
              n_workers: int | None, nir: bool, spectral: bool, name: str | None, runtime: str, precision: str,
              scheduler: str, runs_dir: str | None) -> None:
    """Featurize every chip with a pretrained CNN's penultimate layer."""
    # the library is imported when the command runs, not when the CLI lists commands or shows --help
    from geoclf.features import featurize as run  # here: its progress and Dask setup cost a quarter second

    path = run(chips, out, backbone=backbone, weights=weights, batch_size=batch_size,
               chips_per_partition=chips_per_partition, scheduler=scheduler, n_workers=n_workers, nir=nir,
               spectral=spectral, run_name=name, runs_dir=runs_dir, runtime=runtime, precision=precision)
    click.echo(f"features -> {path}")
