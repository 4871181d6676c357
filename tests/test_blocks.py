"""Scene blocks (tiling.blocks): workers tile rectangles of each raster's grid and get tile()'s very chips.

The client plans blocks from the rasters' headers alone; every cell of the area ends up in exactly one block,
with the chip, window, label and footprint :func:`tiling.tile` gives it, also where rasters overlap (the one
with less nodata keeps a shared cell, then the first scene name) and across UTM zones and an AOI.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.windows import Window
from shapely import box

import tiling
import tiling.blocks
from tiling.blocks import block_chips, block_pixels, cut_span, plan_blocks
from tiling.index import TileParams
from tiling.labels import describe_nlcd

COLUMNS = ["chip_id", "cell", "scene", "source", "col_off", "row_off", "width", "height", "nodata_frac", "block"]
LABELED = [*COLUMNS, "label", "purity"]


def blocked(naip, params, nlcd=None, aoi=None, cells_per_block=7) -> gpd.GeoDataFrame:
    """Every block's chips, as the workers would compute them, in one table sorted like the reference."""
    info = describe_nlcd(str(nlcd)) if nlcd is not None else None
    _, blocks = plan_blocks(naip, params, aoi, info, cells_per_block=cells_per_block)
    parts = [block_chips(block, params, info) for block in blocks]
    return gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=parts[0].crs)


def assert_same_chips(reference: gpd.GeoDataFrame, got: gpd.GeoDataFrame, columns: list[str]) -> None:
    assert got["chip_id"].is_unique
    ref = reference.sort_values("chip_id").reset_index(drop=True)
    got = got.sort_values("chip_id").reset_index(drop=True)
    exact = [c for c in columns if c != "nodata_frac"]
    pd.testing.assert_frame_equal(got[exact], ref[exact], check_dtype=False)
    # nodata is sampled on a lattice read per strip of cells: at a raster's edge a point may move by a pixel
    np.testing.assert_allclose(got["nodata_frac"], ref["nodata_frac"], atol=4 / 1024)
    assert got.crs == ref.crs
    assert got.geometry.geom_equals_exact(ref.geometry, tolerance=1e-6).all()


@pytest.mark.parametrize("cells_per_block", [1, 7, 30, 10_000])
def test_blocks_of_one_scene_give_tiles_chips(small_scene, cells_per_block):
    params = TileParams()
    reference = tiling.tile([small_scene.naip], small_scene.nlcd, params=params, progress=False)
    got = blocked([small_scene.naip], params, small_scene.nlcd, cells_per_block=cells_per_block)
    assert_same_chips(reference, got, LABELED)


def test_blocks_across_utm_zones_unlabeled(utm_pair):
    scenes = [scene.naip for scene in utm_pair[0]]
    params = TileParams(max_nodata=0.5)
    reference = tiling.tile(scenes, None, params=params, progress=False)
    got = blocked(scenes, params)
    assert reference["crs"].nunique() == 2
    assert_same_chips(reference, got, COLUMNS)


def _crop(source, path, window: Window, hole: Window | None = None) -> str:
    """A crop of a raster with nodata 0 (and a hole of nodata in it): a neighbouring scene of the same date."""
    with rasterio.open(source) as src:
        data = src.read(window=window)
        profile = src.profile | {"width": window.width, "height": window.height, "nodata": 0,
                                 "transform": src.window_transform(window)}
        tags = src.tags()
    if hole is not None:
        data[:, hole.row_off:hole.row_off + hole.height, hole.col_off:hole.col_off + hole.width] = 0
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
    return str(path)


def test_overlapping_scenes_share_no_cell_and_keep_the_one_with_data(small_scene, tmp_path):
    # "a" and "b" overlap over half the area; "a" (the first name, which wins ties) has a hole of nodata in the
    # shared part, where "b" must keep the cells, as tile() does
    day = tiling.describe_naip(small_scene.naip).date
    stamp = day.strftime("%Y%m%d") if day is not None else "20200101"
    a = _crop(small_scene.naip, tmp_path / f"a_{stamp}.tif", Window(0, 0, 1500, 2240), Window(900, 300, 500, 700))
    b = _crop(small_scene.naip, tmp_path / f"b_{stamp}.tif", Window(700, 0, 1540, 2240))
    params = TileParams(max_nodata=0.9)
    reference = tiling.tile([a, b], small_scene.nlcd, params=params, progress=False)
    assert set(reference["scene"]) == {tiling.describe_naip(a).name, tiling.describe_naip(b).name}
    got = blocked([a, b], params, small_scene.nlcd, cells_per_block=5)
    assert got["cell"].is_unique
    assert_same_chips(reference, got, LABELED)


def test_blocks_keep_the_aoi_rule(small_scene, tmp_path):
    crs = tiling.describe_naip(small_scene.naip).crs
    left, bottom, _, _ = tiling.describe_naip(small_scene.naip).bounds
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame(geometry=[box(left + 300, bottom + 500, left + 1300, bottom + 1100)], crs=crs).to_file(aoi)
    for predicate in ("intersects", "within"):
        params = TileParams(aoi_predicate=predicate)
        reference = tiling.tile([small_scene.naip], small_scene.nlcd, params=params, aoi=aoi, progress=False)
        got = blocked([small_scene.naip], params, small_scene.nlcd, aoi=aoi, cells_per_block=3)
        assert 0 < len(got) < 100
        assert_same_chips(reference, got, LABELED)


def test_an_aoi_missing_the_rasters_is_refused(small_scene, tmp_path):
    crs = tiling.describe_naip(small_scene.naip).crs
    left, bottom, _, _ = tiling.describe_naip(small_scene.naip).bounds
    aoi = tmp_path / "far.gpkg"
    gpd.GeoDataFrame(geometry=[box(left - 9000, bottom - 9000, left - 8000, bottom - 8000)], crs=crs).to_file(aoi)
    with pytest.raises(tiling.InputError, match="AOI misses every chip"):
        plan_blocks([small_scene.naip], TileParams(), aoi)


@pytest.mark.parametrize("span,size", [((0, 26, 0, 32), 512), ((5, 5, -3, 40), 4), ((0, 99, 0, 2), 7),
                                       ((-10, 10, 7, 7), 1), ((0, 3, 0, 3), 16)])
def test_cut_span_covers_every_cell_once_within_the_size(span, size):
    blocks = cut_span(span, size)
    cells = [(x, y) for ix0, ix1, iy0, iy1 in blocks for x in range(ix0, ix1 + 1) for y in range(iy0, iy1 + 1)]
    expected = {(x, y) for x in range(span[0], span[1] + 1) for y in range(span[2], span[3] + 1)}
    assert len(cells) == len(set(cells)) == len(expected) and set(cells) == expected
    widths = np.array([b[1] - b[0] + 1 for b in blocks])
    heights = np.array([b[3] - b[2] + 1 for b in blocks])
    assert (widths * heights).max() <= size
    assert widths.max() - widths.min() <= 1 and heights.max() - heights.min() <= 1
    assert [b[3] for b in blocks] == sorted((b[3] for b in blocks), reverse=True)  # top row first


# -- a block's pixels read once (block_pixels): for its nodata lattice and its chips both ------------------------


@pytest.fixture(scope="module", params=["zero", "alpha", "mask"])
def coarse_scene(request, tmp_path_factory):
    """A 2,240 m scene at 7 m (10 x 10 chips of 32 px: the lattice's points are its pixels), with its collar
    marked by 0, by an alpha band or by a mask."""
    from tiling.synth import make_scene

    return make_scene(tmp_path_factory.mktemp(f"coarse-{request.param}"), size_m=2240, resolution=7.0, seed=3,
                      nlcd=False, nodata=request.param, collar_m=60)


COARSE = TileParams(chip_size=32, chip_size_m=224.0, max_nodata=0.5)


def test_a_blocks_pixels_give_the_chips_and_lattice_of_the_rasters_reads(coarse_scene):
    _, blocks = plan_blocks([coarse_scene.naip], COARSE, cells_per_block=7)
    served = 0
    with tiling.ChipReader(size=32) as read, tiling.ChipReader(size=32) as held:
        for block in blocks:
            pixels = block_pixels(block, read.bands)
            assert pixels is not None
            chips = block_chips(block, COARSE, pixels=pixels)
            pd.testing.assert_frame_equal(pd.DataFrame(chips), pd.DataFrame(block_chips(block, COARSE)))
            held.hold(pixels)
            for row in chips.itertuples():
                window = (row.col_off, row.row_off, row.width, row.height)
                np.testing.assert_array_equal(held.read(row.source, window), read.read(row.source, window))
                served += pixels.slices(row.source, read.bands, *window) is not None
    assert served == sum(len(block_chips(b, COARSE)) for b in blocks) > 50  # every chip from its block's pixels


def test_the_lattice_is_taken_from_held_pixels_only_where_they_are_its_very_samples(coarse_scene, small_scene):
    # pixels that are all nodata, where the lattice takes them, leave no chip; where it samples the raster
    # otherwise (224 px chips at 1 m: a lattice point every 7 px), the raster is read and they change nothing
    for naip, params in ((coarse_scene.naip, COARSE), (small_scene.naip, TileParams(max_nodata=0.5))):
        _, blocks = plan_blocks([naip], params, cells_per_block=30)
        pixels = block_pixels(blocks[0])
        empty = replace(pixels, pixels=np.zeros_like(pixels.pixels))
        if naip == coarse_scene.naip:
            assert len(block_chips(blocks[0], params)) > 0 and len(block_chips(blocks[0], params, pixels=empty)) == 0
        else:
            pd.testing.assert_frame_equal(pd.DataFrame(block_chips(blocks[0], params, pixels=empty)),
                                          pd.DataFrame(block_chips(blocks[0], params)))


def test_a_held_chip_is_served_without_the_raster_and_others_are_read(coarse_scene, tmp_path):
    copy = tmp_path / "copy.tif"
    copy.write_bytes(Path(coarse_scene.naip).read_bytes())
    for sidecar in Path(coarse_scene.naip).parent.glob(Path(coarse_scene.naip).name + ".*"):  # a .msk mask
        (tmp_path / ("copy.tif" + sidecar.name[len(Path(coarse_scene.naip).name):])).write_bytes(sidecar.read_bytes())
    _, blocks = plan_blocks([copy], COARSE, cells_per_block=30)
    pixels = block_pixels(blocks[1])
    inside = (pixels.col_off + 40, pixels.row_off + 3, 32, 32)
    across = (pixels.col_off + 40, pixels.row_off + pixels.pixels.shape[1] - 16, 32, 32)  # over its lower edge
    with tiling.ChipReader(size=32) as read, tiling.ChipReader(size=32) as held, tiling.ChipReader(size=16) as small:
        held.hold(pixels)
        small.hold(pixels)
        np.testing.assert_array_equal(held.read(str(copy), across), read.read(str(copy), across))
        expected_small = small.read(str(copy), inside)  # resampled: read from the raster
        assert expected_small.shape == (4, 16, 16)
        expected = read.read(str(copy), inside)
        read.close()
        held.close()
        held.hold(pixels)
        copy.unlink()
        np.testing.assert_array_equal(held.read(str(copy), inside), expected)  # no raster needed
        with pytest.raises(tiling.InputError):
            held.read(str(copy), across)


def test_a_block_too_large_to_hold_is_read_chip_by_chip(small_scene, monkeypatch):
    _, blocks = plan_blocks([small_scene.naip], TileParams(), cells_per_block=30)
    assert block_pixels(blocks[0]) is not None
    monkeypatch.setattr(tiling.blocks, "BLOCK_PIXELS_MAX_BYTES", 1_000_000)
    assert block_pixels(blocks[0]) is None


@pytest.mark.parametrize("stride", [32, 16, 20])
def test_unlabeled_nodata_counts_are_each_windows_own_count(stride):
    # chips as far apart as they are wide (one sum per square) or overlapping (a summed-area table)
    from tiling.labels import _window_sums

    rng = np.random.default_rng(stride)
    row0 = np.repeat(np.arange(4) * stride, 9)
    col0 = np.tile(np.arange(9) * stride, 4)
    mask = rng.random((int(row0.max()) + 32, int(col0.max()) + 32)) < 0.3
    expected = [int(mask[r:r + 32, c:c + 32].sum()) for r, c in zip(row0, col0, strict=True)]
    assert _window_sums(mask, row0, col0, 32).tolist() == expected


def test_footprints_in_the_rasters_own_crs_are_its_boxes_however_the_crs_is_written():
    # a block's chips are in its raster's CRS ("EPSG:26919"), the index CRS is the same one as WKT: their
    # boxes are the footprints (to_crs's noop), where each block used to reproject them
    from rasterio.crs import CRS

    from tiling.index import _exact_same_crs, with_footprints

    index_crs = CRS.from_user_input("EPSG:26919")
    assert _exact_same_crs("EPSG:26919", index_crs.to_wkt())
    assert not _exact_same_crs("EPSG:26918", index_crs.to_wkt())
    x = 258_174.0 + 224.0 * np.arange(50)
    frame = pd.DataFrame({"crs": "EPSG:26919", "minx": x, "miny": 4_703_412.0, "maxx": x + 224, "maxy": 4_703_636.0})
    got = with_footprints(frame, index_crs)
    expected = gpd.GeoSeries(box(x, 4_703_412.0, x + 224, 4_703_636.0), crs="EPSG:26919").to_crs(index_crs)
    assert got.geometry.geom_equals_exact(expected, tolerance=0).all() and got.crs == index_crs


@pytest.mark.parametrize("fill", [0, 0.0, 255, 7.0, -1, 0.5, 300, float("nan")])
def test_nodata_by_fill_is_every_bands_own_comparison(fill):
    # compared in the pixels' own type (uint8), the answer of comparing them as floats
    from tiling.labels import _all_fill

    rng = np.random.default_rng(0)
    pixels = rng.choice(np.array([0, 7, 255], dtype=np.uint8), size=(4, 30, 40), p=[0.8, 0.1, 0.1])
    expected = np.all(pixels == fill, axis=0)
    np.testing.assert_array_equal(_all_fill(pixels, range(4), slice(None), slice(None), fill), expected)
    np.testing.assert_array_equal(_all_fill(pixels, [1, 3], slice(2, 9), slice(5, 25), fill),
                                  np.all(pixels[[1, 3], 2:9, 5:25] == fill, axis=0))


def test_a_lent_dataset_gives_the_chips_of_an_own_read_and_stays_open(small_scene):
    # chips of 224 px are too many pixels to hold: they are read through the dataset their block's lattice
    # was read from (its decoded blocks kept by GDAL), which the reader leaves open for its owner
    import rasterio

    from tiling.io import kept_dataset

    _, blocks = plan_blocks([small_scene.naip], TileParams(max_nodata=0.5), cells_per_block=30)
    chips = block_chips(blocks[0], TileParams(max_nodata=0.5))
    dataset = kept_dataset(str(small_scene.naip))
    assert len(chips) > 3 and dataset is kept_dataset(str(small_scene.naip))
    with tiling.ChipReader(bands=(1, 2, 3)) as own, tiling.ChipReader(bands=(1, 2, 3)) as lent:
        lent.lend(str(small_scene.naip), dataset)
        for row in chips.itertuples():
            window = (row.col_off, row.row_off, row.width, row.height)
            np.testing.assert_array_equal(lent.read(row.source, window), own.read(row.source, window))
    assert not dataset.closed
    with rasterio.open(small_scene.naip) as three_bands, tiling.ChipReader(bands=(1, 2, 5)) as reader:
        with pytest.raises(tiling.InputError, match="band 5 was asked for"):
            reader.lend(str(small_scene.naip), three_bands)
        assert not three_bands.closed


def test_a_raster_with_a_nodata_value_and_an_alpha_band_tiles_and_reads_without_warnings(tmp_path):
    # both marks are applied (the value in every band, the alpha band); rasterio's NodataShadowWarning on each
    # plain read was one more stderr line a tiling or scoring run printed
    import warnings

    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import NodataShadowWarning
    from rasterio.transform import from_origin

    pixels = np.random.default_rng(0).integers(1, 255, (4, 448, 448), dtype=np.uint8)
    pixels[3] = 255
    path = tmp_path / "alpha_and_nodata.tif"
    with rasterio.open(path, "w", driver="GTiff", width=448, height=448, count=4, dtype="uint8", nodata=0,
                       crs="EPSG:26914", transform=from_origin(224.0 * 1000, 224.0 * 25000, 1.0, 1.0)) as out:
        out.write(pixels)
        out.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    params = TileParams(max_nodata=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NodataShadowWarning)
        _, blocks = plan_blocks([path], params)
        chips = block_chips(blocks[0], params)
        with tiling.ChipReader(bands=(1, 2, 3)) as reader:
            chip = reader.read(str(path), (0, 0, 224, 224))
    assert len(chips) == 4 and chip.shape == (3, 224, 224)
