"""The training core shared by ``geoclf train`` and ``geoclf sweep`` (and, for classes, ``geoclf finetune``).

- :func:`load_features`: feature directories read and checked as one :class:`FeatureSet`;
- :func:`prepare_split`: its train and validation arrays with every check a fit needs, the class order and
  (for spatial cross-validation) the spatial block of every train chip, as a :class:`TrainingSplit`;
- :func:`class_order` and :func:`class_groups`: a model's classes in the order and with the NLCD grouping of
  the class scheme its chips were tiled with (:func:`tiling.index.index_scheme`), whichever kind of model;
- :func:`fit_notes`: the fit warnings worth showing a user;
- :func:`fit_baseline` and :func:`comparison`: the spectral baseline on the same split, and the model's
  validation accuracy beside it with 95% confidence intervals (recorded as ``comparison.json``);
- :func:`record_features_model`: a fitted classifier recorded as a ``train`` run with its model artifact.

Every check runs before anything is written: bad input leaves neither a run nor an artifact behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from geoclf import runs
from geoclf.export import export_tags, export_trained
from geoclf.features import BASELINE_COLUMN, read_features
from geoclf.features_model import save_features_model
from geoclf.featurizers import Featurizer, featurizer_from_meta
from geoclf.metrics import accuracy_interval, evaluate, evaluation_to_json
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.index import index_scheme, read_index

PathLike = str | os.PathLike[str]

_REQUIRED = ("feature_dim", "bands", "chip_size")

#: ``features.json`` field describing the baseline column's featurizer.
BASELINE_META = "baseline"

#: Run artifact holding the model's accuracy interval beside the spectral baseline's (:func:`comparison`).
COMPARISON_FILE = "comparison.json"


@dataclass(frozen=True)
class FeatureSet:
    """Feature vectors of chips, from one or more feature directories made with the same featurizer.

    Attributes:
        meta: ``features.json`` of the first directory (all directories agree on the featurizer).
        rows: one row per chip: ``chip_id``, ``label``, ``split`` and any extra named columns.
        features: ``(len(rows), feature_dim)`` float32 feature vectors, in ``rows`` order.
        directories: the feature directories read.
        baseline: ``(len(rows), d)`` float32 vectors of the spectral baseline (the ``baseline`` column), or
            ``None`` when a directory has none (made before there was one) or they disagree on it.
    """

    meta: dict[str, Any]
    rows: pd.DataFrame
    features: np.ndarray
    directories: tuple[Path, ...]
    baseline: np.ndarray | None = None

    @property
    def featurizer(self) -> Featurizer:
        """The featurizer the vectors were computed with (what a model trained on them featurizes chips with)."""
        return featurizer_from_meta(self.meta)

    @property
    def source(self) -> dict[str, Any]:
        """The chips the features came from (``features.json``'s ``source``: kind, path, sha256)."""
        source = self.meta.get("source")
        return dict(source) if isinstance(source, Mapping) else {}

    @property
    def where(self) -> Path | None:
        """The directory to name in messages (``None`` for several)."""
        return self.directories[0] if len(self.directories) == 1 else None

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Feature vectors and labels of the labelled chips of split ``name`` (``train`` or ``val``)."""
        mask = self._labelled(name)
        return self.features[mask], self.rows.loc[mask, "label"].astype(str).to_numpy(dtype=object)

    @property
    def baseline_featurizer(self) -> Featurizer | None:
        """The featurizer of :attr:`baseline` (``None`` without a baseline)."""
        described = self.meta.get(BASELINE_META)
        return None if self.baseline is None or not isinstance(described, Mapping) else featurizer_from_meta(described)

    def _labelled(self, name: str) -> np.ndarray:
        return (self.rows["split"] == name).to_numpy() & self.rows["label"].notna().to_numpy()


@dataclass(frozen=True)
class TrainingSplit:
    """What a fit needs from a :class:`FeatureSet`, checked (see :func:`prepare_split`).

    Attributes:
        x_train, y_train: feature vectors and labels of the train split.
        x_val, y_val: those of the validation split.
        classes: class names in output order (the chip index's scheme order, then others A-Z).
        groups: spatial block of each train chip (spatial cross-validation), or ``None``.
        val_groups: spatial block of each validation chip (confidence intervals), or ``None`` where the chip
            index is not there to say.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: list[str]
    groups: np.ndarray | None = None
    val_groups: np.ndarray | None = None


def load_features(directories: PathLike | Sequence[PathLike]) -> FeatureSet:
    """Read feature directories (``geoclf featurize`` output) and check they can be used together.

    Raises:
        InputError: a directory is not a features directory or is incomplete, feature vectors have the
            wrong length, directories come from different featurizers (backbones, weights, preprocessing),
            or a chip appears twice.
    """
    dirs = [Path(directories)] if isinstance(directories, str | os.PathLike) else [Path(d) for d in directories]
    if not dirs:
        raise InputError("no features directory given")
    metas, signatures, frames, matrices, baselines = [], [], [], [], []
    for directory in dirs:
        meta, frame = read_features(directory)
        missing = [k for k in _REQUIRED if k not in meta]
        if missing:
            raise InputError(f"features.json lacks {', '.join(missing)}; featurize again with this geoclf",
                             directory)
        try:
            featurizer = featurizer_from_meta(meta)
        except InputError as exc:
            raise InputError(f"features.json: {exc}; featurize again with this geoclf", directory) from exc
        expected = meta.get("chips")
        if isinstance(expected, int) and len(frame) < expected:
            raise InputError(f"holds {len(frame)} of {expected} chips: featurization did not finish; rerun "
                             "geoclf featurize to complete it", directory)
        # vectors of different featurizers (backbones, weights, preprocessing) live in different spaces
        signature = {**featurizer.describe(), "chip_size": meta.get("chip_size")}
        for other_dir, other in zip(dirs, signatures, strict=False):
            different = [k for k in {**signature, **other} if _canonical(signature.get(k)) != _canonical(other.get(k))]
            if different:
                k = different[0]
                raise InputError(f"features from different backbones cannot be mixed: {k} is "
                                 f"{_short(signature.get(k))} here and {_short(other.get(k))} in {other_dir}",
                                 directory)
        matrices.append(_feature_matrix(frame, int(meta["feature_dim"]), directory))
        baselines.append(_baseline_matrix(frame, meta, directory))
        frames.append(frame.drop(columns=[c for c in ("features", BASELINE_COLUMN) if c in frame.columns]))
        metas.append(meta)
        signatures.append(signature)
    rows = pd.concat(frames, ignore_index=True)
    for column in ("label", "split"):
        if column not in rows.columns:
            rows[column] = None
    duplicated = rows["chip_id"].duplicated()
    if duplicated.any():
        raise InputError(f"chip {rows.loc[duplicated, 'chip_id'].iloc[0]!r} appears more than once "
                         f"({int(duplicated.sum())} duplicates): is a features directory given twice?")
    # one baseline for all or none: directories of RGB and of RGBN imagery have different statistics
    same = len({_canonical(m.get(BASELINE_META)) for m in metas}) == 1
    baseline = np.concatenate(baselines) if same and all(b is not None for b in baselines) else None
    return FeatureSet(metas[0], rows, np.concatenate(matrices), tuple(d.resolve() for d in dirs), baseline)


def prepare_split(data: FeatureSet, cv_folds: int | None = None) -> TrainingSplit:
    """The train and validation arrays of ``data``, checked for fitting, with the class order.

    Args:
        data: the features.
        cv_folds: also give the spatial block of every train chip, checked to be at least this many
            blocks (spatial cross-validation; the blocks come from a ``block`` column of the features, else
            from the chip index ``features.json`` names).

    Raises:
        InputError: no labelled train or validation chips, a validation class training never saw, a
            single training class, too few spatial blocks (or none known) for ``cv_folds``.
    """
    where = data.where
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
    classes = class_order(set(y_train), features_scheme(data.meta))
    if len(classes) < 2:
        raise InputError(f"the train split holds a single class ({classes[0]!r}); a classifier needs two or more",
                         where)
    groups = None
    try:
        val_groups = split_blocks(data, "val")
    except InputError:  # the chip index is gone: intervals take the chips as independent
        val_groups = None
    if cv_folds:
        groups = split_blocks(data, "train")
        blocks = len(set(groups))
        if blocks < cv_folds:
            raise InputError(f"the train split spans {blocks} spatial blocks, too few for {cv_folds} spatial "
                             "cross-validation folds; use fewer folds or smaller blocks when tiling", where)
    return TrainingSplit(x_train, y_train, x_val, y_val, classes, groups, val_groups)


def features_scheme(meta: Mapping[str, Any]) -> ClassScheme | None:
    """The class scheme of the chips features were computed from: ``features.json``'s own ``classes``
    grouping if it has one, else the chip index's (:func:`tiling.index.index_scheme`); ``None`` when neither is
    known (PNG chips, a chip index moved away or damaged)."""
    recorded = meta.get("classes")
    if isinstance(recorded, Mapping):
        return ClassScheme.from_mapping(recorded)
    source = meta.get("source")
    return chips_scheme(source if isinstance(source, Mapping) else {})


def chips_scheme(source: Mapping[str, Any]) -> ClassScheme | None:
    """The class scheme of a chip source as :func:`geoclf.features.load_chip_table` describes it (``kind``,
    ``path``): its chip index's, or ``None`` for PNG chips or an index that is gone or damaged."""
    path = source.get("path")
    if source.get("kind", "index") != "index" or not path or not Path(path).is_file():
        return None
    try:
        return index_scheme(read_index(path))
    except InputError:  # a damaged index only costs the class order and legend, not the training
        return None


def class_order(present: set[str], scheme: ClassScheme | None) -> list[str]:
    """A model's classes: those of ``scheme`` (default: geoclf's default scheme) present, in its order, then
    any others A-Z. Land-use maps store class ``i`` as code ``i + 1``, so every kind of model orders alike."""
    names = (scheme or ClassScheme.default()).names
    ordered = [c for c in names if c in present]
    return ordered + sorted(present - set(ordered))


def class_groups(classes: Sequence[str], scheme: ClassScheme | None) -> dict[str, list[int]] | None:
    """NLCD codes of each class (map legends and colours): from ``scheme`` when it has every class, else
    from the default scheme when that has them all (chips without a recorded scheme, e.g. PNG folders), else
    ``None``."""
    for candidate in (scheme, ClassScheme.default()):
        if candidate is not None and all(c in candidate.groups for c in classes):
            return {c: [int(code) for code in candidate.groups[c]] for c in classes}
    return None


@contextmanager
def fit_notes() -> Iterator[list[str]]:
    """Collect the fit warnings worth showing (no convergence) of the block, once each, as one-line texts."""
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield notes
    notes.extend(dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught
                               if issubclass(w.category, ConvergenceWarning)))


def fit_baseline(data: FeatureSet, split: TrainingSplit, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, Any] | None:
    """The spectral baseline on ``split``'s chips: standardized band statistics and a logistic regression.

    It is fitted on the same train chips as the model and scored on the same validation chips, so a reader of
    a results report sees at once whether a CNN earns its cost (issue 13: on real 4-band imagery it often
    does not).

    Returns:
        JSON-ready: ``featurizer`` (its description), ``classifier``, ``evaluation``
        (:func:`geoclf.metrics.evaluation_to_json`) and ``interval`` (:func:`geoclf.metrics.accuracy_interval`
        over the validation blocks); ``None`` when the features hold no baseline (made by an older geoclf).
    """
    featurizer = data.baseline_featurizer
    if data.baseline is None or featurizer is None:
        return None
    train, val = data._labelled("train"), data._labelled("val")
    pipeline = Pipeline([("scale", StandardScaler()),
                         ("classifier", LogisticRegression(max_iter=1000, random_state=seed))])
    with fit_notes():  # a baseline that does not converge is still the baseline; its warnings are not the model's
        pipeline.fit(data.baseline[train], split.y_train)
    predicted = pipeline.predict(data.baseline[val])
    evaluation = evaluate(split.y_val, predicted, split.classes)
    return {"featurizer": featurizer.describe(), "classifier": "logistic_regression",
            "evaluation": evaluation_to_json(evaluation),
            "interval": accuracy_interval(predicted == split.y_val, split.val_groups, confidence).to_json()}


def comparison(split: TrainingSplit, predicted: np.ndarray, baseline: Mapping[str, Any] | None,
               confidence: float = 0.95) -> dict[str, Any]:
    """What a ``train`` run records in ``comparison.json``: the model's validation accuracy with its confidence
    interval beside the spectral baseline's (:func:`fit_baseline`), on the same chips.

    Returns:
        JSON-ready: ``model`` and ``baseline`` (``None`` without one) intervals, ``confidence``, ``method``
        and the baseline's description.
    """
    model = accuracy_interval(np.asarray(predicted) == split.y_val, split.val_groups, confidence)
    return {"confidence": confidence, "method": model.method, "model": model.to_json(),
            "baseline": None if baseline is None else dict(baseline)}


def comparison_metrics(compared: Mapping[str, Any]) -> dict[str, float]:
    """The run-history metrics of a :func:`comparison`: ``accuracy.ci_low``/``accuracy.ci_high`` and
    ``baseline.accuracy`` with its ``.ci_low``/``.ci_high``."""
    model = compared["model"]
    metrics = {"accuracy.ci_low": model["low"], "accuracy.ci_high": model["high"]}
    if compared.get("baseline"):
        base = compared["baseline"]["interval"]
        metrics.update({"baseline.accuracy": base["accuracy"], "baseline.accuracy.ci_low": base["low"],
                        "baseline.accuracy.ci_high": base["high"]})
    return {k: float(v) for k, v in metrics.items()}


def record_features_model(name: str, pipeline: Any, data: FeatureSet, split: TrainingSplit,
                          evaluation: Mapping[str, Any], *, classifier: str, params: Mapping[str, Any],
                          seed: int, metrics: Mapping[str, float] | None = None, notes: Sequence[str] = (),
                          run_params: Mapping[str, Any] | None = None, provenance: Mapping[str, Any] | None = None,
                          parent: str | None = None, compared: Mapping[str, Any] | None = None,
                          runs_dir: PathLike | None = None, export: bool = False) -> str:
    """Record a fitted classifier as a ``train`` run: parameters, the evaluation, its ``features`` model artifact.

    Args:
        name: run name (and model name).
        pipeline: the fitted ``Pipeline(StandardScaler, classifier)``.
        data: the features it was trained on (their featurizer goes into the artifact).
        split: the split it was fitted and evaluated on.
        evaluation: :func:`geoclf.metrics.evaluate` on the validation split.
        classifier: its key in :data:`geoclf.classifiers.CLASSIFIERS`.
        params: the classifier parameters asked for.
        seed: its random seed.
        metrics: more metrics to record (``fit_seconds``, cross-validation scores).
        notes: fit warnings, recorded as the ``warnings`` tag.
        run_params: more run parameters (e.g. ``cv_folds``).
        provenance: more provenance for ``model.json`` (e.g. ``sweep_parent``).
        parent: parent run id (a sweep's), also tagged ``geoclf.sweep_parent``.
        compared: the model beside the spectral baseline (:func:`comparison`), recorded as ``comparison.json``
            and as :func:`comparison_metrics`.
        runs_dir: runs directory or tracking URI (see :func:`geoclf.runs.run_store`).
        export: export the artifact's network to ONNX before the run records it
            (:func:`geoclf.export.export_trained`), so the model scores on OpenVINO; the outcome is tagged on
            the run (:data:`geoclf.export.EXPORT_TAG`, or :data:`geoclf.export.EXPORT_ERROR_TAG` when the
            export failed and the model was recorded without it).

    Returns:
        The run id.
    """
    meta, source = data.meta, data.source
    features = [str(d) for d in data.directories]
    n_train, n_val = len(split.y_train), len(split.y_val)
    effective = pipeline.named_steps["classifier"].get_params()
    recorded = {
        "classifier": classifier,
        **{f"classifier.{k}": v for k, v in sorted(effective.items())},
        "backbone": meta.get("backbone"),
        "weights": meta.get("weights"),
        "feature_layer": meta.get("feature_layer"),
        "feature_dim": int(meta["feature_dim"]),
        "bands": list(meta["bands"]),
        "chip_size": int(meta["chip_size"]),
        "features": features,
        "chip_index": source.get("path"),
        "chip_index_sha256": source.get("sha256"),
        "classes": split.classes,
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        **dict(run_params or {}),
    }
    tags = {} if parent is None else {"geoclf.sweep_parent": parent}
    with runs.start_run(name, "train", params=recorded, tags=tags, runs_dir=runs_dir, parent=parent) as run:
        run.log_evaluation(evaluation)
        run.log_metrics(dict(metrics or {}))
        if compared is not None:
            run.log_json(dict(compared), COMPARISON_FILE)
            run.log_metrics(comparison_metrics(compared))
        if notes:
            run.set_tags({"warnings": " | ".join(notes)})
        origin = {"run_id": run.run_id, **dict(provenance or {}), "features": features,
                  "chip_size_m": meta.get("chip_size_m"), "chip_index": source.get("path"),
                  "chip_index_sha256": source.get("sha256"), "classifier": classifier, "params": dict(params),
                  "seed": seed, "n_train": n_train, "n_val": n_val}
        with tempfile.TemporaryDirectory(prefix="geoclf-model-") as tmp:
            staged = save_features_model(
                Path(tmp) / runs.MODEL_ARTIFACT, classifier=pipeline, classes=split.classes,
                featurizer=data.featurizer, chip_size=int(meta["chip_size"]), name=name,
                metrics=evaluation_to_json(evaluation),
                class_groups=class_groups(split.classes, features_scheme(meta)), provenance=origin)
            if export:  # into the staged artifact: the run records it whole, on a tracking server too
                run.set_tags(export_tags(*export_trained(staged, name)))
            run.log_artifact_dir(staged, runs.MODEL_ARTIFACT)
        return run.run_id


def split_blocks(data: FeatureSet, name: str = "train") -> np.ndarray:
    """The spatial block of every labelled chip of split ``name``, in :meth:`FeatureSet.split` order: a
    ``block`` column of the features, else the chip index's (``features.json`` names it).

    Raises:
        InputError: the chip index is not there, has no blocks, or lacks a chip.
    """
    rows = data.rows
    mask = data._labelled(name)
    if "block" in rows.columns:
        blocks = rows["block"]
    else:
        path = data.source.get("path")
        if not path or not Path(path).is_file():
            raise InputError(f"spatial cross-validation needs the chip index's blocks, but the chip index "
                             f"{path or '(not recorded)'} is not there; run without --cv-folds or tile again")
        index = read_index(path)
        if "block" not in index.columns:
            raise InputError("has no block column for spatial cross-validation", path)
        blocks = rows["chip_id"].map(dict(zip(index["chip_id"], index["block"], strict=True)))
    picked = blocks[mask]
    if picked.isna().any():
        raise InputError(f"chip {rows.loc[mask, 'chip_id'][picked.isna()].iloc[0]!r} has no spatial block in the "
                         "chip index; were the features made from another index?")
    return picked.astype(str).to_numpy(dtype=object)


def _baseline_matrix(frame: pd.DataFrame, meta: Mapping[str, Any], directory: Path) -> np.ndarray | None:
    """The baseline column as a matrix, or ``None`` when the directory has none (features of an older geoclf)."""
    described = meta.get(BASELINE_META)
    if BASELINE_COLUMN not in frame.columns or not isinstance(described, Mapping):
        return None
    try:
        dim = featurizer_from_meta(described).feature_dim
    except InputError as exc:
        raise InputError(f"features.json: baseline: {exc}", directory) from exc
    return _feature_matrix(frame.drop(columns=["features"]).rename(columns={BASELINE_COLUMN: "features"}), dim,
                           directory)


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


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _short(value: Any) -> str:
    if isinstance(value, Mapping):
        value = value.get("sha256", value.get("weights", value))
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = [
    "BASELINE_META",
    "COMPARISON_FILE",
    "FeatureSet",
    "TrainingSplit",
    "class_groups",
    "class_order",
    "comparison",
    "comparison_metrics",
    "features_scheme",
    "fit_baseline",
    "fit_notes",
    "load_features",
    "prepare_split",
    "record_features_model",
    "split_blocks",
]
