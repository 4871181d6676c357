"""``geoclf nlcd fetch``: the AOI's window of an NLCD COG over HTTP range requests, from a local server."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.shutil import copy as rio_copy
from rasterio.transform import from_origin
from realdata import RangeServer
from shapely import box

from geoclf.cli import main
from tiling.classes import NLCD_COLORS

# A patch of CONUS Albers (EPSG:5070) on NLCD's 30 m grid, near Boston, in the layout of the Annual NLCD COGs:
# one band of uint8 codes, nodata 250, the colour table, 512-pixel tiles and overviews.
X0, Y0, SIZE = 1_980_000.0, 2_430_000.0, 2048
NAME = "Annual_NLCD_LndCov_{year}_CU_C1V0.tif"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("nlcd-served")
    codes = np.array(sorted(NLCD_COLORS), dtype=np.uint8)
    rng = np.random.default_rng(0)
    data = codes[rng.integers(0, len(codes), (SIZE, SIZE))]  # random codes: the file does not compress away
    data[:, :16] = 250
    profile = {"driver": "COG", "width": SIZE, "height": SIZE, "count": 1, "dtype": "uint8", "crs": "EPSG:5070",
               "transform": from_origin(X0, Y0, 30, 30), "nodata": 250, "blocksize": 512, "compress": "deflate"}
    cog = folder / NAME.format(year=2019)
    with rasterio.MemoryFile() as memory, memory.open(**{**profile, "driver": "GTiff"}) as staging:
        staging.write(data, 1)
        staging.write_colormap(1, {c: (*NLCD_COLORS[c], 255) for c in codes})
        rio_copy(staging, cog, **profile)
    with RangeServer(folder) as server:
        yield server, cog, data


def test_fetch_reads_only_the_aois_window_by_ranges(served, tmp_path):
    server, cog, data = served
    # a 3 x 2 km AOI given in WGS 84, inside the patch
    aoi_albers = box(X0 + 30_000, Y0 - 40_000, X0 + 33_000, Y0 - 38_000)
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoSeries([aoi_albers], crs=5070).to_crs(4326).to_file(aoi)
    before = server.bytes_sent
    out = tmp_path / "nlcd.tif"
    main(["nlcd", "fetch", "--aoi", str(aoi), "--year", "2019", "--out", str(out),
          "--url-template", server.url(NAME)])
    sent = server.bytes_sent - before
    assert all(r and r.startswith("bytes=") for r in server.requests)  # no whole-file GET
    assert 0 < sent < 0.2 * cog.stat().st_size, (sent, cog.stat().st_size)
    with rasterio.open(out) as got:
        assert got.crs.to_epsg() == 5070 and got.res == (30.0, 30.0) and got.nodata == 250
        assert got.colormap(1)[41][:3] == NLCD_COLORS[41]
        assert got.tags()["NLCD_YEAR"] == "2019" and got.tags()["NLCD_SOURCE"] == server.url(NAME.format(year=2019))
        left, bottom, right, top = got.bounds
        # the AOI's bounds (reprojected through WGS 84, so a little larger) plus two pixels, on NLCD's grid
        assert left <= X0 + 30_000 - 60 and right >= X0 + 33_000 + 60 and bottom <= Y0 - 40_000 - 60
        assert right - left < 3_600 and top - bottom < 2_600
        col, row = int((left - X0) / 30), int((Y0 - top) / 30)
        np.testing.assert_array_equal(got.read(1), data[row:row + got.height, col:col + got.width])


def test_offline_or_moved_is_one_line(served, tmp_path, capsys, monkeypatch):
    server, _, _ = served
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoSeries([box(X0 + 1000, Y0 - 2000, X0 + 2000, Y0 - 1000)], crs=5070).to_file(aoi)
    monkeypatch.setenv("GEOCLF_NLCD_URL", "http://127.0.0.1:9/mrlc/" + NAME)  # nothing listens on port 9
    with pytest.raises(SystemExit) as exited:
        main(["nlcd", "fetch", "--aoi", str(aoi), "--year", "2019", "--out", str(tmp_path / "n.tif")])
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "cannot read NLCD 2019" in err and "127.0.0.1:9" in err and "GEOCLF_NLCD_URL" in err
    assert not (tmp_path / "n.tif").exists()
    # a year the server does not have (404) is the same one line
    with pytest.raises(SystemExit):
        main(["nlcd", "fetch", "--aoi", str(aoi), "--year", "1990", "--out", str(tmp_path / "n.tif"),
              "--url-template", server.url(NAME)])
    assert "cannot read NLCD 1990" in capsys.readouterr().err
    far = tmp_path / "far.geojson"
    gpd.GeoSeries([box(-100.0, 40.0, -99.9, 40.1)], crs=4326).to_file(far)
    with pytest.raises(SystemExit):
        main(["nlcd", "fetch", "--aoi", str(far), "--year", "2019", "--out", str(tmp_path / "n.tif"),
              "--url-template", server.url(NAME)])
    assert "does not overlap NLCD 2019" in capsys.readouterr().err
