"""``geoclf trend``: land-use maps of several dates -> lazy stack (Zarr), class area trends, trajectories, HTML."""

from __future__ import annotations

import click

from geoclf.cli.common import scheduler_option, smooth_option


@click.command("trend")
@click.option("--maps", "maps", multiple=True,
              help="Map of one date: a `geoclf score` output directory or a landuse.tif. Several may follow one "
                   "--maps (`--maps nd-2009/ nd-2010/ nd-2012/`).")
@click.argument("more_maps", nargs=-1, type=str)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--zones", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Vector file of zones (towns, tracts) for per-zone areas and trends.")
@click.option("--zone-column", default=None, help="Column naming the zones (default: name/NAME/zone/id/GEOID).")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Labelled reference sample (CSV/Parquet/vector: 'reference' with 'date' or 'year', or "
                   "'reference_<YYYY>' columns; placed by 'cell' or geometry) for error-adjusted areas with 95% CIs.")
@smooth_option("dates of each pixel's series, applied before counting changes (3 removes one-date "
               "A->B->A flicker)")
@click.option("--developed", default="Developed", show_default=True,
              help="Class whose first year is mapped.")
@click.option("--dates", default=None,
              help="Acquisition dates, comma-separated, one per map in the order given (overrides the maps').")
@click.option("--probabilities/--no-probabilities", default=False, show_default=True,
              help="Also stack the per-class probabilities (landuse_probs.tif).")
@click.option("--chunks", default=512, show_default=True, type=int, help="Spatial chunk side of the stack, in pixels.")
@click.option("--html/--no-html", "html_map", default=True, show_default=True, help="Write trend.html.")
@click.option("--basemap", default="OpenStreetMap", show_default=True,
              help="Basemap of trend.html: a folium provider name or a tile URL template; 'none' for none.")
@click.option("--workers", "n_workers", type=int, default=None,
              help="Worker processes of the local cluster (default: one per core).")
@scheduler_option
def trend(maps: tuple[str, ...], more_maps: tuple[str, ...], out: str, zones: str | None, zone_column: str | None,
          reference: str | None, smooth: int, developed: str, dates: str | None, probabilities: bool, chunks: int,
          html_map: bool, basemap: str, n_workers: int | None, scheduler: str) -> None:
    """Trends of land use over several dates: areas per class and date, Theil–Sen trends, per-chip change
    and flicker counts, the year each chip became developed, zonal trends and an interactive map."""
    from geoclf.trend import analyze_trends  # here, so that `geoclf trend --help` does not load the analysis

    written = analyze_trends([*maps, *more_maps], out, zones=zones, zone_column=zone_column, reference=reference,
                             smooth=smooth, developed=developed,
                             dates=[d.strip() for d in dates.split(",")] if dates else None,
                             probabilities=probabilities, chunks=chunks, html_map=html_map,
                             basemap=None if basemap.lower() == "none" else basemap, scheduler=scheduler,
                             n_workers=n_workers)
    for key, path in written.items():
        click.echo(f"{key:>18}: {path}")
