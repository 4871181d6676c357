"""Classifiers on CNN features: scikit-learn pipelines trained on the train split, scored on validation.

``train_classifier`` is the whole ``geoclf train`` stage: read and check feature directories, fit
``Pipeline(StandardScaler, classifier)`` on the chips with ``split == "train"``, evaluate on ``split ==
"val"``, save a ``features`` model artifact and record the run. Every check on the input runs before
anything is written, so bad input leaves neither a run nor an artifact behind.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tiling.classes import ClassScheme
from tiling.errors import InputError

PathLike = str | os.PathLike[str]

#: Classifier name -> (``module:class``, geoclf's defaults where they differ from scikit-learn's).
#: ``max_iter=1000``: lbfgs rarely converges in 100 iterations on 1000+ standardized CNN features.
CLASSIFIERS: dict[str, tuple[str, dict[str, Any]]] = {
    "logistic_regression": ("sklearn.linear_model:LogisticRegression", {"max_iter": 1000}),
    "random_forest": ("sklearn.ensemble:RandomForestClassifier", {"n_estimators": 200}),
}

# features.json fields that must agree between feature directories trained on together: features made
# by different backbones, weights or preprocessing live in different spaces and cannot be mixed.
_MUST_MATCH = ("backbone", "weights_ref", "feature_layer", "feature_dim", "bands", "mean", "std", "input_size",
               "chip_size")
_REQUIRED = ("backbone", "feature_dim", "bands", "mean", "std", "chip_size")


@dataclass(frozen=True)
class FeatureSet:
    """Feature vectors of chips, from one or more feature directories made with the same backbone.

    Attributes:
        meta: ``features.json`` of the first directory (all directories agree on the backbone fields).
        rows: one row per chip: ``chip_id``, ``label``, ``split`` and any extra named columns.
        features: ``(len(rows), feature_dim)`` float32 feature vectors, in ``rows`` order.
        directories: the feature directories read.
    """

    meta: dict[str, Any]
    rows: pd.DataFrame
    features: np.ndarray
    directories: tuple[Path, ...]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Feature vectors and labels of the labelled chips of split ``name`` (``train`` or ``val``)."""
        mask = (self.rows["split"] == name).to_numpy() & self.rows["label"].notna().to_numpy()
        return self.features[mask], self.rows.loc[mask, "label"].astype(str).to_numpy(dtype=object)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_classifier` produced.

    Attributes:
        name: run name.
        run_id: MLflow run id in the run history.
        classifier: the fitted ``Pipeline``.
        classes: class names in output order.
        evaluation: :func:`geoclf.metrics.evaluate` on the validation split.
        artifact_dir: the saved model artifact.
        n_train, n_val: chips trained and evaluated on.
        warnings: fit warnings worth showing (e.g. no convergence).
    """

    name: str
    run_id: str
    classifier: Any
    classes: list[str]
    evaluation: dict[str, Any]
    artifact_dir: Path
    n_train: int
    n_val: int
    warnings: tuple[str, ...] = ()

    @property
    def metrics(self) -> dict[str, float]:
        """The validation scores as recorded in the run history (``accuracy``, ``kappa``, ``recall.<Class>``...)."""
        from geoclf.metrics import scalar_metrics

        return scalar_metrics(self.evaluation)


def load_features(directories: PathLike | Sequence[PathLike]) -> FeatureSet:
    """Read feature directories (``geoclf featurize`` output) and check they can be used together.

    Raises:
        InputError: a directory is not a features directory or is incomplete, feature vectors have the
            wrong length, directories come from different backbones/weights/preprocessing, or a chip
            appears twice.
    """
    from geoclf.features import read_features

    dirs = [Path(directories)] if isinstance(directories, str | os.PathLike) else [Path(d) for d in directories]
    if not dirs:
        raise InputError("no features directory given")
    metas, frames, matrices = [], [], []
    for directory in dirs:
        meta, frame = read_features(directory)
        missing = [k for k in _REQUIRED if k not in meta]
        if missing:
            raise InputError(f"features.json lacks {', '.join(missing)}; featurize again with this geoclf",
                             directory)
        expected = meta.get("chips")
        if isinstance(expected, int) and len(frame) < expected:
            raise InputError(f"holds {len(frame)} of {expected} chips: featurization did not finish; rerun "
                             "geoclf featurize to complete it", directory)
        for other_dir, other in zip(dirs, metas, strict=False):
            different = [k for k in _MUST_MATCH if _canonical(meta.get(k)) != _canonical(other.get(k))]
            if different:
                k = different[0]
                raise InputError(f"features from different backbones cannot be mixed: {k} is "
                                 f"{_short(meta.get(k))} here and {_short(other.get(k))} in {other_dir}",
                                 directory)
        matrices.append(_feature_matrix(frame, int(meta["feature_dim"]), directory))
        frames.append(frame.drop(columns=["features"]))
        metas.append(meta)
    rows = pd.concat(frames, ignore_index=True)
    for column in ("label", "split"):
        if column not in rows.columns:
            rows[column] = None
    duplicated = rows["chip_id"].duplicated()
    if duplicated.any():
        raise InputError(f"chip {rows.loc[duplicated, 'chip_id'].iloc[0]!r} appears more than once "
                         f"({int(duplicated.sum())} duplicates): is a features directory given twice?")
    return FeatureSet(metas[0], rows, np.concatenate(matrices), tuple(d.resolve() for d in dirs))


def make_classifier(classifier: str = "logistic_regression", params: Mapping[str, Any] | None = None,
                    seed: int = 0) -> Any:
    """An unfitted ``Pipeline(StandardScaler, <classifier>)`` with geoclf's defaults, ``params`` and seed.

    Args:
        classifier: a key of :data:`CLASSIFIERS`.
        params: constructor parameters of the scikit-learn classifier (e.g. ``{"C": 0.5}``).
        seed: ``random_state``, unless ``params`` sets it.

    Raises:
        InputError: unknown classifier or parameter (the message lists the valid ones).
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if classifier not in CLASSIFIERS:
        raise InputError(f"unknown classifier {classifier!r}; valid classifiers: {', '.join(CLASSIFIERS)}")
    target, defaults = CLASSIFIERS[classifier]
    module, _, attribute = target.partition(":")
    estimator_class = getattr(importlib.import_module(module), attribute)
    valid = sorted(estimator_class().get_params())
    unknown = [k for k in (params or {}) if k not in valid]
    if unknown:
        raise InputError(f"unknown parameter {unknown[0]!r} for {classifier}; valid parameters: "
                         f"{', '.join(valid)}")
    settings = {**defaults, "random_state": seed, **(params or {})}
    return Pipeline([("scale", StandardScaler()), ("classifier", estimator_class(**settings))])


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings (``--param``): numbers, ``true``/``false``, ``none`` and JSON lists are
    converted, anything else stays text (``class_weight=balanced``)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"parameter {item!r} is not key=value")
        params[key.strip()] = _parse_value(text.strip())
    return params


def train_classifier(features: PathLike | Sequence[PathLike], classifier: str = "logistic_regression",
                     params: Mapping[str, Any] | None = None, name: str | None = None, seed: int = 0,
                     runs_dir: PathLike | None = None) -> TrainResult:
    """Train a classifier on CNN features, evaluate it, save the model artifact and record the run.

    Args:
        features: one or more feature directories (``geoclf featurize`` output) with ``train`` and ``val``
            chips; several directories must come from the same backbone and weights.
        classifier: a key of :data:`CLASSIFIERS`.
        params: classifier parameters (see :func:`make_classifier`).
        name: run name (default ``<classifier>-<backbone>``).
        seed: random seed of the classifier.
        runs_dir: runs directory or tracking URI (see :func:`geoclf.runs.run_store`).

    Returns:
        The fitted pipeline, its validation metrics, the artifact directory and the run id.

    Raises:
        InputError: bad features (see :func:`load_features`), no train or no validation chips, a class in
            validation that training never saw, unknown classifier or parameter, an invalid parameter value.
    """
    from sklearn.exceptions import ConvergenceWarning

    from geoclf import runs
    from geoclf.features_model import save_features_model
    from geoclf.metrics import evaluate, evaluation_to_json

    data = load_features(features)
    where = data.directories[0] if len(data.directories) == 1 else None
    x_train, y_train = data.split("train")
    x_val, y_val = data.split("val")
    if len(y_train) == 0:
        raise InputError("has no labelled chips in the train split (split == 'train'); tile with labels and a "
                         "train/validation split first", where)
    if len(y_val) == 0:
        raise InputError("has no labelled chips in the validation split (split == 'val'); tile with a "
                         "validation fraction above 0", where)
    unseen = sorted(set(y_val) - set(y_train))
    if unseen:
        raise InputError(f"class {', '.join(map(repr, unseen))} is in the validation split but absent from "
                         f"training, so no model could predict it; retile with another split or seed, or "
                         f"drop the class", where)
    classes = _class_order(set(y_train), data.meta)
    if len(classes) < 2:
        raise InputError(f"the train split holds a single class ({classes[0]!r}); a classifier needs two or more",
                         where)
    pipeline = make_classifier(classifier, params, seed)
    name = name or f"{classifier}-{data.meta['backbone']}"

    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            pipeline.fit(x_train, y_train)
        except ValueError as exc:
            # scikit-learn validates parameter values when fitting (InvalidParameterError is a ValueError)
            if type(exc).__name__ == "InvalidParameterError":
                raise InputError(str(exc).strip().splitlines()[0]) from exc
            raise
    fit_seconds = time.perf_counter() - started
    notes = tuple(dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught
                                if issubclass(w.category, ConvergenceWarning)))
    evaluation = evaluate(y_val, pipeline.predict(x_val), classes)

    meta = data.meta
    weights_ref = meta.get("weights_ref")
    effective = pipeline.named_steps["classifier"].get_params()
    run_params = {
        "classifier": classifier,
        **{f"classifier.{k}": v for k, v in sorted(effective.items())},
        "backbone": meta["backbone"],
        "weights": meta.get("weights"),
        "feature_layer": meta.get("feature_layer"),
        "feature_dim": int(meta["feature_dim"]),
        "bands": list(meta["bands"]),
        "chip_size": int(meta["chip_size"]),
        "features": [str(d) for d in data.directories],
        "chip_index": _source(meta).get("path"),
        "chip_index_sha256": _source(meta).get("sha256"),
        "classes": classes,
        "seed": seed,
        "n_train": len(y_train),
        "n_val": len(y_val),
    }
    with runs.start_run(name, "train", params=run_params, runs_dir=runs_dir) as run:
        run.log_evaluation(evaluation)
        run.log_metrics({"fit_seconds": fit_seconds})
        if notes:
            run.set_tags({"warnings": " | ".join(notes)})
        provenance = {"run_id": run.run_id, "features": [str(d) for d in data.directories],
                      "chip_size_m": meta.get("chip_size_m"),
                      "chip_index": _source(meta).get("path"), "chip_index_sha256": _source(meta).get("sha256"),
                      "classifier": classifier, "params": dict(params or {}), "seed": seed,
                      "n_train": len(y_train), "n_val": len(y_val)}
        with tempfile.TemporaryDirectory(prefix="geoclf-model-") as tmp:
            staged = save_features_model(
                Path(tmp) / runs.MODEL_ARTIFACT, classifier=pipeline, classes=classes, backbone=meta["backbone"],
                weights=(weights_ref or {}).get("weights", meta.get("weights")), weights_ref=weights_ref,
                feature_layer=meta.get("feature_layer"), feature_dim=int(meta["feature_dim"]),
                mean=meta["mean"], std=meta["std"], input_size=meta.get("input_size"), bands=meta["bands"],
                chip_size=int(meta["chip_size"]), name=name, metrics=evaluation_to_json(evaluation),
                class_groups=_class_groups(meta, classes), provenance=provenance)
            run.log_artifact_dir(staged, runs.MODEL_ARTIFACT)
        run_id = run.run_id
    artifact_dir = runs.artifact_path(runs.get_run(run_id, runs_dir=runs_dir))
    return TrainResult(name=name, run_id=run_id, classifier=pipeline, classes=classes, evaluation=evaluation,
                       artifact_dir=artifact_dir, n_train=len(y_train), n_val=len(y_val), warnings=notes)


def _feature_matrix(frame: pd.DataFrame, dim: int, directory: Path) -> np.ndarray:
    """The ``features`` column as an (n, dim) float32 matrix, checking every vector's length."""
    if "features" not in frame.columns:
        raise InputError("partitions have no 'features' column", directory)
    if frame.empty:
        return np.empty((0, dim), dtype=np.float32)
    values = frame["features"].to_numpy()
    lengths = np.fromiter((-1 if v is None else len(v) for v in values), dtype=np.int64, count=len(values))
    bad = np.flatnonzero(lengths != dim)
    if bad.size:
        i = int(bad[0])
        found = "no" if lengths[i] < 0 else f"{lengths[i]}-long"
        raise InputError(f"chip {frame['chip_id'].iloc[i]!r} has {found} features where features.json says "
                         f"{dim} (features from another backbone mixed in?)", directory)
    matrix = np.stack(values).astype(np.float32, copy=False)
    if not np.isfinite(matrix).all():
        row = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise InputError(f"chip {frame['chip_id'].iloc[row]!r} has non-finite features (NaN or inf)", directory)
    return matrix


def _class_order(present: set[str], meta: Mapping[str, Any]) -> list[str]:
    """Classes in scheme order (features.json's, the chip index's, else the default), then others A-Z."""
    scheme = list(meta.get("classes") or []) or _index_classes(meta) or ClassScheme.default().names
    ordered = [c for c in scheme if c in present]
    return ordered + sorted(present - set(ordered))


def _index_attrs(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``geoclf`` attrs of the chip index the features came from, if it is still there."""
    path = _source(meta).get("path")
    if _source(meta).get("kind", "index") != "index" or not path or not Path(path).is_file():
        return {}
    from tiling.index import read_index

    try:
        return dict(read_index(path).attrs.get("geoclf") or {})
    except InputError:  # a moved or damaged index only costs the class order and legend, not the training
        return {}


def _index_classes(meta: Mapping[str, Any]) -> list[str]:
    return [str(c) for c in _index_attrs(meta).get("classes") or []]


def _class_groups(meta: Mapping[str, Any], classes: Sequence[str]) -> dict[str, list[int]] | None:
    """NLCD codes of each class, from the chip index's tiling parameters (for map legends)."""
    recorded = meta.get("classes")
    groups = recorded if isinstance(recorded, Mapping) else (_index_attrs(meta).get("params") or {}).get(
        "classes") or {}
    if not all(c in groups for c in classes):
        default = ClassScheme.default().to_dict()
        groups = default if all(c in default for c in classes) else {}
    return {c: [int(code) for code in groups[c]] for c in classes} if groups else None


def _source(meta: Mapping[str, Any]) -> dict[str, Any]:
    source = meta.get("source")
    return dict(source) if isinstance(source, Mapping) else {}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _short(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("sha256", value.get("weights", value))
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        value = json.loads(text)
    except ValueError:
        return text
    # a float like 1e400 parses to inf; keep the text so scikit-learn reports it
    return text if isinstance(value, float) and not math.isfinite(value) else value
