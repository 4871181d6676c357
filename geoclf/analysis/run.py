"""``geoclf report``: the results analysis of a trained run written to a directory (:func:`results_report`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoclf import runs
from geoclf.analysis.evaluation import (
    comparison_table,
    misclassified,
    overall_table,
    predict_validation,
    recorded_evaluation,
)
from geoclf.analysis.gallery import GALLERY_DIR, write_gallery
from geoclf.analysis.report import area_map, write_report
from geoclf.features import load_chip_table
from geoclf.landuse import ScoreOutput
from geoclf.metrics import accuracy_interval, evaluate, plot_confusion_matrix
from geoclf.models import load_model
from geoclf.training import COMPARISON_FILE
from tiling.errors import InputError
from tiling.io import atomic_path, relocated, staged_directory

PathLike = str | os.PathLike[str]


def results_report(run: str, out: PathLike, *, runs_dir: PathLike | None = None, chips: PathLike | None = None,
                   features: PathLike | Sequence[PathLike] | None = None, predictions: PathLike | None = None,
                   gallery: int = 24, trusted: bool = False, batch_size: int = 32) -> dict[str, Path]:
    """Write the results analysis of a trained run into ``out``.

    Writes ``metrics.csv`` (accuracy, balanced accuracy, Cohen's kappa, 3-class regrouped accuracy, chip
    count), ``comparison.csv`` (the model's accuracy with its 95% confidence interval beside the spectral
    baseline's, fitted on the same split when the run was trained), ``per_class.csv`` (precision, recall,
    F1, support), ``confusion_matrix.csv`` and ``.png`` -- all as the run recorded them -- then
    ``misclassified.csv`` (every wrongly predicted validation chip, most confident first), ``gallery.png``
    and ``gallery/*.png`` (the first ``gallery`` of them, read from the source rasters), ``map.png`` when a
    score output is given, ``report.json`` and ``report.html`` (one self-contained page, images inlined, the
    score output's interactive ``map.html`` embedded, paths relative to the report).

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
        Output name -> path: ``metrics``, ``comparison``, ``per_class``, ``confusion_csv``, ``confusion_matrix``,
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

    final = Path(out)
    # into a staging directory first: a failure while writing (a gallery chip that cannot be read, a map
    # that is refused) leaves no half report in the output directory
    with staged_directory(final, stale=["gallery.png"]) as out:
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

        compared = _comparison(record, predicted, index)
        written["comparison"] = _write_csv(comparison_table(compared), out / "comparison.csv")

        about_map: dict[str, Any] = {}
        html_map = None
        if predictions is not None:
            written["map"], about_map = area_map(predictions, out / "map.png")
            html_map = ScoreOutput(predictions).html if ScoreOutput(predictions).html.is_file() else None
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
            "agrees_with_recorded": not notes, "notes": notes, "comparison": compared,
            "predictions": None if predictions is None else str(predictions), "map_models": about_map.get("models"),
            "map_accuracy": None if map_accuracy is None else
            {k: map_accuracy.get(k) for k in ("n", "accuracy", "balanced_accuracy", "kappa", "accuracy_3class")},
        }
        with atomic_path(out / "report.json") as temporary:
            temporary.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        written["json"] = out / "report.json"
        written["report"] = write_report(out / "report.html", info=info, overall=overall, per_class=per_class,
                                         comparison=comparison_table(compared),
                                         confusion_png=written["confusion_matrix"], wrong=wrong,
                                         gallery_png=gallery_png, map_png=written.get("map"), html_map=html_map)
    return relocated(written, out, final)


def _comparison(record: runs.RunRecord, predicted: pd.DataFrame, index: PathLike | None) -> dict[str, Any]:
    """The run's recorded ``comparison.json``; for a run without one (fine-tuned, or trained by an older
    geoclf) the model's interval from the validation chips just predicted, and no baseline."""
    recorded = runs.read_json_artifact(record, COMPARISON_FILE)
    if isinstance(recorded, dict) and recorded.get("model"):
        return recorded
    blocks = None
    if index is not None and Path(index).exists():
        table, _ = load_chip_table(index)
        if "block" in table.columns:
            block_of = dict(zip(table["chip_id"].astype(str), table["block"], strict=False))
            found = predicted["chip_id"].map(block_of)
            blocks = None if found.isna().any() else found.astype(str).to_numpy(dtype=object)
    interval = accuracy_interval((predicted["label"] == predicted["pred"]).to_numpy(), blocks)
    return {"confidence": interval.confidence, "method": interval.method, "model": interval.to_json(),
            "baseline": None}


def _write_csv(frame: pd.DataFrame, path: Path, **options: Any) -> Path:
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, **options)
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
