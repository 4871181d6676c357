"""NAIP discovery through a STAC API, against recorded responses served on loopback, and offline."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import geopandas as gpd
import pytest
from shapely import box

from geoclf.cli import main
from geoclf.stac import search_naip

DATA = Path(__file__).parent / "data" / "stac"


class _Recorded(BaseHTTPRequestHandler):
    """Planetary Computer's STAC API and SAS endpoint, as far as geoclf talks to them."""

    requests: ClassVar[list[tuple[str, str, dict]]] = []

    def _send(self, payload: dict, status: int = 200) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        root = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
        type(self).requests.append(("GET", self.path, {}))
        if self.path.rstrip("/") in ("", "/stac"):
            self._send({"type": "Catalog", "id": "recorded", "description": "recorded", "stac_version": "1.0.0",
                        "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                       "https://api.stacspec.org/v1.0.0/item-search",
                                       "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson"],
                        "links": [{"rel": "self", "href": f"{root}/stac"}, {"rel": "root", "href": f"{root}/stac"},
                                  {"rel": "search", "href": f"{root}/stac/search", "method": "POST",
                                   "type": "application/geo+json"}]})
        elif self.path.startswith("/sas/"):
            self._send({"msft:expiry": "2099-01-01T00:00:00Z", "token": "st=2026-01-01&se=2099-01-01&sp=rl&sig=abc"})
        else:
            self._send({"code": "NotFound"}, status=404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(("POST", self.path, body))
        recorded = json.loads((DATA / "search.json").read_text())
        year = body.get("datetime", "")[:4]
        if year:
            recorded["features"] = [f for f in recorded["features"] if f["properties"]["datetime"].startswith(year)]
        self._send(recorded)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stac_server(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorded)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    import planetary_computer.settings as pc_settings
    from planetary_computer.sas import TOKEN_CACHE

    monkeypatch.setenv("PC_SDK_SAS_URL", f"{url}/sas")
    pc_settings.Settings.get.cache_clear()
    TOKEN_CACHE.clear()
    _Recorded.requests = []
    yield url
    server.shutdown()
    pc_settings.Settings.get.cache_clear()


@pytest.fixture
def aoi(tmp_path):
    path = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[box(-71.10, 42.39, -71.08, 42.41)], crs="EPSG:4326").to_crs("EPSG:26919").to_file(path)
    return path


def test_search_sends_the_aoi_and_year_and_signs_urls(stac_server, aoi):
    scenes = search_naip(aoi, 2021, stac_url=f"{stac_server}/stac")
    assert list(scenes["id"]) == ["ma_m_4207123_ne_19_060_20211018"]
    assert scenes.loc[0, "year"] == 2021 and scenes.loc[0, "epsg"] == 26919
    assert scenes.loc[0, "href"].endswith("?st=2026-01-01&se=2099-01-01&sp=rl&sig=abc")
    post = next(body for method, _, body in _Recorded.requests if method == "POST")
    assert post["collections"] == ["naip"]
    assert post["datetime"].startswith("2021-01-01")
    # the AOI travels in EPSG:4326 even though the file is in UTM
    lon, lat = post["intersects"]["coordinates"][0][0]
    assert -71.2 < lon < -71.0 and 42.3 < lat < 42.5
    assert any(path.startswith("/sas/naipeuwest/naip") for _, path, _ in _Recorded.requests)


def test_all_years_newest_first_and_cli_writes_urls(stac_server, aoi, tmp_path, capsys):
    out = tmp_path / "scenes.geojson"
    main(["naip", "search", "--aoi", str(aoi), "--stac-url", f"{stac_server}/stac", "--no-sign", "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed.index("20211018") < printed.index("20181021")
    urls = out.with_suffix(".txt").read_text().split()
    assert len(urls) == 2 and all(u.startswith("https://naipeuwest.blob.core.windows.net/") for u in urls)
    assert len(gpd.read_file(out)) == 2
    main(["naip", "search", "--aoi", str(aoi), "--stac-url", f"{stac_server}/stac", "--no-sign", "--json"])
    scenes = json.loads(capsys.readouterr().out)
    assert "20211018" in scenes[0]["id"]  # newest first, as in the table
    assert len(scenes) == 2 and all(s["href"].startswith("https://naipeuwest.blob.core.windows.net/") for s in scenes)


def test_unreachable_api_is_one_line(aoi, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["naip", "search", "--aoi", str(aoi), "--stac-url", "http://127.0.0.1:9/stac"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "cannot reach the STAC API at http://127.0.0.1:9/stac" in err and "Traceback" not in err


# -- signed URLs: stored bare, signed at read time -------------------------------------------------------

SCENE_URL = ("http://naipeuwest.blob.core.windows.net/naip/v002/ma/2021/ma_060cm_2021/42071/"
             "m_4207123_ne_19_060_20211018.tif")


@pytest.fixture(scope="module")
def blob_scene(tmp_path_factory):
    """A small synthetic NAIP scene (9 chips) and its NLCD."""
    from tiling.synth import make_scene

    return make_scene(tmp_path_factory.mktemp("blob-scene"), size_m=672, seed=3, collar_m=0)


@pytest.fixture
def blob_storage(blob_scene, tmp_path, monkeypatch):
    """Blob storage holding the scene at ``SCENE_URL``, and the token service issuing its tokens.

    See tests/blob_server.py: it refuses reads without a token it issued, or with one it has expired.
    """
    import shutil
    import subprocess
    import sys
    from types import SimpleNamespace
    from urllib.request import Request, urlopen

    import planetary_computer.settings as pc_settings
    from planetary_computer.sas import TOKEN_CACHE

    root = tmp_path / "blobs"
    blob = root / SCENE_URL.split(".net/", 1)[1]
    blob.parent.mkdir(parents=True)
    shutil.copy(blob_scene.naip, blob)
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("blob_server.py")), str(root)],
                              stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{int(server.stdout.readline())}"
    monkeypatch.setenv("GDAL_HTTP_PROXY", url.removeprefix("http://"))  # GDAL reaches "blob storage" here
    monkeypatch.setenv("PC_SDK_SAS_URL", f"{url}/sas")
    pc_settings.Settings.get.cache_clear()
    TOKEN_CACHE.clear()

    def expire() -> None:
        urlopen(Request(f"{url}/_control/expire", method="POST"), timeout=10).close()

    def log() -> list[list]:
        with urlopen(f"{url}/_control/log", timeout=10) as answer:
            return json.loads(answer.read())

    yield SimpleNamespace(url=url, expire=expire, log=log)
    server.terminate()
    server.wait(timeout=30)
    pc_settings.Settings.get.cache_clear()
    TOKEN_CACHE.clear()


def test_storage_refuses_unsigned_reads(blob_storage):
    import rasterio
    from rasterio.errors import RasterioIOError

    with pytest.raises(RasterioIOError, match="403"):
        rasterio.open(SCENE_URL)


def test_an_index_stores_bare_urls_and_featurizes_after_its_tokens_expired(stac_server, blob_storage, blob_scene,
                                                                           aoi, tmp_path):
    from geoclf.features import featurize
    from geoclf.stac import write_scenes
    from tiling.index import read_index

    scenes = search_naip(aoi, 2021, stac_url=f"{stac_server}/stac")
    assert "sig=token" in scenes.loc[0, "href"]  # signed for immediate use by other tools
    # the recorded item points at https; this storage speaks plain HTTP (through GDAL's proxy setting)
    scenes["href"] = scenes["href"].str.replace("https://", "http://", regex=False)
    listed = write_scenes(scenes, tmp_path / "scenes.geojson")
    assert listed.with_suffix(".txt").read_text().split() == [SCENE_URL]
    assert "sig=" not in listed.read_text()

    main(["tile", "--naip", *listed.with_suffix(".txt").read_text().split(), "--nlcd", str(blob_scene.nlcd),
          "--out", str(tmp_path / "chips"), "--scheduler", "sync"])
    index = read_index(tmp_path / "chips")
    assert len(index) > 0 and set(index["source"]) == {SCENE_URL}
    assert "sig=" not in (tmp_path / "chips" / "chips.parquet").read_bytes().decode("latin-1")

    blob_storage.expire()  # weeks later: every token issued so far is refused
    before = len(blob_storage.log())
    featurize(tmp_path / "chips", tmp_path / "feats", scheduler="sync", record_run=False, progress=False)
    assert (tmp_path / "feats" / "features.json").exists()
    later = blob_storage.log()[before:]
    assert any(status == 403 for *_, status in later)  # the cached token was tried and refused...
    served = {sig for _, host, _, sig, status in later if status in (200, 206)}
    assert served and all(int(sig.removeprefix("token")) > 1 for sig in served)  # ...then a fresh one read


def test_a_url_stored_with_an_expired_token_is_read_with_a_fresh_one(blob_storage):
    from tiling.io import ChipReader

    old = f"{SCENE_URL}?st=2020-01-01&se=2020-01-02&sp=rl&sv=2020-01-01&sr=c&sig=token0"  # as geoclf once stored
    with ChipReader(bands=(1, 2, 3), size=224) as reader:
        chip = reader.read(old, (0, 0, 224, 224))
    assert chip.shape == (3, 224, 224) and chip.any()
    log = blob_storage.log()
    assert not any(sig == "token0" and status in (200, 206) for *_, sig, status in log)
