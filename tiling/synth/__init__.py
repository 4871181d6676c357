"""Synthetic NAIP-like imagery and NLCD-like land cover, rendered from one seeded procedural world.

The world is a land-cover map defined everywhere in EPSG:5070 (CONUS Albers, the NLCD's CRS) by a seed:
jittered-grid Voronoi *parcels* on domain-warped coordinates (so boundaries are irregular and ignore any
chip grid), grouped into *zones* whose theme (urban, agricultural, forest, barrens, scrub, wet) sets the
parcel land-cover odds, plus a network of major roads. A parcel half can be converted to Developed in a given year
(a seeded hazard), which gives time series with a known change schedule.

Every raster is a view of that world:

* the NLCD-like raster samples it at 30 m cell centres on the real NLCD grid, in EPSG:5070;
* a NAIP-like scene transforms each 1 m pixel centre of a UTM grid into EPSG:5070, looks up the land cover
  there, and renders it with textures anchored to world coordinates (roofs and streets, tree crowns, field
  rows, bushes, ...), then adds the year's illumination and phenology and sensor noise.

Because everything is a pure function of (seed, location, year), scenes in different UTM zones agree with
one NLCD raster, every year of a place is pixel-aligned, and rendering in blocks gives the same bytes as
rendering at once. Nothing here draws from a global random state.

The modules: ``noise`` (hashes and noise), ``world`` (land cover by place and year), ``render`` (land cover
to digital numbers), ``layout`` (scene grids, collars, the NLCD grid), ``write`` (GeoTIFF and GeoJSON writers)
and ``scenes`` (the functions below, among them :func:`virtual_scenes`: many scenes that read one raster).
"""

from tiling.synth.layout import DEFAULT_CENTER, NLCD_ORIGIN, NLCD_RES
from tiling.synth.scenes import (
    UTM_PAIR,
    SyntheticScene,
    SyntheticSeries,
    make_nlcd,
    make_scene,
    make_utm_pair,
    make_years,
    virtual_scenes,
    write_conversions,
)
from tiling.synth.world import WORLD_CODES, WORLD_CRS, SyntheticWorld

__all__ = [
    "DEFAULT_CENTER",
    "NLCD_ORIGIN",
    "NLCD_RES",
    "UTM_PAIR",
    "WORLD_CODES",
    "WORLD_CRS",
    "SyntheticScene",
    "SyntheticSeries",
    "SyntheticWorld",
    "make_nlcd",
    "make_scene",
    "make_utm_pair",
    "make_years",
    "virtual_scenes",
    "write_conversions",
]
