"""Results analysis of a trained run: accuracy tables, confusion matrix, misclassified-chip gallery, area map.

This reproduces the seed study's results section for any ``train`` or ``fine-tune`` run, as files and as one
self-contained ``report.html``. The numbers are the ones the run *recorded* (``evaluation.json``, written by
:meth:`geoclf.runs.RunRecorder.log_evaluation`): a report never re-scores a model into different metrics
than the run history shows. Only the gallery needs to know *which* validation chips were wrong, which the
evaluation does not keep, so the validation chips are predicted again:

- a ``features`` model whose feature directories are still there predicts the stored feature vectors
  (:meth:`geoclf.artifact.FeaturesModel.predict_proba_features`): exactly what training evaluated, in
  milliseconds, with no CNN;
- otherwise (a fine-tuned CNN, or features since deleted) the chips are read from their source rasters
  through the chip index and go through the model artifact's ``predict_proba``, as scoring does.

Either way the re-prediction is compared with the recorded confusion matrix and the report says whether
they agree. The gallery images are read from the source rasters through the chip index
(:class:`tiling.io.ChipReader`), RGB at the model's chip size.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from geoclf import runs
from geoclf.chips import iter_batches, read_batch
from geoclf.classifiers import load_features
from geoclf.features import load_chip_table
from geoclf.htmlpage import html_table, png_img, write_page
from geoclf.landuse import ScoreOutput
from geoclf.maps import static_png
from geoclf.metrics import evaluate, evaluation_from_json, plot_confusion_matrix
from geoclf.models import load_model
from tiling.errors import InputError
from tiling.io import ChipReader, atomic_path

if TYPE_CHECKING:
    from geoclf.artifact import LandUseModel
    from geoclf.runs import RunRecord

PathLike = str | os.PathLike[str]

#: Run kinds that hold a model and a recorded evaluation.
MODEL_KINDS = ("train", "finetune")
#: Overall scores of ``metrics.csv``, in order (the run history's headline metrics, then the chip count).
OVERALL_METRICS = ("accuracy", "balanced_accuracy", "kappa", "accuracy_3class", "n")
#: Subdirectory of the report holding one PNG per gallery chip.
GALLERY_DIR = "gallery"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


# --------------------------------------------------------------------------------------------------------
# What the run recorded
# --------------------------------------------------------------------------------------------------------

def recorded_evaluation(record: RunRecord) -> dict[str, Any]:
    """The validation evaluation a run recorded, as :func:`geoclf.metrics.evaluate` returns it.

    Raises:
        InputError: the run is not a ``train`` or ``finetune`` run, or recorded no ``evaluation.json``.
    """
    if record.kind not in MODEL_KINDS:
        raise InputError(f"run {record.name!r} is a {record.kind or 'untyped'} run; a results report needs a "
                         f"trained model ({' or '.join(MODEL_KINDS)} run)")
    data = runs.read_json_artifact(record, "evaluation.json")
    if data is None:
        raise InputError(f"run {record.name!r} ({record.kind}, {record.status}, {record.run_id[:8]}) recorded no "
                         "evaluation.json; did it finish?")
    return evaluation_from_json(data)


def overall_table(evaluation: dict[str, Any]) -> pd.DataFrame:
    """The overall scores of an evaluation as a ``metric -> value`` table (:data:`OVERALL_METRICS` order).

    ``accuracy_3class`` is the seed study's Developed / Cultivated / Undeveloped regrouping; undefined scores
    (a kappa of one class, a regrouping that names no class) are NaN.
    """
    values: list[float | int] = [math.nan if evaluation.get(key) is None else float(evaluation[key])
                                 for key in OVERALL_METRICS[:-1]]
    values.append(int(evaluation["n"]))
    return pd.Series(values, index=pd.Index(OVERALL_METRICS, name="metric"), dtype=object, name="value").to_frame()


# --------------------------------------------------------------------------------------------------------
# Predicting the validation chips again
# --------------------------------------------------------------------------------------------------------

def validation_chips(chips: PathLike) -> pd.DataFrame:
    """The labelled validation chips of a chip index (or PNG folder): the rows a run was evaluated on.

    Raises:
        InputError: the index is missing or unreadable, or has no labelled validation chips.
    """
    if not Path(chips).exists():
        raise InputError("no such chip index (moved or deleted since training? pass --chips)", chips)
    table, _ = load_chip_table(chips)
    if "label" not in table.columns or "split" not in table.columns:
        raise InputError("has no labels or no train/validation split", chips)
    rows = table[(table["split"] == "val") & table["label"].notna()].reset_index(drop=True)
    if rows.empty:
        raise InputError("has no labelled validation chips (split == 'val')", chips)
    return rows


def predict_validation(model: LandUseModel, *, features: PathLike | Sequence[PathLike] | None = None,
                       chips: PathLike | None = None, batch_size: int = 32) -> pd.DataFrame:
    """Predict a model's validation chips: from stored feature vectors when given, else from the imagery.

    Args:
        model: a loaded model artifact (:func:`geoclf.artifact.load_model`).
        features: feature directories the model was trained on; used when the model is a ``features``
            model (no CNN runs then).
        chips: chip index (or PNG folder) whose labelled ``val`` chips are read through
            :class:`tiling.io.ChipReader` and predicted with ``model.predict_proba``; needed when
            ``features`` is not usable.
        batch_size: chips per forward pass on the imagery route.

    Returns:
        One row per validation chip: ``chip_id``, ``label``, ``pred``, ``prob`` (probability of ``pred``)
        and ``prob_<Class>`` per class of the model; ``attrs["route"]`` is ``"features"`` or ``"chips"``.

    Raises:
        InputError: neither route is possible, or the inputs do not fit the model.
    """
    if features is not None and hasattr(model, "predict_proba_features"):
        data = load_features(features)
        rows = data.rows
        mask = ((rows["split"] == "val") & rows["label"].notna()).to_numpy()
        if not mask.any():
            raise InputError("the features hold no labelled validation chips (split == 'val')",
                             data.directories[0])
        proba = model.predict_proba_features(data.features[mask])
        chip_rows = rows.loc[mask, ["chip_id", "label"]].reset_index(drop=True)
        route = "features"
    elif chips is not None:
        chip_rows = validation_chips(chips)
        parts = []
        with ChipReader(model.bands, model.chip_size) as reader:
            for _, batch in iter_batches(chip_rows, reader, batch_size):
                parts.append(model.predict_proba(batch))
        proba = np.concatenate(parts)
        chip_rows = chip_rows[["chip_id", "label"]]
        route = "chips"
    else:
        raise InputError(f"cannot predict the validation chips of model {model.name!r}: give its chip index "
                         "(--chips) or, for a features model, its feature directories")
    classes = model.classes
    best = np.argmax(proba, axis=1)
    out = pd.DataFrame({"chip_id": chip_rows["chip_id"].astype(str).to_numpy(),
                        "label": chip_rows["label"].astype(str).to_numpy(),
                        "pred": np.asarray(classes, dtype=object)[best],
                        "prob": proba[np.arange(len(proba)), best].astype(np.float64)})
    for i, name in enumerate(classes):
        out[f"prob_{name}"] = proba[:, i].astype(np.float64)
    out.attrs["route"] = route
    return out


def misclassified(predictions: pd.DataFrame) -> pd.DataFrame:
    """The wrongly predicted chips of :func:`predict_validation`, most confident mistakes first.

    A confident mistake is the likeliest to be a label problem (NLCD is 30 m and a few years off the
    imagery) rather than a model problem, so those are the ones worth looking at first.
    """
    wrong = predictions[predictions["label"] != predictions["pred"]]
    wrong = wrong.sort_values(["prob", "chip_id"], ascending=[False, True], kind="stable").reset_index(drop=True)
    wrong.insert(0, "rank", np.arange(1, len(wrong) + 1))
    return wrong


# --------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------

def write_gallery(wrong: pd.DataFrame, chips: PathLike | None, out_dir: PathLike, *, title: str = "",
                  size: int = 224) -> tuple[Path | None, list[Path]]:
    """Draw misclassified chips: one PNG each in ``out_dir/gallery/`` and all of them in ``gallery.png``.

    Each chip is read from its source raster through the chip index (RGB, ``size`` pixels) and titled
    ``true → predicted`` with the predicted class's probability. PNGs left in ``gallery/`` by an earlier
    report are removed, so the folder holds exactly this gallery.

    Args:
        wrong: the chips to draw, in order (:func:`misclassified`, possibly cut to the first N).
        chips: the chip index (or PNG folder) holding them (may be ``None`` when ``wrong`` is empty).
        out_dir: report directory.
        title: heading of ``gallery.png``.
        size: side of each chip image in pixels.

    Returns:
        ``gallery.png`` (``None`` when there is nothing to draw) and the individual PNGs, in ``wrong`` order.

    Raises:
        InputError: a chip is not in the chip index, or its raster cannot be read.
    """
    out = Path(out_dir)
    folder = out / GALLERY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):
        stale.unlink()
    if wrong.empty:
        (out / "gallery.png").unlink(missing_ok=True)
        return None, []
    if chips is None or not Path(chips).exists():
        raise InputError("no such chip index to read the gallery chips from (pass --chips, or --gallery 0)",
                         chips)
    table, _ = load_chip_table(chips)
    table = table.drop_duplicates("chip_id").set_index("chip_id", drop=False)
    missing = sorted(set(wrong["chip_id"]) - set(table.index))
    if missing:
        raise InputError(f"chip {missing[0]!r} (and {len(missing) - 1} more) is not in the chip index; is this "
                         "the index the run was trained on?", chips)
    with ChipReader((1, 2, 3), size) as reader:
        images = read_batch(table.loc[wrong["chip_id"].to_list()], reader)
    font, small = _font(13), _font(10)
    cards, files = [], []
    for row, image in zip(wrong.itertuples(), images, strict=True):
        card = _chip_card(image, str(row.label), str(row.pred), float(row.prob), font)
        cards.append(card)
        name = _UNSAFE.sub("_", f"{row.rank:03d}_{row.label}_as_{row.pred}_{row.chip_id}") + ".png"
        files.append(folder / name)
        _save_png(_with_text(card, [], [str(row.chip_id)], small), files[-1])
    grid = out / "gallery.png"
    _save_png(_mosaic(cards, title, font), grid)
    return grid, files


# The gallery is drawn with Pillow, not matplotlib: a matplotlib figure per chip costs ~0.3 s (layout of
# axes that are not even shown), a Pillow card a millisecond, and a report may draw hundreds.
_PAD = 6
_MIN_SIDE = 192  # small chips (e.g. 32 px) are enlarged, nearest neighbour, to a readable size


def _font(size: int) -> Any:
    """DejaVu Sans (shipped with matplotlib; it has the arrow), else Pillow's default font."""
    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except OSError:
        return ImageFont.load_default(size)


def _chip_card(image: np.ndarray, label: str, pred: str, prob: float, font: Any) -> Any:
    """One chip (``(3, H, W)`` uint8), enlarged if small, under its caption ``true → predicted``, ``p``."""
    picture = Image.fromarray(np.ascontiguousarray(np.moveaxis(image, 0, -1)))
    scale = max(1, math.ceil(_MIN_SIDE / max(picture.width, 1)))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    title = f"{label} → {pred}"
    lines = [title] if font.getlength(title) <= picture.width else [f"{label} →", pred]
    return _with_text(picture, [*lines, f"p = {prob:.2f}"], [], font)


def _with_text(picture: Any, above: Sequence[str], below: Sequence[str], font: Any) -> Any:
    """``picture`` on a white card with centred lines of text above and below it."""
    line = round(font.size * 1.3)
    width = max([picture.width, *(round(font.getlength(t)) for t in (*above, *below))]) + 2 * _PAD
    height = picture.height + line * (len(above) + len(below)) + 2 * _PAD
    card = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(card)
    y = _PAD
    for text in above:
        draw.text((width / 2, y), text, fill="black", font=font, anchor="mt")
        y += line
    card.paste(picture, ((width - picture.width) // 2, y))
    y += picture.height
    for text in below:
        draw.text((width / 2, y + 2), text, fill="#555", font=font, anchor="mt")
        y += line
    return card


def _mosaic(cards: Sequence[Any], heading: str, font: Any, columns: int = 6) -> Any:
    """Cards on a grid, row by row, under a heading wrapped to the grid's width."""
    ncols = max(1, min(columns, len(cards)))
    nrows = math.ceil(len(cards) / ncols)
    cell_w, cell_h = max(c.width for c in cards), max(c.height for c in cards)
    width = ncols * cell_w + (ncols + 1) * _PAD
    chars = max(20, int(width / (0.6 * font.size)))
    lines = textwrap.wrap(heading, width=chars) if heading else []
    line = round(font.size * 1.4)
    top = _PAD + line * len(lines)
    canvas = Image.new("RGB", (width, top + nrows * (cell_h + _PAD) + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((width / 2, _PAD + i * line), text, fill="black", font=font, anchor="mt")
    for k, card in enumerate(cards):
        row, col = divmod(k, ncols)
        canvas.paste(card, (_PAD + col * (cell_w + _PAD) + (cell_w - card.width) // 2,
                            top + _PAD + row * (cell_h + _PAD)))
    return canvas


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


# --------------------------------------------------------------------------------------------------------
# The whole report: geoclf report
# --------------------------------------------------------------------------------------------------------

def results_report(run: str, out: PathLike, *, runs_dir: PathLike | None = None, chips: PathLike | None = None,
                   features: PathLike | Sequence[PathLike] | None = None, predictions: PathLike | None = None,
                   gallery: int = 24, trusted: bool = False, batch_size: int = 32) -> dict[str, Path]:
    """Write the results analysis of a trained run into ``out``.

    Writes ``metrics.csv`` (accuracy, balanced accuracy, Cohen's kappa, 3-class regrouped accuracy, chip
    count), ``per_class.csv`` (precision, recall, F1, support), ``confusion_matrix.csv`` and ``.png`` -- all
    as the run recorded them -- then ``misclassified.csv`` (every wrongly predicted validation chip, most
    confident first), ``gallery.png`` and ``gallery/*.png`` (the first ``gallery`` of them, read from the
    source rasters), ``map.png`` when a score output is given, ``report.json`` and ``report.html`` (one
    self-contained page, images inlined).

    Args:
        run: run name or id (a ``train`` or ``finetune`` run).
        out: output directory, created if needed.
        runs_dir: runs directory or tracking URI (see :func:`geoclf.runs.run_store`).
        chips: the chip index (``chips.parquet`` or its directory) the run was trained on; default: the one
            the run recorded. Gallery chips are read through it, and so are the validation chips of a model
            that cannot use stored features.
        features: feature directories of a ``features`` model; default: the ones the run recorded. When
            they are gone, the validation chips are predicted from the imagery instead.
        predictions: a ``geoclf score`` output directory whose ``landuse.tif`` becomes the area map.
        gallery: most misclassified chips to draw; 0 for no gallery.
        trusted: load a classifier holding types outside geoclf's allowlist (see
            :func:`geoclf.artifact.load_model`).
        batch_size: chips per forward pass when the imagery is predicted.

    Returns:
        Output name -> path: ``metrics``, ``per_class``, ``confusion_csv``, ``confusion_matrix``,
        ``misclassified``, ``gallery`` and ``gallery_dir`` (when a chip was drawn), ``map`` (with
        ``predictions``), ``json``, ``report``.

    Raises:
        InputError: unknown run, a run without a model or evaluation, a missing chip index or score output.
    """
    if gallery < 0:
        raise InputError(f"the gallery size must be 0 or more, not {gallery}")
    record = runs.get_run(run, runs_dir=runs_dir)
    evaluation = recorded_evaluation(record)
    if predictions is not None:
        ScoreOutput(predictions).require_landuse()
    model = load_model(runs.artifact_path(record), trusted=trusted)
    index = chips if chips is not None else record.params.get("chip_index")
    feature_dirs = _usable_features(features if features is not None else record.params.get("features"))
    if model.kind != "features":
        feature_dirs = None
    # the chip index is needed to read the gallery, and to predict without stored features: check it first,
    # so bad input writes nothing
    if gallery or feature_dirs is None:
        if index is None:
            raise InputError(f"run {record.name!r} recorded no chip index; pass --chips"
                             + (", or --gallery 0" if feature_dirs is not None else ""))
        if not Path(index).exists():
            raise InputError("no such chip index (moved or deleted since training?); pass --chips"
                             + (", or --gallery 0" if feature_dirs is not None else ""), index)
    predicted = predict_validation(model, features=feature_dirs, chips=index, batch_size=batch_size)
    cm: pd.DataFrame = evaluation["confusion_matrix"]
    notes = _agreement_notes(evaluate(predicted["label"].to_numpy(), predicted["pred"].to_numpy(),
                                      model.classes)["confusion_matrix"], cm)
    wrong = misclassified(predicted)
    shown = wrong.head(gallery)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    overall = overall_table(evaluation)
    written["metrics"] = _write_csv(overall, out / "metrics.csv")
    per_class: pd.DataFrame = evaluation["per_class"]
    written["per_class"] = _write_csv(per_class, out / "per_class.csv")
    written["confusion_csv"] = _write_csv(cm, out / "confusion_matrix.csv")
    written["confusion_matrix"] = plot_confusion_matrix(cm, out / "confusion_matrix.png", title=record.name)
    heading = (f"{record.name}: {len(shown)} of {len(wrong)} misclassified validation chips "
               "(true → predicted), most confident first")
    gallery_png, files = write_gallery(shown, index, out, title=heading, size=model.chip_size)
    file_of = {chip: path.name for chip, path in zip(shown["chip_id"], files, strict=True)}
    written["misclassified"] = _write_csv(wrong.assign(gallery_file=wrong["chip_id"].map(file_of).fillna("")),
                                          out / "misclassified.csv", index=False, float_format="%.4f")
    if gallery_png is not None:
        written["gallery"] = gallery_png
        written["gallery_dir"] = out / GALLERY_DIR

    about_map: dict[str, Any] = {}
    if predictions is not None:
        written["map"], about_map = area_map(predictions, out / "map.png")
    map_accuracy = about_map.get("accuracy")

    info = {
        "run": record.name, "run_id": record.run_id, "kind": record.kind, "model_kind": model.kind,
        "metrics": {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in overall["value"].items()},
        "backbone": record.params.get("backbone"), "classifier": record.params.get("classifier"),
        "classes": model.classes, "n_train": record.params.get("n_train"), "n_val": int(evaluation["n"]),
        "chip_index": None if index is None else str(index),
        "features": None if feature_dirs is None else [str(d) for d in feature_dirs],
        "predicted_from": predicted.attrs["route"], "predicted_chips": len(predicted),
        "misclassified": len(wrong), "gallery_chips": len(files),
        "agrees_with_recorded": not notes, "notes": notes,
        "predictions": None if predictions is None else str(predictions), "map_models": about_map.get("models"),
        "map_accuracy": None if map_accuracy is None else
        {k: map_accuracy.get(k) for k in ("n", "accuracy", "balanced_accuracy", "kappa", "accuracy_3class")},
    }
    with atomic_path(out / "report.json") as temporary:
        temporary.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    written["json"] = out / "report.json"
    written["report"] = write_report(out / "report.html", info=info, overall=overall, per_class=per_class,
                                     confusion_png=written["confusion_matrix"], wrong=wrong,
                                     gallery_png=gallery_png, map_png=written.get("map"))
    return written


def _write_csv(frame: pd.DataFrame, path: Path, **options: Any) -> Path:
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, **options)
    return path


def _save_png(image: Any, path: Path) -> Path:
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return path


def _usable_features(value: Any) -> list[Path] | None:
    """Feature directories that are all still there, else ``None`` (predict from the imagery instead)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str | os.PathLike) else list(value)
    paths = [Path(v) for v in items]
    return paths if paths and all((p / "features.json").is_file() for p in paths) else None


def _agreement_notes(predicted: pd.DataFrame, recorded: pd.DataFrame) -> list[str]:
    """Why the re-predicted validation chips might not be the ones the run evaluated (empty: they are)."""
    if list(predicted.index) != list(recorded.index):
        return [f"the model's classes {list(predicted.index)} differ from the recorded evaluation's "
                f"{list(recorded.index)}"]
    if predicted.to_numpy().sum() != recorded.to_numpy().sum():
        return [f"{int(predicted.to_numpy().sum())} validation chips were predicted, the run evaluated "
                f"{int(recorded.to_numpy().sum())}: the chip index or features changed since training"]
    differ = int(np.abs(predicted.to_numpy() - recorded.to_numpy()).sum()) // 2
    if differ:
        return [f"predicting the validation chips again moves {differ} chip(s) to other confusion-matrix cells "
                "than the run recorded (features or imagery changed, or numerical noise of another device); "
                "the gallery shows the new predictions, the tables the recorded ones"]
    return []


def write_report(path: PathLike, *, info: dict[str, Any], overall: pd.DataFrame, per_class: pd.DataFrame,
                 confusion_png: Path, wrong: pd.DataFrame, gallery_png: Path | None,
                 map_png: Path | None, top: int = 50) -> Path:
    """Write ``report.html``: one self-contained page (figures inlined as data URLs) of a results analysis.

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
    """
    esc = html.escape
    name = info["run"]
    what = ", ".join(str(v) for v in (info["kind"], info.get("backbone"), info.get("classifier")) if v)
    parts = [f"<h1>Results: {esc(name)}</h1>",
             f"<p>Run <code>{esc(info['run_id'])}</code> ({esc(what)}); {esc(str(info['n_val']))} validation chips"
             + (f", {esc(str(info['n_train']))} training chips" if info.get("n_train") is not None else "")
             + ".<br>"
             + (f"Chip index: <code>{esc(info['chip_index'])}</code>" if info.get("chip_index") else "")
             + "</p>",
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
        parts += ["<h2>Map</h2>", f"<p>Score output: <code>{esc(str(info['predictions']))}</code>"
                  + (f", scored with {esc(', '.join(models))}" if models else "") + ".</p>"]
        accuracy = info.get("map_accuracy")
        # accuracy.json is a file of the score output: its values are shown as text, never as markup
        if accuracy and isinstance(accuracy.get("accuracy"), int | float):
            parts.append(f"<p>Agreement with the reference labels of the scored chips: accuracy "
                         f"{accuracy['accuracy']:.3f} over {esc(str(accuracy.get('n')))} chips.</p>")
        parts.append(png_img(map_png, "land-use map"))
    return write_page(path, f"Results: {name}", parts)


__all__ = [
    "GALLERY_DIR",
    "MODEL_KINDS",
    "OVERALL_METRICS",
    "area_map",
    "misclassified",
    "overall_table",
    "predict_validation",
    "recorded_evaluation",
    "results_report",
    "validation_chips",
    "write_gallery",
    "write_report",
]
