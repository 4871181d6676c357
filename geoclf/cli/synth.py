"""``geoclf synth``: a synthetic NAIP-like scene and the NLCD-like land cover under it (tiling.synth)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from tiling import synth as generator
from tiling.errors import InputError
from tiling.synth import SyntheticScene


def _numbers(text: str, count: tuple[int, ...], what: str) -> tuple[float, ...]:
    """Parse ``"a,b"``-style numbers, accepting any of the lengths in ``count``."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        values = ()
    if len(values) not in count:
        raise InputError(f"{what} must be {' or '.join(['N', 'N,N'][c - 1] for c in count)}, got {text!r}")
    return values


def _years(values: tuple[str, ...]) -> list[int]:
    years: list[int] = []
    for value in values:
        for part in value.replace(" ", ",").split(","):
            if not part:
                continue
            if not part.isdigit() or not 1950 <= int(part) <= 2100:
                raise InputError(f"year must be a four-digit year, got {part!r}")
            years.append(int(part))
    return sorted(set(years))


@contextmanager
def _progress_bar(desc: str) -> Iterator[Callable[[int, int], None]]:
    """A progress callback drawing one tqdm bar on stderr (silent when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc=desc, unit="block", disable=None, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _summary(scene: SyntheticScene, label: str) -> str:
    height, width = scene.shape
    shares = ", ".join(f"{name} {share:.0%}" for name, share in scene.class_shares.items())
    date = scene.date or f"undated ({scene.year})"
    return (f"{label}: {scene.naip} ({width} x {height} px, {scene.crs}, {date}, nodata "
            f"{scene.nodata_share:.1%})\n  land cover: {shares}")


@click.command("synth")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Output directory: writes naip.tif and nlcd.tif (naip_<year>.tif, nlcd.tif and "
                   "conversions.geojson for several years).")
@click.option("--size-m", default="4480", show_default=True,
              help="Scene size in metres: one side (square) or WIDTH,HEIGHT. 4480 m is 20 x 20 chips of 224 m.")
@click.option("--resolution", default=1.0, show_default=True, type=float,
              help="Pixel size in metres (NAIP: 1 m before 2018, 0.6 m after).")
@click.option("--crs", default="EPSG:26919", show_default=True,
              help="Scene CRS: a projected CRS in metres, normally the UTM zone of --center "
                   "(EPSG:26918 west of 72 W, EPSG:26919 east of it, in Massachusetts).")
@click.option("--center", default="-71.80,42.35", show_default=True,
              help="Scene centre as LON,LAT in degrees (default: central Massachusetts).")
@click.option("--year", "--years", "years", multiple=True,
              help="Acquisition year [default: 2016]. Several years (repeat the option, or list them after "
                   "one --years, spaced or comma-separated: --years 2010 2013 2016) make a time series on one "
                   "pixel grid, with the NLCD of the first year and conversions.geojson recording which land "
                   "became Developed in which year.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the synthetic world; the same seed and options give byte-identical pixels.")
@click.option("--nlcd/--no-nlcd", default=True, show_default=True,
              help="Also write nlcd.tif (30 m, EPSG:5070, NLCD codes and colours) covering the scene.")
@click.option("--nlcd-year", type=int, default=None,
              help="Land-cover year of nlcd.tif for a single-year scene (default: the scene year); an earlier "
                   "year also writes conversions.geojson.")
@click.option("--conversion-rate", default=0.008, show_default=True, type=float,
              help="Yearly hazard that eligible land (forest, fields, grass, shrub, barren) becomes Developed, "
                   "before weighting by zone; raise it for more change between years.")
@click.option("--conversions-after", default=2000, show_default=True, type=int,
              help="Conversions to Developed happen in the years after this one. With a high --conversion-rate, "
                   "set it just before the first year, or the scene starts out mostly developed.")
@click.option("--collar-m", type=float, default=None,
              help="Narrowest width of the nodata collar in metres (default: 0.5% of the size; 0: none).")
@click.option("--bands", type=click.Choice(["4", "3"]), default="4", show_default=True,
              help="4 (red, green, blue, NIR) or 3 (red, green, blue, like NAIP before about 2009).")
@click.option("--nodata", "nodata_kind", type=click.Choice(["zero", "alpha", "mask"]), default="zero",
              show_default=True,
              help="How the collar is marked: 0 in every band (NAIP's way), an alpha band after the image bands "
                   "(what gdalwarp -dstalpha writes) or a GDAL internal nodata mask; with alpha or mask the collar "
                   "holds imagery that only the mask hides.")
@click.option("--date-in", type=click.Choice(["tag", "name", "none"]), default="tag", show_default=True,
              help="Where the acquisition date is recorded: the ACQUISITION_DATE tag, the file name "
                   "(naip_YYYYMMDD.tif) or nowhere (like most hand-made clips and mosaics).")
@click.option("--preset", type=click.Choice(["default", "hard"]), default="default", show_default=True,
              help="hard: per-parcel radiometric variety, larger year-to-year shifts, patches of other cover inside "
                   "parcels; a world where band statistics overlap between classes and texture matters (same NLCD).")
@click.option("--utm-pair", is_flag=True, default=False,
              help="Instead of one scene, write naip_18.tif and naip_19.tif either side of the UTM 18/19 "
                   "boundary (72 W) and one nlcd.tif under both; --crs, --center, --collar-m, "
                   "--conversions-after, --bands, --nodata, --date-in and --preset do not apply.")
@click.argument("more_years", nargs=-1, type=str)
def synth(out: str, size_m: str, resolution: float, crs: str, center: str, years: tuple[str, ...],
          more_years: tuple[str, ...], seed: int,
          nlcd: bool, nlcd_year: int | None, conversion_rate: float, conversions_after: int, collar_m: float | None,
          bands: str, nodata_kind: str, date_in: str, preset: str, utm_pair: bool) -> None:
    """Write a synthetic NAIP-like scene (4-band uint8 GeoTIFF in UTM) and its NLCD-like land cover.

    Both are views of one seeded procedural world: the imagery shows its land cover (roofs and streets,
    tree crowns, field rows, bushes, water) with realistic variation, so classifiers can be trained and
    tested offline. Prints the files written and the land-cover shares of each scene.
    """
    size = _numbers(size_m, (1, 2), "--size-m")
    size_arg: float | tuple[float, float] = size[0] if len(size) == 1 else (size[0], size[1])
    lon, lat = _numbers(center, (2,), "--center")
    if more_years and not years:
        raise InputError(f"unexpected argument(s) {' '.join(more_years)}; years follow --year/--years")
    year_list = _years(years + more_years) or [2016]
    if nlcd_year is not None and len(year_list) > 1:
        raise InputError("--nlcd-year applies to a single-year scene; a series uses its first year")
    common = {"resolution": resolution, "seed": seed, "conversion_rate": conversion_rate}
    options = {"size_m": size_arg, "crs": crs, "center": (lon, lat), "collar_m": collar_m,
               "conversions_after": conversions_after, "bands": int(bands), "nodata": nodata_kind,
               "date_in": date_in, "preset": preset, **common}
    with _progress_bar("synth") as progress:
        if utm_pair:
            if len(year_list) > 1 or not nlcd:
                raise InputError("--utm-pair writes one year and its NLCD; drop --no-nlcd and extra years")
            if len(size) != 1:
                raise InputError("--utm-pair takes a single --size-m")
            scenes, nlcd_path = generator.make_utm_pair(out, size_m=size[0], year=year_list[0], **common)
            for scene in scenes:
                click.echo(_summary(scene, "naip"))
            click.echo(f"nlcd: {nlcd_path}")
            return
        if len(year_list) == 1:
            scene = generator.make_scene(out, year=year_list[0], nlcd=nlcd, nlcd_year=nlcd_year, progress=progress,
                                         **options)
            click.echo(_summary(scene, "naip"))
            if scene.nlcd:
                click.echo(f"nlcd: {scene.nlcd}")
            if scene.conversions:
                click.echo(f"conversions: {scene.conversions}")
            return
        if not nlcd:
            raise InputError("a series of years always writes its NLCD; drop --no-nlcd")
        series = generator.make_years(out, years=year_list, progress=progress, **options)
    for year, scene in series.scenes.items():
        click.echo(_summary(scene, f"naip {year}"))
    click.echo(f"nlcd: {series.nlcd} (land cover of {year_list[0]})")
    click.echo(f"conversions: {series.conversions} ({_count_features(series.conversions)} parts became "
               f"Developed after {year_list[0]})")


def _count_features(path: Path | None) -> int:
    return 0 if path is None else len(json.loads(Path(path).read_text())["features"])
