"""The numbers of a results report: what a run recorded, and which validation chips it got wrong.

The scores are the ones the run *recorded* (``evaluation.json``); only which chips were wrong is found again,
by predicting the validation chips from stored features or from the imagery (:func:`predict_validation`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from geoclf import runs
from geoclf.chips import iter_batches
from geoclf.classifiers import load_features
from geoclf.features import load_chip_table
from geoclf.metrics import evaluation_from_json
from tiling.errors import InputError
from tiling.io import ChipReader

if TYPE_CHECKING:
    from geoclf.artifact import LandUseModel
    from geoclf.runs import RunRecord

PathLike = str | os.PathLike[str]

#: Run kinds that hold a model and a recorded evaluation.
MODEL_KINDS = ("train", "finetune")
#: Overall scores of ``metrics.csv``, in order (the run history's headline metrics, then the chip count).
OVERALL_METRICS = ("accuracy", "balanced_accuracy", "kappa", "accuracy_3class", "n")


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


def comparison_table(compared: dict[str, Any]) -> pd.DataFrame:
    """The model beside the spectral baseline, one row each: accuracy, the bounds of its confidence interval,
    chips, effective chips (after the design effect of the spatial blocks) and blocks.

    Args:
        compared: a run's ``comparison.json`` (:func:`geoclf.training.comparison`).
    """
    rows = {"model": compared["model"]}
    if compared.get("baseline"):
        rows["spectral baseline"] = compared["baseline"]["interval"]
    level = f"{float(compared.get('confidence', 0.95)):.0%}"
    table = pd.DataFrame({
        "accuracy": [float(r["accuracy"]) for r in rows.values()],
        f"{level} CI low": [float(r["low"]) for r in rows.values()],
        f"{level} CI high": [float(r["high"]) for r in rows.values()],
        "chips": [int(r["n"]) for r in rows.values()],
        "effective chips": [round(float(r["n_effective"]), 1) for r in rows.values()],
        "blocks": ["-" if r.get("blocks") is None else int(r["blocks"]) for r in rows.values()],
    }, index=pd.Index(list(rows), name="predictor"))
    return table


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


def _featurizer_name(featurizer: Any) -> str:
    meta = featurizer.to_meta()
    sha = (meta.get("weights_ref") or {}).get("sha256")
    return (f"{meta.get('backbone', featurizer.kind)} (weights {meta.get('weights')!r}"
            + (f", sha256 {sha[:12]}...)" if sha else ")"))


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
        if data.featurizer != model.featurizer:
            # same length, other network (MobileNetV2 and EfficientNet-Lite0 both give 1280 values): the
            # report would describe predictions that mean nothing
            raise InputError(f"holds features of {_featurizer_name(data.featurizer)}, but model {model.name!r} "
                             f"featurizes chips with {_featurizer_name(model.featurizer)}; give the features it was "
                             "trained on, or none (the validation chips are then predicted from the imagery)",
                             data.directories[0])
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
