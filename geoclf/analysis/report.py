"""The pages of a results report: the area map of a score output and the self-contained ``report.html``.

Everything shown from data (run, class, chip and file names, the score output's ``accuracy.json``) is escaped.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from geoclf.htmlpage import html_table, png_img, relative_path, write_page
from geoclf.landuse import ScoreOutput
from geoclf.maps import static_png

PathLike = str | os.PathLike[str]


def area_map(score_output: PathLike, path: PathLike) -> tuple[Path, dict[str, Any]]:
    """Draw the land-use map of a ``geoclf score`` output (its ``landuse.tif``) with
    :func:`geoclf.maps.static_png`.

    Also returns what the report says about the map: ``models`` (the model names in its
    ``predictions.parquet``) and ``accuracy`` (its ``accuracy.json``, the agreement with the reference labels
    of a scored chip index), each ``None`` when the output lacks the file.

    Args:
        score_output: score output directory, or its ``landuse.tif`` or ``predictions.parquet``.
        path: PNG to write.

    Raises:
        InputError: no ``landuse.tif`` there.
    """
    output = ScoreOutput(score_output)
    grid, scheme = output.read_landuse()
    written = static_png(grid, scheme, path, title=f"Land use, {output.directory.name}")
    accuracy = json.loads(output.accuracy.read_text(encoding="utf-8")) if output.accuracy.is_file() else None
    return written, {"models": output.models(), "accuracy": accuracy}


def write_report(path: PathLike, *, info: dict[str, Any], overall: pd.DataFrame, per_class: pd.DataFrame,
                 confusion_png: Path, wrong: pd.DataFrame, gallery_png: Path | None,
                 map_png: Path | None, top: int = 50, html_map: Path | None = None,
                 comparison: pd.DataFrame | None = None) -> Path:
    """Write ``report.html``: one self-contained page (figures inlined as data URLs) of a results analysis.

    Files are named relative to the report's directory, so the page shows no directory of the machine that
    made it. With a score output, its land-use map is shown as a figure and, interactive, embedded.

    Args:
        path: output ``.html``.
        info: what :func:`results_report` writes to ``report.json``.
        overall: :func:`overall_table`.
        per_class: per-class precision, recall, F1 and support.
        confusion_png: the confusion matrix figure.
        wrong: :func:`misclassified`; the first ``top`` are listed.
        gallery_png: the gallery figure, if one was drawn.
        map_png: the area map, if any.
        top: most misclassified chips listed in the table.
        html_map: the score output's ``map.html``, embedded in the page when given.
        comparison: :func:`geoclf.analysis.evaluation.comparison_table`, shown first.
    """
    esc = html.escape
    here = Path(path).parent
    name = info["run"]
    what = ", ".join(str(v) for v in (info["kind"], info.get("backbone"), info.get("classifier")) if v)
    parts = [f"<h1>Results: {esc(name)}</h1>",
             f"<p>Run <code>{esc(info['run_id'])}</code> ({esc(what)}); {esc(str(info['n_val']))} validation chips"
             + (f", {esc(str(info['n_train']))} training chips" if info.get("n_train") is not None else "")
             + ".<br>"
             + (f"Chip index: <code>{esc(relative_path(info['chip_index'], here))}</code>"
                if info.get("chip_index") else "")
             + "</p>",
             *_comparison_section(comparison, info.get("comparison") or {}),
             "<h2>Overall</h2>", html_table(overall),
             '<p class="note"><i>accuracy_3class</i>: accuracy after regrouping into the seed study\'s Developed / '
             "Cultivated / Undeveloped. <i>balanced_accuracy</i>: mean recall over the classes present.</p>",
             "<h2>Per class</h2>", html_table(per_class),
             '<p class="note">Recall = correctly predicted chips of a class / all chips truly of that class (the '
             "row sum of the confusion matrix); precision divides by the column sum instead.</p>",
             "<h2>Confusion matrix (rows: true class, columns: predicted)</h2>",
             png_img(confusion_png, "confusion matrix")]
    parts.append(f"<h2>Misclassified validation chips ({len(wrong)} of {esc(str(info['n_val']))})</h2>")
    route = ("stored feature vectors" if info["predicted_from"] == "features"
             else "the imagery, read through the chip index")
    parts.append(f"<p>Which chips were wrong comes from predicting the validation chips again, from {route}; "
                 + ("this agrees with the recorded confusion matrix.</p>" if info["agrees_with_recorded"]
                    else "</p>" + "".join(f'<p class="warn">{esc(n)}</p>' for n in info["notes"])))
    if gallery_png is not None:
        parts.append(png_img(gallery_png, "misclassified chips"))
    if len(wrong):
        shown = ["rank", "chip_id", "label", "pred", "prob"]
        parts.append(html_table(pd.DataFrame(wrong[shown].head(top)).set_index("rank")))
    else:
        parts.append("<p>No validation chip was misclassified.</p>")
    if map_png is not None:
        models = info.get("map_models")
        parts += ["<h2>Map</h2>", f"<p>Score output: <code>{esc(relative_path(info['predictions'], here))}</code>"
                  + (f", scored with {esc(', '.join(models))}" if models else "") + ".</p>"]
        accuracy = info.get("map_accuracy")
        # accuracy.json is a file of the score output: its values are shown as text, never as markup
        if accuracy and isinstance(accuracy.get("accuracy"), int | float):
            parts.append(f"<p>Agreement with the reference labels of the scored chips: accuracy "
                         f"{accuracy['accuracy']:.3f} over {esc(str(accuracy.get('n')))} chips.</p>")
        parts.append(png_img(map_png, "land-use map"))
    if html_map is not None:
        page = html.escape(Path(html_map).read_text(encoding="utf-8"), quote=True)
        parts += ["<h3>Interactive map</h3>",
                  f'<iframe id="geoclf-map" title="interactive land-use map" srcdoc="{page}"></iframe>']
    return write_page(path, f"Results: {name}", parts)


def _comparison_section(table: pd.DataFrame | None, compared: dict[str, Any]) -> list[str]:
    """The model beside the spectral baseline, with confidence intervals, and what that says."""
    if table is None or table.empty:
        return []
    esc = html.escape
    parts = ["<h2>Model and spectral baseline</h2>", html_table(table.round(3))]
    base = (compared.get("baseline") or {}).get("interval")
    model = compared.get("model") or {}
    if base:
        gap = float(model["accuracy"]) - float(base["accuracy"])
        overlap = float(model["low"]) <= float(base["high"]) and float(base["low"]) <= float(model["high"])
        verdict = ("the intervals overlap: on these validation chips the model is not shown to differ from "
                   "the baseline" if overlap else
                   "the intervals do not overlap" + (": the model earns its cost" if gap > 0
                                                     else ": the baseline is better"))
        parts.append(f"<p>The model is {abs(gap) * 100:.1f} points {'above' if gap >= 0 else 'below'} the "
                     f"spectral baseline (standardized band statistics and NDVI of the same chips, logistic "
                     f"regression, fitted on the same train split); {esc(verdict)}.</p>")
    else:
        parts.append('<p class="note">No spectral baseline was recorded with this run (fine-tuned, or trained on '
                     "features made before geoclf stored one).</p>")
    parts.append(f'<p class="note">Intervals: {esc(str(compared.get("method", "")))}. Neighbouring chips err '
                 "together, so the effective number of chips is below the number of chips.</p>")
    return parts
