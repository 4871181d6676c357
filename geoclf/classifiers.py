"""Classifiers on CNN features: scikit-learn pipelines trained on the train split, scored on validation.

``train_classifier`` is the whole ``geoclf train`` stage: read and check feature directories, fit
``Pipeline(StandardScaler, classifier)`` on the chips with ``split == "train"``, evaluate on ``split ==
"val"``, save a ``features`` model artifact and record the run. Reading, checking and recording are the
training core :mod:`geoclf.training` shares with sweeps. Every check on the input runs before anything is
written, so bad input leaves neither a run nor an artifact behind.

scikit-learn estimators are imported by name when one is made (:data:`CLASSIFIERS`): importing every
estimator module up front would cost seconds for the one a run uses.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from geoclf import runs
from geoclf.export import EXPORT_ERROR_TAG, featurizer_has_network, wants_export
from geoclf.metrics import evaluate, scalar_metrics
from geoclf.training import (
    FeatureSet,
    comparison,
    fit_baseline,
    fit_notes,
    load_features,
    prepare_split,
    record_features_model,
)
from tiling.errors import InputError

PathLike = str | os.PathLike[str]

#: Classifier name -> (``module:class``, geoclf's defaults where they differ from scikit-learn's).
#: ``max_iter=1000``: lbfgs rarely converges in 100 iterations on 1000+ standardized CNN features.
CLASSIFIERS: dict[str, tuple[str, dict[str, Any]]] = {
    "logistic_regression": ("sklearn.linear_model:LogisticRegression", {"max_iter": 1000}),
    "random_forest": ("sklearn.ensemble:RandomForestClassifier", {"n_estimators": 200}),
}


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
        warnings: fit warnings worth showing (e.g. no convergence), and why the export failed if it did.
        comparison: the model's validation accuracy with its 95% confidence interval beside the spectral
            baseline's (:func:`geoclf.training.comparison`), as recorded in ``comparison.json``.
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
    comparison: dict[str, Any] | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """The validation scores as recorded in the run history (``accuracy``, ``kappa``, ``recall.<Class>``...)."""
        return scalar_metrics(self.evaluation)


def block_scaler(blocks: Mapping[str, Sequence[int]]) -> Any:
    """Standardize every block of a feature vector on its own, then weigh it so each block carries the same
    total variance: a ``ColumnTransformer`` of one ``StandardScaler`` per block, block ``b`` of ``d_b``
    columns weighted ``sqrt(D / (k d_b))`` (``k`` blocks, ``D`` columns in all, so the vector keeps the total
    variance plain standardization gives it and a classifier's regularization means what it meant).

    Without it the 1,280 CNN columns of a combined vector outweigh its 22 spectral ones 58 to 1 under a
    logistic regression's penalty; measured by spatial cross-validation on the quickstart scene, equal
    blocks lift CNN + spectral from 0.929 to 0.962 (docs/featurize.md).

    Args:
        blocks: block name -> ``[start, stop)`` columns (``features.json``'s ``blocks``).

    Raises:
        InputError: blocks that overlap, are empty or leave columns out.
    """
    from sklearn.compose import ColumnTransformer  # here: only combined features need it

    spans = sorted((int(v[0]), int(v[1]), str(k)) for k, v in blocks.items())
    if not spans or spans[0][0] != 0 or any(a >= b for a, b, _ in spans) or any(
            spans[i][1] != spans[i + 1][0] for i in range(len(spans) - 1)):
        raise InputError(f"feature blocks {dict(blocks)} do not tile the vector")
    total = spans[-1][1]
    return ColumnTransformer(
        [(name, StandardScaler(), np.arange(start, stop)) for start, stop, name in spans],
        transformer_weights={name: math.sqrt(total / (len(spans) * (stop - start))) for start, stop, name in spans})


def make_classifier(classifier: str = "logistic_regression", params: Mapping[str, Any] | None = None,
                    seed: int = 0, blocks: Mapping[str, Sequence[int]] | None = None) -> Any:
    """An unfitted ``Pipeline(StandardScaler, <classifier>)`` with geoclf's defaults, ``params`` and seed.

    Args:
        classifier: a key of :data:`CLASSIFIERS`.
        params: constructor parameters of the scikit-learn classifier (e.g. ``{"C": 0.5}``).
        seed: ``random_state``, unless ``params`` sets it.
        blocks: the vector's blocks (``features.json``'s ``blocks``, a combined featurizer's): then each block
            is standardized and weighed on its own (:func:`block_scaler`) instead of one ``StandardScaler``.

    Raises:
        InputError: unknown classifier or parameter (the message lists the valid ones).
    """
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
    scale = block_scaler(blocks) if blocks and len(blocks) > 1 else StandardScaler()
    return Pipeline([("scale", scale), ("classifier", estimator_class(**settings))])


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
                     runs_dir: PathLike | None = None, export: bool | None = False) -> TrainResult:
    """Train a classifier on CNN features, evaluate it, save the model artifact and record the run.

    Args:
        features: one or more feature directories (``geoclf featurize`` output) with ``train`` and ``val``
            chips; several directories must come from the same backbone and weights.
        classifier: a key of :data:`CLASSIFIERS`.
        params: classifier parameters (see :func:`make_classifier`).
        name: run name (default ``<classifier>-<backbone>``).
        seed: random seed of the classifier.
        runs_dir: runs directory or tracking URI (see :func:`geoclf.runs.run_store`).
        export: export the featurizer's network into the model artifact (``network.onnx``, its hash in
            ``model.json``, as ``geoclf models export`` does) before the run records it, so the model scores
            on OpenVINO by default; ``None``: where the featurizer has a network and the ONNX exporter is
            installed (``geoclf train``'s default). A failed export keeps the model (without export) and adds
            a warning; see :func:`geoclf.export.export_trained`. The library's default is no export: a
            CNN's export takes 10-30 s, more than many fits.

    Returns:
        The fitted pipeline, its validation metrics, the artifact directory and the run id.

    Raises:
        InputError: bad features (see :func:`load_features`), no train or no validation chips, a class in
            validation that training never saw, unknown classifier or parameter, an invalid parameter value,
            ``export=True`` for a featurizer without a network or without the ONNX exporter installed.
    """
    data = load_features(features)
    exported = wants_export(export, featurizer_has_network(data.featurizer),
                            f"a model on {data.featurizer.kind} features")
    split = prepare_split(data)
    pipeline = make_classifier(classifier, params, seed, blocks=data.meta.get("blocks"))
    name = name or f"{classifier}-{data.meta.get('backbone') or data.featurizer.kind}"

    started = time.perf_counter()
    with fit_notes() as notes:
        try:
            pipeline.fit(split.x_train, split.y_train)
        except ValueError as exc:
            # scikit-learn validates parameter values when fitting (InvalidParameterError is a ValueError)
            if type(exc).__name__ == "InvalidParameterError":
                raise InputError(str(exc).strip().splitlines()[0]) from exc
            raise
    fit_seconds = time.perf_counter() - started
    predicted = pipeline.predict(split.x_val)
    evaluation = evaluate(split.y_val, predicted, split.classes)
    compared = comparison(split, predicted, fit_baseline(data, split, seed))
    run_id = record_features_model(name, pipeline, data, split, evaluation, classifier=classifier,
                                   params=params or {}, seed=seed, metrics={"fit_seconds": fit_seconds},
                                   notes=notes, compared=compared, runs_dir=runs_dir, export=exported)
    recorded = runs.get_run(run_id, runs_dir=runs_dir)
    artifact_dir = runs.artifact_path(recorded)
    failed = recorded.tags.get(EXPORT_ERROR_TAG)
    return TrainResult(name=name, run_id=run_id, classifier=pipeline, classes=split.classes, evaluation=evaluation,
                       artifact_dir=artifact_dir, n_train=len(split.y_train), n_val=len(split.y_val),
                       warnings=(*notes, *([failed] if failed else [])), comparison=compared)


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


__all__ = ["CLASSIFIERS", "FeatureSet", "TrainResult", "block_scaler", "load_features", "make_classifier",
           "parse_params", "train_classifier"]
