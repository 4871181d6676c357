"""Tiling's contract with bad input: one line naming the file, exit status 2, nothing half-written."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geoclf.cli import main
from tiling.classes import NLCD_COLORS

UTM19 = "EPSG:26919"
ALBERS = "EPSG:5070"


def write_naip(path: Path, crs: str | None = UTM19, bands: int = 4, size: int = 600, origin=(300_000, 4_700_000),
               res: float = 1.0) -> Path:
    """A small NAIP-like raster (random pixels are enough for input checks)."""
    rng = np.random.default_rng(1)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint8",
               "transform": from_origin(*origin, res, res)}
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(rng.integers(1, 255, (bands, size, size), dtype=np.uint8))
    return path


def write_nlcd_over(path: Path, naip: Path, codes: list[int] = (41, 82), crs: str = ALBERS) -> Path:
    """An NLCD-like raster in Albers covering ``naip`` with stripes of ``codes``."""
    with rasterio.open(naip) as src:
        bounds = rasterio.warp.transform_bounds(src.crs, crs, *src.bounds)
    left, bottom, right, top = bounds[0] - 300, bounds[1] - 300, bounds[2] + 300, bounds[3] + 300
    width, height = int((right - left) // 30) + 1, int((top - bottom) // 30) + 1
    data = np.zeros((height, width), dtype=np.uint8)
    for i, code in enumerate(codes):
        data[:, i * width // len(codes):(i + 1) * width // len(codes)] = code
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8", crs=crs,
                       transform=from_origin(left, top, 30, 30), nodata=255) as dst:
        dst.write(data, 1)
        dst.write_colormap(1, {k: (*v, 255) for k, v in NLCD_COLORS.items()})
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        main(args)
    return exited.value.code, capsys.readouterr().err


@pytest.fixture
def good_pair(tmp_path: Path) -> tuple[Path, Path]:
    naip = write_naip(tmp_path / "naip.tif")
    return naip, write_nlcd_over(tmp_path / "nlcd.tif", naip)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("geoclf: error:")]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_good_pair_tiles(good_pair, tmp_path, capsys):
    naip, nlcd = good_pair
    main(["tile", "--naip", str(naip), "--nlcd", str(nlcd), "--out", str(tmp_path / "out"), "--scheduler",
          "sync", "--chip-size", "100"])
    assert (tmp_path / "out" / "chips.parquet").exists()


def test_raster_without_crs(good_pair, tmp_path, capsys):
    _, nlcd = good_pair
    naip = write_naip(tmp_path / "nocrs.tif", crs=None)
    code, err = run_cli(["tile", "--naip", str(naip), "--nlcd", str(nlcd), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "nocrs.tif", "no CRS")
    assert not (tmp_path / "o" / "chips.parquet").exists()


def test_rasters_that_do_not_overlap(good_pair, tmp_path, capsys):
    _, nlcd = good_pair
    far = write_naip(tmp_path / "far.tif", origin=(700_000, 5_200_000))
    code, err = run_cli(["tile", "--naip", str(far), "--nlcd", str(nlcd), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "far.tif", "does not overlap", "nlcd.tif")


def test_corrupt_file(good_pair, tmp_path, capsys):
    _, nlcd = good_pair
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00" + b"\x13" * 500)
    code, err = run_cli(["tile", "--naip", str(bad), "--nlcd", str(nlcd), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "corrupt.tif", "cannot be read")


def test_too_few_bands(good_pair, tmp_path, capsys):
    _, nlcd = good_pair
    two = write_naip(tmp_path / "two.tif", bands=2)
    code, err = run_cli(["tile", "--naip", str(two), "--nlcd", str(nlcd), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "two.tif", "2 band")


def test_values_that_are_not_nlcd_codes(good_pair, tmp_path, capsys):
    naip, _ = good_pair
    bogus = write_nlcd_over(tmp_path / "bogus.tif", naip, codes=[41, 7])
    code, err = run_cli(["tile", "--naip", str(naip), "--nlcd", str(bogus), "--out", str(tmp_path / "o"),
                         "--scheduler", "sync"], capsys)
    assert_one_line_error(code, err, "bogus.tif", "not NLCD codes", "7")
    assert not list((tmp_path / "o").glob("*")) if (tmp_path / "o").exists() else True


def test_empty_result_names_the_filter(good_pair, tmp_path, capsys):
    naip, _ = good_pair
    water = write_nlcd_over(tmp_path / "water.tif", naip, codes=[11])
    code, err = run_cli(["tile", "--naip", str(naip), "--nlcd", str(water), "--out", str(tmp_path / "o"),
                         "--scheduler", "sync", "--chip-size", "100"], capsys)
    assert_one_line_error(code, err, "min-purity")
    assert not (tmp_path / "o" / "chips.parquet").exists()


def test_aoi_that_misses_every_chip(good_pair, tmp_path, capsys):
    import geopandas as gpd
    from shapely import box

    naip, nlcd = good_pair
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[box(-100, 40, -99.9, 40.1)], crs="EPSG:4326").to_file(aoi)
    code, err = run_cli(["tile", "--naip", str(naip), "--nlcd", str(nlcd), "--out", str(tmp_path / "o"),
                         "--aoi", str(aoi), "--chip-size", "100"], capsys)
    assert_one_line_error(code, err, "aoi.geojson", "misses")


# -- a chip index is checked when it is read, before a stage starts or writes anything -------------------------


@pytest.fixture
def good_index(good_pair, tmp_path):
    """A 36-chip index of the good pair (100 px chips), as geoclf tile writes it."""
    import tiling

    naip, nlcd = good_pair
    tiling.tile([naip], nlcd, tmp_path / "chips", params=tiling.TileParams(chip_size=100, min_purity=0),
                progress=False)
    return tiling.read_index(tmp_path / "chips")


def _set(column, row, value):
    def change(index):
        values = index[column].astype(object).copy()
        values.iloc[row] = value
        index[column] = values.infer_objects() if not isinstance(value, str) else values.astype(index[column].dtype)
        return index
    return change


BAD_INDEXES = {
    "zero width": (_set("width", 3, 0), "row 3", "window width is 0"),
    "negative offset": (_set("row_off", 5, -7), "row 5", "row_off is negative"),
    "duplicate chip id": (lambda index: index.assign(chip_id=index["chip_id"].where(index.index != 4,
                                                                                     index["chip_id"].iloc[1])),
                          "row 4", "chip_id repeats"),
    "no chip id": (_set("chip_id", 2, ""), "row 2", "chip_id is empty"),
    "float window": (lambda index: index.assign(col_off=index["col_off"] + 0.5), "col_off", "integers"),
    "purity above 1": (_set("purity", 6, 1.5), "row 6", "outside [0, 1]"),
    "unknown split": (_set("split", 1, "test"), "row 1", "neither train nor val"),
    "text date": (lambda index: index.assign(date="2016-08-01"), "row 0", "date is not a date"),
    "missing column": (lambda index: index.drop(columns="height"), "missing columns: height", ""),
    "window beyond the raster": (_set("col_off", 7, 590), "row 7", "reaches beyond its 600 x 600 px raster"),
    "missing raster": (_set("source", 8, "/nowhere/naip.tif"), "row 8", "no such file"),
    # a footprint shrunk to nothing (buffer(-1e6)) once reached the map title's area as a NaN CRS: a traceback
    "empty footprint": (lambda index: index.set_geometry(index.geometry.where(index.index != 9,
                                                                               index.geometry.iloc[9].buffer(-1e6))),
                        "row 9", "footprint geometry is empty"),
}


@pytest.mark.parametrize("case", BAD_INDEXES)
def test_a_bad_index_is_refused_with_its_first_bad_row(good_index, tmp_path, capsys, case):
    import tiling

    change, *needles = BAD_INDEXES[case]
    bad = tmp_path / "bad.parquet"
    change(good_index.copy()).to_parquet(bad)
    with pytest.raises(tiling.InputError) as raised:
        tiling.read_index(bad, check_rasters=True)
    message = str(raised.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message
    for needle in needles:
        assert needle in message
    # featurize refuses it before loading a network or writing anything
    code, err = run_cli(["featurize", "--chips", str(bad), "--out", str(tmp_path / "feats"), "--scheduler", "sync"],
                        capsys)
    assert_one_line_error(code, err, "bad.parquet", *needles)
    assert not (tmp_path / "feats").exists()


def test_an_index_whose_raster_was_replaced_by_a_smaller_one(good_pair, good_index, tmp_path):
    import tiling

    naip, _ = good_pair
    write_naip(naip, size=300)  # a clip of the raster the index was made from
    assert len(tiling.read_index(tmp_path / "chips")) == len(good_index)  # the run parameters stay readable
    with pytest.raises(tiling.InputError, match=r"row \d+ .*reaches beyond its 300 x 300 px raster"):
        tiling.read_index(tmp_path / "chips", check_rasters=True)


def test_an_index_made_by_tile_passes_its_checks(good_index, tmp_path):
    import tiling
    from tiling.index import validate_index

    validate_index(good_index, check_rasters=True)
    undated = good_index.assign(date=None, label=None)
    validate_index(undated)  # missing dates and labels are ordinary values
    assert good_index["date"].isna().all()  # write_naip's raster has no date
    assert tiling.read_index(tmp_path / "chips").attrs["geoclf"]["params"]["chip_size"] == 100


# -- CRS units and grid sizes: refused with one line before anything is allocated ----------------------------


def test_naip_in_degrees_is_refused(tmp_path, capsys):
    """EPSG:4326 pixels are degrees: "224 m" chips would be 224 pixel-widths of 1e-5 degrees."""
    naip = write_naip(tmp_path / "geo.tif", crs="EPSG:4326", origin=(-71.90, 42.40), res=1e-5)
    nlcd = write_nlcd_over(tmp_path / "nlcd.tif", naip)
    code, err = run_cli(["tile", "--naip", str(naip), "--nlcd", str(nlcd), "--out", str(tmp_path / "o"),
                         "--chip-size", "100", "--scheduler", "sync"], capsys)
    assert_one_line_error(code, err, "geo.tif", "geographic CRS", "not metres", "gdalwarp -t_srs EPSG:26919")
    assert not (tmp_path / "o").exists()


def test_naip_in_us_survey_feet_is_refused(tmp_path, capsys):
    """A Massachusetts state plane in US feet: chips of "224 m" would be 224 ft."""
    naip = write_naip(tmp_path / "ft.tif", crs="EPSG:2249", origin=(600_000, 2_950_000), res=3.28)
    nlcd = write_nlcd_over(tmp_path / "nlcd.tif", naip)
    code, err = run_cli(["tile", "--naip", str(naip), "--nlcd", str(nlcd), "--out", str(tmp_path / "o"),
                         "--chip-size", "100", "--scheduler", "sync"], capsys)
    assert_one_line_error(code, err, "ft.tif", "EPSG:2249", "US survey foot", "reproject it to its UTM zone")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option, value, needle", [
    ("--stride-m", "0.001", "stride of 0.001 m is finer than its 1 m pixels"),  # was a MemoryError (5.85 TiB)
    ("--chip-size-m", "0.001", "chips need at least 8 pixels"),
    ("--stride-m", "nan", "stride m must be a positive number"),
    ("--chip-size-m", "-5", "chip size m must be a positive number"),
])
def test_grid_sizes_that_make_no_sense_are_refused(good_pair, tmp_path, capsys, option, value, needle):
    naip, nlcd = good_pair
    code, err = run_cli(["tile", "--naip", str(naip), "--nlcd", str(nlcd), "--out", str(tmp_path / "o"), option, value,
                         "--scheduler", "sync"], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "o").exists()


@pytest.fixture
def wide_raster(tmp_path):
    """A 40 km square NAIP-like raster at 1 m, stored sparse (no tile written) but for 2 km of imagery."""
    path = tmp_path / "wide.tif"
    profile = {"driver": "GTiff", "width": 40_000, "height": 40_000, "count": 4, "dtype": "uint8", "crs": UTM19,
               "transform": from_origin(300_000, 4_740_000, 1, 1), "tiled": True, "sparse_ok": True, "nodata": 0}
    with rasterio.open(path, "w", **profile) as dst:
        pixels = np.random.default_rng(2).integers(1, 255, (4, 2_000, 2_000), dtype=np.uint8)
        dst.write(pixels, window=rasterio.windows.Window(10_000, 10_000, 2_000, 2_000))
    assert path.stat().st_size < 40_000_000
    return path


def test_a_grid_of_too_many_cells_is_refused_before_it_is_laid_out(wide_raster, tmp_path, capsys):
    import tiling

    nlcd = write_nlcd_over(tmp_path / "nlcd.tif", wide_raster)
    code, err = run_cli(["tile", "--naip", str(wide_raster), "--nlcd", str(nlcd), "--out", str(tmp_path / "o"),
                         "--chip-size", "100", "--stride-m", "12", "--scheduler", "sync"], capsys)
    # 100 m cells snapped to multiples of 12 m inside x 300-340 km, y 4,700-4,740 km
    columns = math.floor((340_000 - 100) / 12) - math.ceil(300_000 / 12) + 1
    rows = math.floor((4_740_000 - 100) / 12) - math.ceil(4_700_000 / 12) + 1
    assert_one_line_error(code, err, f"{columns * rows:,} grid cells", f"more than {tiling.index.MAX_CELLS:,}", "--aoi")
    assert not (tmp_path / "o").exists()


def test_an_aoi_limits_the_grid_to_its_part_of_a_wide_raster(wide_raster, tmp_path):
    """The same grid over a 2 km AOI is 31,000 cells, not 11 million: only the AOI's part of the raster is laid out."""
    import geopandas as gpd
    from shapely import box

    import tiling

    nlcd = write_nlcd_over(tmp_path / "nlcd.tif", wide_raster)
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame(geometry=[box(310_000, 4_728_000, 312_000, 4_730_000)], crs=UTM19).to_file(aoi)
    params = tiling.TileParams(chip_size=100, stride_m=12, samples=4, min_purity=0)
    index = tiling.tile([wide_raster], nlcd, params=params, aoi=aoi, progress=False)
    square = box(310_000, 4_728_000, 312_000, 4_730_000)  # the imagery, and the AOI
    assert index.geometry.intersects(square).all() and (index["nodata_frac"] <= 0.05).all()
    # every 100 m cell of the 12 m grid wholly inside the imagery is a chip (and a few that hardly leave it)
    whole = {(ix, iy) for ix in range(math.ceil(310_000 / 12), math.floor(311_900 / 12) + 1)
             for iy in range(math.ceil(4_728_000 / 12), math.floor(4_729_900 / 12) + 1)}
    cells = set(zip(index["ix"], index["iy"], strict=True))
    assert len(whole) == 158 * 159 and whole <= cells and len(cells) < 1.05 * len(whole)


# -- every tiling writer is atomic and honours the umask -------------------------------------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_chip_index_gets_the_umask_permissions(good_pair, tmp_path, umask_027):
    # write_index used mkstemp, which made chips.parquet 0600 whatever the umask: a group could not read it
    import tiling

    naip, nlcd = good_pair
    tiling.tile([naip], nlcd, tmp_path / "chips", params=tiling.TileParams(chip_size=100, min_purity=0),
                progress=False)
    assert _mode(tmp_path / "chips" / "chips.parquet") == umask_027


def test_a_failed_index_write_keeps_the_previous_index(good_index, tmp_path):
    import tiling

    path = tmp_path / "chips" / "chips.parquet"
    before = path.read_bytes()
    broken = good_index.assign(label=[1, "Forest", *good_index["label"].iloc[2:]])  # arrow cannot store it
    with pytest.raises(Exception, match=r"(?i)arrow|convert"):
        tiling.write_index(broken, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["chips.parquet"]
