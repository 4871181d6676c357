"""Finding NAIP scenes for an area through a STAC API (Microsoft Planetary Computer's ``naip`` collection).

Planetary Computer serves NAIP as Cloud-Optimized GeoTIFFs in Azure Blob Storage; reading one needs a
short-lived SAS token appended to its URL ("signing"). Tiling and scoring read only the windows they need
over HTTP (GDAL's ``/vsicurl``), never whole files. Tokens expire within hours, so what geoclf writes (scene
lists, chip indexes, predictions) holds the URLs without them, and every read signs them afresh
(:mod:`tiling.signing`): an index tiled today still featurizes next month.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import geopandas as gpd
from shapely.geometry import shape

from tiling import signing
from tiling.errors import InputError
from tiling.io import atomic_path

#: Planetary Computer's STAC API.
PLANETARY_COMPUTER_STAC = "https://planetarycomputer.microsoft.com/api/stac/v1"
#: The NAIP collection id there.
NAIP_COLLECTION = "naip"
#: The asset holding the 4-band image.
IMAGE_ASSET = "image"


def read_aoi(aoi: str | os.PathLike[str]) -> gpd.GeoSeries:
    """An AOI vector file as geometries in EPSG:4326 (what STAC searches take)."""
    try:
        frame = gpd.read_file(aoi)
    except Exception as exc:
        raise InputError(f"cannot be read as a vector file ({str(exc).splitlines()[0]})", aoi) from exc
    if frame.crs is None:
        raise InputError("has no CRS", aoi)
    if frame.empty:
        raise InputError("holds no shapes", aoi)
    return frame.geometry.to_crs("EPSG:4326")


def search_naip(aoi: str | os.PathLike[str] | Any, year: int | None = None, *,
                stac_url: str = PLANETARY_COMPUTER_STAC, collection: str = NAIP_COLLECTION, sign: bool = True,
                max_items: int = 500, timeout: float = 30.0) -> gpd.GeoDataFrame:
    """NAIP scenes (STAC items) that intersect an area, optionally of one year.

    Args:
        aoi: a vector file, or a shapely geometry in EPSG:4326.
        year: acquisition year (NAIP flies each state every 2-3 years); all years when ``None``.
        stac_url: the STAC API root.
        collection: the collection id.
        sign: sign asset URLs for Planetary Computer's blob storage (SAS tokens), for reading them right
            away with other tools; geoclf's own readers sign the bare URLs themselves.
        max_items: stop after this many items.
        timeout: seconds to wait for the API.

    Returns:
        One row per scene: ``id``, ``date``, ``year``, ``state``, ``gsd``, ``epsg``, ``href`` (the image COG,
        signed when asked), ``geometry`` (EPSG:4326), newest first.

    Raises:
        InputError: the API cannot be reached (offline), or answers with an error.
    """
    from pystac_client import Client
    from pystac_client.exceptions import APIError
    from pystac_client.stac_api_io import StacApiIO

    geometry = read_aoi(aoi).union_all() if isinstance(aoi, str | os.PathLike) else aoi
    query: dict[str, Any] = {"collections": [collection], "intersects": geometry.__geo_interface__,
                             "max_items": max_items}
    if year is not None:
        query["datetime"] = f"{year}-01-01/{year}-12-31"
    try:
        client = Client.open(stac_url, stac_io=StacApiIO(timeout=timeout, max_retries=1))
        items = list(client.search(**query).items())
    except (APIError, OSError) as exc:
        if _unreachable(exc):
            raise InputError(f"cannot reach the STAC API at {stac_url} (offline?); use local NAIP files or COG "
                             "URLs instead") from exc
        raise InputError(f"the STAC API at {stac_url} answered with an error ({str(exc).splitlines()[0][:200]})"
                         ) from exc
    rows = []
    for item in items:
        asset = item.assets.get(IMAGE_ASSET)
        if asset is None:
            continue
        props = item.properties
        when = item.datetime or (dt.datetime.fromisoformat(props["start_datetime"].replace("Z", "+00:00"))
                                 if props.get("start_datetime") else None)
        rows.append({
            "id": item.id,
            "date": when.date() if when else None,
            "year": int(props.get("naip:year") or (when.year if when else 0)) or None,
            "state": props.get("naip:state"),
            "gsd": props.get("gsd"),
            "epsg": props.get("proj:epsg"),
            "href": sign_href(asset.href, timeout=timeout) if sign else asset.href,
            "geometry": shape(item.geometry),
        })
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326") if rows else gpd.GeoDataFrame(
        {"id": [], "date": [], "year": [], "state": [], "gsd": [], "epsg": [], "href": []}, geometry=[],
        crs="EPSG:4326")
    return frame.sort_values(["date", "id"], ascending=[False, True]).reset_index(drop=True)


def _unreachable(exc: BaseException) -> bool:
    """True when an error (or one it wraps) is a failed connection or a timeout, not an API answer."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "Failed to establish a new connection" in str(exc) or "Max retries exceeded" in str(exc)


def sign_href(href: str, timeout: float = 30.0) -> str:
    """Append a current Planetary Computer SAS token to a blob-storage URL (other URLs are returned unchanged).

    Raises:
        InputError: the token service cannot be reached (offline) or refuses the container.
    """
    return signing.for_reading(href, timeout=timeout)


def write_scenes(scenes: gpd.GeoDataFrame, path: str | os.PathLike[str]) -> Path:
    """Save a scene list (GeoJSON, GeoParquet by extension) and a plain ``.txt`` of hrefs beside it.

    The hrefs are written without SAS tokens (which would expire long before the list is used); tiling
    and scoring sign them when they read.
    """
    path = Path(path)
    out = scenes.copy()
    out["href"] = [signing.unsigned(str(h)) for h in out["href"]]
    out["date"] = out["date"].astype(str)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            out.to_parquet(tmp)
        else:
            out.to_file(tmp, driver="GeoJSON")
    with atomic_path(path.with_suffix(".txt")) as tmp:
        tmp.write_text("\n".join(out["href"]) + ("\n" if len(out) else ""))
    return path


__all__ = ["NAIP_COLLECTION", "PLANETARY_COMPUTER_STAC", "search_naip", "sign_href", "write_scenes"]
