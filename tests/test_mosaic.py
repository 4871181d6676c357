"""Maps that are never gathered (geoclf.landuse.mosaic): block tiles + a VRT give the COG of the whole table.

Each block's map tile is written on its own (as a worker does); the VRT mosaic copied to a COG must be the
very ``landuse.tif`` (and ``landuse_probs.tif``) that :func:`geoclf.landuse.write_landuse_cog` writes from all
the predictions at once: same georeferencing, tags, colour table, overviews and pixels, also smoothed.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import rasterio
from golden import raster_fingerprint

from geoclf.landuse import majority_filter, predictions_to_grid, write_landuse_cog, write_probability_cog
from geoclf.landuse.mosaic import mosaic_to_cog, read_map, write_mosaic, write_tile
from tiling.blocks import block_chips, plan_blocks
from tiling.classes import ClassScheme
from tiling.index import TileParams
from tiling.labels import describe_nlcd


@pytest.fixture(scope="module")
def block_predictions(small_scene):
    """Chips of small_scene in blocks of 7 cells, "predicted" as their NLCD label with made-up probabilities."""
    params = TileParams(min_purity=0.0)
    scheme = ClassScheme.from_mapping(params.classes)
    _, blocks = plan_blocks([small_scene.naip], params, None, describe_nlcd(str(small_scene.nlcd)),
                            cells_per_block=7)
    rng = np.random.default_rng(0)
    parts = []
    for block in blocks:
        chips = block_chips(block, params, describe_nlcd(str(small_scene.nlcd)))
        probs = rng.dirichlet(np.ones(len(scheme.names)), size=len(chips)).astype(np.float32)
        chips = chips.assign(pred=chips["label"], **{f"prob_{c}": probs[:, i] for i, c in enumerate(scheme.names)})
        parts.append(chips)
    return scheme, parts


def fingerprint(path) -> str:
    return json.dumps(raster_fingerprint(path, str(path.parent)), sort_keys=True)  # NaN nodata compares equal


def _tiles(parts, scheme, root):
    return [write_tile(root, f"tiles/{i:03d}", predictions_to_grid(part, scheme)) for i, part in enumerate(parts)]


def test_the_mosaic_cog_is_the_cog_of_the_whole_table(block_predictions, tmp_path):
    scheme, parts = block_predictions
    whole = pd.concat(parts, ignore_index=True)
    grid = predictions_to_grid(whole, scheme)
    write_landuse_cog(tmp_path / "whole.tif", grid, scheme)
    write_probability_cog(tmp_path / "whole_probs.tif", grid, scheme)
    tiles = _tiles(parts, scheme, tmp_path)
    assert len(tiles) > 10
    write_mosaic(tmp_path / "landuse.vrt", tiles, scheme)
    write_mosaic(tmp_path / "landuse_probs.vrt", tiles, scheme, probabilities=True)
    mosaic_to_cog(tmp_path / "landuse.vrt", tmp_path / "landuse.tif", scheme)
    mosaic_to_cog(tmp_path / "landuse_probs.vrt", tmp_path / "landuse_probs.tif", scheme, probabilities=True)
    assert fingerprint(tmp_path / "landuse.tif") == fingerprint(tmp_path / "whole.tif")
    assert fingerprint(tmp_path / "landuse_probs.tif") == fingerprint(tmp_path / "whole_probs.tif")
    assert (tmp_path / "landuse.tif.aux.xml").is_file() and (tmp_path / "landuse.qml").is_file()
    small = read_map(tmp_path / "landuse.tif", max_pixels=4)
    assert max(small.codes.shape) <= 4 and small.crs == grid.crs


@pytest.mark.parametrize("smooth", [True, 5])  # --smooth, --smooth 5: a halo of one row, of two
def test_the_smoothed_mosaic_is_the_whole_map_smoothed(block_predictions, tmp_path, monkeypatch, smooth):
    import geoclf.landuse.mosaic as mosaic

    monkeypatch.setattr(mosaic, "_SMOOTH_ROWS", 3)  # strips of 3 rows: the halo between strips matters
    scheme, parts = block_predictions
    grid = predictions_to_grid(pd.concat(parts, ignore_index=True), scheme)
    write_mosaic(tmp_path / "landuse.vrt", _tiles(parts, scheme, tmp_path), scheme)
    mosaic_to_cog(tmp_path / "landuse.vrt", tmp_path / "landuse.tif", scheme, smooth=smooth)
    with rasterio.open(tmp_path / "landuse.tif") as dataset:
        smoothed = dataset.read(1)
    expected = majority_filter(grid.codes, 3 if smooth is True else smooth)
    assert (expected != grid.codes).any()
    np.testing.assert_array_equal(smoothed, expected)


def test_the_painted_mosaic_is_the_raster_the_vrt_shows(block_predictions, tmp_path, monkeypatch):
    """paint_mosaic (the change step's change.tif: no VRT of thousands of tiles held open by GDAL) gives the VRT's
    raster, painted in strips of 3 rows; where tiles overlap the earlier one keeps its pixels, nodata shows
    through, as in the VRT."""
    import geoclf.landuse.mosaic as mosaic
    from geoclf.landuse import LandUseGrid

    monkeypatch.setattr(mosaic, "_PAINT_ROWS", 3)
    scheme, parts = block_predictions
    tiles = _tiles(parts, scheme, tmp_path)
    # a tile over two blocks' corner, with a nodata hole, first in the list (it wins); another, of other codes, over
    # the same pixels last (it loses)
    with rasterio.open(tmp_path / tiles[0].codes) as first:
        transform, crs, (height, width) = first.transform, first.crs, first.shape
    codes = ((np.arange(height * 2 * width).reshape(height * 2, width) % len(scheme.names)) + 1).astype(np.uint8)
    codes[1:3, 1:3] = 0
    over = LandUseGrid(codes, transform * transform.translation(width // 2, -height), crs)
    under = over._replace(codes=np.where(codes > 0, codes % len(scheme.names) + 1, 0).astype(np.uint8))
    tiles = [write_tile(tmp_path, "tiles/over-first", over), *tiles, write_tile(tmp_path, "tiles/over-last", under)]
    write_mosaic(tmp_path / "landuse.vrt", tiles, scheme)
    painted = mosaic.paint_mosaic(tmp_path / "painted.tif", tiles, scheme)
    with rasterio.open(tmp_path / "landuse.vrt") as vrt, rasterio.open(painted) as tif:
        assert tif.height > 3 * 3 and (tif.transform, tif.crs, tif.shape) == (vrt.transform, vrt.crs, vrt.shape)
        pixels = tif.read(1)
        np.testing.assert_array_equal(pixels, vrt.read(1))
        assert (pixels == 0).any() and tif.nodata == vrt.nodata == 0
        classes = range(len(scheme.names) + 1)  # a GeoTIFF's colour table has 256 entries, the VRT's one a code
        assert [tif.colormap(1)[c] for c in classes] == [vrt.colormap(1)[c] for c in classes]
        assert tif.tags() == vrt.tags() and tif.descriptions == vrt.descriptions
    mosaic_to_cog(tmp_path / "landuse.vrt", tmp_path / "from-vrt.tif", scheme)
    mosaic_to_cog(painted, tmp_path / "from-painted.tif", scheme)
    assert fingerprint(tmp_path / "from-painted.tif") == fingerprint(tmp_path / "from-vrt.tif")


def test_the_painted_probabilities_are_the_raster_the_vrt_shows(block_predictions, tmp_path, monkeypatch):
    """paint_mosaic's probabilities (landuse_probs.tif without a VRT of every tile held open by GDAL): the
    probabilities' VRT raster band by band, painted in strips of 3 rows, NaN where no tile has a chip; an
    overlapping tile first in the list keeps its pixels band by band, also where another band of it is NaN."""
    import geoclf.landuse.mosaic as mosaic
    from geoclf.landuse import LandUseGrid

    monkeypatch.setattr(mosaic, "_PAINT_ROWS", 3)
    scheme, parts = block_predictions
    tiles = _tiles(parts, scheme, tmp_path)
    with rasterio.open(tmp_path / tiles[0].codes) as first:
        transform, crs, (height, width) = first.transform, first.crs, first.shape
    n = len(scheme.names)
    probs = np.random.default_rng(1).random((n, height * 2, width)).astype(np.float32)
    probs[:, 1:3, 1:3] = np.nan  # a hole: the tiles beneath show through
    probs[0, 0, :] = np.nan  # one band's row: the other bands of that row still win
    codes = np.where(np.isnan(probs).all(axis=0), 0, 1).astype(np.uint8)
    over = LandUseGrid(codes, transform * transform.translation(width // 2, -height), crs, probs)
    under = over._replace(probs=np.where(np.isnan(probs), np.nan, 1 - probs).astype(np.float32))
    tiles = [write_tile(tmp_path, "tiles/over-first", over), *tiles, write_tile(tmp_path, "tiles/over-last", under)]
    write_mosaic(tmp_path / "landuse_probs.vrt", tiles, scheme, probabilities=True)
    painted = mosaic.paint_mosaic(tmp_path / "painted_probs.tif", tiles, scheme, probabilities=True)
    with rasterio.open(tmp_path / "landuse_probs.vrt") as vrt, rasterio.open(painted) as tif:
        assert tif.height > 3 * 3 and (tif.transform, tif.crs, tif.shape) == (vrt.transform, vrt.crs, vrt.shape)
        assert tif.count == vrt.count == n and tif.dtypes == vrt.dtypes
        pixels = tif.read()
        np.testing.assert_array_equal(pixels, vrt.read())  # NaN where NaN
        assert np.isnan(pixels).any() and np.isnan(tif.nodata) and np.isnan(vrt.nodata)
        assert tif.tags() == vrt.tags() and tif.descriptions == vrt.descriptions == tuple(scheme.names)
    mosaic_to_cog(tmp_path / "landuse_probs.vrt", tmp_path / "from-vrt.tif", scheme, probabilities=True)
    mosaic_to_cog(painted, tmp_path / "from-painted.tif", scheme, probabilities=True)
    assert fingerprint(tmp_path / "from-painted.tif") == fingerprint(tmp_path / "from-vrt.tif")


@pytest.mark.parametrize("smooth", [False, True])
def test_the_cogs_from_the_tiles_are_the_cogs_of_their_vrts(block_predictions, tmp_path, smooth):
    """tiles_to_cog (score's landuse.tif and landuse_probs.tif): what the VRT of the tiles copied gives, also
    smoothed, with its styles; the painted file is gone."""
    import geoclf.landuse.mosaic as mosaic

    scheme, parts = block_predictions
    tiles = _tiles(parts, scheme, tmp_path)
    write_mosaic(tmp_path / "landuse.vrt", tiles, scheme)
    write_mosaic(tmp_path / "landuse_probs.vrt", tiles, scheme, probabilities=True)
    (tmp_path / "vrt").mkdir()
    mosaic_to_cog(tmp_path / "landuse.vrt", tmp_path / "vrt" / "landuse.tif", scheme, smooth=smooth)
    mosaic_to_cog(tmp_path / "landuse_probs.vrt", tmp_path / "vrt" / "landuse_probs.tif", scheme, probabilities=True)
    before = set(tmp_path.iterdir())
    mosaic.tiles_to_cog(tmp_path / "landuse.tif", tiles, scheme, directory=tmp_path, smooth=smooth)
    mosaic.tiles_to_cog(tmp_path / "landuse_probs.tif", tiles, scheme, directory=tmp_path, probabilities=True)
    new = {p.name for p in set(tmp_path.iterdir()) - before}
    assert new == {"landuse.tif", "landuse.tif.aux.xml", "landuse.qml", "landuse.sld", "landuse_probs.tif"}
    for name in ("landuse.tif", "landuse_probs.tif"):
        assert fingerprint(tmp_path / name) == fingerprint(tmp_path / "vrt" / name)
    for name in ("landuse.tif.aux.xml", "landuse.qml", "landuse.sld"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "vrt" / name).read_bytes()


@pytest.mark.parametrize("probabilities", [False, True])
def test_the_streamed_vrt_is_what_elementtree_writes_of_its_tree(block_predictions, tmp_path, probabilities):
    """write_mosaic writes the sources one at a time (a tree of 2,060 tiles' sources held +22 MB): the file is
    byte for byte what ElementTree writes of the tree it holds, indented, every band with every tile's source
    in reverse order, and GDAL reads it as the mosaic."""
    import io
    import xml.etree.ElementTree as ET

    scheme, parts = block_predictions
    tiles = _tiles(parts, scheme, tmp_path)
    path = write_mosaic(tmp_path / "landuse.vrt", tiles, scheme, probabilities=probabilities)
    tree = ET.parse(path)
    ET.indent(tree)
    written = io.BytesIO()
    tree.write(written, encoding="utf-8")
    assert path.read_bytes() == written.getvalue()
    bands = tree.getroot().findall("VRTRasterBand")
    assert len(bands) == (len(scheme.names) if probabilities else 1)
    for band in bands:
        names = [source.findtext("SourceFilename") for source in band.findall("ComplexSource")]
        assert names == [tile.probs if probabilities else tile.codes for tile in reversed(tiles)]
    with rasterio.open(path) as dataset:
        assert dataset.count == len(bands) and dataset.read(masked=True).count() > 0


@pytest.mark.parametrize("dtype", [object, "str"])
def test_class_codes_looked_up_once_per_name_are_the_row_by_row_codes(dtype):
    """class_codes looks each distinct class name up once (a block's tile): the codes mapping every row gives;
    an empty Series gives no codes."""
    from geoclf.landuse.grid import class_codes

    scheme = ClassScheme.from_mapping({"Developed": [21], "Forest": [41], "Water": [11]})
    names = pd.Series(["Water", "Forest", "Water", "Developed", "Forest"] * 7, dtype=dtype)
    lookup = {name: i + 1 for i, name in enumerate(scheme.names)}
    codes = class_codes(names, scheme)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, names.astype(str).map(lookup).to_numpy(dtype=np.uint8))
    assert class_codes(names.iloc[:0], scheme).shape == (0,)
