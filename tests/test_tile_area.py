"""``geoclf tile`` past a county (geoclf.tile_area): workers label scene blocks, the client sees counts (issue 16).

Four overlapping scenes (quadrants of small_scene, one with a hole of nodata where its neighbours must keep the
cells) are tiled block by block, and the file must be the very ``chips.parquet`` :func:`tiling.tile` writes
from the whole index in memory: every chip once, the same labels, split, balanced chips, row order, row groups
and metadata. The client's part is checked too: the plan it sends is block descriptions and what comes back is
counts, never chips.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.windows import Window

import geoclf.tile_area as tile_area_module
import tiling
import tiling.index as index_module
from geoclf.cli import main
from geoclf.tile_area import PARTS_DIR, tile_area
from tiling.blocks import SceneBlock


def _crop(source: str, path: Path, window: Window, hole: Window | None = None) -> str:
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


@pytest.fixture(scope="module")
def quadrants(small_scene, tmp_path_factory):
    """Four scenes of one date, each 6 x 6 chips of small_scene's 10 x 10, overlapping their neighbours by two
    chips; "q0" (the first name, which wins ties) has a hole where "q1" must keep the shared cells."""
    folder = tmp_path_factory.mktemp("quadrants")
    day = tiling.describe_naip(small_scene.naip).date
    stamp = day.strftime("%Y%m%d") if day is not None else "20200101"
    scenes = []
    for i, (col, row) in enumerate([(0, 0), (896, 0), (0, 896), (896, 896)]):
        hole = Window(1000, 200, 344, 600) if i == 0 else None
        scenes.append(_crop(small_scene.naip, folder / f"q{i}_{stamp}.tif", Window(col, row, 1344, 1344), hole))
    return scenes


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 8 cells: the four scenes become dozens of partitions (rows cut across blocks)."""
    monkeypatch.setattr(index_module, "CELLS_PER_TASK", 8)


def _same_file(expected: Path, got: Path) -> None:
    """The same table (values, types, row order, metadata: run parameters, footprint CRS and bounding box)
    and the same row groups."""
    want, have = pq.read_table(expected), pq.read_table(got)
    assert have.schema.equals(want.schema, check_metadata=True)
    assert have.equals(want)
    assert ([g.num_rows for g in _groups(got)] == [g.num_rows for g in _groups(expected)])


def _groups(path: Path) -> list:
    metadata = pq.read_metadata(path)
    return [metadata.row_group(i) for i in range(metadata.num_row_groups)]


@pytest.mark.parametrize("params", [tiling.TileParams(max_nodata=0.2),
                                    tiling.TileParams(max_nodata=0.2, min_purity=0.5, balance=True, seed=3),
                                    tiling.TileParams(max_nodata=0.2, split="scene", block_size_m=448)],
                         ids=["blocks", "balanced", "by-scene"])
def test_four_scenes_tiled_by_blocks_give_tiles_index(quadrants, small_scene, small_blocks, params, tmp_path,
                                                      monkeypatch):
    plans, summaries = [], []
    real_run_plan = tile_area_module.run_plan

    def recorded(plan, *args, **kwargs):
        plans.append(list(plan))
        summaries.append(real_run_plan(plan, *args, **kwargs))
        return summaries[-1]

    monkeypatch.setattr(tile_area_module, "run_plan", recorded)
    tiling.tile(quadrants, small_scene.nlcd, tmp_path / "memory", params=params, progress=False)
    written = tile_area(quadrants, small_scene.nlcd, tmp_path / "blocks", params=params, scheduler="sync",
                        progress=False)
    _same_file(tmp_path / "memory" / "chips.parquet", written.path)
    index = tiling.read_index(written.path)
    assert index["cell"].is_unique and index["chip_id"].is_unique  # every chip once, where the scenes overlap too
    assert index["scene"].nunique() == 4 == written.scenes and written.chips == len(index)
    assert written.summary().equals(tiling.summarize(index))
    assert set(index["split"]) == {"train", "val"}
    if params.balance:  # every class of a split cut to its rarest (the same chips as tiling.tile drew)
        assert (index.groupby(["split", "label"]).size().groupby(level="split").nunique() == 1).all()
    assert not (tmp_path / "blocks" / PARTS_DIR).exists()  # the partitions go once the file is written
    # the client sent block descriptions and got counts back: no chip id, no row of the index
    (plan,), (counts,) = plans, summaries
    assert len(plan) >= 16 and all(isinstance(block, SceneBlock) for block in plan)
    # a block pickles to the same few kB whatever its cells: a description, no per-cell array
    wide = dataclasses.replace(plan[0], span=(0, 99_999, 0, 99_999))
    assert len(pickle.dumps(wide)) - len(pickle.dumps(plan[0])) < 64 and len(pickle.dumps(plan[0])) < 16_384
    for summary in counts:
        assert set(summary) <= {"candidates", "with_data", "groups", "rows", "task_s"}
        assert sum(n for _, _, n in summary.get("groups", [])) == summary["rows"]
    assert not any(chip in json.dumps(counts) for chip in index["chip_id"])


def _stopped_before_the_file(monkeypatch, *args, **kwargs) -> None:
    """Run tile_area as if Ctrl-C came once every block was labeled, before chips.parquet."""

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(tile_area_module, "_assemble", interrupted)
        with pytest.raises(KeyboardInterrupt):
            tile_area(*args, scheduler="sync", progress=False, **kwargs)


def test_a_tiling_stopped_before_the_file_resumes_from_its_partitions(quadrants, small_scene, small_blocks,
                                                                      tmp_path, monkeypatch):
    out = tmp_path / "out"
    _stopped_before_the_file(monkeypatch, quadrants, small_scene.nlcd, out, params=tiling.TileParams(max_nodata=0.2))
    parts = sorted((out / PARTS_DIR).rglob("part-*.parquet"))
    assert len(parts) >= 16 and not (out / "chips.parquet").exists()
    # another split of the same chips: the labeled blocks are reused, none is labeled again
    labeled = []
    real_label_block = tile_area_module.label_block
    monkeypatch.setattr(tile_area_module, "label_block", lambda *a: labeled.append(a) or real_label_block(*a))
    params = tiling.TileParams(max_nodata=0.2, seed=5)
    written = tile_area(quadrants, small_scene.nlcd, out, params=params, scheduler="sync", progress=False)
    assert labeled == []
    tiling.tile(quadrants, small_scene.nlcd, tmp_path / "memory", params=params, progress=False)
    _same_file(tmp_path / "memory" / "chips.parquet", written.path)
    # blocks of other chips (another nodata limit) that a stopped run left are replaced, not refused
    _stopped_before_the_file(monkeypatch, quadrants, small_scene.nlcd, tmp_path / "again",
                             params=tiling.TileParams(max_nodata=0.2))
    other = tiling.TileParams(max_nodata=0.5)
    labeled.clear()
    again = tile_area(quadrants, small_scene.nlcd, tmp_path / "again", params=other, scheduler="sync", progress=False)
    tiling.tile(quadrants, small_scene.nlcd, tmp_path / "memory-other", params=other, progress=False)
    _same_file(tmp_path / "memory-other" / "chips.parquet", again.path)
    assert len(labeled) == len(parts)


def test_geoclf_tile_on_a_local_cluster_prints_tiles_summary(quadrants, small_scene, small_blocks, tmp_path, capsys):
    main(["tile", "--naip", *quadrants, "--nlcd", str(small_scene.nlcd), "--out", str(tmp_path / "cli"),
          "--max-nodata", "0.2", "--scheduler", "local"])
    printed = capsys.readouterr().out
    index = tiling.tile(quadrants, small_scene.nlcd, tmp_path / "memory", params=tiling.TileParams(max_nodata=0.2),
                        progress=False)
    _same_file(tmp_path / "memory" / "chips.parquet", tmp_path / "cli" / "chips.parquet")
    assert f"{len(index)} chips from 4 scene(s)" in printed
    assert tiling.summarize(index).to_string() in printed
