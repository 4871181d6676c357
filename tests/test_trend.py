"""Tests of geoclf.trend on score-like directories built from handmade predictions with a known schedule.

The scene: 10 x 8 chips of 200 m on the real UTM 19N chip grid, five NAIP-like dates two years apart.
Developed starts as two columns (16 chips) and takes 4 Forest chips at every later date; 3 Cultivated chips
flicker to Herbaceous at the middle date only; the first date covers one more column, and one chip is missing
at the fourth date, so the stack's grid is the union and the assessed area leaves both out.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import re
from pathlib import Path

import dask
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import rasterio.io
import rasterio.vrt
import shapely
import xarray as xr
from conftest import CHROMIUM, chromium
from PIL import Image
from rasterio.crs import CRS

from geoclf import maps, trend
from geoclf.cli import main
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.grid import ChipGrid

CLASSES = ClassScheme.default()
UTM19 = CRS.from_epsg(26919)
GRID = ChipGrid(UTM19, 200.0)
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "naip-nd-m_4709963_se-opengeos"

DATES = [dt.date(2010, 6, 29), dt.date(2012, 7, 31), dt.date(2014, 7, 20), dt.date(2016, 8, 16),
         dt.date(2018, 7, 16)]
IX0, IY0, WIDTH, HEIGHT = 1480, 23950, 10, 8
FLICKER = [(1487, 23951), (1488, 23953), (1486, 23956)]
EXTRA_COLUMN = IX0 + WIDTH  # mapped at the first date only
HOLE = (1489, 23950)  # not mapped at the fourth date


def schedule(k: int) -> dict[tuple[int, int], str]:
    """Class of every chip at date ``k``: the known conversion schedule."""
    cells: dict[tuple[int, int], str] = {}
    for ix in range(IX0, IX0 + WIDTH):
        for iy in range(IY0, IY0 + HEIGHT):
            col = ix - IX0
            cells[ix, iy] = "Developed" if col < 2 else "Forest" if col < 6 else "Cultivated"
    # Four Forest chips become Developed at every later date: half a column at a time, top half first.
    for step in range(1, k + 1):
        ix = IX0 + 2 + (step - 1) // 2
        rows = range(IY0 + 4, IY0 + 8) if (step - 1) % 2 == 0 else range(IY0, IY0 + 4)
        for iy in rows:
            cells[ix, iy] = "Developed"
    if k == 2:
        for cell in FLICKER:
            cells[cell] = "Herbaceous"
    if k == 0:
        for iy in range(IY0, IY0 + HEIGHT):
            cells[EXTRA_COLUMN, iy] = "Cultivated"
    if k == 3:
        del cells[HOLE]
    return cells


def assessed_cells() -> set[tuple[int, int]]:
    return set.intersection(*(set(schedule(k)) for k in range(len(DATES))))


def predictions(cells: dict[tuple[int, int], str], date: dt.date, grid: ChipGrid = GRID,
                classes: ClassScheme = CLASSES, seed: int = 0) -> gpd.GeoDataFrame:
    """A predictions table as geoclf score writes it, the predicted class the most probable."""
    rng = np.random.default_rng(seed)
    keys = sorted(cells)
    names = classes.names
    probs = rng.uniform(0.0, 0.3, (len(keys), len(names)))
    for row, key in enumerate(keys):
        probs[row, names.index(cells[key])] = 1.0 + rng.uniform()
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    scene = f"m_4207101_ne_19_060_{date:%Y%m%d}"
    frame = pd.DataFrame({
        "chip_id": [f"{scene}:{ix}_{iy}" for ix, iy in keys],
        "cell": [grid.cell_id(ix, iy) for ix, iy in keys],
        "ix": np.array([k[0] for k in keys], dtype=np.int64), "iy": np.array([k[1] for k in keys], dtype=np.int64),
        "crs": grid.crs.to_string(), "scene": scene, "source": f"/data/{scene}.tif", "date": date,
        "pred": [cells[k] for k in keys], "model": "test-model",
    })
    for i, name in enumerate(names):
        frame[f"prob_{name}"] = probs[:, i]
    return gpd.GeoDataFrame(frame, geometry=[grid.footprint(ix, iy) for ix, iy in keys], crs=grid.crs)


def score_dir(path: Path, cells: dict[tuple[int, int], str], date: dt.date, *, grid: ChipGrid = GRID,
              classes: ClassScheme = CLASSES, probabilities: bool = False, with_table: bool = True) -> Path:
    """A directory laid out like `geoclf score` output: predictions.parquet and landuse.tif."""
    table = predictions(cells, date, grid, classes)
    path.mkdir(parents=True, exist_ok=True)
    if with_table:
        table.to_parquet(path / "predictions.parquet")
    land_use = maps.predictions_to_grid(table, classes)
    maps.write_landuse_cog(path / "landuse.tif", land_use, classes)
    if probabilities:
        maps.write_probability_cog(path / "landuse_probs.tif", land_use, classes)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("scene")
    # Given out of order: the stack sorts by date.
    return [score_dir(root / f"ma-{d.year}", schedule(k), d, probabilities=True)
            for k, d in reversed(list(enumerate(DATES)))]


def code(name: str) -> int:
    return CLASSES.names.index(name) + 1


def expected_counts(k: int) -> dict[str, int]:
    cells = schedule(k)
    counts = dict.fromkeys(CLASSES.names, 0)
    for cell in assessed_cells():
        counts[cells[cell]] += 1
    return counts


# --------------------------------------------------------------------------------------------------------------
# the stack


def test_stack_is_the_chip_grid_with_dates_and_classes(scene: list[Path]) -> None:
    stack = trend.open_stack(scene)
    codes = stack[trend.CODES]
    assert codes.dims == ("time", "y", "x") and codes.dtype == np.uint8
    assert [pd.Timestamp(t).date() for t in stack["time"].to_numpy()] == DATES
    assert stack["year"].to_numpy().tolist() == [d.year for d in DATES]
    assert stack.rio.crs == UTM19
    transform = stack.rio.transform()
    # one pixel per chip, pixel corners on the chip grid, the union of every date's extent
    assert (transform.a, transform.e) == (200.0, -200.0)
    assert (transform.c, transform.f) == (IX0 * 200.0, (IY0 + HEIGHT) * 200.0)
    assert (stack.sizes["y"], stack.sizes["x"]) == (HEIGHT, WIDTH + 1)
    assert json.loads(stack.attrs["class_names"]) == CLASSES.names
    assert json.loads(stack.attrs["resampled"]) == []
    values = codes.compute().to_numpy()
    for k in range(len(DATES)):
        for (ix, iy), name in schedule(k).items():
            assert values[k, IY0 + HEIGHT - 1 - iy, ix - IX0] == code(name)
    assert values[1:, :, -1].max() == 0  # the extra column is nodata after the first date
    row, col = IY0 + HEIGHT - 1 - HOLE[1], HOLE[0] - IX0
    assert values[3, row, col] == 0 and values[2, row, col] == code("Cultivated")
    # a chip's pixel is where its footprint is
    x, y = GRID.footprint(1483, 23952).centroid.coords[0]
    assert int(codes.sel(time="2018-07-16", x=x, y=y, method="nearest")) == code("Developed")


def test_one_land_use_stack_serves_every_analysis(scene: list[Path]) -> None:
    dataset = trend.open_stack(scene)
    stack = trend.LandUseStack.of(dataset)
    assert trend.LandUseStack.of(stack) is stack
    assert stack.classes.names == CLASSES.names and stack.classes.color("Forest") == CLASSES.color("Forest")
    assert stack.pixel_area_km2 == float(dataset.attrs["pixel_area_km2"])
    assert int(stack.assessed.sum()) == len(assessed_cells())
    assert stack.years.tolist() == [d.year for d in DATES]
    pd.testing.assert_frame_equal(trend.class_areas(stack), trend.class_areas(dataset))
    with pytest.raises(InputError, match="not a geoclf land-use stack"):
        trend.LandUseStack.of(xr.Dataset())


def shifted_map(path: Path, k: int) -> Path:
    """A score directory of date ``k`` whose map is shifted by a quarter pixel (50 m) east and north."""
    shifted = score_dir(path, schedule(k), DATES[k])
    grid, classes = maps.read_landuse(shifted / "landuse.tif")
    grid = grid._replace(transform=grid.transform * grid.transform.translation(0.25, -0.25))
    maps.write_landuse_cog(shifted / "landuse.tif", grid, classes)
    return shifted


def test_opening_the_stack_reads_no_pixels(scene: list[Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    moved = shifted_map(tmp_path / "moved", 4)  # read through a warped VRT
    reads: list[str] = []
    for cls in (rasterio.io.DatasetReader, rasterio.vrt.WarpedVRT):
        original = cls.read

        def counting(self, *args, _original=original, **kwargs):  # type: ignore[no-untyped-def]
            reads.append(self.name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "read", counting)
    stack = trend.open_stack(scene, probabilities=True, chunks=4)
    warped = trend.open_stack([*scene[1:], moved], chunks=4)
    assert json.loads(warped.attrs["resampled"]) and reads == []
    for name in (trend.CODES, "prob_Developed"):
        assert dask.is_dask_collection(stack[name].data)
    # a chunk holds every date of a few pixels: a county x ten years is never in memory at once
    assert stack[trend.CODES].data.chunksize == (len(DATES), 4, 4)
    # the lazy analyses are lazy too
    trajectory = trend.trajectories(stack, smooth=3)
    trend.smooth_time(stack[trend.CODES])
    assert reads == [] and dask.is_dask_collection(trajectory["changes"].data)
    # and the counter does see reads, so the zeros above mean something
    assert int(stack[trend.CODES].isel(time=0).max()) == code("Cultivated")
    assert reads
    reads.clear()
    assert int(warped[trend.CODES].isel(time=-1).max()) == code("Cultivated")
    assert str(moved / "landuse.tif") in " ".join(reads)


def test_probabilities_follow_the_codes(scene: list[Path]) -> None:
    stack = trend.open_stack(scene, probabilities=True)
    probs = np.stack([stack[f"prob_{n}"].to_numpy() for n in CLASSES.names])  # (class, time, y, x)
    codes = stack[trend.CODES].to_numpy()
    mapped = codes > 0
    assert (np.nanargmax(probs[:, mapped], axis=0) + 1 == codes[mapped]).all()
    assert np.isnan(probs[:, ~mapped]).all()


def test_stack_writes_to_zarr_and_reopens_georeferenced(scene: list[Path], tmp_path: Path) -> None:
    stack = trend.open_stack(scene, chunks=4)
    path = trend.write_stack(stack, tmp_path / "stack.zarr")
    again = xr.open_zarr(path, decode_coords="all")
    assert again.rio.crs == UTM19 and again.rio.transform() == stack.rio.transform()
    assert dask.is_dask_collection(again[trend.CODES].data)
    assert (again[trend.CODES].to_numpy() == stack[trend.CODES].to_numpy()).all()
    assert again[trend.CODES].dtype == np.uint8  # class codes are not decoded to floats with NaN
    assert list(again["source"].to_numpy()) == list(stack["source"].to_numpy())
    assert trend.stack_classes(again).names == CLASSES.names


# --------------------------------------------------------------------------------------------------------------
# areas and trends


def test_class_areas_match_the_schedule(scene: list[Path]) -> None:
    stack = trend.open_stack(scene)
    areas = trend.class_areas(stack)
    pixel = float(stack.attrs["pixel_area_km2"])
    assert pixel == pytest.approx(0.04, rel=2e-3)  # 200 m x 200 m, on the ground
    for k, date in enumerate(DATES):
        part = areas[areas["date"] == date].set_index("class")
        assert part["pixels"].to_dict() == expected_counts(k)
        assert part["km2"].sum() == pytest.approx(len(assessed_cells()) * pixel)
        assert part["share"].sum() == pytest.approx(1.0)
    # without the common mask each date counts its whole map
    whole = trend.class_areas(stack, common=False)
    assert whole[whole["date"] == DATES[0]]["pixels"].sum() == len(schedule(0))


def test_trends_match_the_schedule(scene: list[Path]) -> None:
    stack = trend.open_stack(scene)
    areas = trend.class_areas(stack)
    trends = trend.class_trends(areas).set_index("class")
    pixel = float(stack.attrs["pixel_area_km2"])
    # four chips every two years
    expected = 4 * pixel / 2
    developed, forest = trends.loc["Developed"], trends.loc["Forest"]
    assert developed["slope"] == pytest.approx(expected, rel=0.02)
    assert forest["slope"] == pytest.approx(-expected, rel=0.02)
    assert developed["trend"] == "increasing" and forest["trend"] == "decreasing"
    assert developed["slope_low"] > 0 and forest["slope_high"] < 0
    assert developed["significant"] and forest["significant"]
    # flicker at one date and constant classes: no trend distinguishable from zero
    for name in ("Cultivated", "Herbaceous", "Shrub", "Barren"):
        assert trends.loc[name, "trend"] == "no trend", name
        assert not trends.loc[name, "significant"]
        assert trends.loc[name, "slope_low"] <= 0 <= trends.loc[name, "slope_high"]
    assert (trends["n_dates"] == len(DATES)).all()


# A fixed series of ten NAIP-like dates (one tied value, one wild year) and geoclf's figures for it, recorded
# from its own implementation before the slope came from scipy.stats.theilslopes. The interval's ranks round
# outwards (Sen's bounds are rarely whole ranks); scipy rounds to the nearest rank, which here gives the
# narrower (0.408, 0.623) at a coverage below the 95% asked for.
SERIES_T = [2009.5, 2010.6, 2012.5, 2014.6, 2015.55, 2016.7, 2017.6, 2018.55, 2019.6, 2020.7]
SERIES_Y = [41.2, 41.9, 43.0, 43.0, 44.4, 52.0, 45.1, 45.9, 45.9, 46.8]


def test_theil_sen_keeps_its_figures_on_a_fixed_series() -> None:
    fit = trend.theil_sen(SERIES_T, SERIES_Y)
    assert fit == pytest.approx({
        "n": 10, "slope": 0.4851485148514785, "intercept": -933.370049504937, "low": 0.3999999999999986,
        "high": 0.6363636363636851, "ci_level": 0.95, "tau": 0.7956600627155523, "p_value": 0.0016003458153453507,
    }, rel=1e-9, abs=1e-9)
    seven = trend.theil_sen(SERIES_T[:7], SERIES_Y[:7])
    assert seven == pytest.approx({
        "n": 7, "slope": 0.528925619834714, "intercept": -1022.5735537190146, "low": 0.3414634146341553,
        "high": 1.655737704917996, "ci_level": 0.95, "tau": 0.8783100656536799, "p_value": 0.006249477882326372,
    }, rel=1e-9, abs=1e-9)
    # missing values are left out, not counted as dates
    gappy = trend.theil_sen([*SERIES_T, 2021.6], [*SERIES_Y, float("nan")])
    assert gappy == pytest.approx(fit, rel=1e-12, abs=1e-12)


def test_theil_sen_interval_and_its_level() -> None:
    t = np.arange(2010.0, 2020.0)
    y = 3.0 * t - 6000 + np.array([0.1, -0.2, 0.0, 0.3, -0.1, 0.2, 0.0, -0.3, 0.1, 0.0])
    y[4] += 50.0  # one wild year
    fit = trend.theil_sen(t, y)
    assert fit["slope"] == pytest.approx(3.0, abs=0.15)  # the outlier barely moves it
    assert fit["low"] < 3.0 < fit["high"] and fit["low"] > 0
    assert fit["ci_level"] == 0.95 and fit["p_value"] < 0.01
    # least squares is pulled by the wild year, Theil–Sen is not
    assert abs(np.polyfit(t, y, 1)[0] - 3.0) > abs(fit["slope"] - 3.0)
    # four dates: the interval is the range of pairwise slopes, whose coverage is 1 - 2/4!
    short = trend.theil_sen([2010, 2012, 2014, 2016], [1.0, 2.0, 2.5, 4.0])
    assert (short["low"], short["high"]) == (0.25, 0.75)
    assert short["ci_level"] == pytest.approx(1 - 2 / 24)
    # two dates: a slope, no interval, no verdict
    # A trend is significant at the level asked for, not at the interval's coverage: four rising dates point
    # up (92% interval above zero) but are not significant at 95% -- their Mann-Kendall p is 2/24 = 0.083.
    areas = pd.DataFrame({"class": "Developed", "decimal_year": [2010.0, 2012, 2014, 2016, 2018],
                          "km2": [1.0, 2.0, 2.5, 4.0, 4.5]})
    four = trend.class_trends(areas.iloc[:4]).iloc[0]
    assert four["trend"] == "increasing" and four["p_value"] == pytest.approx(2 / 24)
    assert not four["significant"]
    five = trend.class_trends(areas).iloc[0]  # 98% coverage, p = 2/120
    assert five["significant"] and five["p_value"] < 0.05
    assert not trend.class_trends(areas, confidence=0.99).iloc[0]["significant"]
    two = trend.theil_sen([2010, 2012], [1.0, 2.0])
    assert two["slope"] == 0.5 and np.isnan(two["low"])
    assert trend.trend_label(two["low"], two["high"]) == "too few dates"


# --------------------------------------------------------------------------------------------------------------
# trajectories


def _pixel(stack: xr.Dataset, ix: int, iy: int) -> dict[str, int]:
    x, y = GRID.footprint(ix, iy).centroid.coords[0]
    return {"x": int(np.argmin(np.abs(stack["x"].to_numpy() - x))),
            "y": int(np.argmin(np.abs(stack["y"].to_numpy() - y)))}


def test_trajectories_count_changes_flicker_and_year_developed(scene: list[Path]) -> None:
    stack = trend.open_stack(scene)
    raw = trend.trajectories(stack).compute()
    converted = {(IX0 + 2 + (s - 1) // 2, iy): DATES[s].year for s in range(1, 5)
                 for iy in (range(IY0 + 4, IY0 + 8) if (s - 1) % 2 == 0 else range(IY0, IY0 + 4))}
    for cell, year in converted.items():
        at = _pixel(stack, *cell)
        assert int(raw["changes"].isel(at)) == 1
        assert int(raw["year_developed"].isel(at)) == year
        assert int(raw["flicker"].isel(at)) == 0
    for cell in FLICKER:
        at = _pixel(stack, *cell)
        assert (int(raw["changes"].isel(at)), int(raw["flicker"].isel(at))) == (2, 1)
        assert int(raw["year_developed"].isel(at)) == 0
    at = _pixel(stack, IX0, IY0)
    assert int(raw["year_developed"].isel(at)) == DATES[0].year  # developed from the start
    # a missing date is skipped, not a change
    at = _pixel(stack, *HOLE)
    assert (int(raw["changes"].isel(at)), int(raw["mapped_dates"].isel(at))) == (0, len(DATES) - 1)

    summary = trend.trajectory_summary(raw, stack)
    assert summary["pixels"] == len(assessed_cells())
    assert summary["changed_pixels"] == len(converted) + len(FLICKER)
    assert (summary["flicker_pixels"], summary["flicker_events"]) == (len(FLICKER), len(FLICKER))
    assert summary["changes"] == len(converted) + 2 * len(FLICKER)
    assert summary["changes_2"] == len(FLICKER)

    # a temporal majority filter removes the flicker and keeps every real conversion at its date
    smoothed = trend.trajectories(stack, smooth=3).compute()
    summary = trend.trajectory_summary(smoothed, stack)
    assert summary["flicker_pixels"] == 0 and summary["changed_pixels"] == len(converted)
    for cell, year in converted.items():
        assert int(smoothed["year_developed"].isel(_pixel(stack, *cell))) == year
    by_year = trend.developed_by_year(smoothed, stack).set_index("year")
    assert by_year.loc[DATES[0].year, "pixels"] == 16 and by_year.loc[DATES[0].year, "already_developed"]
    assert all(by_year.loc[d.year, "pixels"] == 4 for d in DATES[1:])


def test_smooth_time_rules() -> None:
    series = np.array([[1, 2, 1, 1, 3, 3, 3],   # one-date excursion: removed
                       [1, 1, 2, 2, 2, 2, 2],   # lasting change: kept at its date
                       [1, 0, 2, 1, 1, 0, 1],   # nodata neither votes nor changes
                       [4, 1, 1, 1, 1, 1, 5]]).astype(np.uint8)  # ends change only when outvoted
    codes = xr.DataArray(series.T[:, :, None], dims=("time", "y", "x"))
    smoothed = trend.smooth_time(codes.chunk({"y": 2}), 3).to_numpy()[:, :, 0].T
    assert smoothed.tolist() == [[1, 1, 1, 1, 3, 3, 3], [1, 1, 2, 2, 2, 2, 2], [1, 0, 2, 1, 1, 0, 1],
                                 [4, 1, 1, 1, 1, 1, 5]]
    # a two-date excursion needs a window of five
    pair = xr.DataArray(np.array([1, 1, 2, 2, 1, 1, 1], dtype=np.uint8)[:, None, None], dims=("time", "y", "x"))
    assert trend.smooth_time(pair, 3).to_numpy().ravel().tolist() == [1, 1, 2, 2, 1, 1, 1]
    assert trend.smooth_time(pair, 5).to_numpy().ravel().tolist() == [1, 1, 1, 1, 1, 1, 1]
    with pytest.raises(InputError, match="odd number"):
        trend.smooth_time(codes, 2)


# --------------------------------------------------------------------------------------------------------------
# zones and the reference sample


def _zones() -> gpd.GeoDataFrame:
    west = shapely.box(IX0 * 200.0, IY0 * 200.0, (IX0 + 4) * 200.0, (IY0 + HEIGHT) * 200.0)
    east = shapely.box((IX0 + 6) * 200.0, IY0 * 200.0, (IX0 + WIDTH) * 200.0, (IY0 + HEIGHT) * 200.0)
    everything = shapely.box(IX0 * 200.0, IY0 * 200.0, (IX0 + WIDTH) * 200.0, (IY0 + HEIGHT) * 200.0)
    # in WGS 84, as zones often come, and overlapping: the whole area holds both towns
    return gpd.GeoDataFrame({"name": ["West town", "East town", "County"]},
                            geometry=[west, east, everything], crs=UTM19).to_crs(4326)


def test_zonal_areas_and_trends(scene: list[Path]) -> None:
    stack = trend.open_stack(scene, chunks=3)  # zones cut across several chunks
    zonal = trend.zonal_areas(stack, _zones())
    last = zonal[zonal["date"] == DATES[-1]].set_index(["zone", "class"])["pixels"]
    assert last["West town", "Developed"] == 32 and last["West town", "Forest"] == 0
    assert last["East town", "Developed"] == 0 and last["East town", "Cultivated"] == 31  # the hole is out
    county = zonal[zonal["zone"] == "County"].drop(columns="zone").reset_index(drop=True)
    pd.testing.assert_frame_equal(county, trend.class_areas(stack), check_dtype=False)
    table = trend.class_trends(zonal, by=("zone", "class"))
    # zones in their order, classes in scheme order within each
    assert table["zone"].tolist() == [z for z in ("West town", "East town", "County") for _ in CLASSES.names]
    assert table["class"].tolist() == CLASSES.names * 3
    trends = table.set_index(["zone", "class"])
    assert trends.loc[("West town", "Developed"), "trend"] == "increasing"
    assert trends.loc[("East town", "Developed"), "trend"] == "no trend"
    assert trends.loc[("East town", "Cultivated"), "trend"] == "no trend"


def test_zones_are_named_and_checked(scene: list[Path]) -> None:
    stack = trend.open_stack(scene)
    zones = _zones()
    # no usual name column: the first text column names the zones (pandas 3 reads text as its str dtype)
    towns = trend.zonal_areas(stack, zones.rename(columns={"name": "TOWNNAME"}))
    assert towns["zone"].unique().tolist() == ["West town", "East town", "County"]
    with pytest.raises(InputError, match=r"zone names repeat \(\['Town'\]\)"):
        trend.zonal_areas(stack, zones.assign(name=["Town", "Town", "County"]))
    with pytest.raises(InputError, match="no column 'TOWN' in the zones"):
        trend.zonal_areas(stack, zones, zone_column="TOWN")


def test_bad_zones_fail_before_the_stack_is_computed(scene: list[Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    zones = tmp_path / "zones.geojson"
    zones.write_text(_zones().assign(name="Town").to_json())
    with pytest.raises(SystemExit) as info:
        main(["trend", "--maps", *map(str, scene), "--out", str(tmp_path / "out"), "--zones", str(zones),
              "--scheduler", "sync"])
    assert info.value.code == 2 and "zone names repeat" in capsys.readouterr().err
    assert not (tmp_path / "out" / "landuse_stack.zarr").exists()


def test_reference_sample_gives_error_adjusted_areas(scene: list[Path]) -> None:
    stack = trend.open_stack(scene)
    # Every assessed chip labelled at the first and last dates; at the last date the map called two true
    # Forest chips Developed.
    rows = []
    wrong = [(IX0 + 3, IY0), (IX0 + 3, IY0 + 1)]
    for k in (0, len(DATES) - 1):
        for cell in sorted(assessed_cells()):
            truth = schedule(k)[cell]
            if k and cell in wrong:
                truth = "Forest"
            rows.append({"cell": GRID.cell_id(*cell), "year": DATES[k].year, "reference": truth})
    adjusted = trend.reference_areas(stack, pd.DataFrame(rows))
    assert sorted(set(adjusted["date"])) == [DATES[0], DATES[-1]]
    first = adjusted[adjusted["date"] == DATES[0]].set_index("class")
    pixel = float(stack.attrs["pixel_area_km2"])
    assert first.loc["Developed", "area_km2"] == pytest.approx(16 * pixel)
    assert first["overall_accuracy"].iloc[0] == 1.0
    last = adjusted[adjusted["date"] == DATES[-1]].set_index("class")
    assert last.loc["Developed", "mapped_km2"] == pytest.approx(32 * pixel)
    assert last.loc["Developed", "area_km2"] == pytest.approx(30 * pixel)
    assert last.loc["Forest", "area_km2"] == pytest.approx(18 * pixel)
    assert last.loc["Developed", "users"] == pytest.approx(30 / 32)
    # Every pixel labelled is a census: the areas are known exactly, no sampling error (finite population
    # correction). Half of them labelled leaves an interval.
    assert (adjusted["area_ci_km2"] == 0).all()
    half = pd.DataFrame(rows[len(rows) // 2:][::2])
    sampled = trend.reference_areas(stack, half).set_index("class")
    assert (sampled["area_ci_km2"] > 0).any() and np.isfinite(sampled["area_ci_km2"]).all()
    # the same sample in wide form, placed by geometry instead of cell keys
    wide = gpd.GeoDataFrame(
        {f"reference_{DATES[0].year}": [schedule(0)[c] for c in sorted(assessed_cells())]},
        geometry=[GRID.footprint(*c) for c in sorted(assessed_cells())], crs=UTM19).to_crs(3857)
    again = trend.reference_areas(stack, wide).set_index("class")
    assert again["area_km2"].to_dict() == pytest.approx(first["area_km2"].to_dict())
    with pytest.raises(InputError, match="no labels"):
        trend.reference_areas(stack, pd.DataFrame({"cell": [GRID.cell_id(IX0, IY0)]}))
    with pytest.raises(InputError, match="not among the map classes"):
        trend.reference_areas(stack, pd.DataFrame({"cell": [GRID.cell_id(IX0, IY0)], "year": [2010],
                                                   "reference": ["Urban"]}))


# --------------------------------------------------------------------------------------------------------------
# alignment


def test_maps_on_other_grids_are_aligned_by_nearest_resampling(scene: list[Path], tmp_path: Path) -> None:
    # The fourth date scored on a 100 m grid (each chip split in four), the fifth on a grid shifted by 50 m:
    # both are warped onto the stack's grid, nearest neighbour, and land on the same classes.
    fine = {(2 * ix + dx, 2 * iy + dy): name for (ix, iy), name in schedule(3).items() for dx in (0, 1)
            for dy in (0, 1)}
    shifted = shifted_map(tmp_path / "moved", 4)
    dirs = [*scene[2:], score_dir(tmp_path / "fine", fine, DATES[3], grid=ChipGrid(UTM19, 100.0)), shifted]
    stack = trend.open_stack(dirs)
    assert stack.rio.transform().a == 200.0
    assert sorted(json.loads(stack.attrs["resampled"])) == sorted(str(d / "landuse.tif") for d in dirs[-2:])
    reference = trend.open_stack(scene)
    assert (stack[trend.CODES].to_numpy() == reference[trend.CODES].to_numpy()).all()


def test_same_classes_in_another_order_are_renumbered(scene: list[Path], tmp_path: Path) -> None:
    reordered = ClassScheme({name: CLASSES.groups[name] for name in reversed(CLASSES.names)})
    other = score_dir(tmp_path / "reordered", schedule(4), DATES[4], classes=reordered)
    stack = trend.open_stack([*scene[1:], other])
    reference = trend.open_stack(scene)
    assert (stack[trend.CODES].to_numpy() == reference[trend.CODES].to_numpy()).all()


def test_bad_input_gets_one_clear_line(scene: list[Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least two dates"):
        trend.open_stack(scene[:1])
    with pytest.raises(InputError, match="the same map twice"):
        trend.open_stack([scene[0], scene[0], scene[1]])
    twin = score_dir(tmp_path / "twin", schedule(1), DATES[0])
    with pytest.raises(InputError, match="two maps of one date.*2010-06-29"):
        trend.open_stack([*scene, twin])
    fewer = ClassScheme({name: CLASSES.groups[name] for name in CLASSES.names if name != "Barren"})
    cells = {k: v for k, v in schedule(4).items()}
    other = score_dir(tmp_path / "fewer", cells, dt.date(2020, 7, 1), classes=fewer)
    with pytest.raises(InputError, match="different class sets"):
        trend.open_stack([*scene, other])
    far = score_dir(tmp_path / "far", {(ix + 500, iy): n for (ix, iy), n in schedule(1).items()},
                    dt.date(2020, 7, 1))
    with pytest.raises(InputError, match="cannot be aligned.*shares no area"):
        trend.open_stack([*scene, far])
    undated = score_dir(tmp_path / "undated", schedule(1), DATES[1], with_table=False)
    with pytest.raises(InputError, match="no acquisition date"):
        trend.open_stack([scene[0], undated])
    assert trend.open_stack([scene[0], undated], dates=["2018-07-16", "2012-07-31"]).sizes["time"] == 2
    with pytest.raises(InputError, match="'mid-2012' given for it is not a date"):
        trend.open_stack([scene[0], undated], dates=["2018-07-16", "mid-2012"])
    with pytest.raises(InputError, match=r"no landuse\.tif"):
        trend.open_stack([scene[0], tmp_path])
    with pytest.raises(InputError, match="no landuse_probs.tif"):
        trend.open_stack([scene[0], undated], dates=["2018-07-16", "2012-07-31"], probabilities=True)
    for exc in (InputError,):
        with pytest.raises(exc) as info:
            trend.open_stack([scene[0], far])
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------------------
# CLI, outputs and the page in a real browser


@pytest.fixture(scope="module")
def outputs(scene: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trend")
    zones = root / "zones.geojson"
    zones.write_text(_zones().to_json())
    reference = root / "reference.csv"
    cells = sorted(assessed_cells())
    pd.DataFrame({"cell": [GRID.cell_id(*c) for c in cells] * 2,
                  "year": [DATES[0].year] * len(cells) + [DATES[-1].year] * len(cells),
                  "reference": [schedule(0)[c] for c in cells] + [schedule(4)[c] for c in cells]}).to_csv(reference,
                                                                                                    index=False)
    out = root / "out"
    # The basemap points at a closed local port: the page must render exactly as it would offline. Chunks of
    # 4 pixels cut the stack in six, so it is computed on a LocalCluster of worker processes, as a county is.
    main(["trend", "--maps", *map(str, scene), "--out", str(out), "--zones", str(zones), "--reference",
          str(reference), "--smooth", "3", "--basemap", "http://127.0.0.1:9/{z}/{x}/{y}.png", "--chunks", "4",
          "--workers", "2", "--scheduler", "local"])
    return out


def test_cli_writes_every_output(outputs: Path, scene: list[Path]) -> None:
    for name in ("landuse_stack.zarr", "areas.csv", "trends.csv", "trajectories.csv", "developed_by_year.csv",
                 "zonal_areas.csv", "zonal_trends.csv", "areas.png", "year_developed.png", "trend.html"):
        assert (outputs / name).exists(), name
    trends = pd.read_csv(outputs / "trends.csv")
    mapped = trends[trends["series"] == "mapped"].set_index("class")
    adjusted = trends[trends["series"] == "error-adjusted"].set_index("class")
    assert mapped.loc["Developed", "trend"] == "increasing"
    assert adjusted.loc["Developed", "n_dates"] == 2  # labelled at two dates only
    areas = pd.read_csv(outputs / "areas.csv")
    assert {"km2", "share", "area_km2", "area_ci_km2"} <= set(areas.columns)
    flicker = pd.read_csv(outputs / "trajectories.csv").set_index("series")
    assert flicker.loc["raw", "flicker_pixels"] == len(FLICKER) and flicker.loc["smoothed", "flicker_pixels"] == 0
    stored = xr.open_zarr(outputs / "landuse_stack.zarr", decode_coords="all")
    assert {"land_use_class", "land_use_class_smoothed", "year_developed", "changes_raw", "flicker_raw"} <= set(
        stored.data_vars)
    assert stored["year_developed"].rio.crs == UTM19
    # the workers computed the stack this process reads
    assert stored["land_use_class"].data.chunksize == (len(DATES), 4, 4)
    assert (stored["land_use_class"].to_numpy() == trend.open_stack(scene)[trend.CODES].to_numpy()).all()
    assert set(pd.read_csv(outputs / "zonal_trends.csv")["zone"]) == {"West town", "East town", "County"}


def test_cli_bad_input_is_one_line(scene: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["trend", "--maps", str(scene[0]), "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "at least two dates" in err and "\n" not in err


def test_a_trend_refused_halfway_leaves_the_output_as_it_was(scene: list[Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A reference sample labelling no date of the stack is found out only after the stack is written: the
    output directory keeps the earlier run's files and the user's own, and holds nothing of this run."""
    reference = tmp_path / "reference.csv"
    cell = GRID.cell_id(*sorted(assessed_cells())[0])
    pd.DataFrame({"cell": [cell], "year": [1999], "reference": ["Forest"]}).to_csv(reference, index=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "areas.csv").write_text("the earlier run's areas")
    with pytest.raises(SystemExit) as info:
        main(["trend", "--maps", *map(str, scene), "--out", str(out), "--reference", str(reference)])
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's line
    assert last.startswith("geoclf: error: no reference label is for a date of the stack")
    assert sorted(p.name for p in out.iterdir()) == ["areas.csv", "notes.txt"]
    assert (out / "areas.csv").read_text() == "the earlier run's areas"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "reference.csv"]  # no staging left behind


# Moves the year slider to the first date the way a user would (an input event), then shows the
# year-developed layer through the layer control.
_MOVE_SLIDER = """
<script>
setTimeout(function () {
  var slider = document.getElementById('geoclf-slider');
  slider.value = 0;
  slider.dispatchEvent(new Event('input', {bubbles: true}));
  var boxes = document.querySelectorAll('.leaflet-control-layers-overlays input');
  boxes.forEach(function (box) { if (box.nextElementSibling.textContent.indexOf('Year first') >= 0) box.click(); });
}, 1000);
</script>
"""


# Where the map, the side panel, the legend and the title lie on the page.
_LAYOUT = """
<script>
setTimeout(function () {
  var map = document.querySelector('.folium-map'), panel = document.querySelector('.geoclf-side-panel');
  function box(element) {
    var r = element.getBoundingClientRect(); return {left: r.left, right: r.right, width: r.width};
  }
  var layout = {map: box(map), panel: box(panel), window: window.innerWidth,
    title: box(document.querySelector('.geoclf-title')),
    layers: box(document.querySelector('.leaflet-control-layers')),
    legend_in_map: map.contains(document.querySelector('.geoclf-legend')),
    title_in_map: map.contains(document.querySelector('.geoclf-title'))};
  document.querySelector('.geoclf-side-panel img.geoclf-widen').click();
  layout.wide = {map: box(map), panel: box(panel)};
  document.body.setAttribute('data-layout', JSON.stringify(layout));
}, 500);
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_trend_html_renders_offline_in_headlesschromium(outputs: Path, tmp_path: Path) -> None:
    page = outputs / "trend.html"
    text = page.read_text()
    assert "cdn.jsdelivr" not in text and "code.jquery" not in text  # everything it needs is inline

    dom = chromium(tmp_path, page, "--dump-dom").stdout
    layers = re.findall(r'<img[^>]*class="[^"]*geoclf-year-(\d{4}-\d{2}-\d{2})', dom)
    assert layers == [str(DATES[-1])]  # one date shown at a time: the last
    assert "geoclf-slider" in dom and f'id="geoclf-date">{DATES[-1]}<' in dom
    assert 'alt="area by class over time"' in dom and "geoclf-trends" in dom
    assert "Zones (click for trends)" in dom and "Year first Developed" in dom
    # a title with the dates and the area; the chart beside the map, saying each class has its own y axis;
    # the table states each interval's real coverage, and no figure reads "nan"
    title = re.search(r'class="geoclf-title".*?</div></div>', dom, re.S).group(0)
    assert f"Land use {DATES[0]} to {DATES[-1]}" in title and "km² mapped at every date" in title
    side = re.search(r'class="geoclf-side-panel".*?class="geoclf-interval-note".*?</p>', dom, re.S).group(0)
    assert "geoclf-slider" in side and 'alt="area by class over time"' in side and "own y axis" in side
    coverage = {0.67: 3, 0.92: 4, 0.98: 5}  # Sen's interval over every pairwise slope, by the number of dates
    level = next(k for k, v in coverage.items() if v == len(DATES))
    developed = re.search(r"<tr><td>Developed</td>.*?</tr>", side).group(0)
    assert f"<td>{level:.0%}</td>" in developed and "<th>coverage</th>" in side
    assert not re.search(r"\bnan\b", re.sub(r'src="data:[^"]*"', "", side), re.I)
    legend = re.search(r'class="geoclf-legend".*?</div></div></div>', dom, re.S).group(0)
    assert all(name in legend for name in CLASSES.names) and "not mapped at that date" in legend
    # the land-use layer outlines each chip (palette entry OUTLINE_INDEX, over the chips' edges)
    from geoclf.webmap import OUTLINE_INDEX
    src = re.search(r'<img[^>]*class="[^"]*geoclf-year-[^"]*"[^>]*>', dom).group(0)
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(re.search(r'base64,([^"]+)"', src).group(1)))))
    outline, drawn = (image == OUTLINE_INDEX).sum(), (image != 0).sum()
    assert 0.02 < outline / drawn < 0.4, (outline, drawn)

    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", _MOVE_SLIDER + "</body>"))
    dom = chromium(tmp_path, probe, "--dump-dom").stdout
    layers = re.findall(r'<img[^>]*class="[^"]*geoclf-year-(\d{4}-\d{2}-\d{2})', dom)
    assert layers == [str(DATES[0])]
    assert f'id="geoclf-date">{DATES[0]}<' in dom
    assert "geoclf-year-developed" in dom

    probe = tmp_path / "layout.html"
    probe.write_text(text.replace("</body>", _LAYOUT + "</body>"))
    dom = chromium(tmp_path, probe, "--dump-dom", "--window-size=1000,800").stdout
    layout = json.loads(html.unescape(re.search(r'data-layout="([^"]*)"', dom).group(1)))
    assert layout["map"]["right"] <= layout["panel"]["left"] + 1  # the chart panel lies beside the map
    assert layout["panel"]["width"] < 0.35 * layout["window"]
    assert layout["legend_in_map"] and layout["title_in_map"]
    assert layout["title"]["right"] < layout["layers"]["left"]  # the title clears the layer list
    assert layout["wide"]["panel"]["width"] > 0.6 * layout["window"]  # a click on the chart widens the panel
    assert layout["wide"]["map"]["right"] <= layout["wide"]["panel"]["left"] + 1

    shot = tmp_path / "trend.png"
    chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1000,800")
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    # the last date's classes at 0.75 opacity over Leaflet's grey background, where tiles are missing
    for name in ("Developed", "Cultivated"):
        blended = np.rint(0.75 * np.array(CLASSES.color(name)) + 0.25 * 221)
        assert (np.abs(pixels - blended).max(axis=1) <= 3).sum() > 500, f"{name} is missing from the page"


# --------------------------------------------------------------------------------------------------------------
# real NAIP years (skipped without the shared data)


@pytest.mark.skipif(not REAL_DATA.exists(), reason="needs the shared NAIP sample (shared/data)")
def test_real_naip_dates_are_read_from_file_names(tmp_path: Path) -> None:
    files = sorted(REAL_DATA.glob("m_*.tif"))
    assert len(files) == 10
    # landuse maps named after the NAIP files, dated by their names alone (no predictions table)
    dirs = []
    for k, source in enumerate(files):
        with rasterio.open(source) as dataset:
            crs, bounds = dataset.crs, dataset.bounds
        grid = ChipGrid(crs, 250.0)
        ix, iy = grid.cells_within(tuple(bounds))
        cells = {(a, b): CLASSES.names[(a + b + k) % 2 * 5] for a, b in zip(ix, iy, strict=True)}
        table = predictions(cells, dt.date(2000, 1, 1), grid)
        land_use = maps.predictions_to_grid(table, CLASSES)
        dirs.append(maps.write_landuse_cog(tmp_path / f"{source.stem}.tif", land_use, CLASSES))
    stack = trend.open_stack(dirs)
    assert stack["year"].to_numpy().tolist() == [2009, 2010, 2012, 2014, 2015, 2016, 2017, 2018, 2019, 2020]
    assert json.loads(stack.attrs["resampled"]) == []
