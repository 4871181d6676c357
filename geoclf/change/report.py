"""What people read of a change analysis: the area chart, the change map page, image pairs, ``report.html``."""

from __future__ import annotations

import html
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.windows import from_bounds

from geoclf.area import AreaEstimate
from geoclf.change.maps import change_grids, display_legend
from geoclf.change.pairs import date_label, rank_changes
from geoclf.htmlpage import html_table, png_img, write_page
from geoclf.maps import static_png
from geoclf.webmap import WebMap, overlay_image
from tiling.classes import ClassScheme
from tiling.io import atomic_path

PathLike = str | os.PathLike[str]


def area_bar_chart(areas: pd.DataFrame, path: PathLike, labels: tuple[str, str] = ("before", "after")) -> Path:
    """Bar chart of area (km²) per class, one bar per date, from :func:`geoclf.change.class_areas`."""
    figure = Figure(figsize=(8, 4.2), layout="constrained")
    axes = figure.add_subplot()
    x = np.arange(len(areas))
    axes.bar(x - 0.2, areas["before_km2"], width=0.4, label=labels[0], color="#9aa5b1")
    axes.bar(x + 0.2, areas["after_km2"], width=0.4, label=labels[1], color="#c0392b")
    axes.set_xticks(x, [str(c) for c in areas.index], rotation=20, ha="right")
    axes.set_ylabel("area (km²)")
    axes.set_title("Mapped area by class and year")
    axes.legend(frameon=False)
    axes.grid(axis="y", alpha=0.3)
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, format="png")
    return path


def change_png(aligned: pd.DataFrame, scheme: ClassScheme, path: PathLike) -> Path:
    """Write ``change_map.png``: the static change map (no change, or the class the land became)."""
    before, after = date_label(aligned, "before"), date_label(aligned, "after")
    grid = change_grids(aligned, scheme)["display"]
    return static_png(grid, display_legend(scheme), path,  # type: ignore[arg-type]
                      title=f"Change {before} → {after}")


def change_html(aligned: gpd.GeoDataFrame, scheme: ClassScheme, path: PathLike, ranked: pd.DataFrame | None = None,
                max_popup_chips: int = 2000, overlay_max_pixels: int = 2048) -> Path:
    """Write an interactive folium map: both dates' land use, the change layer and the ranked changed chips.

    Layers are switched in the layer control; changed chips (up to ``max_popup_chips``, likeliest first)
    open a popup with the transition, its rank and confidence. Leaflet is inlined (as in the land-use
    map, :class:`geoclf.webmap.WebMap`), so only the basemap needs a network; names from the data are escaped.
    """
    grids = change_grids(aligned, scheme)
    labels = (date_label(aligned, "before"), date_label(aligned, "after"))
    overlays = [(f"Land use {labels[0]}", grids["before"], scheme, False),
                (f"Land use {labels[1]}", grids["after"], scheme, False),
                (f"Change {labels[0]} → {labels[1]}", grids["display"], display_legend(scheme), True)]
    images = [(name, *overlay_image(grid, legend, overlay_max_pixels), show) for name, grid, legend, show in overlays]
    page = WebMap(images[0][2], "OpenStreetMap")
    for name, url, image_bounds, show in images:
        page.add_image(url, image_bounds, name=name, opacity=0.75, show=show)
    ranked = rank_changes(aligned, scheme.names) if ranked is None else ranked
    if len(ranked):
        top = ranked.head(max_popup_chips)
        props = pd.DataFrame({"rank": top["rank"].to_numpy(), "transition": top["transition"].to_numpy(),
                              "confidence": np.round(top["confidence"].to_numpy(dtype=float), 3),
                              "p_before": np.round(top["prob_before"].to_numpy(dtype=float), 3),
                              "p_after": np.round(top["prob_after"].to_numpy(dtype=float), 3)})
        for column in ("chip_id_before", "chip_id_after"):
            if column in top.columns:
                props[column] = top[column].astype(str).to_numpy()
        chips = gpd.GeoDataFrame(props, geometry=top.geometry.to_crs(4326).to_numpy(), crs=4326)
        page.add_features(chips, name=f"Changed chips (top {len(top)}, click for details)",
                          fields=list(props.columns),
                          style=lambda feature: {"color": "#000000", "weight": 1, "fillOpacity": 0.0},
                          highlight=lambda feature: {"weight": 3})
    page.add_layer_control()
    page.add_legend(display_legend(scheme), "Change")
    return page.save(path)


def write_image_pairs(ranked: gpd.GeoDataFrame, out_dir: PathLike, top: int = 20, size: int = 160) -> list[Path]:
    """Before/after RGB image pairs of the ``top`` ranked changes, for reviewers.

    Each pair reads the after-chip's footprint from both dates' source rasters (``source_before``,
    ``source_after``), so the two images show the same ground. Chips whose rasters cannot be read are
    skipped.

    Returns:
        The PNG files written, ``<rank>_<from>_to_<to>.png``.
    """
    out = Path(out_dir)
    written: list[Path] = []
    if not {"source_before", "source_after"} <= set(ranked.columns) or not len(ranked):
        return written
    out.mkdir(parents=True, exist_ok=True)
    for _, row in ranked.head(top).iterrows():
        footprint = gpd.GeoSeries([row.geometry], crs=ranked.crs)
        tiles = [_read_footprint(row[f"source_{which}"], footprint, size) for which in ("before", "after")]
        if any(t is None for t in tiles):
            continue
        canvas = Image.new("RGB", (2 * size + 6, size + 18), "white")
        for k, (tile, which) in enumerate(zip(tiles, ("before", "after"), strict=True)):
            canvas.paste(Image.fromarray(tile), (k * (size + 6), 18))
            ImageDraw.Draw(canvas).text((k * (size + 6) + 2, 3), f"{which}: {row[f'class_{which}']}", fill="black")
        name = f"{int(row['rank']):04d}_{row['class_before']}_to_{row['class_after']}.png".replace(" ", "_")
        with atomic_path(out / name) as temporary:
            canvas.save(temporary, format="PNG")
        written.append(out / name)
    return written


def _read_footprint(source: object, footprint: gpd.GeoSeries, size: int) -> np.ndarray | None:
    """RGB of a footprint from a raster, resampled to ``size`` pixels, or None if it cannot be read."""
    if not isinstance(source, str) or not source:
        return None
    try:
        with rasterio.open(source) as dataset:
            bounds = footprint.to_crs(dataset.crs).total_bounds
            window = from_bounds(*bounds, transform=dataset.transform)
            bands = [1, 2, 3] if dataset.count >= 3 else [1, 1, 1]
            data = dataset.read(bands, window=window, out_shape=(3, size, size), boundless=True, fill_value=0,
                                resampling=Resampling.bilinear)
    except (RasterioError, OSError, ValueError):
        return None
    return np.ascontiguousarray(np.moveaxis(data, 0, -1).astype(np.uint8))


def write_report(path: PathLike, *, info: dict, per_class: pd.DataFrame, matrix: pd.DataFrame,
                 urban: pd.DataFrame | None, ranked: pd.DataFrame, zones: pd.DataFrame | None,
                 estimates: dict[str, AreaEstimate], bar_chart: Path, change_png: Path,
                 html_map: Path | None, top: int = 25) -> Path:
    """Write ``report.html``: one self-contained page (figures inlined, the map embedded) of the analysis."""
    before, after = info["dates"]
    parts = [f"<h1>Land-use change {html.escape(before)} → {html.escape(after)}</h1>",
             "<p>", f"Before: <code>{html.escape(info['before'])}</code><br>",
             f"After: <code>{html.escape(info['after'])}</code><br>",
             f"Compared area: <b>{info['compared_km2']:,.2f} km²</b> in {info['paired']} chip pairs "
             f"({info['paired_by_cell']} on the same grid cell, {info['paired'] - info['paired_by_cell']} by "
             f"footprint overlap ≥ {info['min_overlap']:.0%}); unpaired chips: {info['unpaired_after']} after, "
             f"{info['unpaired_before']} before.<br>",
             f"Changed: <b>{info['changed_km2']:,.2f} km²</b> ({info['changed_chips']} chips)."
             + (" Each date was smoothed with a 3×3 plurality filter before comparing." if info["smoothed"] else ""),
             "</p>",
             '<p class="note">Areas counted from the maps inherit their errors, and change maps doubly so (an error '
             "on either date makes a transition). Error-adjusted areas with confidence intervals need a labelled "
             "stratified sample (Olofsson et al. 2014); see the <i>Error-adjusted areas</i> section.</p>",
             "<h2>Area by class and year</h2>", png_img(bar_chart, "area by class and year"), html_table(per_class),
             "<h2>Transition matrix (km², rows: before, columns: after)</h2>", html_table(matrix)]
    if urban is not None:
        parts += ["<h2>Urbanization</h2>", html_table(urban, 2)]
    parts += [f"<h2>Likeliest changes (top {min(top, len(ranked))} of {len(ranked)})</h2>",
              "<p>Confidence is the product of both dates' probabilities of their classes.</p>"]
    if len(ranked):
        shown = [c for c in ("rank", "transition", "confidence", "prob_before", "prob_after", "chip_id_before",
                             "chip_id_after", "area_km2") if c in ranked.columns]
        parts.append(html_table(pd.DataFrame(ranked[shown].head(top)).set_index("rank")))
    if zones is not None:
        parts += ["<h2>Zones</h2>", html_table(zones)]
    parts.append("<h2>Error-adjusted areas</h2>")
    if estimates:
        for key, est in estimates.items():
            title = "change classes" if key == "change" else f"land use, {before if key == 'before' else after}"
            parts += [f"<h3>{html.escape(title)}</h3>",
                      f"<p>Overall accuracy {est.overall['accuracy']:.3f} ± {est.overall['ci']:.3f} "
                      f"(95% CI, n = {int(est.overall['n'])}). Areas in {html.escape(est.unit)}.</p>",
                      html_table(est.summary())]
    else:
        parts.append("<p>No reference sample given. Run with <code>--sample-size</code> to draw chips to label, "
                     "then with <code>--reference</code>.</p>")
    parts += ["<h2>Map</h2>", png_img(change_png, "change map")]
    if html_map is not None:
        page = html.escape(Path(html_map).read_text(encoding="utf-8"), quote=True)
        parts.append(f'<iframe title="interactive change map" srcdoc="{page}"></iframe>')
    return write_page(path, f"Land-use change {before} → {after}", parts)
