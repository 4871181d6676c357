"""The land-use map contract: chip predictions -> a grid of class codes, its COG files, a score output's layout.

Every stage after scoring speaks this: ``geoclf score`` writes it, maps, change, trend and the results report
read it. What it fixes:

- **Codes.** Class ``i`` of a :class:`~tiling.classes.ClassScheme` is stored as code ``i + 1``; :data:`NODATA`
  (0) is "no chip here". The scheme travels with every map as GeoTIFF tags
  (:meth:`ClassScheme.to_tags() <tiling.classes.ClassScheme.to_tags>`), so a map is read back with its class
  names, NLCD grouping and colours.
- **The grid.** A map pixel *is* a chip: when every chip comes from one CRS and one grid, chip ``(ix, iy)``
  becomes pixel ``(row, col) = (iy_max - iy, ix - ix_min)`` of a raster whose pixel size is the grid's stride and
  whose origin sits on a cell corner, so nothing is resampled. Only an area spanning several grids (UTM zones,
  or a CRS the user asks for) is warped, nearest neighbour, so class codes are never interpolated.
- **Files.** A GeoTIFF colour table lives on a single-band palette image, so class codes go to ``landuse.tif``
  and the per-class probabilities, when wanted, to a float32 sibling ``landuse_probs.tif`` on the very same
  grid. :class:`ScoreOutput` names every file of a score output directory.
- **Smoothing.** :func:`majority_filter` is the one plurality filter of class codes, over a 2-D window in space
  (maps) or a 1-D window along the time axis of a stack (trend).

In four modules: :mod:`geoclf.landuse.grid` (predictions -> grid, the majority filter),
:mod:`geoclf.landuse.cog` (the COG files), :mod:`geoclf.landuse.styles` (the sidecars that name the classes in
GIS tools: GDAL categories and attribute table, QGIS ``.qml``, ``.sld``) and :mod:`geoclf.landuse.output` (a
score output's files and its predictions table). Nothing here renders: pictures of these maps are :mod:`geoclf.maps` and
:mod:`geoclf.webmap`.
"""

from __future__ import annotations

from geoclf.landuse.cog import (
    LandUseHeader,
    Legend,
    color_table,
    read_header,
    read_landuse,
    write_landuse_cog,
    write_probability_cog,
)
from geoclf.landuse.grid import (
    MOSAIC_CRS,
    NODATA,
    PROB_PREFIX,
    REQUIRED_COLUMNS,
    LandUseGrid,
    check_map_extent,
    check_map_size,
    class_codes,
    majority_filter,
    predictions_to_grid,
    probability_columns,
    reproject_nearest,
    smoothing_window,
)
from geoclf.landuse.output import ScoreOutput, classes_of, prediction_classes, read_predictions
from geoclf.landuse.styles import style_paths, write_styles

__all__ = [
    "MOSAIC_CRS",
    "NODATA",
    "PROB_PREFIX",
    "REQUIRED_COLUMNS",
    "LandUseGrid",
    "LandUseHeader",
    "Legend",
    "ScoreOutput",
    "check_map_extent",
    "check_map_size",
    "class_codes",
    "classes_of",
    "color_table",
    "majority_filter",
    "prediction_classes",
    "predictions_to_grid",
    "probability_columns",
    "read_header",
    "read_landuse",
    "read_predictions",
    "reproject_nearest",
    "smoothing_window",
    "style_paths",
    "write_landuse_cog",
    "write_probability_cog",
    "write_styles",
]
