"""``geoclf naip search``: which NAIP scenes cover an area (STAC, Planetary Computer by default)."""

from __future__ import annotations

import click
import pandas as pd

from geoclf.stac import PLANETARY_COMPUTER_STAC, search_naip, write_scenes


@click.group("naip")
def naip() -> None:
    """Find NAIP imagery."""


@naip.command("search")
@click.option("--aoi", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Vector file of the area (any format geopandas reads).")
@click.option("--year", type=int, default=None, help="Acquisition year (default: every year).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Save the scenes (.geojson or .parquet) and their URLs (.txt beside it).")
@click.option("--stac-url", default=None, help="STAC API root (default: Microsoft Planetary Computer).")
@click.option("--collection", default="naip", show_default=True, help="STAC collection id.")
@click.option("--sign/--no-sign", default=True, show_default=True,
              help="Sign Planetary Computer asset URLs (SAS tokens) so GDAL can read them.")
@click.option("--max-items", default=500, show_default=True, help="Stop after this many scenes.")
@click.option("--json", "as_json", is_flag=True, help="Print the scenes (with their URLs) as JSON.")
def search(aoi: str, year: int | None, out: str | None, stac_url: str | None, collection: str, sign: bool,
           max_items: int, as_json: bool) -> None:
    """List the NAIP scenes (COG URLs) intersecting an AOI."""
    scenes = search_naip(aoi, year, stac_url=stac_url or PLANETARY_COMPUTER_STAC, collection=collection, sign=sign,
                         max_items=max_items)
    if as_json:
        if scenes.empty:
            click.echo("[]")
            return
        table = pd.DataFrame(scenes.drop(columns=scenes.geometry.name))
        click.echo(table.to_json(orient="records", date_format="iso", indent=2))
        if out:
            write_scenes(scenes, out)
        return
    if scenes.empty:
        click.echo("no NAIP scenes found" + (f" for {year}" if year else ""))
        return
    click.echo(scenes[["id", "date", "state", "gsd", "epsg"]].to_string(index=False))
    if out:
        click.echo(f"{len(scenes)} scenes -> {write_scenes(scenes, out)}")
