"""Tests of geoclf.change on handmade predictions on a real chip grid in EPSG:26919 (Massachusetts).

The before date is forest with a block of cultivated land and a town; the after date converts a 3x3 block
of forest and a 2x2 block of cultivated land to Developed (confidently, p = 0.9 on both dates) and flips a
few scattered chips to Herbaceous with low confidence (p = 0.4), the single-chip noise reviewers should see
last. Variants put the after date on a grid shifted by 3 m and on a grid in another CRS (UTM 18N).
"""

from __future__ import annotations

import colorsys
import re

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from conftest import CHROMIUM, chromium
from rasterio.crs import CRS
from shapely import box
from shapely.affinity import translate

from geoclf.area import chip_area_km2, stratified_sample
from geoclf.change import (
    align_dates,
    change_labels,
    class_areas,
    gains_losses,
    rank_changes,
    read_predictions,
    reference_estimates,
    transition_matrix,
    transitions_long,
    urbanization,
    zonal_summary,
)
from tiling.errors import InputError
from tiling.grid import ChipGrid

CLASSES = ["Developed", "Barren", "Forest", "Shrub", "Herbaceous", "Cultivated"]
SIZE = 256.0
NX, NY = 12, 10
X0, Y0 = 280_000 // 256, 4_700_000 // 256  # grid indices of the area's south-west cell (UTM 19N)
FOREST_TO_DEV = {(X0 + i, Y0 + j) for i in range(2, 5) for j in range(2, 5)}  # 3x3 block
CULT_TO_DEV = {(X0 + i, Y0 + j) for i in range(8, 10) for j in range(6, 8)}  # 2x2 block
NOISE = {(X0 + 6, Y0 + 1), (X0 + 10, Y0 + 2), (X0 + 1, Y0 + 8)}  # scattered low-confidence flips


def before_class(ix: int, iy: int) -> str:
    i, j = ix - X0, iy - Y0
    if 7 <= i <= 10 and 5 <= j <= 8:
        return "Cultivated"
    if i <= 1 and j <= 1:
        return "Developed"
    return "Forest"


def after_class(ix: int, iy: int) -> str:
    if (ix, iy) in FOREST_TO_DEV or (ix, iy) in CULT_TO_DEV:
        return "Developed"
    if (ix, iy) in NOISE:
        return "Herbaceous"
    return before_class(ix, iy)


def probabilities(pred: list[str], confident: np.ndarray) -> dict[str, np.ndarray]:
    """prob_<Class> columns: p to the predicted class, the rest shared evenly among the others."""
    p = np.where(confident, 0.9, 0.4)
    out = {}
    for name in CLASSES:
        is_pred = np.array([c == name for c in pred])
        out[f"prob_{name}"] = np.where(is_pred, p, (1 - p) / (len(CLASSES) - 1)).astype(np.float32)
    return out


def predictions(grid: ChipGrid, cells: list[tuple[int, int]], classes: list[str], scene: str,
                confident: np.ndarray | None = None) -> gpd.GeoDataFrame:
    """A predictions table following docs/architecture.md "Predictions"."""
    confident = np.ones(len(cells), bool) if confident is None else confident
    table = {
        "chip_id": [f"{scene}:{ix}_{iy}" for ix, iy in cells],
        "cell": [grid.cell_id(ix, iy) for ix, iy in cells],
        "ix": np.array([c[0] for c in cells], dtype=np.int64),
        "iy": np.array([c[1] for c in cells], dtype=np.int64),
        "crs": grid.crs.to_string(),
        "scene": scene,
        "source": f"/data/{scene}.tif",
        "pred": classes,
        **probabilities(classes, confident),
        "model": "test-model",
    }
    return gpd.GeoDataFrame(table, geometry=[grid.footprint(ix, iy) for ix, iy in cells], crs=grid.crs)


def area_cells() -> list[tuple[int, int]]:
    return [(X0 + i, Y0 + j) for j in range(NY) for i in range(NX)]


@pytest.fixture
def grid() -> ChipGrid:
    return ChipGrid(CRS.from_epsg(26919), SIZE)


@pytest.fixture
def dates(grid: ChipGrid) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    cells = area_cells()
    before = predictions(grid, cells, [before_class(*c) for c in cells], "m_4207101_ne_19_1_20100701")
    after = predictions(grid, cells, [after_class(*c) for c in cells], "m_4207101_ne_19_060_20160801",
                        confident=np.array([c not in NOISE for c in cells]))
    return before, after


def test_same_grid_pairs_by_cell(dates):
    before, after = dates
    aligned = align_dates(before, after)
    assert len(aligned) == NX * NY
    assert (aligned["match"] == "cell").all() and (aligned["overlap"] == 1).all()
    assert (aligned["chip_id_before"].str.split(":").str[1] == aligned["chip_id_after"].str.split(":").str[1]).all()
    info = aligned.attrs["geoclf_change"]
    assert info["unpaired_after"] == 0 and info["classes"] == CLASSES


def test_transition_matrix_sums_to_the_total_area(dates):
    before, after = dates
    aligned = align_dates(before, after)
    km2 = transition_matrix(aligned)
    chips = transition_matrix(aligned, unit="chips")
    assert chips.to_numpy().sum() == NX * NY
    assert km2.to_numpy().sum() == pytest.approx(chip_area_km2(after).sum())
    # Ground area of 120 chips of 256 m within the UTM scale error (< 0.1%).
    assert km2.to_numpy().sum() == pytest.approx(NX * NY * 0.065536, rel=1e-3)
    areas = class_areas(aligned)
    assert areas["before_chips"].sum() == areas["after_chips"].sum() == NX * NY
    assert areas.loc["Developed", "before_chips"] == 4
    long = transitions_long(aligned)
    assert long["km2"].sum() == pytest.approx(km2.to_numpy().sum()) and len(long) == len(CLASSES) ** 2


def test_known_conversions_are_found(dates):
    before, after = dates
    aligned = align_dates(before, after)
    chips = transition_matrix(aligned, unit="chips")
    assert chips.loc["Forest", "Developed"] == len(FOREST_TO_DEV)
    assert chips.loc["Cultivated", "Developed"] == len(CULT_TO_DEV)
    assert chips.loc["Forest", "Herbaceous"] == len(NOISE)
    off_diagonal = chips.to_numpy().sum() - np.trace(chips.to_numpy())
    assert off_diagonal == len(FOREST_TO_DEV) + len(CULT_TO_DEV) + len(NOISE)

    chip_km2 = aligned["area_km2"].mean()
    flows = gains_losses(aligned)
    assert flows.loc["Developed", "gain_km2"] == pytest.approx(13 * chip_km2, rel=1e-3)
    assert flows.loc["Developed", "loss_km2"] == 0
    assert flows.loc["Cultivated", "net_km2"] == pytest.approx(-4 * chip_km2, rel=1e-3)
    np.testing.assert_allclose(flows["net_km2"], flows["after_km2"] - flows["before_km2"], atol=1e-12)
    assert flows["net_km2"].sum() == pytest.approx(0, abs=1e-9)

    urban = urbanization(aligned)
    assert urban.loc["Forest", "chips"] == 9 and urban.loc["Cultivated", "chips"] == 4
    assert urban.loc["Total", "chips"] == 13
    assert urban.loc["Cultivated", "pct_of_class"] == pytest.approx(100 * 4 / 16, rel=1e-3)
    assert urban.drop(index="Total")["pct_of_new_developed"].sum() == pytest.approx(100)
    with pytest.raises(InputError, match="no class named 'Urban'"):
        urbanization(aligned, developed="Urban")


def test_ranking_puts_confident_changes_first(dates):
    before, after = dates
    ranked = rank_changes(align_dates(before, after))
    assert len(ranked) == 16 and ranked["rank"].tolist() == list(range(1, 17))
    assert ranked["confidence"].is_monotonic_decreasing
    real = ranked["transition"].str.endswith("→Developed")
    assert real[:13].all() and not real[13:].any()
    assert ranked.loc[0, "confidence"] == pytest.approx(0.81, rel=1e-5)
    assert ranked["confidence"].iloc[-1] == pytest.approx(0.9 * 0.4, rel=1e-5)
    assert ranked.crs == after.crs


def test_duplicate_cells_keep_the_most_confident(dates):
    before, after = dates
    doubtful = after.iloc[[0]].copy()
    doubtful["chip_id"] = "other_scene:dup"
    doubtful["pred"] = "Barren"
    for name in CLASSES:
        doubtful[f"prob_{name}"] = np.float32(0.5 if name == "Barren" else 0.1)
    aligned = align_dates(before, pd.concat([after, doubtful], ignore_index=True))
    assert len(aligned) == NX * NY and "Barren" not in set(aligned["class_after"])
    assert aligned.attrs["geoclf_change"]["duplicate_cells_dropped"]["after"] == 1


def test_after_grid_shifted_by_3m_pairs_by_overlap(dates):
    before, after = dates
    shifted = after.drop(columns="cell").copy()  # a grid of its own: not snapped to the before grid
    shifted = shifted.set_geometry(shifted.geometry.apply(lambda g: translate(g, 3.0, 3.0)))
    aligned = align_dates(before, shifted)
    assert len(aligned) == NX * NY and (aligned["match"] == "overlap").all()
    assert aligned["overlap"].to_numpy() == pytest.approx(((SIZE - 3) / SIZE) ** 2, rel=1e-3)
    # Shifted by 3 m, every after-chip still pairs with the before-chip of its own cell.
    assert (aligned["chip_id_before"].str.split(":").str[1] == aligned["chip_id_after"].str.split(":").str[1]).all()
    chips = transition_matrix(aligned, unit="chips")
    assert chips.loc["Forest", "Developed"] == 9 and chips.loc["Cultivated", "Developed"] == 4
    # Shifted by 60% of a chip, each after-chip pairs with the east neighbour, which covers 60% of it; the
    # easternmost column has no neighbour and stays unpaired. Asking for 70% pairs nothing.
    half = after.drop(columns="cell").set_geometry(after.geometry.apply(lambda g: translate(g, SIZE * 0.6, 0)))
    assert len(align_dates(before, half)) == (NX - 1) * NY
    with pytest.raises(InputError, match="do not overlap"):
        align_dates(before, half, min_overlap=0.7)


def test_after_grid_in_another_crs(dates):
    before, _ = dates
    # The after date delivered in UTM zone 18N: its own grid, snapped there, rotated ~4 degrees to ours.
    utm18 = ChipGrid(CRS.from_epsg(26918), SIZE)
    area = gpd.GeoSeries([box(X0 * SIZE, Y0 * SIZE, (X0 + NX) * SIZE, (Y0 + NY) * SIZE)], crs=26919)
    left, bottom, right, top = area.to_crs(26918).total_bounds
    ix, iy = utm18.cells_within((left, bottom, right, top))
    footprints = gpd.GeoSeries([utm18.footprint(a, b) for a, b in zip(ix, iy, strict=True)], crs=26918)
    centres = footprints.centroid.to_crs(26919)
    home = [(int(np.floor(p.x / SIZE)), int(np.floor(p.y / SIZE))) for p in centres]
    inside = [X0 <= a < X0 + NX and Y0 <= b < Y0 + NY for a, b in home]
    cells = [(int(a), int(b)) for a, b, keep in zip(ix, iy, inside, strict=True) if keep]
    classes = [after_class(*h) for h, keep in zip(home, inside, strict=True) if keep]
    after = predictions(utm18, cells, classes, "m_4207101_ne_18_060_20160801")

    aligned = align_dates(before, after)
    assert (aligned["match"] == "overlap").all() and (aligned["overlap"] >= 0.5).all()
    assert 0.5 * len(after) < len(aligned) <= len(after)
    assert aligned.crs.to_epsg() == 26918
    # Every pair is the before-chip of largest overlap (checked by brute force in the before CRS).
    b_geoms = before.geometry.to_numpy()
    for _, row in aligned.sample(20, random_state=0).iterrows():
        chip = gpd.GeoSeries([row.geometry], crs=26918).to_crs(26919).iloc[0]
        best = int(np.argmax([chip.intersection(g).area for g in b_geoms]))
        assert before["chip_id"].iloc[best] == row["chip_id_before"]
    # Pairs well inside the converted block are found as Forest -> Developed, none far outside it.
    centres = aligned.geometry.centroid.to_crs(26919)
    gx = np.floor(centres.x / SIZE).astype(int) - X0
    gy = np.floor(centres.y / SIZE).astype(int) - Y0
    core = (gx == 3) & (gy == 3)
    assert core.any() and (aligned.loc[core, "class_before"] == "Forest").all()
    assert (aligned.loc[core, "class_after"] == "Developed").all()
    near_block = (gx >= 1) & (gx <= 5) & (gy >= 1) & (gy <= 5)
    forest_to_dev = (aligned["class_before"] == "Forest") & (aligned["class_after"] == "Developed")
    assert forest_to_dev.any() and not (forest_to_dev & ~near_block).any()
    assert transition_matrix(aligned).to_numpy().sum() == pytest.approx(aligned["area_km2"].sum())


def test_before_date_across_a_zone_boundary(dates):
    before, after = dates
    # The before date's east half was delivered in UTM 18N (its own grid); the after date is all in 19N.
    utm18 = ChipGrid(CRS.from_epsg(26918), SIZE)
    east = gpd.GeoSeries([box((X0 + NX // 2) * SIZE, Y0 * SIZE, (X0 + NX) * SIZE, (Y0 + NY) * SIZE)], crs=26919)
    ix, iy = utm18.cells_within(tuple(east.to_crs(26918).buffer(SIZE).total_bounds))
    footprints = gpd.GeoSeries([utm18.footprint(a, b) for a, b in zip(ix, iy, strict=True)], crs=26918)
    home = [(int(np.floor(p.x / SIZE)), int(np.floor(p.y / SIZE))) for p in footprints.centroid.to_crs(26919)]
    east_before = predictions(utm18, list(zip(ix.tolist(), iy.tolist(), strict=True)),
                              [before_class(*h) for h in home], "m_east_18_1_20100701")
    west_before = before[before["ix"] < X0 + NX // 2]
    # Rasters in two CRSs: the index (and predictions) footprints are in EPSG:5070, cells stay native.
    mixed = pd.concat([west_before.to_crs(5070), east_before.to_crs(5070)], ignore_index=True)
    aligned = align_dates(mixed, after)
    west = aligned["cell"].map(lambda c: int(c.split(":")[-2]) < X0 + NX // 2)
    assert (aligned.loc[west, "match"] == "cell").all() and (aligned.loc[~west, "match"] == "overlap").all()
    assert (~west).sum() > 0.5 * (NX // 2) * NY
    assert aligned.loc[~west, "chip_id_before"].str.startswith("m_east").all()


def test_strided_grid_never_pairs_a_neighbour_cell(grid):
    strided = ChipGrid(CRS.from_epsg(26919), SIZE, SIZE / 2)
    cells = [(2 * X0 + i, 2 * Y0 + j) for j in range(6) for i in range(6)]
    before = predictions(strided, cells, ["Forest"] * len(cells), "m_b_19_1_20100701")
    after = predictions(strided, cells, ["Forest"] * len(cells), "m_a_19_1_20160701")
    aligned = align_dates(before.drop(index=[14]), after)  # a cell missing in the before date
    # Its neighbours overlap it by half, yet it stays unpaired: same grid, no same cell.
    assert len(aligned) == len(cells) - 1 and (aligned["match"] == "cell").all()
    assert aligned.attrs["geoclf_change"]["unpaired_after"] == 1
    # Each strided chip stands for a stride x stride cell, so areas still add up to the ground covered.
    assert aligned["area_km2"].sum() == pytest.approx((len(cells) - 1) * 0.128 ** 2, rel=1e-3)


def test_zones_in_4326_are_reprojected(dates):
    before, after = dates
    aligned = align_dates(before, after)
    mid = (X0 + NX // 2) * SIZE
    west = box(X0 * SIZE - 100, Y0 * SIZE - 100, mid, (Y0 + NY) * SIZE + 100)
    east = box(mid, Y0 * SIZE - 100, (X0 + NX) * SIZE + 100, (Y0 + NY) * SIZE + 100)
    zones = gpd.GeoDataFrame({"town": ["Westville", "Eastham"]}, geometry=[west, east], crs=26919).to_crs(4326)
    table = zonal_summary(aligned, zones, zone_column="town")
    assert table.index.tolist() == ["Westville", "Eastham"]
    assert table["chips"].tolist() == [NX * NY // 2, NX * NY // 2]
    chip_km2 = aligned["area_km2"].mean()
    assert table.loc["Westville", "to_Developed_km2"] == pytest.approx(9 * chip_km2, rel=1e-3)
    assert table.loc["Eastham", "to_Developed_km2"] == pytest.approx(4 * chip_km2, rel=1e-3)
    assert table["area_km2"].sum() == pytest.approx(aligned["area_km2"].sum())
    assert table.loc["Eastham", "net_km2_Cultivated"] == pytest.approx(-4 * chip_km2, rel=1e-3)
    # A zone away from the chips is kept, empty.
    far = gpd.GeoDataFrame({"town": ["Faraway"]}, geometry=[box(0, 0, 1000, 1000)], crs=26919)
    with_far = zonal_summary(aligned, pd.concat([zones.to_crs(26919), far]), zone_column="town")
    assert with_far.loc["Faraway", "chips"] == 0
    with pytest.raises(InputError, match="no CRS"):
        zonal_summary(aligned, zones.set_crs(None, allow_override=True))


def test_zones_read_from_a_file_are_named_by_their_text_column(dates, tmp_path):
    # Read from a file under pandas 3 a text column is a string dtype, not object: the "first text column"
    # rule missed it (fixed with geoclf.zones), and a zone without a name became NaN and lost its chips.
    from geoclf.change import read_zones

    before, after = dates
    aligned = align_dates(before, after)
    mid = (X0 + NX // 2) * SIZE
    west = box(X0 * SIZE - 100, Y0 * SIZE - 100, mid, (Y0 + NY) * SIZE + 100)
    east = box(mid, Y0 * SIZE - 100, (X0 + NX) * SIZE + 100, (Y0 + NY) * SIZE + 100)
    path = tmp_path / "towns.geojson"
    gpd.GeoDataFrame({"town": ["Westville", None], "population": [1200, 800]}, geometry=[west, east],
                     crs=26919).to_file(path)
    zones = read_zones(path)
    for table in (zonal_summary(aligned, zones), zonal_summary(aligned, zones, zone_column="town")):
        assert table.index.tolist() == ["Westville", "zone 2"]
        assert table["chips"].tolist() == [NX * NY // 2, NX * NY // 2]


def test_mismatched_class_sets_are_one_line_errors(dates):
    before, after = dates
    other = after.rename(columns={"prob_Shrub": "prob_Wetland"})
    with pytest.raises(InputError, match="different class sets") as caught:
        align_dates(before, other)
    assert "\n" not in str(caught.value)


def test_non_overlapping_dates_are_one_line_errors(dates, grid):
    before, _ = dates
    elsewhere = [(ix + 500, iy) for ix, iy in area_cells()]
    far = predictions(grid, elsewhere, [before_class(*c) for c in area_cells()], "m_far_19_060_20160801")
    with pytest.raises(InputError, match="do not overlap") as caught:
        align_dates(before, far)
    assert "\n" not in str(caught.value)
    # On another grid too (the overlap rule finds nothing).
    with pytest.raises(InputError, match="do not overlap"):
        align_dates(before, far.drop(columns="cell"))


def test_predictions_without_geometry(dates, tmp_path):
    before, after = dates
    plain = pd.DataFrame(after.drop(columns="geometry"))
    with pytest.raises(InputError, match="without geometry"):
        align_dates(before, plain)
    plain.to_parquet(tmp_path / "predictions.parquet")
    with pytest.raises(InputError, match="no geometry") as caught:
        read_predictions(tmp_path)
    assert str(tmp_path) in str(caught.value) and "\n" not in str(caught.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no predictions\.parquet"):
        read_predictions(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file"):
        read_predictions(tmp_path / "missing.parquet")
    after.to_parquet(tmp_path / "after.parquet")
    assert len(read_predictions(tmp_path / "after.parquet")) == len(after)


def test_reference_sample_area_estimates(dates):
    before, after = dates
    aligned = align_dates(before, after)
    aligned["change"] = change_labels(aligned)
    sample = stratified_sample(aligned, {s: min(n, 6) for s, n in aligned["change"].value_counts().items()},
                               strata_column="change", seed=1)
    # A perfect map: the reference agrees with every sampled chip, so the estimates are the mapped areas.
    sample["reference"] = sample["change"]
    perfect = reference_estimates(aligned, sample)["change"]
    mapped = aligned.groupby("change")["area_km2"].sum()
    np.testing.assert_allclose(perfect.area.loc[mapped.index, "area"], mapped)
    assert perfect.overall["accuracy"] == pytest.approx(1.0)
    # Noise flips judged no change by the interpreter move their area back to stable forest.
    sample.loc[sample["change"] == "Forest→Herbaceous", "reference"] = "Stable Forest"
    fixed = reference_estimates(aligned, sample)["change"]
    assert fixed.area.loc["Forest→Herbaceous", "area"] == pytest.approx(0)
    stable = mapped["Stable Forest"] + mapped["Forest→Herbaceous"]
    assert fixed.area.loc["Stable Forest", "area"] == pytest.approx(stable)
    # One flip is real after all. Its stratum was sampled in full (a census), so its mix is known exactly: the
    # areas carry no sampling error from it (finite population correction; without it, a wide interval).
    flips = sample.index[sample["change"] == "Forest→Herbaceous"]
    assert len(flips) == (aligned["change"] == "Forest→Herbaceous").sum() > 1
    sample.loc[flips[0], "reference"] = "Forest→Herbaceous"
    mixed = reference_estimates(aligned, sample)["change"]
    assert mixed.area.loc["Forest→Herbaceous", "area"] == pytest.approx(mapped["Forest→Herbaceous"] / len(flips))
    assert mixed.area.loc["Forest→Herbaceous", "area_ci"] == 0
    sample.loc[flips[0], "reference"] = "Stable Forest"
    # Per-date labels work too, matched by location (no cell column).
    points = gpd.GeoDataFrame({"reference_before": sample["class_before"], "reference_after": sample["class_after"]},
                              geometry=sample.geometry.centroid.to_crs(4326).to_numpy(), crs=4326)
    by_date = reference_estimates(aligned, points)
    assert set(by_date) == {"change", "before", "after"}
    assert by_date["after"].accuracy["users"].dropna().eq(1.0).all()


def test_reference_sample_outside_the_area(dates):
    before, after = dates
    aligned = align_dates(before, after)
    far = gpd.GeoDataFrame({"reference": ["Stable Forest"]}, geometry=[box(0, 0, 10, 10)], crs=26919)
    with pytest.raises(InputError, match="does not intersect") as caught:
        reference_estimates(aligned, far)
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------------------------------------
# Outputs: smoothing, rasters, the change command
# --------------------------------------------------------------------------------------------------------

def write_score_dir(path, table: gpd.GeoDataFrame, year: int):
    """A score output directory as geoclf score writes it: predictions.parquet and landuse.tif."""
    import datetime as dt

    from geoclf import maps
    from tiling.classes import ClassScheme

    path.mkdir(parents=True, exist_ok=True)
    table = table.assign(date=dt.date(year, 7, 1))
    table.to_parquet(path / "predictions.parquet")
    scheme = ClassScheme.default()
    maps.write_landuse_cog(path / "landuse.tif", maps.predictions_to_grid(table, scheme), scheme)
    return path


def test_smoothing_removes_single_chip_noise(dates):
    from geoclf.change import smooth_predictions
    from tiling.classes import ClassScheme

    before, after = dates
    scheme = ClassScheme.default()
    smoothed = smooth_predictions(after, scheme)
    assert (smoothed["pred"] == after["pred"]).all()  # the model's labels are kept
    noise = smoothed["chip_id"].str.split(":").str[1].isin({f"{ix}_{iy}" for ix, iy in NOISE})
    assert (smoothed.loc[noise, "class"] == "Forest").all()
    aligned = align_dates(smooth_predictions(before, scheme), smoothed)
    chips = transition_matrix(aligned, unit="chips")
    assert chips.loc["Forest", "Herbaceous"] == 0
    # The 3x3 conversion keeps its centre and edges (a corner has only 4 of 9 votes).
    assert chips.loc["Forest", "Developed"] >= 5
    assert (aligned["pred_after"] == after["pred"].to_numpy()).all()


def test_smoothing_across_two_utm_zones(dates):
    from geoclf.change import smooth_predictions
    from tiling.classes import ClassScheme

    before, _ = dates
    utm18 = ChipGrid(CRS.from_epsg(26918), SIZE)
    east = gpd.GeoSeries([box((X0 + NX) * SIZE, Y0 * SIZE, (X0 + NX + 6) * SIZE, (Y0 + NY) * SIZE)], crs=26919)
    ix, iy = utm18.cells_within(tuple(east.to_crs(26918).total_bounds))
    cells = list(zip(ix.tolist(), iy.tolist(), strict=True))
    east_table = predictions(utm18, cells, ["Forest"] * len(cells), "m_east_18_1_20100701")
    west = before.assign(pred="Forest")
    lonely = int(np.flatnonzero((west["ix"] == X0 + 5) & (west["iy"] == Y0 + 5))[0])
    west.loc[lonely, "pred"] = "Developed"
    mixed = pd.concat([west.to_crs(5070), east_table.to_crs(5070)], ignore_index=True)
    smoothed = smooth_predictions(mixed, ClassScheme.default())
    # The maps are warped to EPSG:5070 across zones; each chip still reads back its own (smoothed) pixel.
    assert (smoothed["class"] == "Forest").all() and (smoothed["pred"] == "Developed").sum() == 1


def test_chips_without_prediction_are_left_out(dates):
    before, after = dates
    after = after.copy()
    after.loc[0, "pred"] = None
    aligned = align_dates(before, after)
    assert len(aligned) == NX * NY - 1 and aligned["class_after"].isin(CLASSES).all()


def test_change_raster_codes_transitions(dates, tmp_path):
    import rasterio

    from geoclf.change import transition_legend, write_change_cog
    from tiling.classes import ClassScheme

    before, after = dates
    scheme = ClassScheme.default()
    aligned = align_dates(before, after)
    path = write_change_cog(tmp_path / "change.tif", aligned, scheme)
    legend = transition_legend(scheme)
    with rasterio.open(path) as dataset:
        codes = dataset.read(1)
        assert dataset.res == (SIZE, SIZE) and dataset.crs.to_epsg() == 26919
        assert codes.shape == (NY, NX) and (codes > 0).all()
        names = np.array(legend.names)[codes - 1]
        assert (names == "Forest→Developed").sum() == 9 and (names == "Cultivated→Developed").sum() == 4
        # North-up: the top row is the northernmost cell row; the 2x2 block sits at rows NY-8..NY-7.
        assert names[NY - 1 - 6, 8] == "Cultivated→Developed"
        colormap = dataset.colormap(1)
        assert "Stable Forest" in dataset.tags()["CLASS_NAMES"]
    # a change is drawn in a shade of the class it became, one shade per class it was: every "→ Developed" is
    # red, and no two transitions share a colour
    changes = [n for n in legend.names if "→" in n]
    colors = {n: colormap[legend.names.index(n) + 1][:3] for n in changes}
    assert len(set(colors.values())) == len(changes) == 30
    for name, rgb in colors.items():
        hue = colorsys.rgb_to_hsv(*(np.array(rgb) / 255))[0]
        target = colorsys.rgb_to_hsv(*(np.array(scheme.color(name.split("→")[1])) / 255))[0]
        assert min(abs(hue - target), 1 - abs(hue - target)) < 0.02 or max(rgb) - min(rgb) < 40, name
    stable = [colormap[legend.names.index("Stable " + n) + 1][:3] for n in scheme.names]
    assert not set(stable) & set(colors.values())


def test_image_pairs_show_the_same_ground(dates, tmp_path):
    import rasterio
    from affine import Affine
    from PIL import Image

    from geoclf.change import write_image_pairs

    before, after = dates
    for name, value in (("b.tif", 60), ("a.tif", 200)):
        data = np.full((3, NY * 16, NX * 16), value, dtype=np.uint8)
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=NX * 16, height=NY * 16, count=3,
                           dtype="uint8", crs="EPSG:26919",
                           transform=Affine(16, 0, X0 * SIZE, 0, -16, (Y0 + NY) * SIZE)) as dataset:
            dataset.write(data)
    before = before.assign(source=str(tmp_path / "b.tif"))
    after = after.assign(source=str(tmp_path / "a.tif"))
    ranked = rank_changes(align_dates(before, after))
    files = write_image_pairs(ranked, tmp_path / "pairs", top=3, size=32)
    assert len(files) == 3 and files[0].name.startswith("0001_")
    pixels = np.asarray(Image.open(files[0]).convert("L"))
    assert pixels[20:, 5:30].mean() == pytest.approx(60, abs=2) and pixels[20:, 45:].mean() == pytest.approx(200, abs=2)


def test_change_command_end_to_end(dates, tmp_path):
    import json

    import rasterio

    from geoclf.cli import main

    before, after = dates
    write_score_dir(tmp_path / "m2010", before, 2010)
    write_score_dir(tmp_path / "m2016", after, 2016)
    mid = (X0 + NX // 2) * SIZE
    towns = gpd.GeoDataFrame({"TOWN": ["West", "East"]}, geometry=[
        box(X0 * SIZE, Y0 * SIZE, mid, (Y0 + NY) * SIZE), box(mid, Y0 * SIZE, (X0 + NX) * SIZE, (Y0 + NY) * SIZE)],
        crs=26919).to_crs(4326)
    towns.to_file(tmp_path / "towns.geojson", driver="GeoJSON")
    out = tmp_path / "change"
    main(["change", "--before", str(tmp_path / "m2010"), "--after", str(tmp_path / "m2016"), "--out", str(out),
          "--zones", str(tmp_path / "towns.geojson"), "--zone-column", "TOWN", "--sample-size", "40",
          "--min-per-stratum", "3"])
    for name in ("transitions.csv", "classes.csv", "urbanization.csv", "changes.parquet", "change.tif",
                 "change.html", "report.html", "area_by_class.png", "change_map.png", "zones.csv", "sample.parquet"):
        assert (out / name).exists(), name
    transitions = pd.read_csv(out / "transitions.csv")
    moved = transitions.set_index(["from_class", "to_class"])["chips"]
    assert moved[("Forest", "Developed")] == 9 and moved[("Cultivated", "Developed")] == 4
    changes = gpd.read_parquet(out / "changes.parquet")
    assert changes["confidence"].is_monotonic_decreasing and len(changes) == 16
    zones = pd.read_csv(out / "zones.csv", index_col="zone")
    assert zones.loc["West", "to_Developed_km2"] == pytest.approx(9 * changes["area_km2"].iloc[0], rel=1e-3)
    with rasterio.open(out / "change.tif") as dataset:
        assert dataset.colormap(1) and dataset.read(1).shape == (NY, NX)
    report = (out / "report.html").read_text()
    assert "2010 → 2016" in report and "data:image/png;base64," in report and "<iframe" in report
    # tables people read: dates and units for headers, totals on the transition matrix, places of the changes
    assert "before_km2" not in report and "km² 2010" in report and "Total 2016" in report and "Total 2010" in report
    assert report.count('class="geoclf-zoom"') == 16 and str(tmp_path) not in report
    assert json.loads((out / "change.json").read_text())["paired"] == NX * NY

    # The sample, labelled by an interpreter who finds the noise flips are no change, feeds --reference.
    sample = gpd.read_parquet(out / "sample.parquet")
    sample["reference"] = sample["stratum"].where(sample["stratum"] != "Forest→Herbaceous", "Stable Forest")
    sample.to_parquet(tmp_path / "ref.parquet")
    main(["change", "--before", str(tmp_path / "m2010"), "--after", str(tmp_path / "m2016"), "--out", str(out),
          "--reference", str(tmp_path / "ref.parquet"), "--no-html"])
    text = re.sub(r"data:[a-z/]+;base64,[A-Za-z0-9+/=]+", "", (out / "report.html").read_text())
    assert not re.search(r"\bnan\b", text, re.I), "a figure of the report reads nan"
    estimates = pd.read_csv(out / "area_estimates.csv", index_col=["map", "class"])
    assert estimates.loc[("change", "Forest→Herbaceous"), "area"] == pytest.approx(0)
    assert estimates.loc[("change", "Forest→Developed"), "area"] == pytest.approx(9 * changes["area_km2"].iloc[0],
                                                                                  rel=1e-3)
    # Change classes of one or two chips are sampled in full (a census): exact, so no interval is NaN.
    assert np.isfinite(estimates["area_ci"]).all()
    accuracy = pd.read_csv(out / "accuracy.csv", index_col=["map", "class"])
    assert np.isfinite(accuracy["users_ci"]).all()
    assert "± nan" not in (out / "report.html").read_text()


def test_change_smooth_spellings(dates, tmp_path):
    """``--smooth`` alone (the former flag), ``--smooth 3`` and ``smooth: true`` are one setting; ``--no-smooth``
    is ``--smooth 1``, no smoothing."""
    from geoclf.change import run_change
    from geoclf.cli import main

    before, after = dates
    write_score_dir(tmp_path / "m2010", before, 2010)
    write_score_dir(tmp_path / "m2016", after, 2016)
    common = ["change", "--before", str(tmp_path / "m2010"), "--after", str(tmp_path / "m2016"), "--no-html"]
    runs = {"bare": ["--smooth"], "three": ["--smooth", "3"], "off": ["--no-smooth"], "one": ["--smooth", "1"]}
    for name, args in runs.items():
        main([*common, *args, "--out", str(tmp_path / name)])
    run_change(tmp_path / "m2010", tmp_path / "m2016", tmp_path / "library", smooth=True, html_map=False)
    moved = {name: pd.read_csv(tmp_path / name / "transitions.csv") for name in [*runs, "library"]}
    flips = {name: t.set_index(["from_class", "to_class"]).loc[("Forest", "Herbaceous"), "chips"]
             for name, t in moved.items()}
    assert flips["off"] == flips["one"] > 0 and flips["bare"] == flips["three"] == flips["library"] == 0
    pd.testing.assert_frame_equal(moved["bare"], moved["three"])
    pd.testing.assert_frame_equal(moved["off"], moved["one"])
    report = (tmp_path / "three" / "report.html").read_text()
    assert "smoothed with a 3×3 plurality filter" in report


def test_change_command_bad_input_is_one_line(dates, tmp_path, capsys):
    from geoclf.cli import main

    before, after = dates
    write_score_dir(tmp_path / "m2010", before, 2010)
    write_score_dir(tmp_path / "m2016", after.rename(columns={"prob_Shrub": "prob_Wetland"}), 2016)
    with pytest.raises(SystemExit) as exit_code:
        main(["change", "--before", str(tmp_path / "m2010"), "--after", str(tmp_path / "m2016"), "--out",
              str(tmp_path / "out")])
    assert exit_code.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "different class sets" in error and "\n" not in error


def test_change_command_reads_zones_before_comparing(dates, tmp_path, capsys):
    from geoclf.cli import main

    before, after = dates
    write_score_dir(tmp_path / "m2010", before, 2010)
    write_score_dir(tmp_path / "m2016", after, 2016)
    (tmp_path / "towns.geojson").write_text("not a vector file")
    with pytest.raises(SystemExit) as exit_code:
        main(["change", "--before", str(tmp_path / "m2010"), "--after", str(tmp_path / "m2016"), "--out",
              str(tmp_path / "out"), "--zones", str(tmp_path / "towns.geojson")])
    assert exit_code.value.code == 2 and "towns.geojson: cannot be read as a vector file" in capsys.readouterr().err
    assert not (tmp_path / "out" / "transitions.csv").exists()


def test_chart_dates_wear_no_class_colour(dates, tmp_path):
    from PIL import Image

    from geoclf.change import area_bar_chart, date_colors
    from tiling.classes import NLCD_COLORS, ClassScheme

    def rgb(text):
        return np.array([int(text[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)

    for scheme in (ClassScheme.default(),
                   ClassScheme({"Water": (11,), "Wetland": (90, 95), "Other": (21, 22, 23, 24)},
                               {"Water": NLCD_COLORS[11], "Wetland": (200, 200, 230), "Other": (40, 40, 40)})):
        classes = np.array([scheme.color(n) for n in scheme.names], dtype=float)
        for color in date_colors(scheme):
            assert np.sqrt(((classes - rgb(color)) ** 2).sum(axis=1)).min() > 60, (scheme.names, color)
    before, after = dates
    areas = class_areas(align_dates(before, after), CLASSES)
    path = area_bar_chart(areas, tmp_path / "areas.png", ("2010", "2016"), ClassScheme.default())
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    for color in date_colors(ClassScheme.default()):
        assert (pixels == rgb(color)).all(axis=1).sum() > 1000  # the bars are drawn in the date colours
    developed = np.array(ClassScheme.default().color("Developed"))
    assert not (pixels == developed).all(axis=1).any()


# the two dates' imagery: one colour each (red, NIR of every band), so a screenshot tells them apart
BEFORE_RGB, AFTER_RGB = (200, 60, 40), (40, 90, 200)

_SWIPE_PROBE = """
<script>
setTimeout(function () {
  // the reader fades out the land use and the change layer: only the imagery shows, each date on its side
  document.querySelectorAll('.geoclf-opacity input').forEach(function (slider) {
    slider.value = 0; slider.dispatchEvent(new Event('input'));
  });
  var map = window[Object.keys(window).find(function (k) { return window[k] instanceof L.Map; })];
  map.getContainer().style.width = '900px'; map.getContainer().style.height = '700px';
  map.invalidateSize(false);
  map.fitBounds(window.geoclfArea, {animate: false});
  // the divider on the area's middle meridian; a point a quarter of the area in from each side
  var size = map.getSize(), middle = map.latLngToContainerPoint(window.geoclfMiddle);
  window.geoclfSwipe(middle.x / size.x);
  var points = window.geoclfPoints.map(function (p) {
    var at = map.latLngToContainerPoint(p); return [Math.round(at.x), Math.round(at.y)];
  });
  document.body.setAttribute('data-points', JSON.stringify(points));
}, 500);
</script>
"""

_CLICK_ZOOM = """
<script>
setTimeout(function () {
  document.querySelector('a.geoclf-zoom').click();
  setTimeout(function () {
    var inner = document.getElementById('geoclf-map').contentDocument.body;
    document.body.setAttribute('data-zoomed', inner.getAttribute('data-geoclf-zoom') || '');
  }, 300);
}, 800);
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_change_page_swipes_between_the_dates_offline(dates, tmp_path):
    """change.html and report.html in headless Chromium: both dates' imagery under a swipe (left of the divider
    the earlier date, right of it the later), one legend entry per from -> to transition, a titled map; the
    report's ranked changes name their places and zoom the embedded map, and show the before/after pairs."""
    import json

    import rasterio
    from affine import Affine
    from PIL import Image

    from geoclf.change import run_change
    from tiling.classes import ClassScheme

    before, after = dates
    for name, rgb in (("b.tif", BEFORE_RGB), ("a.tif", AFTER_RGB)):
        data = np.empty((4, NY * 16, NX * 16), dtype=np.uint8)
        data[:3] = np.array(rgb, dtype=np.uint8)[:, None, None]
        data[3] = 120
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=NX * 16, height=NY * 16, count=4,
                           dtype="uint8", crs="EPSG:26919",
                           transform=Affine(16, 0, X0 * SIZE, 0, -16, (Y0 + NY) * SIZE)) as dataset:
            dataset.write(data)
    before = before.assign(source=str(tmp_path / "b.tif"))
    after = after.assign(source=str(tmp_path / "a.tif"))
    write_score_dir(tmp_path / "m2010", before, 2010)
    write_score_dir(tmp_path / "m2016", after, 2016)
    written = run_change(tmp_path / "m2010", tmp_path / "m2016", tmp_path / "change", pairs=3)
    page = written["html"]
    text = page.read_text()
    assert "data:image/webp;base64," in text and "cdn." not in text  # imagery and scripts are in the page

    dom = chromium(tmp_path, page, "--dump-dom").stdout
    title = re.search(r'class="geoclf-title".*?</div></div>', dom, re.S).group(0)
    assert "Land-use change 2010 → 2016" in title and "model test-model" in title
    assert re.search(r"<title>Land-use change 2010 → 2016</title>", dom)
    assert "2016 ▶" in html_unescape(dom) and "◀ 2010" in html_unescape(dom)  # the swipe's sides
    assert len(re.findall(r'class="leaflet-image-layer[^"]* geoclf-imagery', dom)) == 2  # each date's imagery
    for label in ("Imagery 2010", "Imagery 2016 (colour infrared)", "Land use 2010"):
        assert label in dom, label
    legend = html_unescape(re.search(r'class="geoclf-legend".*?</div></div></div>', dom, re.S).group(0))
    km2 = 9 * chip_area_km2(after.iloc[:1]).iloc[0]
    assert f"Forest → Developed ({km2:,.2f} km²)" in legend and "Cultivated → Developed (" in legend
    assert "Forest → Herbaceous (" in legend and "no change, or not compared" in legend
    assert all(name in legend for name in ClassScheme.default().names)

    # the screenshot: the earlier date's imagery left of the divider, the later one's right of it
    area = before.to_crs(4326).total_bounds
    middle = [(area[1] + area[3]) / 2, (area[0] + area[2]) / 2]
    unchanged = after[after["chip_id"].str.endswith((f":{X0 + 1}_{Y0 + 4}", f":{X0 + 10}_{Y0 + 4}"))]
    centres = unchanged.geometry.centroid.to_crs(4326)
    points = [[p.y, p.x] for p in centres]  # west chip first (the table's order is by ix)
    setup = (f"<script>window.geoclfArea = {json.dumps([[area[1], area[0]], [area[3], area[2]]])};"
             f"window.geoclfMiddle = {json.dumps(middle)}; window.geoclfPoints = {json.dumps(points)};</script>")
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", setup + _SWIPE_PROBE + "</body>"))
    dom = chromium(tmp_path, probe, "--dump-dom", "--window-size=900,700").stdout
    at = json.loads(html_unescape(re.search(r'data-points="([^"]*)"', dom).group(1)))
    shot = tmp_path / "swipe.png"
    chromium(tmp_path, probe, f"--screenshot={shot}", "--window-size=900,700")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    for (x, y), rgb in zip(at, (BEFORE_RGB, AFTER_RGB), strict=True):
        seen = pixels[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3).mean(axis=0)
        assert np.abs(seen - rgb).max() < 12, (x, y, seen, rgb)

    # the report: ranked changes with their places, links that zoom the embedded map, the image pairs
    report = written["report"]
    dom = chromium(tmp_path, report, "--dump-dom").stdout
    assert len(re.findall(r'<figure class="geoclf-pair"', dom)) == 3
    assert str(tmp_path) not in dom and "Chip centre (lat, lon)" in dom
    first = rank_changes(align_dates(before, after)).iloc[0]
    centre = gpd.GeoSeries([first.geometry], crs=after.crs).centroid.to_crs(4326).iloc[0]
    assert f"{centre.y:.5f}, {centre.x:.5f}" in dom
    probe = tmp_path / "report-probe.html"
    probe.write_text(report.read_text().replace("</body>", _CLICK_ZOOM + "</body>"))
    dom = chromium(tmp_path, probe, "--dump-dom").stdout
    box = json.loads(html_unescape(re.search(r'data-zoomed="([^"]+)"', dom).group(1)))
    west, south, east, north = gpd.GeoSeries([first.geometry], crs=after.crs).to_crs(4326).total_bounds
    assert np.allclose(box, [[south, west], [north, east]], atol=1e-5)


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_a_change_refused_halfway_leaves_the_output_as_it_was(dates, tmp_path, capsys):
    """The sample size is found too small only after the tables and maps are computed: none of them is left
    in the output directory, and what the user kept there stays."""
    from geoclf.cli import main

    before, after = dates
    write_score_dir(tmp_path / "m2010", before, 2010)
    write_score_dir(tmp_path / "m2016", after, 2016)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_code:
        main(["change", "--before", str(tmp_path / "m2010"), "--after", str(tmp_path / "m2016"), "--out", str(out),
              "--sample-size", "3"])
    assert exit_code.value.code == 2
    assert "a sample of 3 chips cannot give each of the" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m2010", "m2016", "out"]  # no staging left behind
