"""``geoclf change``: two score outputs -> transitions, change map, ranked changes, zones, report."""

from __future__ import annotations

import json
from pathlib import Path

import click

from geoclf.cli.common import smooth_option


@click.command("change")
@click.option("--before", required=True, type=click.Path(exists=True),
              help="Score output directory (predictions.parquet, landuse.tif) of the earlier date.")
@click.option("--after", required=True, type=click.Path(exists=True),
              help="Score output directory of the later date.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--zones", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Polygons (towns, tracts; any vector format, any CRS) for area per class and change per zone.")
@click.option("--zone-column", default=None, help="Column naming each zone (default: name/NAME/id/GEOID...).")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Labelled reference sample (GeoParquet/vector/CSV with 'reference' change classes or "
                   "'reference_before'/'reference_after') for error-adjusted areas with 95% CIs.")
@smooth_option("x N chips, applied to each date before comparing (suppresses single-chip noise)")
@click.option("--min-overlap", default=0.5, show_default=True,
              help="Chips on different grids pair when the before-chip covers at least this share of the "
                   "after-chip.")
@click.option("--developed", default="Developed", show_default=True,
              help="The class whose gains are reported as urbanization.")
@click.option("--pairs", default=0, show_default=True,
              help="Write before/after image pairs of this many top-ranked changes (reads the source rasters).")
@click.option("--sample-size", type=int, default=None,
              help="Also draw a stratified random sample of this many chips (by change class) to label.")
@click.option("--min-per-stratum", default=50, show_default=True,
              help="Floor per change class in that sample (Olofsson et al. 2014 suggest 50-100).")
@click.option("--seed", default=0, show_default=True, help="Seed of the sample.")
@click.option("--html/--no-html", "html_map", default=True, show_default=True,
              help="Write the interactive change.html map.")
def change(before: str, after: str, out: str, zones: str | None, zone_column: str | None, reference: str | None,
           smooth: int, min_overlap: float, developed: str, pairs: int, sample_size: int | None,
           min_per_stratum: int, seed: int, html_map: bool) -> None:
    """Compare the land use of two dates: transitions.csv, change.tif, changes.parquet, change.html, report.html."""
    from geoclf.change import run_change  # here, so that `geoclf change --help` does not load the analysis

    written = run_change(before, after, out, zones=zones, zone_column=zone_column, reference=reference,
                         smooth=smooth, min_overlap=min_overlap, developed=developed, pairs=pairs,
                         sample_size=sample_size, min_per_stratum=min_per_stratum, seed=seed, html_map=html_map)
    info = json.loads(Path(written["json"]).read_text(encoding="utf-8"))
    click.echo(f"{info['paired']} chip pairs ({info['compared_km2']:.2f} km²), {info['changed_chips']} changed "
               f"({info['changed_km2']:.2f} km²)" + (f"; to {developed}: {info['to_developed_km2']:.2f} km²"
                                                    if "to_developed_km2" in info else ""))
    for name, path in written.items():
        click.echo(f"  {name}: {path}")
