"""The whole pipeline as `make demo` runs it (recipes/quickstart.yaml), checked end to end."""

from __future__ import annotations

import json
import re

import geopandas as gpd
import pandas as pd
import rasterio
from shapely import union_all

from geoclf import runs
from geoclf.recipes import run_recipe


def test_both_classifiers_reach_90_percent_with_the_embedded_backbone(quickstart):
    workdir, _, _ = quickstart
    records = {r.name: r for r in runs.list_run_records(runs_dir=workdir / "runs")}
    for name in ("lr-lite0", "rf-lite0"):
        assert records[name].metrics["accuracy"] >= 0.9, (name, records[name].metrics)
    featurized = [r for r in records.values() if r.kind == "featurize"]
    assert featurized and featurized[0].params["backbone"] == "efficientnet_lite0"


def test_maps_of_both_years_share_the_chip_grid(quickstart):
    workdir, _, _ = quickstart
    grids = []
    for year in (2010, 2016):
        with rasterio.open(workdir / f"map-{year}" / "landuse.tif") as ds:
            grids.append((ds.crs, ds.transform, ds.shape))
            assert ds.colormap(1)[1] != (0, 0, 0, 255)  # a colour table is embedded
        assert (workdir / f"map-{year}" / "map.html").stat().st_size > 10_000
    assert grids[0] == grids[1]


def test_change_report_finds_the_known_conversions(quickstart):
    workdir, _, _ = quickstart
    out = workdir / "change"
    for name in ("transitions.csv", "change.tif", "changes.parquet", "change.html", "report.html"):
        assert (out / name).exists(), name
    transitions = pd.read_csv(out / "transitions.csv")
    chips = gpd.read_parquet(workdir / "map-2016" / "predictions.parquet")
    assert transitions["chips"].sum() == len(chips)  # every chip of the area is in the matrix once
    truth = gpd.read_file(workdir / "scene" / "conversions.geojson").to_crs(chips.crs)
    converted = union_all(truth.geometry.to_numpy())
    share = chips.geometry.intersection(converted).area / chips.geometry.area
    mostly_converted = set(chips.loc[share >= 0.5, "cell"])  # chips the truth turned at least half Developed
    assert len(mostly_converted) >= 4
    changes = gpd.read_parquet(out / "changes.parquet")
    to_developed = changes[(changes["class_after"] == "Developed") & (changes["class_before"] != "Developed")]
    found = mostly_converted & set(to_developed["cell"])
    assert len(found) >= 0.5 * len(mostly_converted), f"{len(found)} of {len(mostly_converted)} found"
    # and most flagged conversions are real: they touch a known conversion
    flagged = chips[chips["cell"].isin(to_developed["cell"])]
    real = flagged.intersects(converted)
    assert real.mean() >= 0.5, f"{real.mean():.0%} of flagged conversions are real"


def test_rerun_skips_every_stage(quickstart):
    _, recipe, report = quickstart
    assert {status for _, status in report} == {"ran"}
    lines: list[str] = []
    again = run_recipe(recipe, echo=lines.append)
    assert {status for _, status in again} == {"skipped"}
    # the summary at the end: one line per stage with its headline, read from its outputs
    summary = lines[lines.index(next(line for line in lines if line.startswith(f"{recipe.name}: "))):]
    assert f"{len(recipe.stages)} stages" in summary[0] and str(recipe.workdir) in summary[0]
    assert len(summary) == len(recipe.stages) + 1
    by_stage = {line.split()[0]: line for line in summary[1:]}
    assert re.search(r"\b\d+ chips -> ", by_stage["tile"])
    assert re.search(r"validation accuracy [01]\.\d{3}, run ", by_stage["train"])  # 1.000 on the quickstart
    assert re.search(r"\d+ chips scored -> ", by_stage["score"])
    assert re.search(r"[\d.]+ km² changed of [\d.]+ km² compared", by_stage["change"])


def test_report_is_self_contained(quickstart):
    workdir, _, _ = quickstart
    html = (workdir / "change" / "report.html").read_text()
    assert "Developed" in html and "<img" in html
    summary = json.loads((workdir / "change" / "change.json").read_text())
    assert summary
