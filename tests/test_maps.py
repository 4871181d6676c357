"""Tests of geoclf.maps on tiny handmade predictions laid on real chip grids (UTM 19N and 18N)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.transform
import rasterio.warp
from conftest import CHROMIUM, chromium
from PIL import Image
from rasterio.crs import CRS

from geoclf import maps
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.grid import ChipGrid

CLASSES = ClassScheme.default()
UTM19 = CRS.from_epsg(26919)
UTM18 = CRS.from_epsg(26918)


def make_predictions(grid: ChipGrid, cells: list[tuple[int, int, str]], seed: int = 0,
                     scene: str = "m_4207101_ne_19_060_20210901") -> gpd.GeoDataFrame:
    """Predictions as geoclf score writes them: one row per chip, the predicted class most probable."""
    rng = np.random.default_rng(seed)
    ix = np.array([c[0] for c in cells], dtype=np.int64)
    iy = np.array([c[1] for c in cells], dtype=np.int64)
    names = CLASSES.names
    probs = rng.uniform(0.0, 0.5, (len(cells), len(names)))
    for row, (_, _, name) in enumerate(cells):
        probs[row, names.index(name)] = 1.0 + rng.uniform()
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    frame = pd.DataFrame({
        "chip_id": [f"{scene}:{a}_{b}" for a, b in zip(ix, iy, strict=True)],
        "cell": [grid.cell_id(a, b) for a, b in zip(ix, iy, strict=True)],
        "ix": ix, "iy": iy, "crs": grid.crs.to_string(), "scene": scene,
        "date": pd.Timestamp("2021-09-01").date(),
        "pred": [c[2] for c in cells], "model": "test-model",
    })
    for i, name in enumerate(names):
        frame[f"prob_{name}"] = probs[:, i]
    footprints = [grid.footprint(a, b) for a, b in zip(ix, iy, strict=True)]
    return gpd.GeoDataFrame(frame, geometry=footprints, crs=grid.crs)


def block(ix0: int, iy0: int, width: int, height: int, name: str) -> list[tuple[int, int, str]]:
    return [(ix, iy, name) for iy in range(iy0, iy0 + height) for ix in range(ix0, ix0 + width)]


def code(name: str) -> int:
    return CLASSES.names.index(name) + 1


# An irregular patch near Concord, NH: an L of three classes with a hole, so empty cells must stay nodata.
PATCH = [(1480, 23950, "Forest"), (1481, 23950, "Forest"), (1482, 23950, "Developed"),
         (1480, 23951, "Cultivated"), (1482, 23951, "Developed"),
         (1480, 23952, "Cultivated"), (1483, 23952, "Forest")]


# --------------------------------------------------------------------------------------------------------------
# grid


@pytest.mark.parametrize(("size", "stride"), [(200.0, 200.0), (200.0, 100.0)])
def test_map_grid_is_the_chip_grid(tmp_path: Path, size: float, stride: float) -> None:
    chip_grid = ChipGrid(UTM19, size, stride)
    predictions = make_predictions(chip_grid, PATCH)
    path = maps.write_landuse_cog(tmp_path / "landuse.tif", maps.predictions_to_grid(predictions, CLASSES),
                                  CLASSES)
    with rasterio.open(path) as dataset:
        assert dataset.crs == UTM19
        assert dataset.shape == (3, 4)  # iy 23950..23952, ix 1480..1483
        assert dataset.res == (stride, stride)
        transform, codes = dataset.transform, dataset.read(1)
    bounds = chip_grid.cell_bounds(predictions["ix"].to_numpy(), predictions["iy"].to_numpy())
    for (ix, iy, name), (left, bottom, _, _) in zip(PATCH, bounds, strict=True):
        row, col = 23952 - iy, ix - 1480
        # the pixel's lower-left corner is the cell's, to the last bit
        assert transform * (col, row + 1) == (left, bottom)
        assert codes[row, col] == code(name)
    assert (codes > 0).sum() == len(PATCH)


def test_each_chip_lands_in_its_cell_for_a_real_tiling_grid() -> None:
    # a NAIP-like grid: 224-pixel chips of 0.6 m, a stride that is no round number of metres
    chip_grid = ChipGrid(UTM19, 224 * 0.6)
    cells = [*block(2200, 35700, 5, 4, "Forest"), (2204, 35703, "Developed")]
    cells = [c for c in cells if c[:2] != (2204, 35703) or c[2] == "Developed"]
    grid = maps.predictions_to_grid(make_predictions(chip_grid, cells), CLASSES)
    for ix, iy, name in cells:
        col, row = ~grid.transform * tuple(chip_grid.footprint(ix, iy).centroid.coords[0])
        assert grid.codes[int(row), int(col)] == code(name)
    # the origin is the top-left cell's corner exactly; the far corners follow to float precision
    top_left = chip_grid.cell_bounds(np.array([2200]), np.array([35703]))[0]
    assert (grid.transform.c, grid.transform.f) == (top_left[0], top_left[3])
    assert grid.transform.a == -grid.transform.e == chip_grid.step
    bottom_right = chip_grid.cell_bounds(np.array([2204]), np.array([35700]))[0]
    assert grid.bounds[1:3] == pytest.approx((bottom_right[1], bottom_right[2]), abs=1e-6)


def test_duplicate_cell_keeps_the_most_confident_chip() -> None:
    chip_grid = ChipGrid(UTM19, 200.0)
    first = make_predictions(chip_grid, [(10, 20, "Forest"), (11, 20, "Forest")], scene="a")
    second = make_predictions(chip_grid, [(11, 20, "Developed")], scene="b")
    second["prob_Developed"] = np.float32(0.99)  # more confident than any chip of the first scene
    # the confident chip comes first: a plain "last write wins" would keep the other one
    grid = maps.predictions_to_grid(pd.concat([second, first], ignore_index=True), CLASSES)
    assert grid.codes.tolist() == [[code("Forest"), code("Developed")]]
    assert grid.probs[CLASSES.names.index("Developed"), 0, 1] == np.float32(0.99)


def test_mosaic_across_utm_zones_defaults_to_albers(tmp_path: Path) -> None:
    # two blocks either side of the 72 W zone boundary, one class each
    east = make_predictions(ChipGrid(UTM19, 200.0), block(1290, 23950, 12, 10, "Forest"), seed=1)
    west = make_predictions(ChipGrid(UTM18, 200.0), block(3710, 23950, 8, 10, "Developed"), seed=2)
    predictions = gpd.GeoDataFrame(pd.concat([east.to_crs(5070), west.to_crs(5070)], ignore_index=True),
                                   geometry="geometry", crs=5070)
    grid = maps.predictions_to_grid(predictions, CLASSES)
    assert grid.crs == CRS.from_epsg(5070)
    assert (grid.transform.a, grid.transform.e) == (200.0, -200.0)
    assert grid.transform.c % 200.0 == 0 and grid.transform.f % 200.0 == 0  # aligned like a chip grid
    # nearest warping keeps codes whole and about one pixel per chip
    assert set(np.unique(grid.codes)) == {0, code("Forest"), code("Developed")}
    assert abs((grid.codes == code("Forest")).sum() - 120) <= 6
    assert abs((grid.codes == code("Developed")).sum() - 80) <= 4
    for frame, name in ((east, "Forest"), (west, "Developed")):
        x, y = frame.to_crs(5070).geometry.union_all().centroid.coords[0]
        col, row = ~grid.transform * (x, y)
        assert grid.codes[int(row), int(col)] == code(name)
    # probabilities were warped with the very same nearest pixels as the codes
    mapped = grid.codes > 0
    assert (np.nanargmax(grid.probs[:, mapped], axis=0) + 1 == grid.codes[mapped]).all()
    assert np.isnan(grid.probs[:, ~mapped]).all()
    path = maps.write_landuse_cog(tmp_path / "landuse.tif", grid, CLASSES)
    with rasterio.open(path) as dataset:
        assert (dataset.crs, dataset.transform, dataset.shape) == (grid.crs, grid.transform, grid.codes.shape)


def test_overlapping_zones_keep_the_grid_met_first() -> None:
    # the same ground tiled in both zones (NAIP quarter-quads overlap at zone edges); the zone 18 chips come
    # first in the predictions but are less confident, which must not matter across grids
    east = make_predictions(ChipGrid(UTM19, 200.0), block(1290, 23950, 6, 6, "Forest"), seed=1)
    x, y = rasterio.warp.transform(UTM19, UTM18, [1293 * 200.0], [23953 * 200.0])
    west = make_predictions(ChipGrid(UTM18, 200.0), block(int(x[0] // 200) - 3, int(y[0] // 200) - 3, 6, 6,
                                                          "Developed"), seed=2)
    west[[c for c in west.columns if c.startswith("prob_")]] = np.float32(1 / 6)
    both = pd.concat([west.to_crs(5070), east.to_crs(5070)], ignore_index=True)
    grid = maps.predictions_to_grid(both, CLASSES)
    assert (grid.codes == code("Developed")).sum() > 25
    assert (grid.codes == code("Forest")).sum() < 12  # only the sliver the zone 18 block leaves uncovered


def test_two_grids_in_one_crs_stay_in_that_crs() -> None:
    coarse = make_predictions(ChipGrid(UTM19, 200.0), block(1290, 23950, 3, 3, "Forest"))
    fine = make_predictions(ChipGrid(UTM19, 100.0), block(2600, 47900, 2, 2, "Developed"))
    grid = maps.predictions_to_grid(pd.concat([coarse, fine], ignore_index=True), CLASSES)
    assert grid.crs == UTM19 and grid.transform.a == 200.0
    assert (grid.codes == code("Forest")).sum() == 9 and (grid.codes == code("Developed")).sum() == 1


def test_user_chosen_crs_warps_a_single_zone() -> None:
    predictions = make_predictions(ChipGrid(UTM19, 200.0), block(1290, 23950, 6, 5, "Shrub"))
    grid = maps.predictions_to_grid(predictions, CLASSES, crs="EPSG:26918", resolution=100.0)
    assert grid.crs == UTM18 and grid.transform.a == 100.0
    assert abs((grid.codes == code("Shrub")).sum() - 4 * 30) <= 12


def test_bad_predictions_raise_input_errors() -> None:
    predictions = make_predictions(ChipGrid(UTM19, 200.0), PATCH)
    with pytest.raises(InputError, match="lack column"):
        maps.predictions_to_grid(predictions.drop(columns="cell"), CLASSES)
    with pytest.raises(InputError, match="not in the class scheme"):
        maps.predictions_to_grid(predictions.assign(pred="Glacier"), CLASSES)
    with pytest.raises(InputError, match="geographic"):
        maps.predictions_to_grid(predictions, CLASSES, crs="EPSG:4326")
    with pytest.raises(InputError, match="no chip predictions"):
        maps.predictions_to_grid(predictions.iloc[:0], CLASSES)


# --------------------------------------------------------------------------------------------------------------
# COG


def test_landuse_cog_is_a_self_describing_cog(tmp_path: Path) -> None:
    names = np.array(CLASSES.names)
    # 40 x 36 chips in 4 x 4 blocks, each of one class but for a 2 x 2 core of the next class and a nodata
    # top-left corner (iy % 4 == 3 is a block's top row): the 4x overview shows each block's class only if
    # it is built by mode; nearest picks up the hole
    cells = []
    for iy in range(36):
        for ix in range(40):
            main = (ix // 4 + iy // 4) % len(names)
            if (ix % 4, iy % 4) == (0, 3):
                continue
            core = ix % 4 in (1, 2) and iy % 4 in (1, 2)
            cells.append((ix, iy, str(names[(main + 1) % len(names)] if core else names[main])))
    grid = maps.predictions_to_grid(make_predictions(ChipGrid(UTM19, 200.0), cells), CLASSES)
    path = maps.write_landuse_cog(tmp_path / "landuse.tif", grid, CLASSES, blocksize=16)

    header = path.read_bytes()[:400]
    assert b"LAYOUT=IFDS_BEFORE_DATA" in header and b"KNOWN_INCOMPATIBLE_EDITION=NO" in header
    with rasterio.open(path) as dataset:
        assert dataset.driver == "GTiff" and dataset.count == 1 and dataset.dtypes[0] == "uint8"
        assert dataset.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert dataset.profile["tiled"] and dataset.block_shapes[0] == (16, 16)
        assert dataset.overviews(1) == [2, 4]
        assert dataset.nodata == 0
        colormap = dataset.colormap(1)
        for i, name in enumerate(CLASSES.names):
            assert colormap[i + 1][:3] == CLASSES.color(name)
        assert colormap[0][3] == 0  # nodata is transparent
        assert json.loads(dataset.tags()["CLASS_NAMES"]) == CLASSES.names
        assert json.loads(dataset.tags()["CLASS_CODES"]) == {n: i + 1 for i, n in enumerate(CLASSES.names)}
        assert dataset.descriptions == ("land_use_class",)
        overview = dataset.read(1, out_shape=(9, 10))  # the 4x overview: one pixel per 4 x 4 block
    expected = np.array([[code(str(names[(bx + by) % len(names)])) for bx in range(10)]
                         for by in range(8, -1, -1)])
    assert (overview == expected).all()
    # no temporary left behind; the styles that name the classes in GIS tools beside the COG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["landuse.qml", "landuse.sld", "landuse.tif",
                                                          "landuse.tif.aux.xml"]

    read, scheme = maps.read_landuse(path)
    assert (read.codes == grid.codes).all() and read.transform == grid.transform and read.crs == grid.crs
    assert scheme == CLASSES


def test_probability_cog_matches_the_chips(tmp_path: Path) -> None:
    predictions = make_predictions(ChipGrid(UTM19, 200.0), PATCH)
    grid = maps.predictions_to_grid(predictions, CLASSES)
    maps.write_landuse_cog(tmp_path / "landuse.tif", grid, CLASSES)
    maps.write_probability_cog(tmp_path / "landuse_probs.tif", grid, CLASSES)
    read, _ = maps.read_landuse(tmp_path / "landuse.tif", tmp_path / "landuse_probs.tif")
    with rasterio.open(tmp_path / "landuse_probs.tif") as dataset:
        assert dataset.descriptions == tuple(CLASSES.names)
    for row in predictions.itertuples():
        pixel = read.probs[:, 23952 - row.iy, row.ix - 1480]
        assert pixel.tolist() == [getattr(row, f"prob_{n}") for n in CLASSES.names]
    assert np.isnan(read.probs[:, read.codes == 0]).all()


def test_probability_cog_uses_the_floating_point_predictor(tmp_path: Path) -> None:
    grid = maps.predictions_to_grid(make_predictions(ChipGrid(UTM19, 200.0), PATCH), CLASSES)
    path = maps.write_probability_cog(tmp_path / "landuse_probs.tif", grid, CLASSES)
    with rasterio.open(path) as dataset:
        assert dataset.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"
        assert dataset.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"


def test_default_classes_wear_the_nlcd_legend_colours() -> None:
    from tiling.classes import NLCD_COLORS

    # each class gathered from NLCD codes is drawn in the NLCD colour of one of them: Herbaceous in NLCD's
    # Grassland/Herbaceous beige, Cultivated in Cultivated Crops brown, Developed in NLCD's red
    for name, nlcd in (("Developed", 23), ("Barren", 31), ("Forest", 41), ("Shrub", 52), ("Herbaceous", 71),
                       ("Cultivated", 82)):
        assert CLASSES.color(name) == NLCD_COLORS[nlcd] and nlcd in CLASSES.groups[name]
    custom = ClassScheme({"Wetland": (90, 95), "Water": (11,)})  # no colours given: their first code's
    assert custom.color("Wetland") == NLCD_COLORS[90] and custom.color("Water") == NLCD_COLORS[11]
    assert ClassScheme.from_mapping({name: [] for name in CLASSES.names}).color("Cultivated") == NLCD_COLORS[82]


GDALINFO = shutil.which("gdalinfo")


def test_gis_styles_name_the_classes(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    scheme = ClassScheme({"Built & paved": (21, 22, 23, 24), **{k: v for k, v in CLASSES.groups.items()
                                                                if k != "Developed"}})
    grid = maps.predictions_to_grid(make_predictions(ChipGrid(UTM19, 200.0), PATCH).assign(
        pred=lambda f: f["pred"].replace("Developed", "Forest")), CLASSES)
    path = maps.write_landuse_cog(tmp_path / "landuse.tif", grid, scheme)
    # QGIS's default style for landuse.tif: a paletted renderer with one labelled entry per class
    qml = ET.parse(tmp_path / "landuse.qml").getroot()
    renderer = qml.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = [(int(e.get("value")), e.get("label"), e.get("color")) for e in renderer.iter("paletteEntry")]
    assert entries == [(i + 1, n, maps.hex_color(scheme.color(n))) for i, n in enumerate(scheme.names)]
    # SLD: a values colour map, nodata transparent
    ns = {"sld": "http://www.opengis.net/sld"}
    colormap = ET.parse(tmp_path / "landuse.sld").getroot().find(".//sld:ColorMap", ns)
    assert colormap.get("type") == "values"
    sld = [(int(e.get("quantity")), e.get("label"), e.get("opacity"))
           for e in colormap.findall("sld:ColorMapEntry", ns)]
    assert sld == [(0, "No data", "0")] + [(i + 1, n, "1") for i, n in enumerate(scheme.names)]
    if GDALINFO is None:
        pytest.skip("gdalinfo (Debian's gdal-bin) is not installed: GDAL's own reading is not checked")
    # as a user's GDAL reads it: without the setting geoclf makes for remote rasters, which stops GDAL from
    # looking beside a file (for .aux.xml too)
    env = {k: v for k, v in os.environ.items() if k != "GDAL_DISABLE_READDIR_ON_OPEN"}
    info = json.loads(subprocess.run([GDALINFO, "-json", str(path)], capture_output=True, text=True, check=True,
                                     env=env).stdout)
    band = info["bands"][0]
    assert band["categories"] == ["No data", *scheme.names]
    rows = info["rat"]["row"]
    assert [r["f"][:3] for r in rows] == [[i + 1, n, ",".join(map(str, scheme.groups[n]))]
                                          for i, n in enumerate(scheme.names)]
    assert [r["f"][3:] for r in rows] == [list(scheme.color(n)) for n in scheme.names]
    assert info["rat"]["tableType"] == "thematic"


def test_read_landuse_rejects_a_foreign_raster(tmp_path: Path) -> None:
    path = tmp_path / "other.tif"
    with rasterio.open(path, "w", driver="GTiff", width=2, height=2, count=1, dtype="uint8", crs=UTM19,
                       transform=rasterio.transform.from_origin(0, 400, 200, 200)) as dataset:
        dataset.write(np.ones((1, 2, 2), dtype=np.uint8))
    with pytest.raises(InputError, match="not a geoclf land-use map"):
        maps.read_landuse(path)


# --------------------------------------------------------------------------------------------------------------
# smoothing


def _plurality_by_hand(codes: np.ndarray, size: int) -> np.ndarray:
    """The rule spelled out pixel by pixel, to check the vectorized filter against."""
    out = codes.copy()
    half = size // 2
    for r in range(codes.shape[0]):
        for c in range(codes.shape[1]):
            if codes[r, c] == 0:
                continue
            window = codes[max(r - half, 0):r + half + 1, max(c - half, 0):c + half + 1]
            values, counts = np.unique(window[window > 0], return_counts=True)
            top = values[counts == counts.max()]
            out[r, c] = codes[r, c] if codes[r, c] in top else top.min()
    return out


def test_smoothing_removes_an_isolated_pixel_and_keeps_uniform_areas() -> None:
    codes = np.full((7, 7), 3, dtype=np.uint8)
    codes[3, 3] = 1  # isolated
    codes[:, 6] = 0  # nodata edge
    smoothed = maps.smooth_plurality(codes)
    assert smoothed[3, 3] == 3
    assert (smoothed[:, :6] == 3).all()
    assert (smoothed[:, 6] == 0).all()  # nodata neither votes nor gets filled


def test_smoothing_tie_keeps_the_centre_class() -> None:
    codes = np.array([[1, 1, 2], [1, 2, 2], [0, 0, 0]], dtype=np.uint8)  # centre: 3 votes each for 1 and 2
    assert maps.smooth_plurality(codes)[1, 1] == 2


@pytest.mark.parametrize("size", [3, 5])
def test_smoothing_matches_the_rule_on_random_maps(size: int) -> None:
    codes = np.random.default_rng(size).integers(0, 5, (23, 17)).astype(np.uint8)
    assert (maps.smooth_plurality(codes, size) == _plurality_by_hand(codes, size)).all()


# --------------------------------------------------------------------------------------------------------------
# polygons


def test_dissolve_gives_one_geometry_per_class_with_areas_adding_up(tmp_path: Path) -> None:
    cells = block(1480, 23950, 6, 5, "Forest") + block(1486, 23950, 3, 5, "Cultivated") + [
        (1490, 23960, "Cultivated")]  # a detached chip joins its class as a multipolygon
    grid = maps.predictions_to_grid(make_predictions(ChipGrid(UTM19, 200.0), cells), CLASSES)
    polygons = maps.dissolve_classes(grid, CLASSES)
    assert polygons["land_use_class"].tolist() == ["Forest", "Cultivated"]
    assert polygons.crs == UTM19 and polygons.geometry.is_valid.all()
    assert polygons["area_m2"].tolist() == pytest.approx([30 * 200.0**2, 16 * 200.0**2])
    assert polygons.geometry.area.sum() == pytest.approx(len(cells) * 200.0**2)
    assert polygons.geometry.iloc[1].geom_type == "MultiPolygon"

    parquet = gpd.read_parquet(maps.write_vector(polygons, tmp_path / "landuse.parquet"))
    assert parquet.crs == UTM19 and parquet["area_m2"].tolist() == polygons["area_m2"].tolist()
    geojson = json.loads(maps.write_vector(polygons, tmp_path / "landuse.geojson").read_text())
    assert [f["properties"]["land_use_class"] for f in geojson["features"]] == ["Forest", "Cultivated"]
    lon, lat = geojson["features"][0]["geometry"]["coordinates"][0][0]
    assert -72 < lon < -71 and 43 < lat < 44  # RFC 7946: WGS 84 degrees
    with pytest.raises(InputError, match="unknown vector format"):
        maps.write_vector(polygons, tmp_path / "landuse.shp")


# --------------------------------------------------------------------------------------------------------------
# HTML in a real browser, PNG


# Clicks the first chip the way a user would: a DOM click on the canvas, at the chip's centre.
_CLICK_FIRST_CHIP = """
<script>
setTimeout(function () {
  var map = window[Object.keys(window).find(function (k) { return window[k] instanceof L.Map; })];
  var chips = null;
  map.eachLayer(function (layer) { if (layer instanceof L.GeoJSON) { chips = layer; } });
  var point = map.latLngToContainerPoint(chips.getLayers()[0].getBounds().getCenter());
  var box = map.getContainer().getBoundingClientRect();
  var canvas = document.querySelector('.leaflet-overlay-pane canvas');
  canvas.dispatchEvent(new MouseEvent('click', {bubbles: true, cancelable: true,
    clientX: box.left + point.x, clientY: box.top + point.y}));
}, 1000);
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_html_map_renders_offline_in_headlesschromium(tmp_path: Path) -> None:
    cells = [*block(1480, 23950, 4, 3, "Forest"), *block(1484, 23950, 2, 3, "Developed")]
    predictions = make_predictions(ChipGrid(UTM19, 200.0), cells)
    predictions["label"] = predictions["pred"]
    # The basemap points at a closed local port: the page must render exactly as it would offline.
    page = maps.folium_map(predictions, CLASSES, tmp_path / "map.html",
                           basemap="http://127.0.0.1:9/{z}/{x}/{y}.png")
    text = page.read_text()
    assert "cdn.jsdelivr" not in text and "code.jquery" not in text  # everything it needs is inline

    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", _CLICK_FIRST_CHIP + "</body>"))
    dom = chromium(tmp_path, probe, "--dump-dom").stdout
    assert 'class="leaflet-image-layer' in dom  # the class layer is in the page
    assert "leaflet-control-layers" in dom and "Chips (click for details)" in dom
    assert "geoclf-legend" in dom and all(name in dom for name in ["Forest", "Developed", "Cultivated"])
    popup = re.search(r'class="leaflet-popup-content"[^>]*>(.*?)</table>', dom, re.S)
    assert popup, "clicking a chip opened no popup"
    first = predictions.iloc[0]
    assert first["chip_id"] in popup.group(1) and "Forest" in popup.group(1)
    assert f"{round(float(first['prob_Forest']), 3)}" in popup.group(1)

    shot = tmp_path / "map.png"
    chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=900,700")
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    # the class layer at 0.7 opacity over Leaflet's grey (#ddd) background, where tiles are missing
    for name, count in (("Forest", 12), ("Developed", 6)):
        blended = np.rint(0.7 * np.array(CLASSES.color(name)) + 0.3 * 221)
        covered = (np.abs(pixels - blended).max(axis=1) <= 2).sum()
        assert covered > 200 * count, f"{name} is missing from the rendered map"


@pytest.fixture(scope="module")
def scene_predictions(small_scene, tmp_path_factory) -> gpd.GeoDataFrame:
    """Predictions of the chips of a real (synthetic) NAIP raster: each chip's NLCD label as its class, but the
    top two chip rows left unscored (as a scene edge or a skipped chip would be)."""
    import tiling

    index = tiling.tile([small_scene.naip], small_scene.nlcd, tmp_path_factory.mktemp("chips"), progress=False)
    index = index[index["label"].notna() & (index["iy"] < index["iy"].max() - 1)].reset_index(drop=True)
    frame = index[["chip_id", "cell", "ix", "iy", "crs", "scene", "source", "date", "geometry"]].copy()
    frame["pred"] = index["label"].astype(str)
    for name in CLASSES.names:
        frame[f"prob_{name}"] = np.where(frame["pred"] == name, 0.9, 0.02).astype(np.float32)
    frame["model"] = "lr-test"
    return gpd.GeoDataFrame(frame, geometry="geometry", crs=index.crs)


_HIDE_CLASSES_SHOW_CIR = """
<script>
setTimeout(function () {
  // the opacity slider, as a reader drags it: the class layer fades out, the imagery stays
  var slider = document.querySelector('.geoclf-opacity input');
  slider.value = 0;
  slider.dispatchEvent(new Event('input'));
  window.geoclfClassOpacity = document.querySelector('img.geoclf-classes').style.opacity;
  var chips = Array.from(document.querySelectorAll('.leaflet-control-layers-overlays label'))
    .find(function (label) { return /Chips/.test(label.textContent); });
  chips.querySelector('input').click();
  if (window.geoclfShow === 'cir') {
    Array.from(document.querySelectorAll('.leaflet-control-layers-overlays label'))
      .find(function (label) { return /infrared/.test(label.textContent); }).querySelector('input').click();
  }
  document.body.setAttribute('data-class-opacity', window.geoclfClassOpacity);
  // where points of the screen are on the ground, to compare the screenshot with the raster there
  // a fixed map size and view: --dump-dom and --screenshot runs have windows of different heights
  var map = window[Object.keys(window).find(function (k) { return window[k] instanceof L.Map; })];
  var box = map.getContainer();
  box.style.width = '800px'; box.style.height = '700px';
  map.invalidateSize(false);
  var classes = null;
  map.eachLayer(function (layer) {
    if (layer instanceof L.ImageOverlay && /geoclf-classes/.test(layer.options.className)) { classes = layer; }
  });
  map.fitBounds(classes.getBounds(), {animate: false});
  var size = map.getSize(), samples = [];
  for (var i = 1; i < 20; i++) {
    for (var j = 1; j < 20; j++) {
      var x = Math.round(size.x * (0.2 + 0.6 * i / 20)), y = Math.round(size.y * (0.2 + 0.6 * j / 20));
      var at = map.containerPointToLatLng([x, y]);
      samples.push([x, y, at.lat, at.lng]);
    }
  }
  document.body.setAttribute('data-samples', JSON.stringify(samples));
}, 500);
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_land_use_page_shows_the_scored_imagery_offline(scene_predictions, small_scene, tmp_path: Path) -> None:
    predictions = scene_predictions
    page = maps.folium_map(predictions, CLASSES, tmp_path / "map.html",
                           basemap="http://127.0.0.1:9/{z}/{x}/{y}.png")
    text = page.read_text()
    assert "data:image/webp;base64," in text and "cdn." not in text  # the imagery is inside the page

    dom = chromium(tmp_path, page, "--dump-dom").stdout
    # the title names the date, the model and the area
    title = re.search(r'class="geoclf-title".*?</div></div>', dom, re.S).group(0)
    assert "Land use, 2016-" in title and "model lr-test" in title and f"{len(predictions)} chips" in title
    assert "km²" in title and small_scene.naip.stem in title
    assert re.search(r"<title>Land use, 2016-[0-9-]+</title>", dom)
    # imagery layers (natural colour shown, colour infrared in the list), the class layer, a nodata entry
    assert len(re.findall(r'class="leaflet-image-layer[^"]* geoclf-imagery', dom)) == 1
    assert "Imagery (natural colour)" in dom and "Imagery (colour infrared)" in dom
    assert re.search(r'class="leaflet-image-layer[^"]* geoclf-classes', dom)
    legend = re.search(r'class="geoclf-legend".*?</div></div>', dom, re.S).group(0)
    assert all(name in legend for name in CLASSES.names) and "not scored" in legend
    assert "geoclf-opacity" in dom

    # with the class layer faded out by its slider, the page shows the raster's own colours, in their place
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", _HIDE_CLASSES_SHOW_CIR + "</body>"))
    dom = chromium(tmp_path, probe, "--dump-dom", "--window-size=900,900").stdout
    assert 'data-class-opacity="0"' in dom
    samples = np.array(json.loads(html.unescape(re.search(r'data-samples="([^"]*)"', dom).group(1))))
    with rasterio.open(small_scene.naip) as dataset:
        xs, ys = rasterio.warp.transform("EPSG:4326", dataset.crs, samples[:, 3], samples[:, 2])
        rows, cols = rasterio.transform.rowcol(dataset.transform, xs, ys)
        image = dataset.read()
    rows, cols = np.asarray(rows), np.asarray(cols)
    inside = (rows >= 3) & (cols >= 3) & (rows < image.shape[1] - 3) & (cols < image.shape[2] - 3)
    # the raster around each point (7 x 7 m: a screen pixel here is about 4 m)
    truth = np.stack([image[:, r - 3:r + 4, c - 3:c + 4].reshape(image.shape[0], -1).mean(axis=1)
                      for r, c in zip(rows[inside], cols[inside], strict=True)])
    scored = truth[:, :3].max(axis=1) > 0
    for kind, bands in (("rgb", [0, 1, 2]), ("cir", [3, 0, 1])):
        shown = tmp_path / f"{kind}.html"
        shown.write_text(text.replace("</body>", f"<script>window.geoclfShow = '{kind}';</script>"
                                      + _HIDE_CLASSES_SHOW_CIR + "</body>"))
        shot = tmp_path / f"{kind}.png"
        chromium(tmp_path, shown, f"--screenshot={shot}", "--window-size=900,900")
        pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
        at = samples[inside].astype(int)
        page = np.stack([pixels[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0) for x, y in at[:, :2]])
        drawn = np.abs(page - 221).max(axis=1) > 12  # not Leaflet's grey: a layer is drawn there
        assert drawn[scored].mean() > 0.9, f"the {kind} imagery is missing from the page"
        both = scored & drawn
        for band in range(3):
            r = np.corrcoef(page[both, band], truth[both, bands[band]])[0, 1]
            assert r > 0.8, f"{kind} band {band + 1} on the page does not follow the raster (r = {r:.2f})"


def test_imagery_layers_read_together_are_the_layers_read_alone(tmp_path: Path) -> None:
    # a page's natural-colour and colour-infrared layers share one read of each raster (imagery_images): each
    # must be what reading its bands alone gives, and a 3-band raster is missing from the infrared one only
    import realdata as real
    from conftest import shared_data

    from geoclf.webmap import CIR_BANDS, RGB_BANDS, ImageLayer, imagery_image, imagery_images

    four = str(shared_data("naip-nlcd-wv-calebrob6", "naip.tif"))
    three = str(real.rgb_copy(Path(four), tmp_path / "rgb.tif"))
    for sources in ([four], [three], [three, four]):
        together = imagery_images(sources, band_sets=[RGB_BANDS, CIR_BANDS], max_pixels=400)
        alone = [imagery_image(sources, bands=bands, max_pixels=400) for bands in (RGB_BANDS, CIR_BANDS)]
        assert together == alone, sources
        assert together[0].url and together[0].missing == []
    assert imagery_images([three], band_sets=[RGB_BANDS, CIR_BANDS])[1] == ImageLayer("", [], [three])
    assert imagery_images([three, four], band_sets=[RGB_BANDS, CIR_BANDS])[1].missing == [three]


def hostile(tag: str) -> str:
    """A name that runs script if a page puts it into HTML unescaped: it sets the page title and adds a
    ``<pwned-TAG>`` element. No slash, so it can be a raster's file name (``<img ...>.tif``)."""
    return (f"<img src=x onerror=\"document.title='PWNED-{tag}';"
            f"document.body.appendChild(document.createElement('pwned-{tag}'))\">")


def hostile_predictions() -> tuple[gpd.GeoDataFrame, ClassScheme]:
    """Predictions of a raster named like a script, scored with a class named like one."""
    name = hostile("class")
    scheme = ClassScheme({name if k == "Forest" else k: v for k, v in CLASSES.groups.items()})
    cells = [*block(1480, 23950, 3, 2, "Forest"), *block(1483, 23950, 2, 2, "Developed")]
    predictions = make_predictions(ChipGrid(UTM19, 200.0), cells, scene=hostile("scene"))
    predictions = predictions.rename(columns={"prob_Forest": f"prob_{name}"})
    predictions["pred"] = predictions["pred"].replace("Forest", name)
    predictions["label"] = predictions["pred"]
    predictions["model"] = hostile("model")
    return predictions, scheme


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_hostile_names_do_not_run_in_the_map(tmp_path: Path) -> None:
    predictions, scheme = hostile_predictions()
    page = maps.folium_map(predictions, scheme, tmp_path / "map.html", title=hostile("title"),
                           basemap="http://127.0.0.1:9/{z}/{x}/{y}.png")
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _CLICK_FIRST_CHIP + "</body>"))
    dom = chromium(tmp_path, probe, "--dump-dom").stdout
    # a planted name that ran would have made the document's title PWNED-...; escaped, the title shows it as text
    assert "<pwned-" not in dom and not re.search(r"<title>PWNED", dom), "a planted name ran as script"
    assert re.search(r"<title>&lt;img src=x onerror=", dom)
    # ... and the names are still there, as text: in the popup, the layer list and the legend
    popup = re.search(r'class="leaflet-popup-content"[^>]*>(.*?)</table>', dom, re.S)
    assert popup, "clicking a chip opened no popup"
    assert popup.group(1).count("&lt;img src=x onerror=") >= 3  # class, scene, chip id, p(class)
    # layer name, legend title, page title, opacity slider
    assert "leaflet-control-layers" in dom and dom.count("PWNED-title") >= 4
    assert re.search(r'class="geoclf-title-text"[^>]*>&lt;img src=x onerror=', dom)


def test_names_with_template_syntax_are_text_in_the_pages_not_code(tmp_path: Path, monkeypatch) -> None:
    # the page builder (branca) compiles an element's text as a jinja template: names from the data inside it
    # (HTML-escaped, braces untouched) were evaluated, with Python's objects at hand. A class, title or label
    # that creates a directory when evaluated, and a scene named like an expression (a file name), stay text.
    from geoclf.webmap import WebMap

    monkeypatch.chdir(tmp_path)
    payload = "{{ cycler.__init__.__globals__.os.mkdir('evaluated') }}"  # no slash: a file or class name
    expression = '{{ "tem" ~ "plate-ran" }}'
    name = f"Forest {payload}"
    scheme = ClassScheme({name if k == "Forest" else k: v for k, v in CLASSES.groups.items()})
    cells = [*block(1480, 23950, 3, 2, "Forest"), *block(1483, 23950, 2, 2, "Developed")]
    predictions = make_predictions(ChipGrid(UTM19, 200.0), cells, scene=f"m_{payload}")
    predictions = predictions.rename(columns={"prob_Forest": f"prob_{name}"})
    predictions["pred"] = predictions["pred"].replace("Forest", name)
    predictions["model"] = expression
    pages = [maps.folium_map(predictions, scheme, tmp_path / "map.html", title=f"Land use {payload}")]
    page = WebMap([[45.0, -93.0], [45.1, -92.9]])
    page.add_title(payload, [expression])
    page.add_legend(scheme, payload, note=expression)
    page.add_side_panel(html.escape(payload))
    page.add_swipe(page.add_pane("left", 410), page.add_pane("right", 420), (payload, expression))
    pages.append(page.save(tmp_path / "swipe.html"))
    for path in pages:
        text = path.read_text()
        assert "template-ran" not in text  # what the expression gives, evaluated
        assert "os.mkdir" in text and "&quot;tem&quot; ~ &quot;plate-ran&quot;" in text  # the names, as text
    assert not (tmp_path / "evaluated").exists(), "a name in a page was evaluated as a template"


def test_html_map_leaves_out_chip_popups_past_the_limit(tmp_path: Path) -> None:
    predictions = make_predictions(ChipGrid(UTM19, 200.0), block(1480, 23950, 10, 10, "Shrub"))
    small = maps.folium_map(predictions, CLASSES, tmp_path / "small.html", max_popup_chips=10).read_text()
    full = maps.folium_map(predictions, CLASSES, tmp_path / "full.html").read_text()
    assert "Chips (click for details)" not in small and "100 chips" in small
    assert "L.imageOverlay" in small and "L.imageOverlay" in full
    assert "Chips (click for details)" in full and len(full) > len(small)


def test_static_png_shows_the_classes(tmp_path: Path) -> None:
    cells = block(1480, 23950, 6, 4, "Forest") + block(1486, 23950, 2, 4, "Developed")
    grid = maps.predictions_to_grid(make_predictions(ChipGrid(UTM19, 200.0), cells), CLASSES)
    path = maps.static_png(grid, CLASSES, tmp_path / "map.png")
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    for name in ("Forest", "Developed", "Shrub"):  # Shrub: only in the legend
        assert (pixels == CLASSES.color(name)).all(axis=1).any()
    assert (pixels == CLASSES.color("Forest")).all(axis=1).sum() > 3 * (
        pixels == CLASSES.color("Developed")).all(axis=1).sum() * 0.8


# --------------------------------------------------------------------------------------------------------------
# accuracy and everything together


def test_accuracy_against_reference_labels() -> None:
    predictions = make_predictions(ChipGrid(UTM19, 200.0), block(0, 0, 5, 2, "Forest"))
    predictions["label"] = ["Forest"] * 6 + ["Developed"] * 2 + [None] * 2
    report = maps.accuracy_against_reference(predictions, CLASSES)
    json.dumps(report)  # ready for accuracy.json
    assert report["n"] == 8
    assert report["accuracy"] == pytest.approx(6 / 8)
    assert report["per_class"]["Forest"] == pytest.approx(
        {"precision": 6 / 8, "recall": 1.0, "f1": 2 * 0.75 / 1.75, "support": 6})
    assert report["per_class"]["Developed"]["recall"] == 0.0
    assert report["confusion_matrix"]["classes"] == CLASSES.names
    counts = np.array(report["confusion_matrix"]["counts"])
    assert counts[code("Developed") - 1, code("Forest") - 1] == 2 and counts.sum() == 8
    with pytest.raises(InputError, match="no chip has both"):
        maps.accuracy_against_reference(predictions.assign(label=None), CLASSES)


def test_write_maps_writes_every_product(tmp_path: Path) -> None:
    cells = [*block(1480, 23950, 5, 5, "Forest"), (1482, 23952, "Developed")]
    cells = [c for c in cells if c[:2] != (1482, 23952) or c[2] == "Developed"]
    predictions = make_predictions(ChipGrid(UTM19, 200.0), cells)
    predictions["label"] = "Forest"
    written = maps.write_maps(predictions, CLASSES, tmp_path / "out", smooth=True, probabilities=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "accuracy.json", "landuse.geojson", "landuse.parquet", "landuse.qml", "landuse.sld", "landuse.tif",
        "landuse.tif.aux.xml", "landuse_probs.tif", "map.html", "map.png"]
    assert {"categories", "qml", "sld"} <= set(written) and all(p.is_file() for p in written.values())
    grid, _ = maps.read_landuse(written["landuse"])
    assert (grid.codes == code("Forest")).all()  # the lone Developed chip was smoothed away
    assert json.loads(written["accuracy"].read_text())["accuracy"] == pytest.approx(24 / 25)
