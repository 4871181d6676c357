"""``geoclf tile``: NAIP x NLCD -> chips.parquet (and optionally PNG or GeoTIFF chips)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import yaml

import tiling
from geoclf.cli.common import scheduler_option
from geoclf.tile_area import tile_area
from tiling.errors import InputError
from tiling.materialize import materialize_chips


@click.command("tile")
@click.option("--naip", "naip", multiple=True, required=True,
              help="NAIP raster (path or URL GDAL reads, e.g. a COG over HTTP). Repeat, or list several after one "
                   "--naip.")
@click.argument("more_naip", nargs=-1, type=str)
@click.option("--nlcd", required=True,
              help="NLCD land-cover raster (any CRS; codes are looked up, never interpolated).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Output directory; writes chips.parquet.")
@click.option("--chip-size", default=224, show_default=True, help="Chip side in pixels (the model's input size).")
@click.option("--chip-size-m", type=float, default=None,
              help="Chip side in metres (default: chip size x the first raster's pixel size). Rasters of other "
                   "resolutions share the grid and are resampled.")
@click.option("--stride-m", type=float, default=None, help="Spacing of chips in metres (default: the chip size).")
@click.option("--aoi", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Vector file (any format geopandas reads) of the area of interest.")
@click.option("--aoi-predicate", type=click.Choice(["intersects", "within"]), default="intersects", show_default=True,
              help="Keep chips that intersect the AOI, or only those within it.")
@click.option("--min-purity", default=0.6, show_default=True,
              help="Keep chips whose majority class covers at least this fraction.")
@click.option("--max-nodata", default=0.05, show_default=True, help="Keep chips with at most this nodata fraction.")
@click.option("--classes", "classes_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML/JSON file mapping class names to NLCD codes (default: the six seed classes).")
@click.option("--split", type=click.Choice(["blocks", "scene"]), default="blocks", show_default=True,
              help="Spatially disjoint train/validation split: by spatial blocks or by whole scene.")
@click.option("--block-size-m", type=float, default=None, help="Side of a split block in metres (default: 5 chips).")
@click.option("--val-fraction", default=0.2, show_default=True, help="Share of chips per class aimed for validation.")
@click.option("--balance/--no-balance", default=False, show_default=True,
              help="Undersample every class to the rarest one in each split.")
@click.option("--seed", default=0, show_default=True, help="Seed of the split and of balancing.")
@click.option("--materialize", type=click.Choice(["png", "geotiff"]), default=None,
              help="Also write chips as PNG (split/Class/id.png, RGB) or 4-band georeferenced GeoTIFF.")
@scheduler_option
def tile(naip: tuple[str, ...], more_naip: tuple[str, ...], nlcd: str, out: str, chip_size: int,
         chip_size_m: float | None, stride_m: float | None, aoi: str | None, aoi_predicate: str, min_purity: float,
         max_nodata: float, classes_file: str | None, split: str, block_size_m: float | None, val_fraction: float,
         balance: bool, seed: int, materialize: str | None, scheduler: str) -> None:
    """Cut NAIP rasters into labeled chips against NLCD and write OUT/chips.parquet (GeoParquet)."""
    params = tiling.TileParams(chip_size=chip_size, chip_size_m=chip_size_m, stride_m=stride_m,
                               min_purity=min_purity, max_nodata=max_nodata, split=split, block_size_m=block_size_m,
                               val_fraction=val_fraction, balance=balance, seed=seed, aoi_predicate=aoi_predicate)
    if classes_file:
        params.classes = tiling.ClassScheme.from_mapping(_read_mapping(classes_file)).to_dict()
    # workers label and write the area's blocks; this process sees their counts, never the whole index
    written_index = tile_area([*naip, *more_naip], nlcd, out, params=params, aoi=aoi, scheduler=scheduler)
    click.echo(f"{written_index.chips} chips from {written_index.scenes} scene(s) -> {written_index.path}")
    click.echo(written_index.summary().to_string())
    if materialize:
        index = tiling.read_index(written_index.path)
        written = materialize_chips(index, Path(out) / materialize, fmt=materialize, size=chip_size,
                                    scheduler=scheduler)
        click.echo(f"{written} {materialize} chips -> {Path(out) / materialize}")


def _read_mapping(path: str) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) if not path.endswith(".json") else json.loads(
            Path(path).read_text())
    except Exception as exc:
        raise InputError(f"cannot be parsed ({str(exc).splitlines()[0]})", path) from exc
    if not isinstance(data, dict):
        raise InputError("must map class names to lists of NLCD codes", path)
    return data
