"""What people read of a change analysis: the area chart, the static change map, image pairs, ``report.html``.

The interactive map ``change.html`` is :mod:`geoclf.change.page` (:func:`change_html`, importable from here too).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
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
from geoclf.change.maps import TransitionLegend, change_display
from geoclf.change.page import SPACED_ARROW, change_html, transition_label
from geoclf.change.pairs import date_label
from geoclf.htmlpage import html_table, png_img, relative_path, write_page
from geoclf.landuse import LandUseGrid
from geoclf.maps import static_png
from tiling.classes import ClassScheme
from tiling.io import atomic_path

PathLike = str | os.PathLike[str]


#: Candidate colours of the two dates in charts (before, after): the pair furthest from every class colour is
#: used, so that a date is never read as a class.
DATE_COLORS = (((158, 202, 225), (33, 102, 172)), ((203, 201, 226), (84, 39, 143)),
               ((241, 182, 218), (197, 27, 125)), ((253, 174, 97), (166, 54, 3)),
               ((189, 189, 189), (37, 37, 37)))


def date_colors(scheme: ClassScheme | None = None) -> tuple[str, str]:
    """The colours of the before and after date in charts: of :data:`DATE_COLORS`, the pair whose nearer
    colour is furthest (in RGB) from the scheme's class colours."""
    if scheme is None:
        scheme = ClassScheme.default()
    classes = np.array([scheme.color(name) for name in scheme.names], dtype=float)

    def distance(pair: tuple[tuple[int, int, int], ...]) -> float:
        return float(min(np.sqrt(((classes - np.array(c, dtype=float)) ** 2).sum(axis=1)).min() for c in pair))

    best = max(DATE_COLORS, key=distance)
    return tuple("#{:02x}{:02x}{:02x}".format(*c) for c in best)  # type: ignore[return-value]


def area_bar_chart(areas: pd.DataFrame, path: PathLike, labels: tuple[str, str] = ("before", "after"),
                   scheme: ClassScheme | None = None) -> Path:
    """Bar chart of area (km²) per class, one bar per date, from :func:`geoclf.change.class_areas`.

    The dates are drawn in colours no class has (:func:`date_colors`): a red "after" bar beside Developed
    would read as Developed.
    """
    before_color, after_color = date_colors(scheme)
    figure = Figure(figsize=(8, 4.2), layout="constrained")
    axes = figure.add_subplot()
    x = np.arange(len(areas))
    axes.bar(x - 0.2, areas["before_km2"], width=0.4, label=labels[0], color=before_color)
    axes.bar(x + 0.2, areas["after_km2"], width=0.4, label=labels[1], color=after_color)
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
    """Write ``change_map.png``: the static change map, "No change" and each from -> to transition present in
    its own colour (:func:`geoclf.change.maps.change_display`)."""
    labels = (date_label(aligned, "before"), date_label(aligned, "after"))
    return display_png(change_display(aligned, scheme), labels, path)


def display_png(display: tuple[LandUseGrid, TransitionLegend, pd.Series], labels: tuple[str, str],
                path: PathLike) -> Path:
    """:func:`change_png` from the change map (:func:`geoclf.change.maps.change_display` or, from
    ``change.tif``, ``transition_display``) and the two dates' names."""
    grid, legend, _ = display
    shown = TransitionLegend([transition_label(n) for n in legend.names], [legend.color(n) for n in legend.names])
    return static_png(grid, shown, path, title=f"Change {labels[0]}{SPACED_ARROW}{labels[1]}")  # type: ignore[arg-type]


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


def _pairs_by_rank(pairs: Sequence[Path]) -> dict[int, Path]:
    """The image pair files of :func:`write_image_pairs` by the rank their name starts with."""
    found = {}
    for file in pairs:
        head = Path(file).name.split("_", 1)[0]
        if head.isdigit():
            found[int(head)] = Path(file)
    return found


def _chip_boxes(ranked: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each chip's centre ``(lat, lon)`` and box ``(south, west, north, east)`` in degrees."""
    geographic = ranked.geometry.to_crs(4326)
    centres = ranked.geometry.centroid.to_crs(4326)
    west, south, east, north = geographic.bounds.to_numpy().T
    return np.column_stack([centres.y, centres.x]), np.column_stack([south, west, north, east])


def _zoom_link(box: Sequence[float], text: str) -> str:
    """A link that zooms the embedded map to a lat/lon box (and opens ``change.html`` there in a new page when the
    report is opened without its map)."""
    south, west, north, east = (round(float(v), 6) for v in box)
    target = json.dumps([[south, west], [north, east]])
    return (f'<a class="geoclf-zoom" href="change.html#zoom={south},{west},{north},{east}" target="_blank" '
            f"data-box='{html.escape(target)}'>{html.escape(text)}</a>")


def _ranked_table(ranked: gpd.GeoDataFrame, top: int, pairs: dict[int, Path], linked: bool) -> str:
    """The likeliest changes as an HTML table with each chip's place and a link that zooms the map to it."""
    shown = ranked.head(top)
    centres, boxes = _chip_boxes(shown)
    rows = []
    for k, (_, row) in enumerate(shown.iterrows()):
        rank = int(row["rank"])
        lat, lon = centres[k]
        place = f"{lat:.5f}, {lon:.5f}"
        cells = [str(rank), html.escape(transition_label(str(row["transition"]))),
                 f"{float(row['confidence']):.3f}", f"{float(row['prob_before']):.3f}",
                 f"{float(row['prob_after']):.3f}", f"{float(row['area_km2']):.4f}",
                 _zoom_link(boxes[k], place) if linked else html.escape(place),
                 html.escape(str(row.get("chip_id_after", "")))]
        if pairs:
            cells.append(f'<a href="#pair-{rank}">imagery</a>' if rank in pairs else "")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    headers = ["Rank", "Change", "Confidence", "p (before)", "p (after)", "km²", "Chip centre (lat, lon)",
               "Chip (after)"] + (["Before / after"] if pairs else [])
    return ('<table class="t geoclf-ranked"><thead><tr>' + "".join(f"<th>{h}</th>" for h in headers)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _pairs_gallery(ranked: gpd.GeoDataFrame, pairs: dict[int, Path], labels: tuple[str, str], linked: bool) -> str:
    """The before/after image pairs, each under its rank, change and place (a link that zooms the map)."""
    by_rank = ranked.set_index("rank", drop=False)
    cards = []
    for rank, file in sorted(pairs.items()):
        if rank not in by_rank.index:
            continue
        row = by_rank.loc[[rank]]
        centre, box = _chip_boxes(row)
        place = f"{centre[0][0]:.5f}, {centre[0][1]:.5f}"
        caption = (f"#{rank} {html.escape(transition_label(str(row['transition'].iloc[0])))}, "
                   + (_zoom_link(box[0], place) if linked else html.escape(place)))
        cards.append(f'<figure class="geoclf-pair" id="pair-{rank}" style="display:inline-block;margin:4px 8px">'
                     f"{png_img(file, f'{labels[0]} and {labels[1]} imagery of change {rank}')}"
                     f"<figcaption>{caption}</figcaption></figure>")
    return "".join(cards)


# Links with a data-box zoom the embedded map (a message to its iframe) instead of opening change.html.
_ZOOM_SCRIPT = """<script>
document.querySelectorAll('a.geoclf-zoom').forEach(function (link) {
  link.addEventListener('click', function (event) {
    var frame = document.getElementById('geoclf-map');
    if (!frame) { return; }
    event.preventDefault();
    frame.contentWindow.postMessage({geoclfZoom: JSON.parse(link.getAttribute('data-box'))}, '*');
    frame.scrollIntoView({behavior: 'instant', block: 'center'});
  });
});
</script>"""


def _number(value: float, digits: int = 3) -> str:
    """A figure for the page: ``–`` for NaN (an interval a sample cannot give), never the text "nan"."""
    return "–" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


def human_tables(per_class: pd.DataFrame, matrix: pd.DataFrame, urban: pd.DataFrame | None,
                 labels: tuple[str, str], zones: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The report's tables with headers people read: dates instead of ``before``/``after``, units spelled
    out, the transition matrix with its row and column totals (the CSV files keep the column names)."""
    before, after = labels
    classes = per_class.rename(columns={
        "before_chips": f"Chips {before}", "after_chips": f"Chips {after}", "before_km2": f"km² {before}",
        "after_km2": f"km² {after}", "persistence_km2": "Unchanged km²", "gain_km2": "Gained km²",
        "loss_km2": "Lost km²", "net_km2": "Net km²", "net_pct": f"Net % of {before}"})
    classes = classes.rename_axis("Class").reset_index()
    table = matrix.copy()
    table[f"Total {before}"] = table.sum(axis=1)
    table.loc[f"Total {after}"] = table.sum(axis=0)
    table = table.rename_axis(None, axis=1).rename_axis(f"{before} ↓  {after} →").reset_index()
    out = {"classes": classes, "matrix": table}
    if urban is not None:
        names = {"chips": "Chips", "km2": "km²", "pct_of_class": f"% of the class ({before})",
                 "pct_of_new_developed": "% of all new"}
        out["urban"] = urban.rename(columns=names).rename_axis("From").reset_index()
    if zones is not None:
        names = {"chips": "Chips", "area_km2": "km²", "changed_km2": "Changed km²"}
        for column in zones.columns:
            for prefix, label in (("before_km2_", f"km² {before}"), ("after_km2_", f"km² {after}"),
                                  ("net_km2_", "net km²")):
                if column.startswith(prefix):
                    names[column] = f"{column[len(prefix):]}, {label}"
            if column.startswith("to_") and column.endswith("_km2"):
                names[column] = f"To {column[3:-4]} km²"
        out["zones"] = zones.rename(columns=names).rename_axis("Zone").reset_index()
    return out


def write_report(path: PathLike, *, info: dict, per_class: pd.DataFrame, matrix: pd.DataFrame,
                 urban: pd.DataFrame | None, ranked: pd.DataFrame, zones: pd.DataFrame | None,
                 estimates: dict[str, AreaEstimate], bar_chart: Path, change_png: Path,
                 html_map: Path | None, top: int = 25, pairs: Sequence[Path] = ()) -> Path:
    """Write ``report.html``: one self-contained page (figures inlined, the map embedded) of the analysis.

    The transition matrix carries row and column totals; tables have headers with the dates and units; the
    likeliest changes list each chip's centre (lat, lon) with a link that zooms the embedded map to the chip;
    the before/after image pairs (``pairs``, from :func:`write_image_pairs`) are shown under their change.
    Paths are written relative to the report, so the page names no directory of the machine that made it.

    Args:
        path: output ``.html``.
        info: what :func:`geoclf.change.run_change` writes to ``change.json``.
        per_class: areas per class and date with gains and losses.
        matrix: the transition matrix (km²).
        urban: the urbanization table, if any.
        ranked: :func:`geoclf.change.rank_changes`.
        zones: the zonal summary, if any.
        estimates: error-adjusted estimates from a reference sample.
        bar_chart: the area chart.
        change_png: the static change map.
        html_map: ``change.html``, embedded (None for none).
        top: most changes listed.
        pairs: image pair files.
    """
    before, after = info["dates"]
    labels = (before, after)
    here = Path(path).parent
    tables = human_tables(per_class, matrix, urban, labels, zones)
    linked = html_map is not None
    pair_files = _pairs_by_rank(pairs)
    arrow = html.escape(SPACED_ARROW)
    parts = [f"<h1>Land-use change {html.escape(before)}{arrow}{html.escape(after)}</h1>",
             "<p>", f"Before: <code>{html.escape(relative_path(info['before'], here))}</code><br>",
             f"After: <code>{html.escape(relative_path(info['after'], here))}</code><br>",
             f"Compared area: <b>{info['compared_km2']:,.2f} km²</b> in {info['paired']} chip pairs "
             f"({info['paired_by_cell']} on the same grid cell, {info['paired'] - info['paired_by_cell']} by "
             f"footprint overlap ≥ {info['min_overlap']:.0%}); unpaired chips: {info['unpaired_after']} after, "
             f"{info['unpaired_before']} before.<br>",
             f"Changed: <b>{info['changed_km2']:,.2f} km²</b> ({info['changed_chips']} chips)."
             + (" Each date was smoothed with a {0}×{0} plurality filter before comparing.".format(
                info.get("smoothing_window", 3))
                if info["smoothed"] else ""),
             "</p>",
             '<p class="note">Areas counted from the maps inherit their errors, and change maps doubly so (an error '
             "on either date makes a transition). Error-adjusted areas with confidence intervals need a labelled "
             "stratified sample (Olofsson et al. 2014); see the <i>Error-adjusted areas</i> section.</p>",
             "<h2>Area by class and year</h2>", png_img(bar_chart, "area by class and year"),
             html_table(tables["classes"], index=False),
             f"<h2>Transition matrix (km²; rows: {html.escape(before)}, columns: {html.escape(after)})</h2>",
             html_table(tables["matrix"], index=False),
             '<p class="note">The diagonal is land that kept its class; each row adds up to the class\'s area in '
             f"{html.escape(before)}, each column to its area in {html.escape(after)}.</p>"]
    if urban is not None:
        parts += ["<h2>Urbanization</h2>", html_table(tables["urban"], 2, index=False)]
    parts += [f"<h2>Likeliest changes (top {min(top, len(ranked))} of {len(ranked)})</h2>",
              "<p>Confidence is the product of both dates' probabilities of their classes."
              + (" A chip's centre zooms the map below to it." if linked else "") + "</p>"]
    if len(ranked):
        parts.append(_ranked_table(ranked, top, pair_files, linked))
    if pair_files:
        parts += [f"<h2>Before and after: imagery of the top {len(pair_files)} changes</h2>",
                  f"<p>Each pair shows the chip's ground in the {html.escape(before)} imagery (left) and the "
                  f"{html.escape(after)} imagery (right).</p>", _pairs_gallery(ranked, pair_files, labels, linked)]
    if zones is not None:
        parts += ["<h2>Zones</h2>", html_table(tables["zones"], index=False)]
    parts.append("<h2>Error-adjusted areas</h2>")
    if estimates:
        for key, est in estimates.items():
            title = "change classes" if key == "change" else f"land use, {before if key == 'before' else after}"
            parts += [f"<h3>{html.escape(title)}</h3>",
                      f"<p>Overall accuracy {_number(est.overall['accuracy'])} ± {_number(est.overall['ci'])} "
                      f"(95% CI, n = {int(est.overall['n'])}). Areas in {html.escape(est.unit)}.</p>",
                      html_table(est.summary())]
    else:
        parts.append("<p>No reference sample given. Run with <code>--sample-size</code> to draw chips to label, "
                     "then with <code>--reference</code>.</p>")
    parts += ["<h2>Map</h2>", png_img(change_png, "change map")]
    if html_map is not None:
        page = html.escape(Path(html_map).read_text(encoding="utf-8"), quote=True)
        parts.append(f'<iframe id="geoclf-map" title="interactive change map" srcdoc="{page}"></iframe>')
        parts.append(_ZOOM_SCRIPT)
    return write_page(path, f"Land-use change {before}{SPACED_ARROW}{after}", parts)


__all__ = ["DATE_COLORS", "area_bar_chart", "change_html", "change_png", "date_colors", "human_tables",
           "write_image_pairs", "write_report"]
