"""``geoclf nlcd fetch``: an AOI's NLCD land cover for one year, read from USGS's Annual NLCD COGs over HTTP."""

from __future__ import annotations

import click

from tiling.nlcd import DEFAULT_NLCD_URL, NLCD_URL_ENV, fetch_nlcd


@click.group("nlcd")
def nlcd() -> None:
    """Get NLCD land cover (the labels), as naip search finds the imagery."""


@nlcd.command("fetch")
@click.option("--aoi", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Vector file of the area (any format geopandas reads, any CRS).")
@click.option("--year", required=True, type=click.IntRange(1985, 2100), help="NLCD year, e.g. 2016.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="GeoTIFF to write, e.g. nlcd.tif.")
@click.option("--url-template", default=None, metavar="URL",
              help=f"URL of the land-cover COGs with {{year}} (default: ${NLCD_URL_ENV}, else {DEFAULT_NLCD_URL}).")
def fetch(aoi: str, year: int, out: str, url_template: str | None) -> None:
    """Read only the AOI's window of the year's NLCD COG (HTTP range requests) into a GeoTIFF with its colours."""
    path = fetch_nlcd(aoi, year, out, url_template=url_template)
    click.echo(f"NLCD {year} -> {path}")
