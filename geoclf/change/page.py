"""The interactive change map ``change.html``: two dates' imagery and land use under a swipe, and the change.

What a reviewer does with a change map is look at a changed chip on both dates. The page holds, for each
date, its imagery (read from the scored rasters' overviews, as on the land-use map) and its land use, in one
map pane per date; a swipe divider shows the earlier date left of it and the later one right of it. Above both
lies the change layer: every from -> to transition present in its own colour (:func:`change_display`),
unchanged chips transparent, so the imagery and land use show through; above that the ranked changed chips
with popups. Another page (the report) zooms the map to a chip with a message (:meth:`WebMap.add_zoom_target
<geoclf.webmap.WebMap.add_zoom_target>`).
"""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from geoclf.change.maps import NO_CHANGE, TransitionLegend, change_display, change_grids
from geoclf.change.pairs import ARROW, date_label, rank_changes
from geoclf.landuse import LandUseGrid
from geoclf.webmap import CIR_BANDS, WebMap, overlay_image
from tiling.classes import ClassScheme

PathLike = str | os.PathLike[str]

#: How transitions are written for people (the data's labels use :data:`geoclf.change.ARROW` without spaces).
SPACED_ARROW = " → "


def transition_label(name: str) -> str:
    """``"Forest→Developed"`` as people read it: ``"Forest → Developed"``."""
    return name.replace(ARROW, SPACED_ARROW)


def change_html(aligned: gpd.GeoDataFrame, scheme: ClassScheme, path: PathLike, ranked: pd.DataFrame | None = None,
                max_popup_chips: int = 2000, overlay_max_pixels: int = 2048, *,
                basemap: str | None = "OpenStreetMap", imagery: bool = True, imagery_max_pixels: int = 1280) -> Path:
    """Write ``change.html``: both dates' imagery and land use under a swipe, the change layer, the changed chips.

    Layers are switched in the layer list: per date its imagery in natural colour (and colour infrared, off at
    first) and its land use, in that date's swipe pane; the change layer (one colour per from -> to transition,
    named in the legend with its km²); the ranked changed chips (up to ``max_popup_chips``, likeliest first)
    with a popup of the transition, rank and confidence. Opacity sliders set the land use and the change layer.
    Leaflet, the layers and the swipe are inline (:class:`geoclf.webmap.WebMap`), so only the basemap needs a
    network; names from the data are escaped.

    Args:
        aligned: pairs from :func:`geoclf.change.align_dates` (``source_before``/``source_after`` give the
            imagery).
        scheme: the class scheme.
        path: output ``.html``.
        ranked: :func:`geoclf.change.rank_changes` of ``aligned`` (computed when None).
        max_popup_chips: most changed chips drawn with popups.
        overlay_max_pixels: longest side of each class image.
        basemap: a tile provider name or URL template; None for none.
        imagery: add the imagery layers (when the rasters can be read).
        imagery_max_pixels: longest side of each imagery image.

    Returns:
        ``path`` as a Path.
    """
    grids = change_grids(aligned, scheme)
    display = change_display(aligned, scheme)
    sources = {which: ([str(s) for s in aligned[f"source_{which}"].dropna().unique()]
                       if f"source_{which}" in aligned else []) for which in ("before", "after")}
    models = sorted({str(m) for c in ("model_before", "model_after") if c in aligned for m in aligned[c].dropna()})
    return write_change_page(path, scheme, display, {"before": grids["before"], "after": grids["after"]},
                             rank_changes(aligned, scheme.names) if ranked is None else ranked,
                             labels=(date_label(aligned, "before"), date_label(aligned, "after")), sources=sources,
                             compared_km2=float(aligned["area_km2"].sum()), models=models,
                             max_popup_chips=max_popup_chips, overlay_max_pixels=overlay_max_pixels,
                             basemap=basemap, imagery=imagery, imagery_max_pixels=imagery_max_pixels)


def write_change_page(path: PathLike, scheme: ClassScheme,
                      display: tuple[LandUseGrid, TransitionLegend, pd.Series], classes: dict[str, LandUseGrid],
                      ranked: pd.DataFrame, *, labels: tuple[str, str], sources: dict[str, list[str]],
                      compared_km2: float, models: list[str], max_popup_chips: int = 2000,
                      overlay_max_pixels: int = 2048, basemap: str | None = "OpenStreetMap", imagery: bool = True,
                      imagery_max_pixels: int = 1280) -> Path:
    """:func:`change_html` from what the page shows rather than the pairs: a change run over a large area
    passes the maps it read back from ``change.tif`` and the figures it added up partition by partition.

    Args:
        path: output ``.html``.
        scheme: the class scheme.
        display: :func:`geoclf.change.maps.change_display` (or ``transition_display``): grid, legend, km².
        classes: the ``before`` and ``after`` class grids.
        ranked: the ranked changed chips (:func:`geoclf.change.rank_changes`).
        labels: the two dates' names.
        sources: per date (``before``, ``after``) the rasters of its imagery.
        compared_km2: the compared area.
        models: the models' names.
        max_popup_chips, overlay_max_pixels, basemap, imagery, imagery_max_pixels: as :func:`change_html`.
    """
    display, legend, km2 = display
    url, bounds = overlay_image(display, legend, overlay_max_pixels, transparent=[1])
    page = WebMap(bounds, basemap)
    panes = (page.add_pane("geoclf-before", 300), page.add_pane("geoclf-after", 300))
    land_use, missing = [], 0
    for which, label, pane in zip(("before", "after"), labels, panes, strict=True):
        shown_sources = sources.get(which, []) if imagery else []
        if shown_sources:
            _, unread = page.add_imagery(shown_sources, name=f"Imagery {label}", pane=pane,
                                         max_pixels=imagery_max_pixels,
                                         hidden={f"Imagery {label} (colour infrared)": CIR_BANDS})
            missing += len(unread)
        class_url, class_bounds = overlay_image(classes[which], scheme, overlay_max_pixels)
        land_use.append(page.add_image(class_url, class_bounds, name=f"Land use {label}", opacity=0.55,
                                       pane=pane))
    change = page.add_image(url, bounds, name=f"Change {labels[0]}{SPACED_ARROW}{labels[1]}", opacity=0.9)
    if len(ranked):
        top = ranked.head(max_popup_chips)
        props = pd.DataFrame({"rank": top["rank"].to_numpy(),
                              "transition": [transition_label(t) for t in top["transition"]],
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
    page.add_swipe(panes[0], panes[1], labels)
    compared = compared_km2
    page.add_title(f"Land-use change {labels[0]}{SPACED_ARROW}{labels[1]}",
                   [("model " if len(models) == 1 else "models ") + ", ".join(models) if models else "",
                    f"{compared:,.2f} km² compared, {float(km2.sum()):,.2f} km² changed in {len(ranked):,} chips"])
    # the legend names each transition as people write it, with its area
    shown = TransitionLegend([f"{transition_label(n)} ({km2[n]:,.2f} km²)" for n in legend.names[1:]],
                             [legend.color(n) for n in legend.names[1:]])
    note = (f"{missing} raster(s) could not be read for the imagery layers." if missing else None)
    page.add_legend(shown, f"Change {labels[0]}{SPACED_ARROW}{labels[1]}", note,
                    nodata=f"{NO_CHANGE.lower()}, or not compared")
    page.add_legend(scheme, "Land use (each date)")
    page.add_opacity_control({"Land use": land_use, "Change": [change]})
    page.add_zoom_target()
    return page.save(path)
