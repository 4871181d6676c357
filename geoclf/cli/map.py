"""``geoclf map``: (re)draw the maps of scored predictions (another CRS, smoothing, probabilities)."""

from __future__ import annotations

import click

from geoclf.cli.common import smooth_option


@click.command("map")
@click.option("--predictions", required=True, type=click.Path(exists=True),
              help="predictions.parquet or the geoclf score output directory holding it.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory for the maps.")
@click.option("--crs", default=None, help="Map CRS (default: the chips' CRS, or EPSG:5070 across UTM zones).")
@smooth_option("x N pixels of the class map")
@click.option("--probabilities/--no-probabilities", default=False, show_default=True,
              help="Also write landuse_probs.tif (one band per class).")
@click.option("--html/--no-html", default=True, show_default=True, help="Write the interactive map.html.")
def map_command(predictions: str, out: str, crs: str | None, smooth: int, probabilities: bool, html: bool) -> None:
    """Write landuse.tif (COG), class polygons, map.html and map.png from scored predictions."""
    from geoclf.landuse import classes_of, read_predictions
    from geoclf.maps import write_maps  # here: folium and scipy take a second to import

    frame = read_predictions(predictions)
    written = write_maps(frame, classes_of(frame), out, crs=crs, smooth=smooth, probabilities=probabilities,
                         html_map=html)
    for key, path in written.items():
        click.echo(f"{key:>13}: {path}")
