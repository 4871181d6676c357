"""Zones and reference samples, read and checked once for the change and trend analyses.

Zones (towns, tracts, watersheds) come as any vector file geopandas reads, in any CRS; both analyses name
them with :func:`zone_names` and refuse names that repeat (:func:`checked_zone_names`), so that a zone's
rows can always be joined back to its polygon. A reference sample is a table of labelled sample units
(:func:`read_reference`): GeoParquet or any vector file when units are placed by geometry, plain Parquet or
CSV when they are placed by their chip grid ``cell`` key.
"""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import pandas as pd

from tiling.errors import InputError

PathLike = str | os.PathLike[str]

#: The class whose gains are reported as urbanization (change) and whose first year is mapped (trend).
DEVELOPED = "Developed"

# Tried in this order when no zone column is named: the names census and town files use.
_NAME_COLUMNS = ("name", "NAME", "Name", "zone", "id", "ID", "GEOID")


def read_zones(path: PathLike) -> gpd.GeoDataFrame:
    """Read a zones file (any vector format geopandas reads: GeoJSON, GeoPackage, shapefile, GeoParquet).

    Raises:
        InputError: the file is missing, unreadable, empty or has no CRS.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    try:
        zones = gpd.read_parquet(path) if path.suffix.lower() == ".parquet" else gpd.read_file(path)
    except Exception as exc:
        raise InputError(f"cannot be read as a vector file ({_first_line(exc)})", path) from exc
    if zones.empty:
        raise InputError("holds no zones", path)
    if zones.crs is None:
        raise InputError("has no CRS; zones need one to be placed on the chips", path)
    return zones


def zone_names(zones: gpd.GeoDataFrame, zone_column: str | None = None) -> pd.Series:
    """The name of each zone, as the change and trend tables give it.

    Args:
        zones: the zone polygons.
        zone_column: the column naming each zone; by default the first of ``name``, ``NAME``, ``Name``,
            ``zone``, ``id``, ``ID``, ``GEOID``, else the first text column, else ``"zone <row number>"`` (also
            for a zone whose name is missing).

    Returns:
        A text Series named ``zone``, on the zones' index.
    """
    column = zone_column or _name_column(zones)
    numbered = pd.Series([f"zone {i + 1}" for i in range(len(zones))], index=zones.index, name="zone")
    if column is None:
        return numbered
    # a zone without a name keeps its number (astype(str) leaves a missing name missing under pandas 3)
    names = zones[column]
    return names.astype(object).where(names.notna(), numbered).astype(str).rename("zone")


def checked_zone_names(zones: gpd.GeoDataFrame, zone_column: str | None = None) -> pd.Series:
    """:func:`zone_names`, after checking what a zonal table needs: a CRS, the named column, unique names.

    Raises:
        InputError: the zones have no CRS, ``zone_column`` is not one of their columns, or names repeat.
    """
    if zones.crs is None:
        raise InputError("the zones have no CRS; zones need one to be placed on the chips")
    if zone_column is not None and zone_column not in zones.columns:
        raise InputError(f"no column {zone_column!r} in the zones (columns: {', '.join(map(str, zones.columns))})")
    names = zone_names(zones, zone_column)
    if names.duplicated().any():
        repeated = sorted(names[names.duplicated()].unique())[:5]
        raise InputError(f"zone names repeat ({repeated}); pick a column that names each zone once")
    return names


def _name_column(zones: gpd.GeoDataFrame) -> str | None:
    for name in _NAME_COLUMNS:
        if name in zones.columns:
            return name
    for name in zones.columns:
        # pandas 3 reads text as its ``str`` dtype, older pandas as ``object``: both are string dtypes.
        if name != zones.geometry.name and pd.api.types.is_string_dtype(zones[name]):
            return str(name)
    return None


def read_reference(path: PathLike) -> gpd.GeoDataFrame | pd.DataFrame:
    """Read a reference sample: GeoParquet/Parquet, CSV, or any vector file geopandas reads.

    Raises:
        InputError: the file is missing or cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    try:
        if path.suffix.lower() == ".parquet":
            try:
                return gpd.read_parquet(path)
            except ValueError:  # plain Parquet: units are placed by their cell key
                return pd.read_parquet(path)
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return gpd.read_file(path)
    except Exception as exc:
        raise InputError(f"cannot be read as a reference sample ({_first_line(exc)})", path) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = ["DEVELOPED", "checked_zone_names", "read_reference", "read_zones", "zone_names"]
