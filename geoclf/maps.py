"""Land-use maps from chip predictions: the COG on the chip grid, class polygons, folium HTML, static PNG.

The map contract (the grid of class codes, its COG files, smoothing) is :mod:`geoclf.landuse`; its names are
still importable from here. This module turns it into the products of a scored area (:func:`write_maps`).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.features
import shapely

from geoclf.area import chip_area_km2
from geoclf.landuse import (  # noqa: F401  (re-exported: the land-use map contract lived here)
    MOSAIC_CRS,
    NODATA,
    REQUIRED_COLUMNS,
    LandUseGrid,
    ScoreOutput,
    class_codes,
    color_table,
    majority_filter,
    predictions_to_grid,
    probability_columns,
    read_landuse,
    reproject_nearest,
    smoothing_window,
    write_landuse_cog,
    write_probability_cog,
)
from geoclf.landuse.mosaic import MapTile, read_map, tiles_to_cog
from geoclf.metrics import evaluate, evaluation_to_json
from geoclf.webmap import (  # noqa: F401  (re-exported: the page builder's parts lived here)
    CIR_BANDS,
    RGB_BANDS,
    ImageLayer,
    WebMap,
    escape,
    hex_color,
    imagery_images,
    leaflet_assets,
    legend_html,
    offline_map,
    overlay_image,
)
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.io import atomic_path

PathLike = str | os.PathLike[str]

#: The plurality filter of :mod:`geoclf.landuse`, under its former name.
smooth_plurality = majority_filter


# --------------------------------------------------------------------------------------------------------------
# class polygons


def dissolve_classes(grid: LandUseGrid, classes: ClassScheme) -> gpd.GeoDataFrame:
    """Polygonize the class raster and dissolve it into one (multi)polygon per class present.

    Polygons come from the raster rather than from chip footprints so that overlapping chips (stride < size)
    still give a partition: class areas add up to the mapped area.

    Args:
        grid: the land-use grid.
        classes: the scheme the codes refer to.

    Returns:
        A GeoDataFrame in the grid's CRS with columns ``land_use_class``, ``code``, ``area_m2`` and
        ``geometry``, in scheme order.
    """
    codes = np.asarray(grid.codes, dtype=np.uint8)
    shapes = rasterio.features.shapes(codes, mask=codes != NODATA, transform=grid.transform, connectivity=4)
    pieces = pd.DataFrame([(shapely.geometry.shape(geom), int(value)) for geom, value in shapes],
                          columns=["geometry", "code"])
    rows = []
    for code, part in pieces.groupby("code", sort=True):
        rows.append((classes.names[int(code) - 1], int(code), shapely.union_all(part["geometry"].to_numpy())))
    frame = gpd.GeoDataFrame(rows, columns=["land_use_class", "code", "geometry"], geometry="geometry",
                             crs=grid.crs)
    _, to_metres = grid.crs.linear_units_factor
    frame.insert(2, "area_m2", frame.geometry.area * to_metres**2)
    return frame


def write_vector(frame: gpd.GeoDataFrame, path: PathLike) -> Path:
    """Write class polygons as GeoParquet (``.parquet``) or GeoJSON (``.geojson``/``.json``, EPSG:4326).

    GeoJSON is written in EPSG:4326 because RFC 7946 allows no other CRS; GeoParquet keeps the map's CRS.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".parquet", ".geojson", ".json"):
        raise InputError("unknown vector format; use .parquet (GeoParquet) or .geojson", path)
    with atomic_path(target) as temporary:
        if suffix == ".parquet":
            frame.to_parquet(temporary, index=False)
        else:
            temporary.write_text(frame.to_crs(4326).to_json(drop_id=True), encoding="utf-8")
    return target


# --------------------------------------------------------------------------------------------------------------
# interactive HTML map


def _chip_features(predictions: pd.DataFrame, classes: ClassScheme) -> tuple[dict[str, Any], list[str],
                                                                              list[str]]:
    """Chip footprints in EPSG:4326 as GeoJSON, with the popup fields and their labels."""
    if not isinstance(predictions, gpd.GeoDataFrame) or predictions.crs is None:
        raise InputError("predictions need footprints with a CRS (a GeoDataFrame) for chip popups")
    frame = predictions[predictions["pred"].notna()].to_crs(4326)
    props = pd.DataFrame({"land_use_class": frame["pred"].astype(str)})
    fields, aliases = ["land_use_class"], ["class"]
    prob_columns = probability_columns(frame, classes)
    if prob_columns is not None:
        probs = frame[prob_columns].to_numpy(dtype=np.float64)
        codes = class_codes(frame["pred"], classes).astype(np.int64)
        props["probability"] = np.round(probs[np.arange(len(frame)), codes - 1], 3)
        fields.append("probability")
        aliases.append("probability")
    if "label" in frame.columns:
        props["reference"] = frame["label"].astype(object).where(frame["label"].notna(), "")
        fields.append("reference")
        aliases.append("reference (NLCD)")
    for column in ("chip_id", "scene", "date"):
        if column in frame.columns:
            values = frame[column]
            props[column] = values.astype(str).where(values.notna(), "").to_numpy()
            fields.append(column)
            aliases.append(column.replace("_", " "))
    if prob_columns is not None:
        for name, column in zip(classes.names, prob_columns, strict=True):
            props[column] = np.round(frame[column].to_numpy(dtype=np.float64), 3)
            fields.append(column)
            aliases.append(f"p({name})")
    # Six decimals of a degree is ~0.1 m: plenty for a footprint, and it keeps the page small.
    geometry = shapely.transform(frame.geometry.to_numpy(), lambda xy: np.round(xy, 6))
    # the FeatureCollection GeoDataFrame.to_json gives, built from shapely's GeoJSON of all footprints at once
    # and the properties' records (to_json goes feature by feature: 0.35 s of a 3,600-chip page)
    props = props.reset_index(drop=True)
    for column in props.columns[props.dtypes.map(lambda dtype: dtype.kind == "f")]:
        props[column] = props[column].astype(object).where(props[column].notna(), None)
    features = [{"type": "Feature", "properties": record, "geometry": json.loads(shape)}
                for record, shape in zip(props.to_dict("records"), shapely.to_geojson(geometry), strict=True)]
    return {"type": "FeatureCollection", "features": features}, fields, aliases


@dataclass(frozen=True)
class AreaFacts:
    """What a land-use page says of its area (title, imagery), known without its predictions table.

    Attributes:
        chips: scored chips.
        km2: the ground they stand for (:func:`geoclf.area.chip_area_km2`), or ``None`` when unknown.
        dates: the scenes' acquisition dates (ISO), sorted.
        models: the models' names, sorted.
        scenes: the scene names, sorted.
        sources: the rasters the chips were read from (the page's imagery layers).
    """

    chips: int
    km2: float | None = None
    dates: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    scenes: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    @classmethod
    def of(cls, predictions: pd.DataFrame, area_crs: Any = None) -> AreaFacts:
        """The facts of a predictions table (its scored chips); ``area_crs``: the equal-area CRS its chips'
        areas are measured in (see :func:`geoclf.area.chip_area_km2`)."""
        scored = predictions
        if "pred" in predictions.columns and predictions["pred"].isna().any():  # no copy of a block where all are
            scored = predictions[predictions["pred"].notna()]

        def values(column: str) -> tuple[str, ...]:
            return tuple(sorted(str(v) for v in scored[column].dropna().unique())) if column in scored else ()

        dates = tuple(sorted({str(pd.Timestamp(d).date()) for d in scored["date"].dropna().unique()})) \
            if "date" in scored else ()
        km2 = None
        if isinstance(scored, gpd.GeoDataFrame) and scored.crs is not None and len(scored):
            km2 = float(chip_area_km2(scored, area_crs).sum())
        return cls(len(scored), km2, dates, values("model"), values("scene"), values("source"))

    @classmethod
    def combine(cls, parts: list[AreaFacts]) -> AreaFacts:
        """The facts of an area made of parts (e.g. the blocks of a scored area)."""
        km2 = [p.km2 for p in parts if p.km2 is not None]
        return cls(sum(p.chips for p in parts), float(sum(km2)) if km2 else None,
                   *(tuple(sorted({v for p in parts for v in getattr(p, name)}))
                     for name in ("dates", "models", "scenes", "sources")))


def map_title(predictions: pd.DataFrame | AreaFacts, title: str = "Land use") -> tuple[str, list[str]]:
    """A land-use page's title and detail lines from its predictions (or their facts): dates, model, scenes,
    chips and km²."""
    facts = predictions if isinstance(predictions, AreaFacts) else AreaFacts.of(predictions)
    dates = facts.dates
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}" if dates else ""
    lines = []
    if facts.models:
        lines.append(("model " if len(facts.models) == 1 else "models ") + ", ".join(facts.models))
    area = f", {facts.km2:,.2f} km²" if facts.km2 is not None else ""
    scenes = facts.scenes
    where = (scenes[0] if len(scenes) == 1 else f"{len(scenes)} scenes") if scenes else ""
    lines.append(", ".join(part for part in (where, f"{facts.chips:,} chips{area}") if part))
    return (f"{title}, {when}" if when else title), lines


def folium_map(predictions: pd.DataFrame | None, classes: ClassScheme, path: PathLike, *,
               grid: LandUseGrid | None = None, basemap: str | None = "OpenStreetMap",
               title: str = "Land use", opacity: float = 0.7, max_popup_chips: int = 5000,
               overlay_max_pixels: int = 2048, imagery: bool = True, imagery_max_pixels: int = 1536,
               facts: AreaFacts | None = None, imagery_layers: Sequence[ImageLayer | None] | None = None) -> Path:
    """Write an interactive, self-contained folium map: the scored imagery, the class layer, chip popups,
    a title, a legend and an opacity slider.

    The class layer is the land-use raster as one image overlay (a PNG inside the page), so the page stays
    small whatever the chip count. Under it lie the scored imagery in natural colour and in colour infrared
    (when the rasters have a fourth band), read from the rasters in the ``source`` column at page resolution
    (their overviews) and inlined, so the page shows what was classified with no basemap and no network.
    Chip footprints with popups (class, probabilities, reference label) are added as another layer only up to
    ``max_popup_chips`` chips, past which their GeoJSON would make the page heavy; the legend says so. The
    title names the date(s), the model and the area (scenes, chips, km²); the legend has an entry for what is
    not scored. Leaflet's JS and CSS are inlined, so with no network only the basemap tiles are missing.

    Args:
        predictions: chip predictions (see :func:`predictions_to_grid`), a GeoDataFrame with footprints; or
            ``None`` for an area whose table is not read (``grid`` and ``facts`` then say what to show, and
            there are no chip popups).
        classes: the class scheme.
        path: output ``.html`` file, written atomically.
        grid: the land-use grid to show (e.g. smoothed); built from ``predictions`` when None.
        basemap: a folium/xyzservices tile provider name or a tile URL template; None for no basemap.
        title: the page's title (the date is appended) and the class layer's and legend's name.
        opacity: class layer opacity.
        max_popup_chips: largest chip count that gets a clickable chip layer.
        overlay_max_pixels: longest side of the class overlay image.
        imagery: add the imagery layers (when the ``source`` rasters can be read).
        imagery_max_pixels: longest side of each imagery image.
        facts: the title's and imagery's facts of the area (default: read from ``predictions``).
        imagery_layers: the imagery layers already read (:func:`page_imagery` of the same sources; e.g. on a
            thread while the other products were written): the rasters are not read again.

    Returns:
        ``path`` as a Path.
    """
    if predictions is None:
        if grid is None or facts is None:
            raise InputError("a land-use page without its predictions table needs the map grid and the area's facts")
    elif "pred" not in predictions.columns:
        raise InputError("predictions lack the 'pred' column; expected the columns of predictions.parquet")
    if facts is None:
        facts = AreaFacts.of(predictions)
    if grid is None:
        grid = predictions_to_grid(predictions, classes)
    url, bounds = overlay_image(grid, classes, overlay_max_pixels)
    page = WebMap(bounds, basemap)
    notes = []
    if imagery and facts.sources:
        sources = list(facts.sources)
        _, missing = page.add_imagery(sources, name="Imagery (natural colour)", max_pixels=imagery_max_pixels,
                                      hidden={"Imagery (colour infrared)": CIR_BANDS}, read=imagery_layers)
        if missing:
            notes.append(f"{len(missing)} of {len(sources)} rasters could not be read for the imagery layer.")
    layer = page.add_image(url, bounds, name=title, opacity=opacity)
    count = facts.chips
    if predictions is not None and count <= max_popup_chips:
        data, fields, aliases = _chip_features(predictions, classes)
        # the page's properties are escaped (webmap.WebMap.add_features), so are the colour keys
        colors = {escape(name): hex_color(classes.color(name)) for name in classes.names}
        page.add_features(data, name="Chips (click for details)", fields=fields, aliases=aliases,
                          style=lambda feature: {"color": colors[feature["properties"]["land_use_class"]],
                                                 "weight": 1, "opacity": 0.6, "fillOpacity": 0.0},
                          highlight=lambda feature: {"weight": 3, "opacity": 1.0})
    elif count > max_popup_chips:
        notes.append(f"{count} chips: chip popups are left out past {max_popup_chips}.")
    page.add_layer_control()
    heading, lines = map_title(facts, title)
    page.add_title(heading, lines)
    page.add_legend(classes, title, " ".join(notes) or None, nodata="not scored (no chip, or no data)")
    page.add_opacity_control({title: [layer]})
    return page.save(path)


def page_imagery(sources: Sequence[str], max_pixels: int = 1536,
                 stand_ins: Mapping[str, Sequence[str]] | None = None) -> list[ImageLayer | None]:
    """The imagery layers :func:`folium_map` draws of ``sources`` (natural colour, colour infrared), read
    (some of them from ``stand_ins``, see :func:`geoclf.webmap.imagery_images`)."""
    return imagery_images(sources, band_sets=(RGB_BANDS, CIR_BANDS), max_pixels=max_pixels, stand_ins=stand_ins)


# --------------------------------------------------------------------------------------------------------------
# static PNG


def static_png(grid: LandUseGrid, classes: ClassScheme, path: PathLike, *, title: str = "Land use",
               dpi: int = 150) -> Path:
    """Draw the land-use map to a PNG with a legend and axes in CRS units.

    Args:
        grid: the land-use grid.
        classes: the class scheme (legend order and colours).
        path: output ``.png``, written atomically.
        title: figure title; the CRS is appended.
        dpi: output resolution.

    Returns:
        ``path`` as a Path.
    """
    # matplotlib (a second to import) only when a picture is drawn: Dask workers import this module's
    # callers (geoclf.score) and never draw.
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    # Figure, not pyplot: no global state and no GUI backend, safe in workers and tests.
    rgba = color_table(classes)[np.asarray(grid.codes, dtype=np.uint8)]
    left, bottom, right, top = grid.bounds
    aspect = (top - bottom) / max(right - left, 1e-9)
    figure = Figure(figsize=(8.0, float(np.clip(6.0 * aspect + 1.5, 3.0, 12.0))), layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(rgba, extent=(left, right, bottom, top), interpolation="nearest")
    axes.set_facecolor("#f0f0f0")
    axes.ticklabel_format(style="plain", useOffset=False)
    axes.set_xlabel(f"easting ({grid.crs.linear_units})")
    axes.set_ylabel(f"northing ({grid.crs.linear_units})")
    axes.set_title(f"{title} ({grid.crs.to_string()})")
    handles = [Patch(facecolor=np.array(classes.color(name)) / 255, edgecolor="#555", label=name)
               for name in classes.names]
    figure.legend(handles=handles, loc="outside right upper", frameon=False, title="class")
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, format="png")
    return Path(path)


# --------------------------------------------------------------------------------------------------------------
# accuracy


def accuracy_against_reference(predictions: pd.DataFrame, classes: ClassScheme, *,
                               label_column: str = "label") -> dict[str, Any]:
    """Overall and per-class accuracy of the predictions against reference labels (e.g. NLCD-derived).

    Chips without a reference label are left out. The scores are :func:`geoclf.metrics.evaluate`'s, so a map
    and a validation run report the same numbers the same way.

    Args:
        predictions: chip predictions with ``pred`` and ``label_column``.
        classes: the class scheme (row/column order of the confusion matrix).
        label_column: the column holding each chip's reference class.

    Returns:
        The JSON-ready evaluation (:func:`geoclf.metrics.evaluation_to_json`): ``n``, ``accuracy``,
        ``balanced_accuracy``, ``kappa``, ``accuracy_3class``, ``per_class`` (``{class: {"precision",
        "recall", "f1", "support"}}``) and ``confusion_matrix`` (``{"classes", "counts"}``, reference classes
        in rows, predictions in columns).
    """
    if label_column not in predictions.columns or "pred" not in predictions.columns:
        raise InputError(f"predictions need 'pred' and {label_column!r} columns to be compared with a reference")
    frame = predictions[predictions[label_column].notna() & predictions["pred"].notna()]
    if frame.empty:
        raise InputError(f"no chip has both a prediction and a reference {label_column!r}")
    return evaluation_to_json(evaluate(frame[label_column].astype(str).to_numpy(),
                                       frame["pred"].astype(str).to_numpy(), classes.names))


# --------------------------------------------------------------------------------------------------------------
# all outputs


def write_maps(predictions: pd.DataFrame, classes: ClassScheme, out_dir: PathLike, *, crs: Any = None,
               smooth: bool | int = False, probabilities: bool = False, html_map: bool = True,
               label_column: str = "label") -> dict[str, Path]:
    """Write every map product of a scored area into ``out_dir``.

    ``landuse.tif`` (COG) with its styles (``landuse.tif.aux.xml``, ``landuse.qml``, ``landuse.sld``: class names
    for GDAL, QGIS and SLD clients), ``landuse_probs.tif`` (if ``probabilities``), ``landuse.parquet`` and
    ``landuse.geojson`` (class polygons), ``map.html`` (if ``html_map``), ``map.png`` and, when the
    predictions carry reference labels, ``accuracy.json`` (the names of :class:`geoclf.landuse.ScoreOutput`,
    whose attribute names are the keys returned).

    Args:
        predictions: chip predictions (``predictions.parquet`` read with geopandas).
        classes: the class scheme.
        out_dir: output directory, created if needed.
        crs: map CRS (default: the chips' native CRS, or EPSG:5070 across zones).
        smooth: width of the plurality filter applied to the class raster (polygons, HTML and PNG follow it):
            an odd number of pixels, 1 or ``False`` for none, ``True`` for 3 (see
            :func:`geoclf.landuse.smoothing_window`).
        probabilities: also write the per-class probability COG.
        html_map: write the interactive map.
        label_column: reference label column used for ``accuracy.json``.

    Returns:
        Output name -> path.
    """
    output = ScoreOutput.at(out_dir)
    grid = predictions_to_grid(predictions, classes, crs=crs)
    window = smoothing_window(smooth)
    if window > 1:
        grid = grid._replace(codes=majority_filter(grid.codes, window))
    written = {"landuse": write_landuse_cog(output.landuse, grid, classes)}
    # the styles write_landuse_cog puts beside the COG, so that QGIS and GDAL name the classes
    written.update(categories=output.categories, qml=output.qml, sld=output.sld)
    if probabilities:
        written["probabilities"] = write_probability_cog(output.probabilities, grid, classes)
    polygons = dissolve_classes(grid, classes)
    written["polygons"] = write_vector(polygons, output.polygons)
    written["geojson"] = write_vector(polygons, output.geojson)
    if html_map:
        written["html"] = folium_map(predictions, classes, output.html, grid=grid)
    written["png"] = static_png(grid, classes, output.png)
    if label_column in predictions.columns and predictions[label_column].notna().any():
        report = accuracy_against_reference(predictions, classes, label_column=label_column)
        with atomic_path(output.accuracy) as temporary:
            temporary.write_text(json.dumps(report, indent=2), encoding="utf-8")
        written["accuracy"] = output.accuracy
    return written


#: Largest map, in pixels (chips), that is polygonized into ``landuse.parquet``/``landuse.geojson`` (the
#: single-file size of the predictions, :data:`geoclf.score.SINGLE_FILE_CHIPS`): the client holds every piece of
#: the map as a polygon while it dissolves them, so its memory grows with the area. Measured on a scored
#: scene's map tiled to 88,209 and 980,100 pixels: +135 MB and 54 s, +1,253 MB and 761 s (polygons and both
#: files; load ~10). Past it the COG is the map, and ``gdal_polygonize`` reads it in blocks.
POLYGON_MAX_PIXELS = 250_000


#: Read the page's imagery on a thread while :func:`write_mosaic_maps` writes the other products; ``False``
#: reads it in turn (what ``benchmarks/score_fixed_costs.py`` compares against).
OVERLAP_IMAGERY = True


class PageImagery:
    """The page's imagery layers (:func:`page_imagery`) read on a thread of their own from the moment a run
    knows its rasters, while its partitions are computed: the client waits on its workers meanwhile (or, in
    this process, the reads fill the cores the tasks leave idle), and a raster without overviews is decoded
    whole (seconds for a quarter-quad, minutes for a county's plain GeoTIFFs).

    The thread is a daemon: a run that fails or is interrupted exits without waiting for it.

    Args:
        sources: the rasters the run will read, as :class:`AreaFacts` lists them (sorted).
    """

    def __init__(self, sources: Sequence[str]) -> None:
        self.sources = tuple(sources)
        self._layers: list[ImageLayer | None] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="geoclf-imagery", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            self._layers = page_imagery(list(self.sources))
        except BaseException as error:  # re-raised in the caller of layers()
            self._error = error

    def layers(self, sources: Sequence[str]) -> list[ImageLayer | None]:
        """The layers of ``sources``: those read on the thread when they are its sources (waiting for it),
        else read now (the run kept chips of fewer rasters than it planned)."""
        if tuple(sources) != self.sources:
            return page_imagery(list(sources))
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._layers is not None
        return self._layers


def early_imagery(sources: Sequence[str], html_map: bool = True) -> PageImagery | None:
    """:class:`PageImagery` of ``sources`` started now, for a run whose page will show them (``None`` without a
    page, without sources, or with :data:`OVERLAP_IMAGERY` off)."""
    return PageImagery(sources) if html_map and OVERLAP_IMAGERY and sources else None


def write_mosaic_maps(output: ScoreOutput, tiles: Sequence[MapTile], classes: ClassScheme, facts: AreaFacts, *,
                      predictions: Callable[[], gpd.GeoDataFrame] | None = None, smooth: bool | int = False,
                      probabilities: bool = False, html_map: bool = True, imagery: PageImagery | None = None,
                      stand_ins: Mapping[str, Sequence[str]] | None = None) -> dict[str, Path]:
    """Write the map products of a score output from its blocks' map tiles.

    The products of :func:`write_maps`, without a predictions table in memory: ``landuse.tif`` and
    ``landuse_probs.tif`` are painted from the tiles strip by strip and copied to COGs
    (:func:`geoclf.landuse.mosaic.tiles_to_cog`: the rasters ``landuse.vrt`` and ``landuse_probs.vrt`` show);
    the class polygons are drawn from the map up to :data:`POLYGON_MAX_PIXELS` pixels; the PNG and the page's
    overlay from the map read at most 2,048 pixels a side (from its overviews).

    Args:
        output: the score output.
        tiles: its map tiles (paths relative to the output directory), in the plan's order: where tiles
            overlap, the earlier one keeps its pixels.
        classes: the class scheme.
        facts: what the page says of the area (chips, km², dates, models, scenes, rasters).
        predictions: reads the predictions table, for the page's chip popups (small areas only: ``None`` leaves
            the popups out).
        smooth, probabilities, html_map: as :func:`write_maps`.
        imagery: the page's imagery, being read since the run began (:class:`PageImagery`); ``None``: read
            here, on a thread while the other products are written.
        stand_ins: previews of rasters written by the blocks that decoded them (``imagery_images``'s
            ``stand_ins``), read here in the rasters' place.

    Returns:
        Output name -> path, the keys of :func:`write_maps`.
    """
    # the page's imagery needs only the rasters: read on a thread (GDAL decodes and warps without the GIL)
    # while this one writes the COGs, polygons and PNG; a raster without overviews is decoded whole. The
    # drawing libraries (~1 s of imports) load on another while the COGs are written.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="geoclf-maps") as pool:
        overlap = OVERLAP_IMAGERY and html_map and facts.sources
        if imagery is not None and html_map and facts.sources:
            layers = pool.submit(imagery.layers, facts.sources)
        else:
            layers = pool.submit(page_imagery, list(facts.sources), stand_ins=stand_ins) if overlap else None
        if OVERLAP_IMAGERY:
            pool.submit(_import_drawing, html_map)
        try:
            written = {"landuse": tiles_to_cog(output.landuse, tiles, classes, directory=output.directory,
                                               smooth=smooth)}
            written.update(categories=output.categories, qml=output.qml, sld=output.sld)
            if probabilities:
                written["probabilities"] = tiles_to_cog(output.probabilities, tiles, classes,
                                                        directory=output.directory, probabilities=True)
            with rasterio.open(output.landuse) as dataset:
                pixels = dataset.width * dataset.height
            if pixels <= POLYGON_MAX_PIXELS:
                polygons = dissolve_classes(read_map(output.landuse), classes)
                written["polygons"] = write_vector(polygons, output.polygons)
                written["geojson"] = write_vector(polygons, output.geojson)
            picture = read_map(output.landuse, max_pixels=2048)
            written["png"] = static_png(picture, classes, output.png)
            if html_map:
                table = predictions() if predictions is not None else None
                written["html"] = folium_map(table, classes, output.html, grid=picture, facts=facts,
                                             imagery_layers=None if layers is None else layers.result())
        finally:
            if layers is not None:
                layers.cancel()
    return {key: written[key] for key in _PRODUCT_ORDER if key in written}


def _import_drawing(html_map: bool) -> None:
    """Import what the PNG (matplotlib) and the page (folium) are drawn with, ahead of their drawing."""
    import matplotlib.figure
    import matplotlib.patches  # noqa: F401

    if html_map:
        import folium  # noqa: F401


#: The order write_maps returns its products in (what the CLI lists)
_PRODUCT_ORDER = ("landuse", "categories", "qml", "sld", "probabilities", "polygons", "geojson", "html", "png",
                  "accuracy")
