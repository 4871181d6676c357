"""Conformance: geoclf on real rasters as users have them (../shared/data), through the whole pipeline.

Every real NAIP raster (UTM zones 10, 11, 13, 14, 16 and 17; 0.6 m, 1 m and resampled; ten years of one North
Dakota quarter quad; a dateless West Virginia mosaic with nodata gaps and its own real NLCD) is tiled, and the
variants users make of them (renamed without a date, a date only in a tag, RGB only, an internal mask or an
alpha band instead of zero collars, a VRT mosaic, a COG over HTTP, NLCD without palette or in another CRS)
go through tile -> featurize -> train -> score -> maps -> change -> trend. What is checked is what a user
relies on, against a truth computed from the pixels in ``realdata`` (not with tiling's code): one chip per
whole grid cell with data, the NLCD majority of each footprint as its label, one map pixel per scored chip.

The imagery without NLCD of its own gets the real NLCD clip's codes moved under its footprint: mechanics
only, such labels do not describe the imagery. The whole module skips, saying why, when ../shared/data is
absent.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import realdata as real
from conftest import SHARED_DATA, shared_data

import tiling
from geoclf.change import run_change
from geoclf.classifiers import train_classifier
from geoclf.cli import main
from geoclf.features import featurize
from geoclf.score import score
from geoclf.trend import analyze_trends
from tiling.errors import InputError

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} (real sample rasters) is absent")

#: Grid of the maps of the North Dakota years: 12 chips a year keeps ten scoring runs quick.
ND_MAP_M = 960.0
#: Grid of the West Virginia maps (the model is trained on 48 m chips there): about 20 chips, each across a gap.
WV_MAP_M = 144.0
#: Chips with more nodata than this are not scored (geoclf score's default).
SCORE_MAX_NODATA = 0.5


def naip_path(key: str) -> Path:
    (folder, name), _, _ = real.NAIP_FILES[key]
    return shared_data(folder, name)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("conformance")


@pytest.fixture(scope="module")
def nlcd_for(work):
    """NLCD for a NAIP raster: its own (West Virginia), else the real clip's codes moved under it (made once)."""
    made: dict[str, Path] = {}

    def get(key: str) -> Path:
        if real.NAIP_FILES[key][0][0] == real.WV:
            return shared_data(real.WV, "nlcd.tif")
        if key not in made:
            made[key] = real.relocated_nlcd(naip_path(key), work / f"nlcd-{key}.tif", nlcd=shared_data(*real.CT_NLCD))
        return made[key]

    return get


def chip_size_m(naip: Path, chip_px: int) -> float:
    with rasterio.open(naip) as ds:
        return chip_px * ds.res[0]


def tile_all(naip: Path | str, nlcd: Path | None, chip_px: int, *, max_nodata: float = 0.05,
             classes: dict | None = None, chip_m: float | None = None, out: Path | None = None,
             **kwargs) -> gpd.GeoDataFrame:
    """Tile keeping every chip with a land-use class (no purity filter), so counts can be compared."""
    params = tiling.TileParams(chip_size=chip_px, chip_size_m=chip_m, min_purity=0.0, max_nodata=max_nodata,
                               **({"classes": classes} if classes else {}))
    return tiling.tile([naip], nlcd, out, params=params, progress=False, **kwargs)


def assert_chips_are_the_whole_cells_with_data(index: pd.DataFrame, truth: real.Truth, max_nodata: float,
                                               min_purity: float | None = 0.0) -> None:
    """One chip per whole grid cell with data (and, when labeled, a land-use class): no more, no fewer."""
    sure, close = truth.expected(max_nodata, min_purity)
    got = real.cells_of(index)
    assert len(got) == len(index), "a grid cell holds two chips"
    assert sure <= got, f"{len(sure - got)} cells with data have no chip, e.g. {sorted(sure - got)[:3]}"
    assert got <= sure | close, f"{len(got - sure - close)} chips where no cell has data: {sorted(got - sure)[:3]}"
    assert len(close) <= max(2, 0.1 * len(sure)), "too many cells at a threshold for a sharp test"


def assert_labels_are_the_nlcd_majority(index: pd.DataFrame, truth: real.Truth) -> None:
    joined = index.set_index(["ix", "iy"]).join(truth.cells.set_index(["ix", "iy"]), rsuffix="_truth")
    clear = joined[joined["margin"] > 0.1]  # near-ties may go either way within sampling error
    assert len(clear) >= 0.7 * len(joined)
    mismatched = clear[clear["label"] != clear["label_truth"]]
    assert mismatched.empty, mismatched[["label", "label_truth", "purity", "purity_truth"]].head()
    assert np.abs(joined["purity"] - joined["purity_truth"]).max() < 0.06


# --------------------------------------------------------------------------------------------------------------
# every real raster, as it is


@pytest.mark.parametrize("key", list(real.NAIP_FILES))
def test_every_real_naip_tiles_to_its_whole_cells_labeled_by_nlcd_majority(key, nlcd_for):
    naip = naip_path(key)
    _, date, chip_px = real.NAIP_FILES[key]
    size = chip_size_m(naip, chip_px)
    nlcd = nlcd_for(key)
    index = tile_all(naip, nlcd, chip_px)
    truth = real.truth(naip, nlcd, size)
    assert_chips_are_the_whole_cells_with_data(index, truth, 0.05)
    assert_labels_are_the_nlcd_majority(index, truth)
    # the acquisition date NAIP's name states (a file-writing timestamp in a TIFF tag is not one)
    assert set(index["date"]) == {date} if date else index["date"].isna().all()
    with rasterio.open(naip) as ds:
        assert set(index["crs"]) == {ds.crs.to_string()}
        assert (index["col_off"] >= 0).all() and (index["col_off"] + index["width"] <= ds.width).all()
        assert (index["row_off"] >= 0).all() and (index["row_off"] + index["height"] <= ds.height).all()
        if ds.colorinterp[3] == rasterio.enums.ColorInterp.alpha:  # NAIP's NIR, tagged alpha: not a mask
            assert (index["nodata_frac"] == 0).all()
    assert np.allclose(index.geometry.area, size * size, rtol=1e-6)


def test_ten_years_of_one_place_share_one_grid(nlcd_for):
    """Origins differ by up to 3 m and heights by a row between years: the chips are the same cells all the same."""
    keys = [k for k in real.NAIP_FILES if k.startswith("nd-")]
    indexes = [tile_all(naip_path(k), nlcd_for(k), 64) for k in keys]
    cells = [set(index["cell"]) for index in indexes]
    common = set.intersection(*cells)
    assert len(common) >= 0.95 * max(map(len, cells))
    assert len({frozenset(c.rsplit(":", 2)[0] for c in year) for year in cells}) == 1  # one CRS, size, stride


# --------------------------------------------------------------------------------------------------------------
# dates: from the name, from a tag, or none


@pytest.fixture(scope="module")
def nd_2016(nlcd_for):
    """The 2016 North Dakota raster, its NLCD, and its index at 64 px chips."""
    naip = naip_path("nd-0816")
    nlcd = nlcd_for("nd-0816")
    return naip, nlcd, tiling.tile([naip], nlcd, params=tiling.TileParams(chip_size=64), progress=False)


COMPARED = ["cell", "col_off", "row_off", "width", "height", "label", "purity", "nodata_frac", "split"]


def test_a_raster_with_no_date_anywhere_tiles_to_the_same_chips_as_its_dated_copy(nd_2016, work):
    naip, nlcd, dated = nd_2016
    undated = real.undated_copy(naip, work / "north-dakota-clip.tif")
    index = tiling.tile([undated], nlcd, params=tiling.TileParams(chip_size=64), progress=False)
    assert index["date"].isna().all() and dated["date"].notna().all()
    assert len(index) == len(dated) > 100
    pd.testing.assert_frame_equal(index[COMPARED], dated[COMPARED])


def test_a_date_only_in_an_acquisition_date_tag_is_the_chips_date(nd_2016, work):
    naip, nlcd, dated = nd_2016
    for i, text in enumerate(("2016-08-16", "2016:08:16 00:00:00", "20160816")):
        tagged = real.tagged_copy(naip, work / f"tagged-{i}.tif", text)
        index = tiling.tile([tagged], nlcd, params=tiling.TileParams(chip_size=64), progress=False)
        assert set(index["date"]) == {dt.date(2016, 8, 16)}, text
        pd.testing.assert_frame_equal(index[COMPARED], dated[COMPARED])


def test_a_file_timestamp_is_not_an_acquisition_date(work):
    """TIFFTAG_DATETIME is when the file was written (2021-11-11 here, two months after the flight)."""
    naip = naip_path("zone17-0.6m-downsampled")
    with rasterio.open(naip) as ds:
        assert ds.tags()["TIFFTAG_DATETIME"].startswith("2021:11:11")
    assert tiling.describe_naip(naip).date == dt.date(2021, 9, 12)  # from the name
    assert tiling.describe_naip(real.undated_copy(naip, work / "boyce-sw.tif")).date is None


def test_tile_command_on_an_undated_real_raster(nd_2016, work, capsys):
    naip, nlcd, _ = nd_2016
    undated = real.undated_copy(naip, work / "clip-for-cli.tif")
    out = work / "cli-tile"
    main(["tile", "--naip", str(undated), "--nlcd", str(nlcd), "--out", str(out), "--chip-size", "64",
          "--min-purity", "0", "--scheduler", "sync"])
    written = tiling.read_index(out)
    truth = real.truth(naip, nlcd, 320.0)
    assert_chips_are_the_whole_cells_with_data(written, truth, 0.05)
    assert f"{len(written)} chips from 1 scene(s)" in capsys.readouterr().out


def test_what_geoclf_refuses_is_one_line(nd_2016, work, capsys):
    """Real rasters in the forms geoclf does not take stop `geoclf tile` with one line naming the file."""
    naip, nlcd, _ = nd_2016
    folder = work / "refused"
    (folder / "copy").mkdir(parents=True)
    shutil.copy(naip, folder / "copy" / naip.name)
    cases = [
        ([real.retyped_copy(naip, folder / "sixteen-bit.tif", "uint16")], "uint16 pixels"),
        ([real.warped_copy(naip, folder / "degrees.tif", "EPSG:4326")], "EPSG:26914"),  # the UTM zone to use
        ([real.band_subset(naip, folder / "two-bands.tif", [1, 2])], "2 band(s)"),
        ([naip, folder / "copy" / naip.name], "share the name"),
    ]
    for rasters, words in cases:
        out = folder / f"out-{len(rasters)}-{rasters[0].stem}"
        with pytest.raises(SystemExit) as exited:
            main(["tile", "--naip", *map(str, rasters), "--nlcd", str(nlcd), "--out", str(out), "--scheduler",
                  "sync"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("geoclf: error:")]
        assert exited.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert words in lines[0] and (rasters[0].name in lines[0] or words == "share the name"), lines[0]
        assert not (out / "chips.parquet").exists()


# --------------------------------------------------------------------------------------------------------------
# the whole path on real imagery with real labels (West Virginia), with the real default backbone


@pytest.fixture(scope="module")
def wv(work):
    """The dateless West Virginia mosaic tiled against its own NLCD, featurized with EfficientNet-Lite0's real
    ImageNet weights, a logistic regression trained on it, and its map at 144 m."""
    naip, nlcd = shared_data(real.WV, "naip.tif"), shared_data(real.WV, "nlcd.tif")
    chips = work / "wv-chips"
    index = tiling.tile([naip], nlcd, chips, params=tiling.TileParams(chip_size=48, classes=real.FOREST_OPEN),
                        progress=False)
    # the CNN alone (--no-spectral): an RGB model, which also maps the RGB copy below
    featurize(chips, work / "wv-features", backbone="efficientnet_lite0", weights="default", scheduler="sync",
              progress=False, record_run=False, spectral=False)
    model = train_classifier(work / "wv-features", "logistic_regression", name="wv-lr", runs_dir=work / "runs")
    out = work / "wv-map"
    score(str(model.artifact_dir), out, naip=[naip], chip_size_m=WV_MAP_M, scheduler="sync", progress=False)
    return {"naip": naip, "nlcd": nlcd, "index": index, "model": model, "map": out}


def wv_score(wv, naip: Path | str, out: Path, chip_m: float = WV_MAP_M) -> gpd.GeoDataFrame:
    """Score a raster with the West Virginia model (no HTML map: it is checked once, in the end-to-end test)."""
    score(str(wv["model"].artifact_dir), out, naip=[naip], chip_size_m=chip_m, scheduler="sync", progress=False,
          html_map=False)
    return gpd.read_parquet(out / "predictions.parquet")


def test_real_imagery_with_real_labels_end_to_end(wv):
    index, model = wv["index"], wv["model"]
    truth = real.truth(wv["naip"], wv["nlcd"], 48.0, real.FOREST_OPEN)
    # tiling with the defaults (purity 0.6, nodata 5%) keeps the pure cells with data, labeled by majority
    assert_chips_are_the_whole_cells_with_data(index, truth, 0.05, 0.6)
    assert_labels_are_the_nlcd_majority(index, truth)
    assert set(index["label"]) == {"Forest", "Open"} and index["date"].isna().all()
    assert model.classes == ["Forest", "Open"] and model.n_val > 0
    # the real weights see something in real imagery: better than always saying "Forest" (balanced 0.5)
    assert model.evaluation["balanced_accuracy"] > 0.55

    predictions = gpd.read_parquet(wv["map"] / "predictions.parquet")
    map_truth = real.truth(wv["naip"], None, WV_MAP_M)
    assert_chips_are_the_whole_cells_with_data(predictions, map_truth, SCORE_MAX_NODATA, min_purity=None)
    assert_one_map_pixel_per_chip(wv["map"], predictions, WV_MAP_M, model.classes)
    assert (wv["map"] / "map.html").stat().st_size > 10_000 and (wv["map"] / "map.png").exists()


def assert_one_map_pixel_per_chip(out: Path, predictions: pd.DataFrame, size_m: float, classes: list[str]) -> None:
    with rasterio.open(out / "landuse.tif") as ds:
        codes = ds.read(1)
        assert ds.res == (size_m, size_m)
        assert (codes > 0).sum() == len(predictions)
    at_cells = real.map_codes_at_cells(out / "landuse.tif", predictions, size_m)
    expected = predictions["pred"].map({c: i + 1 for i, c in enumerate(classes)}).to_numpy()
    assert (at_cells == expected).all()


def test_the_same_map_from_an_rgb_copy(wv, work):
    """Older NAIP is RGB only: it tiles to the same chips, and an RGB model maps it the same."""
    rgb = real.rgb_copy(wv["naip"], work / "wv-rgb.tif")
    original = tile_all(wv["naip"], wv["nlcd"], 48, classes=real.FOREST_OPEN)
    index = tile_all(rgb, wv["nlcd"], 48, classes=real.FOREST_OPEN)
    pd.testing.assert_frame_equal(index[COMPARED[:-1]], original[COMPARED[:-1]])
    # featurized, its chips give the features of the original's (RGB backbones never see NIR)
    few = index[index["cell"].isin(wv["index"]["cell"])].head(6)
    tiling.write_index(few, work / "wv-chips-rgb" / "chips.parquet")
    featurize(work / "wv-chips-rgb", work / "wv-features-rgb", scheduler="sync", progress=False, record_run=False,
              spectral=False)
    assert_same_features(work / "wv-features-rgb", work / "wv-features", few, wv["index"])
    expected = gpd.read_parquet(wv["map"] / "predictions.parquet")
    got = wv_score(wv, rgb, work / "wv-map-rgb")
    assert_same_predictions(got, expected)


def assert_same_features(got_dir: Path, expected_dir: Path, chips: pd.DataFrame, expected_chips: pd.DataFrame):
    from geoclf.features import read_features

    _, got = read_features(got_dir)
    _, expected = read_features(expected_dir)
    cell_of = dict(zip(chips["chip_id"], chips["cell"], strict=True)) | dict(
        zip(expected_chips["chip_id"], expected_chips["cell"], strict=True))
    got = got.assign(cell=got["chip_id"].map(cell_of)).set_index("cell")
    expected = expected.assign(cell=expected["chip_id"].map(cell_of)).set_index("cell").loc[got.index]
    assert np.allclose(np.stack(got["features"]), np.stack(expected["features"]), atol=1e-4)
    assert got["ndvi_mean"].isna().all() and expected["ndvi_mean"].notna().all()


def assert_same_predictions(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    got, expected = got.set_index("cell").sort_index(), expected.set_index("cell").sort_index()
    assert list(got.index) == list(expected.index)
    assert (got["pred"] == expected["pred"]).all()
    probs = [c for c in expected.columns if c.startswith("prob_")]
    assert np.allclose(got[probs].to_numpy(), expected[probs].to_numpy(), atol=1e-4)


@pytest.mark.parametrize("variant", ["internal-mask", "alpha-band"])
def test_a_mask_instead_of_zero_collars_is_nodata(wv, work, variant):
    """Gaps that hold other values, marked by an internal mask or a fifth (alpha) band, are nodata: the same
    chips, nodata fractions and map as with zero-valued gaps."""
    make = real.masked_copy if variant == "internal-mask" else real.alpha_copy
    masked = make(wv["naip"], work / f"wv-{variant}.tif")
    original = tile_all(wv["naip"], wv["nlcd"], 48, classes=real.FOREST_OPEN)
    index = tile_all(masked, wv["nlcd"], 48, classes=real.FOREST_OPEN)
    pd.testing.assert_frame_equal(index[COMPARED[:-1]], original[COMPARED[:-1]])
    # chips read at native size and resampled are those of the zero-collar original, gaps included
    gappy = original.sort_values("nodata_frac", ascending=False).head(4)
    for size in (48, 224):
        with tiling.ChipReader(size=size) as reader:
            for _, row in gappy.iterrows():
                window = (row["col_off"], row["row_off"], row["width"], row["height"])
                np.testing.assert_array_equal(reader.read(str(masked), window), reader.read(row["source"], window))
    expected = gpd.read_parquet(wv["map"] / "predictions.parquet")
    assert_same_predictions(wv_score(wv, masked, work / f"wv-map-{variant}"), expected)


def test_nlcd_without_its_colour_table_or_in_another_crs(wv, work):
    original = tile_all(wv["naip"], wv["nlcd"], 48, classes=real.FOREST_OPEN)
    plain = real.nlcd_without_palette(wv["nlcd"], work / "wv-nlcd-grey.tif")
    pd.testing.assert_frame_equal(tile_all(wv["naip"], plain, 48, classes=real.FOREST_OPEN)[COMPARED[:-1]],
                                  original[COMPARED[:-1]])
    for crs in ("EPSG:4326", "EPSG:26917"):
        moved = real.nlcd_in_crs(wv["nlcd"], work / f"wv-nlcd-{crs.replace(':', '')}.tif", crs)
        # warped, the clip's nodata edge cuts through many cells: keep them all, to compare labels sharply
        index = tile_all(wv["naip"], moved, 48, classes=real.FOREST_OPEN, max_nodata=1.0)
        truth = real.truth(wv["naip"], moved, 48.0, real.FOREST_OPEN)
        assert_chips_are_the_whole_cells_with_data(index, truth, 1.0)
        assert_labels_are_the_nlcd_majority(index, truth)
        # nearest-neighbour warping moves class edges by up to half a 30 m cell, and nodata creeps in at the
        # clip's edges: the chips and labels stay those of the Albers original nearly everywhere
        same = original.merge(index, on="cell", suffixes=("", "_moved"))
        assert len(same) >= 0.8 * len(original) and (same["label"] == same["label_moved"]).mean() >= 0.9


# --------------------------------------------------------------------------------------------------------------
# mosaics and remote rasters


def test_a_vrt_mosaic_of_two_adjacent_rasters_is_one_raster(nd_2016, work):
    naip, nlcd, _ = nd_2016
    folder = work / "halves"
    folder.mkdir()
    west, east = real.split_halves(naip, folder)
    vrt = real.mosaic_vrt([west, east], folder / "mosaic.vrt")
    original = tile_all(naip, nlcd, 64)
    index = tile_all(vrt, nlcd, 64)
    pd.testing.assert_frame_equal(index[COMPARED[:-1]], original[COMPARED[:-1]])
    assert set(index["scene"]) == {"mosaic"} and index["date"].isna().all()
    # tiled apart, the two halves lose the cells across their seam; the mosaic keeps them
    apart = tiling.tile([west, east], nlcd, params=tiling.TileParams(chip_size=64, min_purity=0.0), progress=False)
    assert real.cells_of(apart) < real.cells_of(index)


def test_a_cog_over_http_is_read_by_ranges(nd_2016, work, wv):
    naip, nlcd, _ = nd_2016
    folder = work / "served"
    folder.mkdir()
    cog = real.cog_copy(naip, folder / "m_4709963_se_14_1_20160816.tif")
    local = tile_all(cog, nlcd, 64)
    with real.RangeServer(folder) as server:
        url = server.url(cog.name)
        index = tile_all(url, nlcd, 64)
        fetched = server.bytes_sent
        assert all(r and r.startswith("bytes=") for r in server.requests)
        assert 0 < fetched < 0.75 * cog.stat().st_size, (fetched, cog.stat().st_size)
        remote = wv_score(wv, url, work / "nd-map-http", ND_MAP_M)
    pd.testing.assert_frame_equal(index[COMPARED[:-1]], local[COMPARED[:-1]])
    assert set(index["source"]) == {url} and set(index["date"]) == {dt.date(2016, 8, 16)}
    assert_same_predictions(remote, wv_score(wv, cog, work / "nd-map-local-cog", ND_MAP_M))


# --------------------------------------------------------------------------------------------------------------
# ten years: maps, change, trend


@pytest.fixture(scope="module")
def nd_maps(wv, work) -> dict[str, Path]:
    """Every North Dakota year scored at 960 m with the West Virginia model (mechanics, not accuracy)."""
    maps = {}
    for key in (k for k in real.NAIP_FILES if k.startswith("nd-")):
        out = work / f"map-{key}"
        score(str(wv["model"].artifact_dir), out, naip=[naip_path(key)], chip_size_m=ND_MAP_M, scheduler="sync",
              progress=False, html_map=False)
        maps[key] = out
    return maps


def test_every_year_maps_one_pixel_per_whole_cell(nd_maps, wv):
    for key, out in nd_maps.items():
        predictions = gpd.read_parquet(out / "predictions.parquet")
        truth = real.truth(naip_path(key), None, ND_MAP_M)
        assert_chips_are_the_whole_cells_with_data(predictions, truth, SCORE_MAX_NODATA, min_purity=None)
        assert_one_map_pixel_per_chip(out, predictions, ND_MAP_M, wv["model"].classes)
        assert set(pd.to_datetime(predictions["date"]).dt.date) == {real.NAIP_FILES[key][1]}


def test_change_between_the_first_and_last_year(nd_maps, work):
    written = run_change(nd_maps["nd-0818"], nd_maps["nd-0831"], work / "change", html_map=False)
    transitions = pd.read_csv(written["transitions"])
    both = set(real.whole_cells(naip_path("nd-0818"), ND_MAP_M)) & set(real.whole_cells(naip_path("nd-0831"),
                                                                                          ND_MAP_M))
    assert transitions["chips"].sum() == len(both)
    assert np.isclose(transitions["km2"].sum(), len(both) * (ND_MAP_M / 1000) ** 2, rtol=1e-3)
    assert (work / "change" / "report.html").exists()


def test_trend_over_ten_years(nd_maps, work):
    import xarray as xr

    written = analyze_trends(list(nd_maps.values()), work / "trend", html_map=False)
    stack = xr.open_zarr(written["stack"]) if "stack" in written else xr.open_zarr(work / "trend" /
                                                                                    "landuse_stack.zarr")
    dates = sorted(real.NAIP_FILES[k][1] for k in nd_maps)
    assert [pd.Timestamp(t).date() for t in stack["time"].values] == dates
    for key in nd_maps:
        at = stack["land_use_class"].sel(time=pd.Timestamp(real.NAIP_FILES[key][1]))
        assert int((at > 0).sum()) == len(real.whole_cells(naip_path(key), ND_MAP_M))
    areas = pd.read_csv(work / "trend" / "areas.csv")
    assert len(areas) >= len(dates)


def test_trend_of_undated_maps_asks_for_dates(nd_maps, wv, work):
    undated = [real.undated_copy(naip_path(k), work / f"clip-{i}.tif") for i, k in enumerate(("nd-0818", "nd-0831"))]
    outs = [work / f"undated-map-{i}" for i in range(2)]
    for naip, out in zip(undated, outs, strict=True):
        score(str(wv["model"].artifact_dir), out, naip=[naip], chip_size_m=ND_MAP_M, scheduler="sync",
              progress=False, html_map=False)
    with pytest.raises(InputError, match="has no acquisition date"):
        analyze_trends(outs, work / "trend-undated", html_map=False)
    written = analyze_trends(outs, work / "trend-dated", dates=["2009-08-18", "2020-08-31"], html_map=False)
    assert written
    shutil.rmtree(work / "trend-undated", ignore_errors=True)


def _layer_pixels(layer) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(layer.url.split(",", 1)[1]))).convert("RGBA"))


@pytest.mark.parametrize("max_pixels", [1536, 300])
@pytest.mark.parametrize("variant", ["zero-gaps", "rgb", "internal-mask", "alpha-band", "nir-tagged-alpha"])
def test_page_imagery_from_block_previews_is_the_rasters_own(wv, work, variant, max_pixels):
    """A raster without overviews is decoded whole for the page's imagery: its blocks write previews of the
    pixels they decoded anyway (their margins beyond whole cells included), and the page drawn from those is
    the one the raster itself gives: gaps transparent whether zeros, a mask or an alpha band mark them, NIR
    kept where it is tagged alpha, colour infrared missing from RGB imagery."""
    from scipy import ndimage

    from geoclf.webmap import imagery_images, imagery_resolution, preview_step, write_imagery_preview
    from tiling.blocks import block_window, plan_blocks

    naip = {"zero-gaps": lambda: wv["naip"], "rgb": lambda: real.rgb_copy(wv["naip"], work / "wv-rgb-page.tif"),
            "internal-mask": lambda: real.masked_copy(wv["naip"], work / "wv-mask-page.tif"),
            "alpha-band": lambda: real.alpha_copy(wv["naip"], work / "wv-alpha-page.tif"),
            "nir-tagged-alpha": lambda: naip_path("zone11-0.6m")}[variant]()
    scenes, blocks = plan_blocks([naip], tiling.TileParams(chip_size=48), cells_per_block=6)
    (scene,) = scenes
    assert scene.overviews == 0 and len(blocks) > 2
    step = preview_step(imagery_resolution([(scene.crs, scene.bounds)], max_pixels), scene.res[0])
    files = []
    with rasterio.open(naip) as dataset:
        for block in blocks:
            path = work / f"preview-{variant}-{max_pixels}" / f"{block.number}.tif"
            write_imagery_preview(dataset, block_window(block, to_edges=True), step, path, mask=scene.mask,
                                  alpha_band=scene.alpha_band)
            files.append(str(path))
    # the previews cover the raster, on one lattice of squares from its first pixel
    assert_previews_cover(files, scene.bounds, (step * scene.res[0], step * scene.res[1]), 3 if variant == "rgb" else 4)

    source = str(naip)
    direct = imagery_images([source], max_pixels=max_pixels)
    previewed = imagery_images([source], max_pixels=max_pixels, stand_ins={source: files})
    for got, expected in zip(previewed, direct, strict=True):
        if variant == "rgb" and expected is not None and not expected.url:
            assert got == expected  # no NIR: missing from the colour-infrared layer either way
            continue
        assert got.bounds == expected.bounds and got.missing == expected.missing == []
        a, b = _layer_pixels(got), _layer_pixels(expected)
        assert a.shape == b.shape
        # the gaps are where they are: their edges may move by a pixel or so (the preview's squares and the
        # page's own decimation are not one lattice; the raster's read for the page rounds its last row away)
        edges = np.zeros(b.shape[:2], dtype=bool)
        edges[1:] |= b[1:, :, 3] != b[:-1, :, 3]
        edges[:, 1:] |= b[:, 1:, 3] != b[:, :-1, 3]
        far = ~ndimage.binary_dilation(edges, iterations=10)
        assert (a[..., 3] == b[..., 3]).mean() > 0.98 and (a[far, 3] == b[far, 3]).mean() > 0.999
        both = (a[..., 3] > 0) & (b[..., 3] > 0)
        assert both.mean() > 0.5
        # each side is lossy WebP, which alone moves forest texture by 3-4 grey levels at these sizes (the two
        # canvases before encoding differ by < 3): a page pixel off differs by ~9, other bands by ~17
        assert np.abs(a[both][:, :3].astype(int) - b[both][:, :3].astype(int)).mean() < 6


def assert_previews_cover(files: list[str], bounds, square: tuple[float, float], bands: int) -> None:
    """The previews (image bands + alpha) cover ``bounds`` whole, their pixels on one lattice of ``square``
    (x, y) from its top-left corner, overlapping neighbours by at most a square, past the edges by less than one."""
    import shapely

    left, bottom, right, top = bounds
    (sx, sy), boxes = square, []
    for file in files:
        with rasterio.open(file) as preview:
            assert preview.count == bands + 1 and preview.colorinterp[-1] == rasterio.enums.ColorInterp.alpha
            t = preview.transform
            assert t.a == pytest.approx(sx) and t.e == pytest.approx(-sy)
            assert (t.c - left) / sx == pytest.approx(round((t.c - left) / sx), abs=1e-6)
            assert (top - t.f) / sy == pytest.approx(round((top - t.f) / sy), abs=1e-6)
            boxes.append(shapely.box(*preview.bounds))
    union = shapely.union_all([b.buffer(sx * 1e-6, join_style="mitre") for b in boxes])  # edges meet in floats
    assert union.covers(shapely.box(left, bottom, right, top)) and union.geom_type == "Polygon"
    u_left, u_bottom, u_right, u_top = union.bounds
    assert (u_left, u_top) == pytest.approx((left, top), abs=sx * 1e-5) and right <= u_right < right + sx
    assert bottom - sy < u_bottom <= bottom
    assert sum(b.area for b in boxes) < union.area * 1.5
