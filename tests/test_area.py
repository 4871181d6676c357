"""Tests of geoclf.area: the Olofsson et al. (2014) estimators, sample design and chip areas.

The reference values come from the worked example in section 5 of Olofsson, Foody, Herold, Stehman,
Woodcock and Wulder (2014), "Good practices for estimating area and assessing accuracy of land change",
Remote Sensing of Environment 148: 42-57: a 30 m change map of 10,000,000 pixels in four strata and a
stratified sample of 640 units (Tables 8 and 9 and the text of section 5.2). The paper prints areas to the
hectare and accuracies to two decimals, so the assertions allow half a unit of the last printed digit.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from rasterio.crs import CRS

from geoclf.area import (
    allocate,
    chip_area_km2,
    error_matrix,
    mapped_area,
    olofsson,
    parse_cell,
    proportion_interval,
    sample_size,
    stratified_sample,
    z_value,
)
from tiling.errors import InputError
from tiling.grid import ChipGrid

CLASSES = ["Deforestation", "Forest gain", "Stable forest", "Stable non-forest"]

# Olofsson et al. (2014), Table 8: sample counts, map class (rows) x reference class (columns).
PAPER_COUNTS = [[66, 0, 5, 4],
                [0, 55, 8, 12],
                [1, 0, 153, 11],
                [2, 1, 9, 313]]
# Mapped area of each stratum in 30 m pixels (section 5); one pixel is 0.09 ha.
PAPER_PIXELS = {"Deforestation": 200_000, "Forest gain": 150_000, "Stable forest": 3_200_000,
                "Stable non-forest": 6_450_000}
HA_PER_PIXEL = 0.09


def paper_counts() -> pd.DataFrame:
    return pd.DataFrame(PAPER_COUNTS, index=CLASSES, columns=CLASSES)


def paper_estimate():
    hectares = {k: v * HA_PER_PIXEL for k, v in PAPER_PIXELS.items()}
    return olofsson(paper_counts(), hectares, unit="ha")


def test_paper_area_proportions_table_9():
    # Table 9: estimated area proportions p_ij, printed to four decimals, and the column totals.
    published = [[0.0176, 0.0000, 0.0013, 0.0011],
                 [0.0000, 0.0110, 0.0016, 0.0024],
                 [0.0019, 0.0000, 0.2967, 0.0213],
                 [0.0040, 0.0020, 0.0179, 0.6212]]
    est = paper_estimate()
    np.testing.assert_allclose(est.proportions.loc[CLASSES, CLASSES].to_numpy(), published, atol=0.00005 + 1e-12)
    np.testing.assert_allclose(est.area.loc[CLASSES, "proportion"], [0.0235, 0.0130, 0.3175, 0.6460],
                               atol=0.00005 + 1e-12)
    assert est.proportions.to_numpy().sum() == pytest.approx(1.0)


def test_paper_error_adjusted_areas_with_95_ci():
    # Section 5.2: error-adjusted areas with 95% confidence intervals, printed to the hectare.
    published = {"Deforestation": (21_158, 6_158), "Forest gain": (11_686, 3_756),
                 "Stable forest": (285_770, 15_510), "Stable non-forest": (581_386, 16_282)}
    est = paper_estimate()
    for name, (area, ci) in published.items():
        assert est.area.loc[name, "area"] == pytest.approx(area, abs=0.5), name
        assert est.area.loc[name, "area_ci"] == pytest.approx(ci, abs=0.5), name
    # The map's own (pixel-counting) deforestation area, 18,000 ha, is what the sample corrects.
    assert est.area.loc["Deforestation", "mapped_area"] == pytest.approx(18_000)
    assert est.area["area"].sum() == pytest.approx(900_000)


def test_paper_accuracies():
    # Section 5.2: user's and producer's accuracy with 95% CIs, and overall accuracy 0.95 ± 0.02.
    est = paper_estimate()
    users = {"Deforestation": (0.88, 0.07), "Forest gain": (0.73, 0.10), "Stable forest": (0.93, 0.04),
             "Stable non-forest": (0.96, 0.02)}
    for name, (value, ci) in users.items():
        assert est.accuracy.loc[name, "users"] == pytest.approx(value, abs=0.005), name
        assert est.accuracy.loc[name, "users_ci"] == pytest.approx(ci, abs=0.005), name
    producers = {"Deforestation": 0.75, "Forest gain": 0.85, "Stable forest": 0.93, "Stable non-forest": 0.96}
    for name, value in producers.items():
        assert est.accuracy.loc[name, "producers"] == pytest.approx(value, abs=0.005), name
    # Printed intervals that agree with the paper's eq. 7. Its ±0.23 (forest gain) and ±0.01 (stable
    # non-forest) do not follow from eq. 7 with its own Table 8 (which gives about 0.25 and 0.02), so they
    # are not asserted.
    assert est.accuracy.loc["Deforestation", "producers_ci"] == pytest.approx(0.21, abs=0.005)
    assert est.accuracy.loc["Stable forest", "producers_ci"] == pytest.approx(0.03, abs=0.005)
    assert est.overall["accuracy"] == pytest.approx(0.95, abs=0.005)
    assert est.overall["ci"] == pytest.approx(0.02, abs=0.005)
    assert est.overall["n"] == 640


def test_estimates_do_not_depend_on_the_area_unit():
    pixels = olofsson(paper_counts(), PAPER_PIXELS)
    hectares = paper_estimate()
    np.testing.assert_allclose(pixels.area["area"] * HA_PER_PIXEL, hectares.area["area"])
    np.testing.assert_allclose(pixels.accuracy["producers_se"], hectares.accuracy["producers_se"])
    assert pixels.overall["se"] == pytest.approx(hectares.overall["se"])


def test_unweighted_accuracy_differs_from_the_stratified_estimate():
    # Ignoring the strata weights (the naive sample proportion) is what the estimators exist to avoid.
    counts = np.array(PAPER_COUNTS)
    naive_overall = np.trace(counts) / counts.sum()
    assert abs(naive_overall - paper_estimate().overall["accuracy"]) > 0.01


def test_paper_sample_size_and_allocations():
    # Section 5.1: expected user's accuracies 0.7, 0.6, 0.9, 0.95 and a target SE(O) of 0.01 give n = 641;
    # proportional allocation of it is 13 / 10 / 205 / 413.
    weights = {k: v / 10_000_000 for k, v in PAPER_PIXELS.items()}
    expected = dict(zip(CLASSES, [0.7, 0.6, 0.9, 0.95], strict=True))
    n = sample_size(weights, expected, target_se=0.01)
    assert n == 641
    assert allocate(pd.Series(PAPER_PIXELS), n).tolist() == [13, 10, 205, 413]
    equal = allocate(pd.Series(PAPER_PIXELS), n, "equal")
    assert equal.sum() == n and set(equal) <= {160, 161}


def test_allocation_floor_takes_from_the_large_strata():
    sizes = pd.Series({"a": 1000, "b": 200_000, "c": 799_000})
    alloc = allocate(sizes, 500, "proportional", min_per_stratum=50)
    assert alloc["a"] == 50 and alloc.sum() == 500
    # The rest is shared in proportion to the remaining strata (450 x 200/999 and 450 x 799/999).
    assert alloc[["b", "c"]].tolist() == [90, 360]
    # A stratum smaller than its share gives all its units and the others take the rest.
    small = allocate(pd.Series({"a": 3, "b": 10_000}), 100, "equal")
    assert small.tolist() == [3, 97]
    with pytest.raises(InputError, match="floor"):
        allocate(sizes, 100, min_per_stratum=50)
    with pytest.raises(InputError, match="unknown allocation"):
        allocate(sizes, 100, "neyman")


def test_error_matrix_from_labels():
    mapped = ["A", "A", "B", "B", "B", None, "A"]
    reference = ["A", "B", "B", "B", "A", "A", None]
    counts = error_matrix(mapped, reference, classes=["A", "B", "C"])
    assert counts.loc["A"].tolist() == [1, 1, 0]
    assert counts.loc["B"].tolist() == [1, 2, 0]
    assert counts.loc["C"].sum() == 0 and counts.to_numpy().sum() == 5
    with pytest.raises(InputError, match=r"\['Z'\]"):
        error_matrix(["A", "Z"], ["A", "A"], classes=["A", "B"])
    with pytest.raises(InputError, match="one per sample"):
        error_matrix(["A"], ["A", "B"])


def test_olofsson_from_labels_roundtrip():
    # Expanding Table 8 into one row per sample unit and counting again gives the same estimates.
    rows = [(m, r) for i, m in enumerate(CLASSES) for j, r in enumerate(CLASSES) for _ in range(PAPER_COUNTS[i][j])]
    counts = error_matrix([m for m, _ in rows], [r for _, r in rows], classes=CLASSES)
    assert counts.to_numpy().tolist() == PAPER_COUNTS
    pd.testing.assert_frame_equal(olofsson(counts, PAPER_PIXELS).area, olofsson(paper_counts(), PAPER_PIXELS).area)


def test_olofsson_bad_input():
    with pytest.raises(InputError, match="no sample units"):
        olofsson(paper_counts().iloc[:3, :3], PAPER_PIXELS)
    with pytest.raises(InputError, match="no mapped area"):
        olofsson(paper_counts(), {k: v for k, v in PAPER_PIXELS.items() if k != "Forest gain"})
    with pytest.raises(InputError, match="whole numbers"):
        olofsson(paper_counts() * 0.5, PAPER_PIXELS)
    with pytest.raises(InputError, match="sum to zero"):
        olofsson(paper_counts(), dict.fromkeys(CLASSES, 0))


def test_paper_figures_hold_with_the_finite_population_correction():
    # The paper applies no correction (its digits above are reproduced without one). Given the strata sizes
    # in pixels, 1 - n_h/N_h is at most 0.04% off 1 here: intervals shrink by at most 0.02%, areas not at all.
    est = olofsson(paper_counts(), {k: v * HA_PER_PIXEL for k, v in PAPER_PIXELS.items()}, unit="ha",
                   population=PAPER_PIXELS)
    plain = paper_estimate()
    np.testing.assert_allclose(est.area["area"], plain.area["area"])
    np.testing.assert_allclose(est.area["area_ci"], [6_158, 3_756, 15_510, 16_282], rtol=2e-4)
    assert est.overall["ci"] == pytest.approx(0.02, abs=0.005)
    assert (est.area["area_se"] < plain.area["area_se"]).all()


def _estimates_over_every_sample(population: dict[str, list[str]], take: dict[str, int]):
    """Every stratified sample of a tiny map (all combinations), and each sample's estimates with the FPC."""
    from itertools import combinations, product

    strata = sorted(population)
    sizes = {h: len(population[h]) for h in strata}
    for draw in product(*(combinations(population[h], take[h]) for h in strata)):
        counts = pd.DataFrame(0, index=["A", "B"], columns=["A", "B"])
        for h, labels in zip(strata, draw, strict=True):
            for label in labels:
                counts.loc[h, label] += 1
        yield olofsson(counts, sizes, population=sizes)


def test_finite_population_correction_makes_the_variance_estimate_unbiased():
    # A map of 11 units: stratum A holds 6 (4 truly A), B holds 5 (2 truly A). Over all 20 x 10 stratified
    # samples of 3 and 2 units, the mean of the estimated variance equals the true variance of the estimate
    # -- exactly, with the correction; without it, it is too large by the factor 1/(1 - n_h/N_h).
    population = {"A": ["A", "A", "A", "A", "B", "B"], "B": ["A", "A", "B", "B", "B"]}
    estimates = list(_estimates_over_every_sample(population, {"A": 3, "B": 2}))
    assert len(estimates) == 200
    area = np.array([e.area.loc["A", "area"] for e in estimates])
    assert area.mean() == pytest.approx(4 + 2)  # unbiased: 6 units are truly A
    estimated_var = np.array([e.area.loc["A", "area_se"] ** 2 for e in estimates])
    assert estimated_var.mean() == pytest.approx(area.var(), rel=1e-9)
    overall = np.array([e.overall["accuracy"] for e in estimates])
    assert overall.mean() == pytest.approx(7 / 11)
    assert np.mean([e.overall["se"] ** 2 for e in estimates]) == pytest.approx(overall.var(), rel=1e-9)
    users = np.array([e.accuracy.loc["A", "users"] for e in estimates])
    assert np.mean([e.accuracy.loc["A", "users_se"] ** 2 for e in estimates]) == pytest.approx(users.var(), rel=1e-9)


def test_single_unit_stratum_is_exact_when_a_census_and_refused_otherwise():
    # A change class of one chip, sampled in full, is known exactly: zero variance, finite intervals (the
    # pages showed "0.951 ± nan" before).
    counts = pd.DataFrame([[1, 0], [3, 40]], index=["a", "b"], columns=["a", "b"])
    est = olofsson(counts, {"a": 10.0, "b": 990.0}, population={"a": 1, "b": 500})
    assert est.accuracy.loc["a", "users_se"] == 0
    assert np.isfinite(est.area["area_ci"]).all() and np.isfinite(est.accuracy["producers_ci"]).all()
    assert np.isfinite(est.overall["ci"]) and est.overall["ci"] > 0
    # One unit out of several strata units has no variance estimate: refused, with the stratum named.
    with pytest.raises(InputError, match=r"'a' holds a single sample unit \(and not a census"):
        olofsson(counts, {"a": 10.0, "b": 990.0}, population={"a": 4, "b": 500})
    with pytest.raises(InputError, match="'a' holds a single sample unit.*population"):
        olofsson(counts, {"a": 10.0, "b": 990.0})
    with pytest.raises(InputError, match="more sample units than their population"):
        olofsson(counts, {"a": 10.0, "b": 990.0}, population={"a": 1, "b": 30})
    with pytest.raises(InputError, match="no stratum size"):
        olofsson(counts, {"a": 10.0, "b": 990.0}, population={"a": 1})


def test_proportion_interval_and_z():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6) and z_value(0.90) == pytest.approx(1.644854, abs=1e-6)
    # the same figure as a user's accuracy of the paper (66 of 75 units mapped Deforestation)
    p, half = proportion_interval(66, 75)
    assert p == pytest.approx(0.88) and half == pytest.approx(paper_estimate().accuracy.loc["Deforestation",
                                                                                            "users_ci"], rel=1e-3)
    assert proportion_interval(66, 75, population=150)[1] == pytest.approx(half * np.sqrt(0.5))
    assert proportion_interval(1, 1, population=1) == (1.0, 0.0)
    assert np.isnan(proportion_interval(1, 1)[1]) and np.isnan(proportion_interval(0, 0)[0])
    with pytest.raises(InputError):
        proportion_interval(5, 4)
    with pytest.raises(InputError):
        z_value(95)


def _grid_chips(n_x: int = 10, n_y: int = 8, size: float = 256.0, stride: float | None = None) -> gpd.GeoDataFrame:
    grid = ChipGrid(CRS.from_epsg(26919), size, stride)
    # Near easting 480 km (20 km from the zone's central meridian), northing 4,700 km (Massachusetts).
    x0, y0 = int(480_000 // grid.step), int(4_700_000 // grid.step)
    ix, iy = np.meshgrid(np.arange(x0, x0 + n_x), np.arange(y0, y0 + n_y))
    ix, iy = ix.ravel(), iy.ravel()
    return gpd.GeoDataFrame({"cell": [grid.cell_id(a, b) for a, b in zip(ix, iy, strict=True)]},
                            geometry=[grid.footprint(a, b) for a, b in zip(ix, iy, strict=True)], crs=26919)


def test_chip_area_is_ground_area_of_the_cell():
    chips = _grid_chips()
    area = chip_area_km2(chips)
    # A 256 m UTM square is 0.065536 km² on the grid; on the ground it differs by the UTM scale error
    # (0.9996 on the central meridian, so about +0.08% in area here).
    np.testing.assert_allclose(area, 0.256 ** 2, rtol=1e-3)
    # With a stride of half the size, chips overlap and each stands for a stride x stride cell.
    strided = chip_area_km2(_grid_chips(stride=128.0))
    np.testing.assert_allclose(strided, 0.128 ** 2, rtol=1e-3)
    cells = parse_cell(chips["cell"])
    assert cells["grid"].iloc[0] == "EPSG:26919:256:256" and cells["ix"].iloc[0] == 480_000 // 256


def test_blocks_of_one_area_measure_their_chips_in_one_crs_with_one_transformer():
    # scoring an area measures each block's chips (the page's km²): one equal-area CRS for the area, and one
    # transformer for it per process, not one of each per block (0.3 s per block, a third of a cheap model's)
    from geoclf.area import _transformer, equal_area_crs

    chips = _grid_chips(20, 20)
    blocks = [chips.iloc[i:i + 100] for i in range(0, len(chips), 100)]
    area_crs = equal_area_crs(chips)
    own = [float(chip_area_km2(block).sum()) for block in blocks]  # each in a CRS centred on its block
    _transformer.cache_clear()
    shared = [float(chip_area_km2(block, area_crs).sum()) for block in blocks]
    assert _transformer.cache_info().misses == 1 and _transformer.cache_info().hits == len(blocks) - 1
    np.testing.assert_allclose(shared, own, rtol=1e-9)  # equal-area anywhere: the same km² in either
    np.testing.assert_allclose(chip_area_km2(chips), chips.geometry.to_crs(area_crs).area / 1e6, rtol=1e-12)


def test_parse_cell_of_one_grid_matches_the_general_path():
    # well-formed keys take a fast path (grid parts parsed once); one bad key sends a Series the general way
    chips = _grid_chips(6, 5, stride=128.0)
    keys = pd.concat([chips["cell"], pd.Series(["EPSG:32619:256:128:-4:17"], index=[99])])
    fast = parse_cell(keys)
    general = parse_cell(pd.concat([keys, pd.Series(["not:a:key"], index=[100])])).iloc[:-1]
    pd.testing.assert_frame_equal(fast, general.astype(fast.dtypes.to_dict()))
    assert fast["ix"].dtype == np.int64 and fast["grid_crs"].iloc[-1] == "EPSG:32619"
    assert fast["size"].tolist() == [256] * len(keys) and fast["stride"].iloc[0] == 128


def test_stratified_sample_is_seeded_and_allocated():
    chips = _grid_chips(20, 20)
    rng = np.random.default_rng(1)
    chips["pred"] = rng.choice(["Developed", "Forest", "Cultivated"], size=len(chips), p=[0.05, 0.6, 0.35])
    first = stratified_sample(chips, 60, min_per_stratum=15, seed=3)
    again = stratified_sample(chips.sample(frac=1.0, random_state=0).sort_index(), 60, min_per_stratum=15, seed=3)
    assert first["cell"].tolist() == again["cell"].tolist()
    counts = first["stratum"].value_counts()
    assert counts.sum() == 60 and counts.min() >= 15
    assert not first["cell"].duplicated().any()
    sizes = chips["pred"].value_counts()
    for stratum, rows in first.groupby("stratum"):
        assert rows["sample_weight"].iloc[0] == pytest.approx(sizes[stratum] / len(rows))
    assert first["reference"].isna().all() and first.crs == chips.crs
    assert stratified_sample(chips, 60, seed=4)["cell"].tolist() != first["cell"].tolist()
    with pytest.warns(UserWarning, match="Cultivated"):  # given no units: no interval for it
        explicit = stratified_sample(chips, {"Developed": 5, "Forest": 2}, seed=0)
    assert explicit["stratum"].value_counts().to_dict() == {"Developed": 5, "Forest": 2}
    with pytest.raises(InputError, match="no column"):
        stratified_sample(chips, 10, strata_column="label")


def test_sampler_gives_every_stratum_two_units_or_a_census():
    chips = _grid_chips(20, 20)
    chips["pred"] = ["Developed"] + ["Barren"] * 3 + ["Forest"] * 396
    # Proportional allocation of 20 would give Developed and Barren nothing and Forest everything.
    sample = stratified_sample(chips, 20, seed=0)
    counts = sample["stratum"].value_counts().to_dict()
    assert counts == {"Developed": 1, "Barren": 2, "Forest": 17}  # one chip: a census; three: two drawn
    # Labelled as mapped, the sample gives finite intervals everywhere (the census of Developed is exact).
    sample["reference"] = sample["stratum"]
    est = olofsson(error_matrix(sample["stratum"], sample["reference"]), mapped_area(chips),
                   population=chips["pred"].value_counts())
    assert np.isfinite(est.area["area_ci"]).all() and np.isfinite(est.overall["ci"])
    with pytest.raises(InputError, match="draw at least 5"):
        stratified_sample(chips, 4, seed=0)
    with pytest.warns(UserWarning, match=r"\['Barren'\] get fewer than 2"):
        stratified_sample(chips, {"Barren": 1, "Developed": 1, "Forest": 5}, seed=0)


def test_mapped_area_per_class():
    chips = _grid_chips(4, 5)
    chips["pred"] = ["Forest"] * 12 + ["Developed"] * 8
    areas = mapped_area(chips)
    assert areas["Forest"] / areas["Developed"] == pytest.approx(12 / 8, rel=1e-3)
    assert areas.sum() == pytest.approx(20 * 0.065536, rel=1e-3)


@pytest.mark.parametrize("keys", [
    ["EPSG:26919:256:128:1870:18359", "EPSG:26919:256:128:1871:18359", "EPSG:32618:224:224:-3:7"],
    ["EPSG:26919:0.6:0.3:1:2", "EPSG:26919:224.0:56:1:2", "EPSG:26919:1e2:25:1:2", "x:256:abc:1:2"],
    ["EPSG:26919:256:128:1:2", "not:a:key", "256:128:1:2", "EPSG:26919:256:128:a:b"],  # four and three parts
    ["EPSG:26919:256:128:1:2", None],
])
@pytest.mark.parametrize("dtype", [object, "str"])
def test_stride_ratios_are_those_parse_cell_reads(keys, dtype):
    # chip_area_km2 reads the keys' size and stride once per distinct pair (Arrow splits the keys): the very
    # floats parse_cell's size and stride give, also for keys of several grids, decimal sizes, keys parse_cell
    # reads in part or not at all, and missing keys
    from geoclf.area import _stride_ratio

    cells = pd.Series(keys, index=np.arange(10, 10 + len(keys)), dtype=dtype)
    parsed = parse_cell(cells)
    expected = (parsed["stride"] / parsed["size"]).to_numpy(dtype=float)
    np.testing.assert_array_equal(_stride_ratio(cells), expected)  # NaN where NaN

