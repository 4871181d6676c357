"""``geoclf score``: a model over whole areas on Dask -> predictions.parquet, landuse.tif, map.html, map.png."""

from __future__ import annotations

import click

from geoclf.cli.common import (
    batch_size_option,
    chips_per_partition_option,
    precision_option,
    score_runtime_option,
    score_scheduler_option,
    smooth_option,
    workers_option,
)
from geoclf.cli.runs import runs_dir_option
from geoclf.cluster import scheduler_from_option


@click.command("score")
@click.option("--model", required=True,
              help="Model artifact directory, a run name/id from the run history, or a registered model "
                   "(NAME@ALIAS, NAME/VERSION).")
@click.option("--naip", "naip", multiple=True, help="NAIP raster(s) to score (paths or URLs).")
@click.argument("more_naip", nargs=-1, type=str)
@click.option("--chips", type=click.Path(exists=True), default=None,
              help="Score an existing chip index instead (its NLCD labels then give an accuracy report).")
@click.option("--aoi", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Vector file restricting the area scored.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory; a rerun resumes from the partitions already scored.")
@click.option("--cluster", "cluster_recipe", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Cluster recipe (YAML) for a cloud cluster through dask-cloudprovider.")
@workers_option
@batch_size_option
@chips_per_partition_option
@click.option("--max-nodata", default=0.5, show_default=True, help="Skip chips with more nodata than this fraction.")
@click.option("--chip-size-m", type=float, default=None,
              help="Ground side of a chip in metres (default: the size the model was trained on).")
@click.option("--crs", default=None, help="CRS of the map (default: the rasters', or EPSG:5070 across UTM zones).")
@smooth_option("x N pixels of the class map")
@click.option("--probabilities/--no-probabilities", default=False, show_default=True,
              help="Also write per-class probability bands (landuse_probs.tif).")
@click.option("--trust", is_flag=True, default=False,
              help="Load a model artifact whose classifier needs types geoclf does not trust by default.")
@score_runtime_option
@precision_option
@score_scheduler_option
@runs_dir_option
def score(model: str, naip: tuple[str, ...], more_naip: tuple[str, ...], chips: str | None, aoi: str | None, out: str,
          cluster_recipe: str | None, n_workers: int | None, batch_size: int, chips_per_partition: int,
          max_nodata: float, chip_size_m: float | None, crs: str | None, smooth: int, probabilities: bool,
          trust: bool, runtime: str, precision: str, scheduler: str, runs_dir: str | None) -> None:
    """Score every chip of an area with a model and write georeferenced land-use maps."""
    from geoclf.score import score as run  # here: maps and folium take a second to import

    with scheduler_from_option(cluster_recipe or scheduler) as target:
        written = run(model, out, naip=[*naip, *more_naip] or None, chips=chips, aoi=aoi, scheduler=target,
                      n_workers=n_workers, batch_size=batch_size, chips_per_partition=chips_per_partition,
                      max_nodata=max_nodata, chip_size_m=chip_size_m, crs=crs, smooth=smooth,
                      probabilities=probabilities, trusted=trust, runs_dir=runs_dir, runtime=runtime,
                      precision=precision)
    for key, path in written.items():
        click.echo(f"{key:>13}: {path}")
