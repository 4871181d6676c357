"""Tiling on synthetic and real rasters: labels, the snapped grid, splits, parallel runs, chips on disk."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from conftest import shared_data
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject

import tiling
from tiling.classes import ClassScheme
from tiling.materialize import materialize_chips


def independent_majority(index: pd.DataFrame, nlcd_path: str) -> pd.DataFrame:
    """Class fractions per chip by warping NLCD onto each chip's own 1 m pixels (no shared code with tiling)."""
    scheme = ClassScheme.default()
    code_to_class = {code: name for name, codes in scheme.groups.items() for code in codes}
    rows = []
    with rasterio.open(nlcd_path) as nlcd:
        for _, chip in index.iterrows():
            ix, iy = chip["ix"], chip["iy"]
            size = float(chip["cell"].split(":")[-4])
            left, bottom = ix * size, iy * size
            pixels = np.full((int(size), int(size)), 255, dtype=np.uint8)
            reproject(rasterio.band(nlcd, 1), pixels, dst_transform=Affine(1, 0, left, 0, -1, bottom + size),
                      dst_crs=CRS.from_string(chip["crs"]), resampling=Resampling.nearest, dst_nodata=255)
            valid = pixels[pixels != 255]
            counts = pd.Series([code_to_class.get(int(c)) for c in valid]).value_counts(normalize=False)
            shares = counts / len(valid)
            ranked = shares.sort_values(ascending=False)
            rows.append({"chip_id": chip["chip_id"], "label": ranked.index[0],
                         "margin": ranked.iloc[0] - (ranked.iloc[1] if len(ranked) > 1 else 0.0),
                         "purity": ranked.iloc[0]})
    return pd.DataFrame(rows).set_index("chip_id")


def test_labels_match_nlcd_majority_computed_independently(small_scene, tmp_path):
    index = tiling.tile([small_scene.naip], small_scene.nlcd, tmp_path, scheduler="sync", progress=False,
                        params=tiling.TileParams(min_purity=0.0, max_nodata=0.2))
    assert (tmp_path / "chips.parquet").exists()
    truth = independent_majority(index, small_scene.nlcd)
    joined = index.set_index("chip_id").join(truth, rsuffix="_truth")
    clear = joined[joined["margin"] > 0.05]  # ties within sampling error may go either way
    assert len(clear) > 0.8 * len(joined)
    assert (clear["label"] == clear["label_truth"]).all()
    assert np.abs(joined["purity"] - joined["purity_truth"]).max() < 0.05


def test_two_utm_zones_with_one_nlcd(utm_pair, tmp_path):
    scenes, nlcd = utm_pair
    index = tiling.tile([s.naip for s in scenes], nlcd, tmp_path, scheduler="sync", progress=False,
                        params=tiling.TileParams(min_purity=0.0, max_nodata=0.2))
    assert index.crs.to_epsg() == 5070  # several CRSes: the index is in NLCD's Albers
    assert set(index["crs"]) == {"EPSG:26918", "EPSG:26919"}
    truth = independent_majority(index, nlcd)
    joined = index.set_index("chip_id").join(truth, rsuffix="_truth")
    clear = joined[joined["margin"] > 0.05]
    assert set(clear["crs"]) == {"EPSG:26918", "EPSG:26919"}
    assert (clear["label"] == clear["label_truth"]).all()
    # footprints are the native squares, reprojected: about 224 m x 224 m in Albers too
    assert np.allclose(index.geometry.area, 224 * 224, rtol=0.01)


def test_grid_is_snapped_to_the_crs_not_the_raster(small_scene, tmp_path):
    """A raster shifted by a few metres, or at 0.6 m, yields the same cells: change analysis relies on it."""
    from tiling.synth import make_scene

    with rasterio.open(small_scene.naip) as ds:
        bounds = ds.bounds
    fine = make_scene(tmp_path / "fine", size_m=1120, resolution=0.6, seed=0, year=2018, nlcd=False)
    a = tiling.tile([small_scene.naip], small_scene.nlcd, params=tiling.TileParams(min_purity=0, max_nodata=1),
                    scheduler="sync", progress=False)
    b = tiling.tile([fine.naip], small_scene.nlcd, params=tiling.TileParams(min_purity=0, max_nodata=1,
                    chip_size_m=224), scheduler="sync", progress=False)
    # same centre, half the size: every whole cell of the 0.6 m scene is a cell of the 1 m scene
    assert len(b) >= 9 and set(b["cell"]) <= set(a["cell"])
    assert ((a["ix"] * 224) % 224 == 0).all() and bounds.left % 224 != 0  # snapped to 224 m, not to the raster
    # the 0.6 m windows cover 224 m too, read back at 224 px
    assert b["width"].between(372, 374).all()
    row = b.iloc[0]
    with tiling.ChipReader(size=224) as reader:
        chip = reader.read(row["source"], (row["col_off"], row["row_off"], row["width"], row["height"]))
    assert chip.shape == (4, 224, 224)


def test_split_is_spatially_disjoint_and_stable(small_scene, tmp_path):
    params = tiling.TileParams(block_size_m=448, val_fraction=0.25, seed=3)
    first = tiling.tile([small_scene.naip], small_scene.nlcd, tmp_path / "a", params=params, scheduler="sync",
                        progress=False)
    again = tiling.tile([small_scene.naip], small_scene.nlcd, tmp_path / "b", params=params, scheduler="sync",
                        progress=False)
    pd.testing.assert_frame_equal(pd.DataFrame(first), pd.DataFrame(again))
    per_block = first.groupby("block")["split"].nunique()
    assert (per_block == 1).all()  # a block is never cut between train and val
    assert set(first["split"]) == {"train", "val"}
    assert 0.1 < (first["split"] == "val").mean() < 0.45


def test_local_cluster_gives_the_same_index(small_scene, tmp_path):
    params = tiling.TileParams(min_purity=0.5)
    sync = tiling.tile([small_scene.naip], small_scene.nlcd, params=params, scheduler="sync", progress=False)
    import tiling.index as index_module
    from tiling.index import CELLS_PER_TASK  # noqa: F401  (tasks split scenes; force several below)

    index_module.CELLS_PER_TASK, saved = 16, index_module.CELLS_PER_TASK
    try:
        with tiling.dask_client("local", n_workers=2) as client:
            parallel = tiling.tile([small_scene.naip], small_scene.nlcd, params=params, scheduler=client,
                                   progress=False)
            assert len(client.scheduler_info()["workers"]) == 2
    finally:
        index_module.CELLS_PER_TASK = saved
    pd.testing.assert_frame_equal(pd.DataFrame(sync), pd.DataFrame(parallel))


def test_balance_undersamples_to_the_rarest_class(small_scene):
    index = tiling.tile([small_scene.naip], small_scene.nlcd, params=tiling.TileParams(balance=True),
                        scheduler="sync", progress=False)
    counts = index.groupby(["split", "label"]).size()
    for split in index["split"].unique():
        assert counts[split].nunique() == 1


def test_aoi_keeps_only_chips_that_touch_it(small_scene, tmp_path):
    import geopandas as gpd
    from shapely import box

    with rasterio.open(small_scene.naip) as ds:
        left, bottom, right, top = ds.bounds
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame(geometry=[box(left, bottom, (left + right) / 2, (bottom + top) / 2)],
                     crs=small_scene.crs).to_crs("EPSG:4326").to_file(aoi)
    whole = tiling.tile([small_scene.naip], small_scene.nlcd, scheduler="sync", progress=False)
    part = tiling.tile([small_scene.naip], small_scene.nlcd, aoi=aoi, scheduler="sync", progress=False)
    assert 0 < len(part) < len(whole)
    cx = part.geometry.centroid.x
    assert (cx < (left + right) / 2 + 224).all()


def test_materialized_chips(small_scene, tmp_path):
    index = tiling.tile([small_scene.naip], small_scene.nlcd, scheduler="sync", progress=False).head(6)
    assert materialize_chips(index, tmp_path / "png", "png", progress=False) == 6
    for _, row in index.iterrows():
        png = tmp_path / "png" / row["split"] / row["label"] / (row["chip_id"].replace(":", "__") + ".png")
        assert png.exists()
    assert materialize_chips(index, tmp_path / "tif", "geotiff", progress=False) == 6
    row = index.iloc[0]
    path = next((tmp_path / "tif").rglob(row["chip_id"].replace(":", "__") + ".tif"))
    with rasterio.open(path) as chip, tiling.ChipReader() as reader:
        assert chip.count == 4 and chip.crs.to_string() == row["crs"]
        assert chip.bounds.left == pytest.approx(row["ix"] * 224) and chip.bounds.bottom == pytest.approx(
            row["iy"] * 224)
        np.testing.assert_array_equal(chip.read(), reader.read(row["source"], (
            row["col_off"], row["row_off"], row["width"], row["height"])))


def test_real_naip_files_read_with_dates_and_nir():
    folder = shared_data("naip-nd-m_4709963_se-opengeos")
    scenes = [tiling.describe_naip(p) for p in sorted(folder.glob("*.tif"))]
    assert [s.date.year for s in scenes] == [2009, 2010, 2012, 2014, 2015, 2016, 2017, 2018, 2019, 2020]
    assert {s.crs.to_epsg() for s in scenes} == {26914}
    alpha = shared_data("naip-samples-stactools", "m_4208701_ne_16_060_20200902.tif")
    with rasterio.open(alpha) as ds:
        assert ds.colorinterp[3].name == "alpha"  # tagged alpha, but it holds NIR
        width, height = ds.width, ds.height
    with tiling.ChipReader(size=64) as reader:
        chip = reader.read(str(alpha), (0, 0, min(width, 140), min(height, 140)))
    assert np.unique(chip[3]).size > 20  # real NIR values, not a 0/255 mask


def test_real_rasters_without_overviews_keep_their_nodata_classification(tmp_path):
    # Without overviews nodata_mask samples windows in a few blocks instead of a decimated read of the whole
    # raster (which decodes every block); the answer must stay what the pixels say.
    import realdata as real

    from tiling.io import nodata_mask

    wv = shared_data("naip-nlcd-wv-calebrob6", "naip.tif")
    nir_as_alpha = [shared_data("naip-samples-stactools", name)
                    for name in ("m_4208701_ne_16_060_20200902.tif", "m_3211605_ne_11_060_20200415.tif")]
    expected = {wv: (None, None), **dict.fromkeys(nir_as_alpha, (None, None)),
                real.alpha_copy(wv, tmp_path / "alpha.tif"): ("alpha", 5),
                real.masked_copy(wv, tmp_path / "masked.tif"): ("mask", None)}
    for path, answer in expected.items():
        with rasterio.open(path) as ds:
            assert not ds.overviews(1) and ds.width * ds.height > 128 * 128, path  # the sampled path
            assert nodata_mask(ds) == answer, path

    # a file rewritten in place is asked again, not answered from what the process kept about the old one
    rewritten = tmp_path / "rewritten.tif"
    real.alpha_copy(wv, rewritten)
    with rasterio.open(rewritten) as ds:
        assert nodata_mask(ds) == ("alpha", 5)
    with rasterio.open(rewritten, "r+") as ds:
        ds.write(np.random.default_rng(0).integers(1, 255, (ds.height, ds.width), dtype=np.uint8), 5)
    with rasterio.open(rewritten) as ds:
        assert nodata_mask(ds) == (None, None)


def test_real_nlcd_against_real_naip_elsewhere_is_a_clear_error():
    naip = shared_data("naip-nd-m_4709963_se-opengeos", "m_4709963_se_14_1_20160816.tif")
    nlcd = shared_data("nlcd-ct-ma-jhollist", "nlcd.tif")
    with pytest.raises(tiling.InputError, match="does not overlap the NLCD raster"):
        tiling.tile([naip], nlcd, progress=False)


def _undated_copy(source, path):
    """A copy of a raster with no date anywhere: a name without ``_YYYYMMDD`` and no date tags."""
    import shutil

    shutil.copy(source, path)
    with rasterio.open(path, "r+") as dataset:
        tags = dataset.tags()
        dataset.update_tags(**{key: "" for key in tags if "DATE" in key.upper()})
    assert tiling.describe_naip(path).date is None
    return path


def test_an_undated_raster_tiles_to_the_same_chips_as_its_dated_copy(small_scene, tmp_path):
    # Under pandas 3 the overlap key built with astype(str) was missing for every undated chip, so all of them
    # collapsed into a single chip while the command exited 0.
    dated = tiling.tile([small_scene.naip], small_scene.nlcd, progress=False)
    assert dated["date"].notna().all()
    undated_path = _undated_copy(small_scene.naip, tmp_path / "clip.tif")
    undated = tiling.tile([undated_path], small_scene.nlcd, progress=False)
    assert undated["date"].isna().all()
    assert len(undated) == len(dated) > 1
    columns = ["cell", "col_off", "row_off", "width", "height", "label", "split"]
    pd.testing.assert_frame_equal(undated[columns].reset_index(drop=True), dated[columns].reset_index(drop=True))


def test_overlapping_undated_rasters_keep_one_chip_per_cell(small_scene, tmp_path):
    one = _undated_copy(small_scene.naip, tmp_path / "one.tif")
    two = _undated_copy(small_scene.naip, tmp_path / "two.tif")
    single = tiling.tile([one], small_scene.nlcd, progress=False)
    both = tiling.tile([one, two], small_scene.nlcd, progress=False)
    assert both["cell"].is_unique
    assert len(both) == len(single) > 1
    assert set(both["cell"]) == set(single["cell"])


# -- the variants users' rasters come in (tiling.synth makes each from the same world) ------------------------

VARIANTS = {
    "alpha": {"nodata": "alpha"},
    "mask": {"nodata": "mask"},
    "rgb": {"bands": 3},
    "rgb-alpha": {"bands": 3, "nodata": "alpha"},
    "rgb-mask": {"bands": 3, "nodata": "mask"},
    "date-in-name": {"date_in": "name"},
    "undated": {"date_in": "none"},
}
INDEX_COLUMNS = ["cell", "col_off", "row_off", "width", "height", "label", "purity", "nodata_frac", "split"]


@pytest.fixture(scope="module")
def plain_scene(tmp_path_factory):
    """A 1,344 m scene (5 x 5 whole cells) with its NLCD and a collar that reaches into every edge chip."""
    from tiling.synth import make_scene

    return make_scene(tmp_path_factory.mktemp("plain"), size_m=1344, seed=0, collar_m=150)


@pytest.fixture(scope="module")
def plain_indexes(plain_scene):
    """The plain scene tiled with the nodata filter (``kept``) and without (``all``)."""
    return {name: tiling.tile([plain_scene.naip], plain_scene.nlcd, progress=False,
                              params=tiling.TileParams(min_purity=0, max_nodata=max_nodata))
            for name, max_nodata in (("kept", 0.05), ("all", 1.0))}


def read_chips(index, bands) -> np.ndarray:
    with tiling.ChipReader(bands=bands) as reader:
        return np.stack([reader.read(row.source, (row.col_off, row.row_off, row.width, row.height))
                         for row in index.itertuples()])


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_raster_variant_tiles_to_the_chips_of_the_plain_scene(plain_scene, plain_indexes, tmp_path, variant):
    """No date, a date in the name, RGB only, an alpha band or a nodata mask: the chips are the same.

    With an alpha band or a mask the collar holds imagery; read as data, its chips would pass the nodata
    filter (and show pixels the raster says it has not).
    """
    from tiling.synth import make_scene

    options = VARIANTS[variant]
    scene = make_scene(tmp_path, size_m=1344, seed=0, collar_m=150, nlcd=False, **options)
    plain = plain_indexes["kept"]
    index = tiling.tile([scene.naip], plain_scene.nlcd, params=tiling.TileParams(min_purity=0, max_nodata=0.05),
                        progress=False)
    edge_plain = plain_indexes["all"]
    assert 0 < len(plain) < len(edge_plain)  # the collar drops the edge chips
    pd.testing.assert_frame_equal(index[INDEX_COLUMNS], plain[INDEX_COLUMNS])
    assert index["date"].isna().all() if options.get("date_in") == "none" else (
        index["date"] == plain_scene.date).all()
    bands = [1, 2, 3] if options.get("bands") == 3 else [1, 2, 3, 4]
    np.testing.assert_array_equal(read_chips(index, bands), read_chips(plain, bands))
    # The masked collar reads as 0, as a zero collar does, in chips that reach into it
    edge = tiling.tile([scene.naip], plain_scene.nlcd, params=tiling.TileParams(min_purity=0, max_nodata=1),
                       progress=False)
    assert (edge_plain["nodata_frac"] > 0.05).sum() >= 8
    pd.testing.assert_frame_equal(edge[INDEX_COLUMNS], edge_plain[INDEX_COLUMNS])
    np.testing.assert_array_equal(read_chips(edge, bands), read_chips(edge_plain, bands))
    if options.get("bands") == 3:
        with pytest.raises(tiling.InputError, match=r"has 3 (image )?band"):
            read_chips(index, [1, 2, 3, 4])  # an alpha band is never read as NIR


def test_rgb_rasters_materialize_as_three_band_geotiffs(plain_scene, tmp_path):
    from tiling.synth import make_scene

    scene = make_scene(tmp_path / "rgb", size_m=448, seed=0, bands=3, nodata="alpha", nlcd=False)
    index = tiling.tile([scene.naip], plain_scene.nlcd, params=tiling.TileParams(min_purity=0), progress=False)
    assert materialize_chips(index, tmp_path / "tif", "geotiff", progress=False) == len(index) > 0
    with rasterio.open(next((tmp_path / "tif").rglob("*.tif"))) as chip:
        assert chip.count == 3 and chip.descriptions == ("red", "green", "blue")


def test_a_06m_scene_reads_the_ground_of_the_1m_scene(plain_scene, tmp_path):
    """Post-2018 NAIP is 0.6 m: on a 224 m grid its windows are 373 px, read back at 224 px like 1 m chips."""
    from tiling.synth import make_scene

    fine = make_scene(tmp_path, size_m=1344, resolution=0.6, seed=0, collar_m=150, nlcd=False)
    params = tiling.TileParams(min_purity=0, chip_size_m=224)
    coarse = tiling.tile([plain_scene.naip], plain_scene.nlcd, params=params, progress=False).set_index("cell")
    index = tiling.tile([fine.naip], plain_scene.nlcd, params=params, progress=False).set_index("cell")
    shared = index.index.intersection(coarse.index)
    assert len(shared) >= 4 and index.loc[shared, "width"].between(372, 374).all()
    assert (index.loc[shared, "label"] == coarse.loc[shared, "label"]).all()
    a = read_chips(index.loc[shared], [1, 2, 3, 4]).astype(float)
    b = read_chips(coarse.loc[shared], [1, 2, 3, 4]).astype(float)
    same_place = np.abs(a.mean(axis=(2, 3)) - b.mean(axis=(2, 3))).mean()
    other_place = np.abs(a.mean(axis=(2, 3)) - np.roll(b, 1, axis=0).mean(axis=(2, 3))).mean()
    assert same_place < 3 < other_place


@pytest.mark.parametrize("nodata", ["zero", "mask"])
def test_nodata_fractions_count_the_pixels_without_data_where_the_lattice_is_the_pixels(tmp_path, nodata):
    """At 32 px chips the nodata lattice is the raster's own pixels: each chip's nodata fraction is exactly the
    share of its pixels without data (0 in every band, or outside the mask), whichever way the lattice is read
    (lattices inside the raster are read without the boundless read's temporary VRT)."""
    from tiling.synth import make_scene

    scene = make_scene(tmp_path, size_m=1344, resolution=7.0, seed=0, collar_m=150, nlcd=False, nodata=nodata)
    index = tiling.tile([scene.naip], None, params=tiling.TileParams(chip_size=32, max_nodata=1.0), progress=False)
    with rasterio.open(scene.naip) as ds:
        pixels = ds.read()
        empty = np.all(pixels == 0, axis=0) if nodata == "zero" else ds.read_masks(1) == 0
    expected = [empty[r:r + h, c:c + w].mean() for c, r, w, h in
                index[["col_off", "row_off", "width", "height"]].itertuples(index=False)]
    assert 0 < (index["nodata_frac"] > 0).sum() < len(index)  # the collar reaches into some chips, not all
    np.testing.assert_array_equal(index["nodata_frac"].to_numpy(), np.array(expected))


def test_a_raster_rewritten_in_place_is_measured_anew_in_the_same_process(tmp_path):
    """Tiling keeps the last raster it measured open for the next block (GDAL's decoded blocks belong to the
    open dataset); a raster written again at the same path, here with a wider collar, is read again."""
    from tiling.synth import make_scene

    params = tiling.TileParams(chip_size=32, max_nodata=1.0)
    narrow = make_scene(tmp_path, size_m=1344, resolution=7.0, seed=0, collar_m=100, nlcd=False)
    before = tiling.tile([narrow.naip], None, params=params, progress=False)
    wide = make_scene(tmp_path, size_m=1344, resolution=7.0, seed=0, collar_m=300, nlcd=False)
    assert wide.naip == narrow.naip
    after = tiling.tile([wide.naip], None, params=params, progress=False)
    with rasterio.open(wide.naip) as ds:
        empty = np.all(ds.read() == 0, axis=0)
    expected = [empty[r:r + h, c:c + w].mean() for c, r, w, h in
                after[["col_off", "row_off", "width", "height"]].itertuples(index=False)]
    assert after["nodata_frac"].sum() > before["nodata_frac"].sum()
    np.testing.assert_array_equal(after["nodata_frac"].to_numpy(), np.array(expected))


_CACHE_MAX = """
import ctypes, glob, os, sys
import rasterio, tiling  # noqa: F401  (tiling sets its GDAL defaults on import)
libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*"))
if not libs:
    sys.exit(3)
gdal = ctypes.CDLL(libs[0])  # the library rasterio loaded: its cache setting
gdal.GDALGetCacheMax64.restype = ctypes.c_int64
print(gdal.GDALGetCacheMax64() // 2**20)
"""


@pytest.mark.parametrize("given, expected", [(None, 512), ("100", 100)])
def test_gdal_block_cache_is_bounded_unless_the_environment_sets_it(given, expected):
    """GDAL's default cache is 5% of the machine's memory per process: a worker would keep every tile it
    decodes in fresh pages up to that (40% more peak memory on a 3,600-chip score). tiling bounds it; a user's
    GDAL_CACHEMAX wins."""
    env = {k: v for k, v in os.environ.items() if k != "GDAL_CACHEMAX"}
    if given is not None:
        env["GDAL_CACHEMAX"] = given
    done = subprocess.run([sys.executable, "-c", _CACHE_MAX], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode == 3:
        pytest.skip("rasterio's GDAL is not a bundled library here (no rasterio.libs/libgdal*)")
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == expected
