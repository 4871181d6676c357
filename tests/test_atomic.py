"""One way to write outputs: atomically, with the permissions of the user's umask."""

from __future__ import annotations

import os
import stat

import pytest

from tiling.grid import CellKey, ChipGrid, parse_cell
from tiling.io import atomic_path


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_file_replaces_only_on_success_and_honours_the_umask(tmp_path):
    target = tmp_path / "out" / "table.txt"
    old = os.umask(0o022)
    try:
        with atomic_path(target) as tmp:
            tmp.write_text("first")
        assert target.read_text() == "first"
        assert _mode(target) == 0o644  # mkstemp would give 0600
        with pytest.raises(RuntimeError), atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
        assert target.read_text() == "first"
        assert sorted(p.name for p in target.parent.iterdir()) == ["table.txt"]
    finally:
        os.umask(old)


def test_atomic_directory_replaces_the_whole_directory(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.json").write_text("{}")
    with atomic_path(target, directory=True) as staging:
        (staging / "model.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["model.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_parse_cell_reads_back_what_the_grid_writes():
    from rasterio.crs import CRS

    grid = ChipGrid(CRS.from_epsg(26914), 224.0, 112.0)
    key = parse_cell(grid.cell_id(3, -7))
    assert key == CellKey("EPSG:26914", 224.0, 112.0, 3, -7)
    assert key.bounds == (336.0, -784.0, 560.0, -560.0)
    with pytest.raises(ValueError, match="malformed"):
        parse_cell("EPSG:26914:224:x:1")
