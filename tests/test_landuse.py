"""Tests of the land-use map contract (geoclf.landuse): class tags, score output layout, the majority filter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.crs import CRS
from test_maps import PATCH, block, make_predictions

from geoclf import landuse
from geoclf.landuse import ScoreOutput
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.grid import ChipGrid

UTM19 = CRS.from_epsg(26919)
CUSTOM = ClassScheme({"Urban": (21, 22, 23, 24), "Trees": (41, 42, 43), "Farms": (81, 82)},
                     {"Urban": (250, 10, 10), "Trees": (0, 120, 0)})


# --------------------------------------------------------------------------------------------------------------
# class scheme <-> tags


def test_scheme_tags_round_trip_names_order_groups_and_colours() -> None:
    tags = CUSTOM.to_tags()
    assert json.loads(tags["CLASS_CODES"]) == {"Urban": 1, "Trees": 2, "Farms": 3}
    assert tags["NODATA_CODE"] == str(landuse.NODATA)
    back = ClassScheme.from_tags(tags)
    assert back.names == CUSTOM.names and back.groups == CUSTOM.groups
    assert [back.color(n) for n in back.names] == [CUSTOM.color(n) for n in CUSTOM.names]


@pytest.mark.parametrize(("tags", "problem"), [
    ({}, "not a geoclf land-use map"),
    ({"CLASS_SCHEME": "{not json"}, "unreadable class scheme tag"),
    ({"CLASS_SCHEME": "[1, 2]"}, "unreadable class scheme tag"),
    ({"CLASS_SCHEME": '{"Urban": [21], "Trees": [21]}'}, "unreadable class scheme tag.*both"),
    ({"CLASS_SCHEME": '{"Urban": [21]}', "CLASS_COLORS": '{"Urban": [1, 2]}'}, "unreadable class scheme tag"),
    ({"CLASS_SCHEME": '{"Urban": [21]}', "CLASS_COLORS": '{"Urban": "red"}'}, "unreadable class scheme tag"),
])
def test_bad_scheme_tags_are_one_line_naming_the_file(tmp_path: Path, tags: dict[str, str], problem: str) -> None:
    path = tmp_path / "landuse.tif"
    with rasterio.open(path, "w", driver="GTiff", width=2, height=2, count=1, dtype="uint8", crs=UTM19,
                       transform=rasterio.transform.from_origin(0, 2, 1, 1)) as dataset:
        dataset.write(np.ones((1, 2, 2), np.uint8))
        dataset.update_tags(**tags)
    for read in (landuse.read_landuse, landuse.read_header, lambda p: ScoreOutput(p).classes):
        with pytest.raises(InputError, match=problem) as caught:
            read(path)
        assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_a_map_reads_back_with_its_scheme_and_header(tmp_path: Path) -> None:
    predictions = make_predictions(ChipGrid(UTM19, 200.0), PATCH)
    scheme = ClassScheme.default()
    grid = landuse.predictions_to_grid(predictions, scheme)
    path = landuse.write_landuse_cog(tmp_path / "landuse.tif", grid, scheme)
    header = landuse.read_header(path)
    assert header.classes == scheme and header.crs == UTM19 and header.transform == grid.transform
    assert (header.width, header.height) == (4, 3)
    read, classes = landuse.read_landuse(path)
    assert classes == scheme and (read.codes == grid.codes).all()


def test_malformed_cell_keys_are_one_line() -> None:
    predictions = make_predictions(ChipGrid(UTM19, 200.0), block(0, 0, 2, 1, "Forest"))
    predictions["cell"] = ["EPSG:26919:big:200:0:0", predictions["cell"].iloc[1]]
    with pytest.raises(InputError, match="malformed 'cell' keys"):
        landuse.predictions_to_grid(predictions, ClassScheme.default())


# --------------------------------------------------------------------------------------------------------------
# score output layout


def _score_output(directory: Path, scheme: ClassScheme) -> Path:
    """A directory laid out as geoclf score writes it, with the predictions' class metadata."""
    predictions = make_predictions(ChipGrid(UTM19, 200.0), PATCH)
    predictions.attrs = {"geoclf": {"classes": scheme.names, "class_groups": scheme.to_dict()}}
    directory.mkdir(parents=True)
    predictions.to_parquet(directory / "predictions.parquet")
    landuse.write_landuse_cog(directory / "landuse.tif", landuse.predictions_to_grid(predictions, scheme), scheme)
    return directory


def test_score_output_is_found_from_its_directory_or_any_of_its_files(tmp_path: Path) -> None:
    scheme = ClassScheme.default()
    out = _score_output(tmp_path / "map-2016", scheme)
    (out / "map.html").write_text("<html></html>")
    for given in (out, out / "landuse.tif", out / "predictions.parquet", out / "map.html"):
        output = ScoreOutput(given)
        assert output.directory == out and output.landuse == out / "landuse.tif"
        assert output.predictions == out / "predictions.parquet"
        assert output.probabilities == out / "landuse_probs.tif" and output.html == out / "map.html"
    assert ScoreOutput(out).classes == scheme and ScoreOutput(out).models() == ["test-model"]
    assert len(ScoreOutput(out / "landuse.tif").read_predictions()) == len(PATCH)
    # a COG named after its scene and a predictions table of any name
    named = ScoreOutput(tmp_path / "naip_2016.tif")
    assert named.landuse == tmp_path / "naip_2016.tif" and named.probabilities == tmp_path / "landuse_probs.tif"
    assert ScoreOutput(tmp_path / "after.parquet").predictions == tmp_path / "after.parquet"
    # a directory still to be written, whatever its name
    assert ScoreOutput.at(tmp_path / "new.tif").landuse == tmp_path / "new.tif" / "landuse.tif"
    assert ScoreOutput(tmp_path / "new").directory == tmp_path / "new"


def test_score_output_classes_without_a_map_come_from_the_predictions(tmp_path: Path) -> None:
    scheme = ClassScheme.default()
    out = _score_output(tmp_path / "out", scheme)
    (out / "landuse.tif").unlink()
    assert ScoreOutput(out).classes.names == scheme.names and ScoreOutput(out).classes.groups == scheme.groups


def test_score_output_bad_input_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty: no landuse\.tif here"):
        ScoreOutput(empty).read_landuse()
    with pytest.raises(InputError, match="no predictions.parquet here"):
        ScoreOutput(empty).read_predictions()
    with pytest.raises(InputError, match=r"missing\.tif: no such file"):
        ScoreOutput(tmp_path / "missing.tif").read_landuse()
    out = _score_output(tmp_path / "out", ClassScheme.default())
    with pytest.raises(InputError, match="no landuse_probs.tif beside the map"):
        ScoreOutput(out).read_landuse(probabilities=True)
    pd.DataFrame({"pred": ["Forest"]}).to_parquet(out / "plain.parquet")
    with pytest.raises(InputError, match="has no geometry"):
        ScoreOutput(out / "plain.parquet").read_predictions()


# --------------------------------------------------------------------------------------------------------------
# one majority filter for space and time


def _series_majority_by_hand(series: np.ndarray, size: int) -> np.ndarray:
    """The rule, one date at a time: the window's most frequent class, own class on a tie, nodata fixed."""
    out = series.copy()
    half = size // 2
    for t, own in enumerate(series):
        if own == landuse.NODATA:
            continue
        votes = series[max(0, t - half):t + half + 1]
        counts = {int(c): int((votes == c).sum()) for c in np.unique(votes[votes != landuse.NODATA])}
        best = max(counts.values())
        out[t] = own if counts.get(int(own), 0) == best else min(c for c, n in counts.items() if n == best)
    return out


@pytest.mark.parametrize("size", [3, 5])
def test_majority_filter_along_time_is_the_rule_for_every_pixel(size: int) -> None:
    codes = np.random.default_rng(size).integers(0, 4, (6, 5, 7)).astype(np.uint8)  # (y, x, time)
    smoothed = landuse.majority_filter(codes, size, axes=(-1,))
    expected = np.apply_along_axis(_series_majority_by_hand, -1, codes, size)
    assert smoothed.dtype == codes.dtype and (smoothed == expected).all()
    # a one-date excursion A -> B -> A goes, a lasting change A A B B keeps its date
    assert landuse.majority_filter(np.array([2, 5, 2, 2], np.uint8), 3, axes=(0,)).tolist() == [2, 2, 2, 2]
    assert landuse.majority_filter(np.array([2, 2, 5, 5], np.uint8), 3, axes=(0,)).tolist() == [2, 2, 5, 5]


def test_majority_filter_in_space_leaves_other_axes_alone() -> None:
    codes = np.random.default_rng(1).integers(0, 4, (3, 8, 9)).astype(np.uint8)  # (time, y, x)
    stacked = landuse.majority_filter(codes, 3)
    assert all((stacked[t] == landuse.majority_filter(codes[t], 3)).all() for t in range(3))
    with pytest.raises(InputError, match="odd number"):
        landuse.majority_filter(codes, 4)


def test_landuse_and_webmap_sit_below_the_stages() -> None:
    """The map contract and the page builder import no stage (score, change, trend) and no torch."""
    import subprocess
    import sys

    code = ("import sys, geoclf.landuse, geoclf.webmap; print(' '.join(sorted(m for m in sys.modules if m == 'torch' "
            "or m.split('.')[:2] in (['geoclf', 'score'], ['geoclf', 'change'], ['geoclf', 'trend'], "
            "['geoclf', 'maps']))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
