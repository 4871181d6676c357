"""Parameter sweeps of a classifier on features: every fit a Dask task, every fit a child run of one parent.

A sweep is a grid (or a random sample of it) over a classifier's parameters. The client reads the features
once, sends them to the cluster once (:meth:`distributed.Client.scatter`), and submits one task per
parameter set; workers only fit and predict, returning the fitted pipeline and its validation
predictions. Everything that touches the run history happens here on the client, as results arrive, so
workers need no access to it: each fit becomes a ``train`` run under one parent run, with the same
parameters, metrics and model artifact as ``geoclf train`` writes, and the parent records which child won.

Choosing: the best fit by a metric on the validation split (the spatial split the chip index made, so
neighbouring chips do not leak between train and validation), or, with ``cv_folds``, by the same metric
over spatial cross-validation on the train split, where whole spatial blocks (the chip index's ``block``)
form the folds.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pickle
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, cross_val_predict
from tqdm.auto import tqdm

from geoclf import runs
from geoclf.classifiers import make_classifier, parse_params
from geoclf.features import META_FILE
from geoclf.featurizers import featurizer_from_meta
from geoclf.metrics import evaluate, scalar_metrics
from geoclf.training import (
    FeatureSet,
    TrainingSplit,
    comparison,
    fit_baseline,
    fit_notes,
    load_features,
    prepare_split,
    record_features_model,
)
from tiling.errors import InputError
from tiling.parallel import Scheduler, dashboard_link, dask_client

PathLike = str | os.PathLike[str]

#: Tag on a sweep's parent run (value ``parent``); children carry ``geoclf.sweep_parent``.
SWEEP_TAG = "geoclf.sweep"
#: Tags on the parent naming the winning child run.
BEST_RUN_TAG = runs.SWEEP_BEST_RUN_TAG
BEST_NAME_TAG = "geoclf.sweep.best_run_name"
#: Tags on the parent naming the winning fit's featurizer and classifier.
BEST_FEATURES_TAG = "geoclf.sweep.best_features"
BEST_CLASSIFIER_TAG = "geoclf.sweep.best_classifier"
#: Tag on the parent holding the metric the sweep was chosen by (e.g. ``accuracy`` or ``cv_accuracy``).
METRIC_TAG = "geoclf.sweep.metric"
SEARCHES = ("grid", "random")


@dataclass(frozen=True)
class FitData:
    """What every fit of a sweep needs, sent to the cluster once.

    Attributes:
        x_train, y_train: feature vectors and labels of the train split.
        x_val: feature vectors of the validation split.
        groups: spatial block of each train chip (for spatial cross-validation), or ``None``.
        blocks: the feature vector's blocks (a combined featurizer's), each scaled on its own, or ``None``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    groups: np.ndarray | None = None
    blocks: dict[str, list[int]] | None = None

    @property
    def nbytes(self) -> int:
        """Size of the arrays, i.e. roughly what sending them to a worker costs."""
        arrays = (self.x_train, self.y_train, self.x_val, self.groups)
        return int(sum(len(pickle.dumps(a, protocol=5)) for a in arrays if a is not None))


@dataclass(frozen=True)
class FitOutcome:
    """What a worker returns for one fit.

    Attributes:
        index: position of the parameter set in the sweep.
        pipeline: the fitted ``Pipeline``.
        val_pred: predicted class of every validation chip.
        cv_pred: out-of-fold predicted class of every train chip (spatial cross-validation), or ``None``;
            the client scores it fold by fold.
        fit_seconds: time to fit on the whole train split.
        warnings: fit warnings worth showing (no convergence).
    """

    index: int
    pipeline: Any
    val_pred: np.ndarray
    cv_pred: np.ndarray | None
    fit_seconds: float
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` produced.

    Attributes:
        name: sweep (parent run) name.
        parent_id: run id of the parent run.
        metric: the metric fits were ranked by (``cv_<metric>`` with cross-validation).
        fits: one row per fit, best first: ``features`` (the featurizer), ``classifier``, ``run_name``,
            ``run_id``, the swept parameters, the headline metrics, ``fit_seconds``.
        best_run_id, best_run_name: the winning child run.
        best_params: its parameters.
        best_score: its value of ``metric``.
        data_bytes: bytes of features the client sent to the cluster (one copy per worker present at the
            start; workers joining later copy from a peer).
        task_bytes: mean bytes of one fit's task arguments (parameters, references).
        wall_seconds: time from the first task submitted to the last result recorded.
        dashboard: the Dask dashboard address, if there was a cluster.
        best_features: the winning fit's featurizer (a short name, see ``fits["features"]``).
        best_classifier: the winning fit's classifier.
    """

    name: str
    parent_id: str
    metric: str
    fits: pd.DataFrame
    best_run_id: str
    best_run_name: str
    best_params: dict[str, Any]
    best_score: float
    data_bytes: int
    task_bytes: float
    wall_seconds: float
    dashboard: str | None = None
    best_features: str | None = None
    best_classifier: str | None = None


def parse_space(items: Sequence[str]) -> dict[str, list[Any]]:
    """Parse ``--param`` values of a sweep: ``KEY=V1,V2,...`` -> ``{KEY: [V1, V2, ...]}``.

    Values are converted as :func:`geoclf.classifiers.parse_params` converts single values (numbers,
    ``true``/``false``, ``none``); commas inside brackets do not split (``hidden=[64,32],[128]``).

    Raises:
        InputError: an item is not ``KEY=VALUES``, a key is given twice, or a key has no values.
    """
    space: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"sweep parameter {item!r} is not KEY=VALUE1,VALUE2,...")
        if key in space:
            raise InputError(f"sweep parameter {key!r} is given twice; list all its values in one --param")
        values = [v.strip() for v in _split_values(text) if v.strip()]
        if not values:
            raise InputError(f"sweep parameter {key!r} has no values: the grid would be empty")
        space[key] = [parse_params([f"{key}={v}"])[key] for v in values]
    return space


def grid(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values in ``space`` (the first key varies slowest)."""
    keys = list(space)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(space[k] for k in keys))]


def sample(space: Mapping[str, Sequence[Any]], n_iter: int, seed: int = 0) -> list[dict[str, Any]]:
    """Random search: ``n_iter`` distinct combinations drawn from the grid (all of it if it is smaller)."""
    if n_iter < 1:
        raise InputError(f"random search needs --n-iter of 1 or more, not {n_iter}")
    combos = grid(space)
    if n_iter >= len(combos):
        return combos
    picked = sorted(random.Random(seed).sample(range(len(combos)), n_iter))
    return [combos[i] for i in picked]


def candidates(classifier: str, space: Mapping[str, Sequence[Any]], search: str = "grid",
               n_iter: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The parameter sets a sweep fits, each checked against the classifier before anything runs.

    Raises:
        InputError: an unknown search or classifier, a parameter the classifier does not have (the
            message lists the valid ones), an invalid value, or an empty grid.
    """
    if search not in SEARCHES:
        raise InputError(f"unknown search {search!r}; valid searches: {', '.join(SEARCHES)}")
    if not space or any(len(v) == 0 for v in space.values()):
        raise InputError("the parameter grid is empty; give --param KEY=VALUE1,VALUE2,... at least once")
    combos = grid(space) if search == "grid" else sample(space, n_iter or 10, seed)
    for params in combos:
        estimator = make_classifier(classifier, params, seed).named_steps["classifier"]
        _validate_values(estimator, params)
    return combos


def run_sweep(features: PathLike | Sequence[PathLike], classifier: str | Sequence[str] = "logistic_regression",
              space: Mapping[str, Sequence[Any]] | None = None, *, search: str = "grid", n_iter: int | None = None,
              metric: str = "accuracy", cv_folds: int | None = None, name: str | None = None, seed: int = 0,
              scheduler: Scheduler = None, n_workers: int | None = None, runs_dir: PathLike | None = None,
              progress: bool = True) -> SweepResult:
    """Fit classifiers for every parameter set of a grid or random search, on every featurizer's features, on
    Dask, and record every fit.

    Feature directories made with one featurizer are read together (more chips, as ``geoclf train`` reads
    them); directories of different featurizers (backbones, weights, spectral or combined) are *compared*:
    every classifier and parameter set is fitted on each, so ``cv_folds`` chooses the featurizer, the
    classifier and its parameters by spatial cross-validation on the train split at once. Featurizers
    compared must hold the same chips.

    Args:
        features: features directories (``geoclf featurize`` output) with ``train`` and ``val`` chips.
        classifier: a key of :data:`geoclf.classifiers.CLASSIFIERS`, or several to compare.
        space: parameter name -> values to try (see :func:`parse_space`). With several classifiers, each
            takes the parameters it has (and its defaults when it has none of them).
        search: ``grid`` (every combination) or ``random`` (``n_iter`` combinations of the grid).
        n_iter: combinations of a random search (default 10).
        metric: validation metric to choose by (``accuracy``, ``balanced_accuracy``, ``kappa``, ...).
        cv_folds: choose by spatial cross-validation on the train split with this many folds of whole
            spatial blocks instead of by the validation split.
        name: parent run name (default ``sweep-<classifier>``); children are ``<name>-NNN``.
        seed: random seed of the classifiers and of the random search.
        scheduler: where fits run (see :func:`tiling.parallel.dask_client`): ``None``/``"local"``, ``"sync"``,
            an address, a client or a cluster object (e.g. from :func:`geoclf.cluster.cluster_from_recipe`).
        n_workers: worker processes of a new LocalCluster.
        runs_dir: runs directory or tracking URI (see :func:`geoclf.runs.run_store`).
        progress: show a progress bar.

    Raises:
        InputError: bad features, an empty grid, unknown classifier, parameter or metric, too few spatial
            blocks for the folds, featurizers compared on different chips. All checked before any run is
            recorded or any task submitted.
    """
    if cv_folds is not None and cv_folds < 2:
        raise InputError(f"spatial cross-validation needs 2 or more folds, not {cv_folds}")
    classifiers = [classifier] if isinstance(classifier, str) else list(dict.fromkeys(classifier))
    if not classifiers:
        raise InputError("no classifier to sweep")
    groups = feature_groups(features)
    fits = [(g, name_, params) for name_, combos in _classifier_grids(classifiers, space or {}, search, n_iter, seed,
                                                                       comparing=len(groups) > 1)
            for g in range(len(groups)) for params in combos]
    splits = [prepare_split(data, cv_folds) for data in groups]
    _check_same_chips(groups)
    split = splits[0]
    valid_metrics = _metric_names(split.y_val, split.classes)
    if metric not in valid_metrics:
        raise InputError(f"unknown metric {metric!r}; valid metrics: {', '.join(valid_metrics)}")
    chosen_by = f"cv_{metric}" if cv_folds else metric
    name = name or f"sweep-{'-'.join(classifiers)}"
    fit_data = [FitData(s.x_train, s.y_train, s.x_val, s.groups, d.meta.get("blocks"))
                for d, s in zip(groups, splits, strict=True)]
    labels = _group_labels(groups)
    parent_params = {"classifier": classifiers[0] if len(classifiers) == 1 else classifiers, "search": search,
                     "space": {k: list(v) for k, v in (space or {}).items()}, "n_fits": len(fits),
                     "metric": metric, "cv_folds": cv_folds, "seed": seed,
                     "backbone": groups[0].meta.get("backbone"), "featurizers": labels,
                     "features": [str(d) for data in groups for d in data.directories],
                     "chip_index_sha256": groups[0].source.get("sha256"), "n_train": len(split.y_train),
                     "n_val": len(split.y_val)}
    rows: list[dict[str, Any]] = []
    with runs.start_run(name, "train", params=parent_params, tags={SWEEP_TAG: "parent", METRIC_TAG: chosen_by},
                        runs_dir=runs_dir) as parent:
        # once per featurizer: every fit on its features is compared with the same baseline
        baselines = [fit_baseline(d, s, seed) for d, s in zip(groups, splits, strict=True)]

        def record(outcome: FitOutcome) -> None:
            g, fitted, params = fits[outcome.index]
            row = _record_fit(outcome, params, groups[g], splits[g], fitted, seed, name, parent.run_id, cv_folds,
                              runs_dir, baselines[g])
            rows.append({"features": labels[g], "classifier": fitted, **row})

        started = time.perf_counter()
        data_bytes, task_bytes, link = _fit_all(fit_data, fits, seed, cv_folds, scheduler, n_workers, progress,
                                                record)
        wall = time.perf_counter() - started
        table = pd.DataFrame(rows)
        for key in space or {}:  # keep parameter values as given (10, None), not as floats with NaN
            table[key] = pd.Series([row.get(key) for row in rows], dtype=object)
        sign = 1.0 if runs.lower_is_better(chosen_by) else -1.0
        table["_rank"] = table[chosen_by].map(lambda v: math.inf if v is None or math.isnan(v) else sign * v)
        table = table.sort_values(["_rank", "index"], kind="stable").drop(columns=["_rank"]).reset_index(drop=True)
        best = table.iloc[0]
        parent.log_metrics({f"best_{chosen_by}": float(best[chosen_by]), "sweep_seconds": wall,
                            "data_bytes": data_bytes, "task_bytes": task_bytes})
        parent.set_tags({BEST_RUN_TAG: best["run_id"], BEST_NAME_TAG: best["run_name"],
                         BEST_FEATURES_TAG: best["features"], BEST_CLASSIFIER_TAG: best["classifier"]})
        parent_id = parent.run_id
    g, best_classifier, best_params = fits[int(best["index"])]
    return SweepResult(name=name, parent_id=parent_id, metric=chosen_by, fits=table.drop(columns=["index"]),
                       best_run_id=str(best["run_id"]), best_run_name=str(best["run_name"]),
                       best_params=dict(best_params), best_score=float(best[chosen_by]), data_bytes=data_bytes,
                       task_bytes=task_bytes, wall_seconds=wall, dashboard=link, best_features=labels[g],
                       best_classifier=best_classifier)


def feature_groups(features: PathLike | Sequence[PathLike]) -> list[FeatureSet]:
    """Feature directories grouped by featurizer, each group read as one :class:`FeatureSet`, in the order
    their first directory was given.

    Raises:
        InputError: a directory is not a features directory, or a group cannot be read together (see
            :func:`geoclf.training.load_features`).
    """
    dirs = [features] if isinstance(features, str | os.PathLike) else list(features)
    if not dirs:
        raise InputError("no features directory given")
    grouped: dict[str, list[PathLike]] = {}
    for directory in dirs:
        try:
            meta = json.loads((Path(directory) / META_FILE).read_text())
            key = json.dumps({**featurizer_from_meta(meta).describe(), "chip_size": meta.get("chip_size")},
                             sort_keys=True, default=str)
        except (OSError, ValueError, InputError):
            key = f"unreadable:{directory}"  # load_features says what is wrong with it
        grouped.setdefault(key, []).append(directory)
    return [load_features(group) for group in grouped.values()]


def sweep_children(parent: str, runs_dir: PathLike | None = None) -> list[Any]:
    """The child runs of a sweep (its fits), best first by the sweep's metric."""
    record = runs.get_run(parent, runs_dir=runs_dir)
    metric = record.tags.get(METRIC_TAG, "accuracy")
    children = [r for r in runs.list_run_records(sort=None, runs_dir=runs_dir) if r.parent_id == record.run_id]
    sign = 1.0 if runs.lower_is_better(metric) else -1.0
    return sorted(children, key=lambda r: (math.isnan(r.metrics.get(metric, math.nan)),
                                           sign * r.metrics.get(metric, 0.0)))


def best_of_sweep(parent: str, runs_dir: PathLike | None = None) -> Any:
    """The winning child run of a sweep (a :class:`geoclf.runs.RunRecord`).

    Raises:
        InputError: ``parent`` is not a sweep's parent run, or the sweep has no finished fit.
    """
    record = runs.get_run(parent, runs_dir=runs_dir)
    if record.tags.get(SWEEP_TAG) != "parent":
        raise InputError(f"run {record.name!r} ({record.run_id[:8]}) is not a sweep; give the sweep's parent run "
                         "(geoclf sweep prints it)")
    best = record.tags.get(BEST_RUN_TAG)
    if best:
        return runs.get_run(best, runs_dir=runs_dir)
    children = sweep_children(parent, runs_dir)
    if not children:
        raise InputError(f"sweep {record.name!r} has no finished fit")
    return children[0]


# -- on the workers ----------------------------------------------------------------------------------------


def fit_one(data: FitData, index: int, classifier: str, params: Mapping[str, Any], seed: int,
            cv_folds: int | None) -> FitOutcome:
    """Fit one parameter set (a Dask task): fit on the train split, predict the validation split and, with
    ``cv_folds``, the out-of-fold train predictions of spatial cross-validation."""
    pipeline = make_classifier(classifier, params, seed, blocks=data.blocks)
    with fit_notes() as notes:
        cv_pred = None
        if cv_folds:
            cv_pred = cross_val_predict(pipeline, data.x_train, data.y_train, groups=data.groups,
                                        cv=GroupKFold(n_splits=cv_folds), n_jobs=1)
        started = time.perf_counter()
        pipeline.fit(data.x_train, data.y_train)
        fit_seconds = time.perf_counter() - started
    return FitOutcome(index, pipeline, pipeline.predict(data.x_val), cv_pred, fit_seconds, tuple(notes))


# -- internals ---------------------------------------------------------------------------------------------


def _fit_all(data: Sequence[FitData], fits: Sequence[tuple[int, str, dict[str, Any]]], seed: int,
             cv_folds: int | None, scheduler: Scheduler, n_workers: int | None, progress: bool,
             on_result: Callable[[FitOutcome], None]) -> tuple[int, float, str | None]:
    """Run every fit (features group, classifier, parameters), calling ``on_result`` on the client as each
    finishes.

    Returns:
        Bytes of features the client sent to the cluster (once per worker present), mean bytes of a fit's
        task arguments, the dashboard address.
    """
    task_bytes = float(np.mean([len(pickle.dumps((i, c, p, seed, cv_folds), protocol=5))
                                for i, (_, c, p) in enumerate(fits)]))
    bar = tqdm(total=len(fits), desc="sweep", unit="fit", disable=not progress)
    try:
        with dask_client(scheduler, n_workers=n_workers) as client:
            if client is None:
                for i, (g, fitted, params) in enumerate(fits):
                    on_result(fit_one(data[g], i, fitted, params, seed, cv_folds))
                    bar.update()
                return 0, task_bytes, None
            link = dashboard_link(client)
            if link and progress:
                print(f"Dask dashboard: {link}", file=sys.stderr)
            from distributed import as_completed  # only with a cluster: a sync sweep does without its import

            present = len(client.scheduler_info().get("workers") or {})
            if present:
                # one copy per worker, up front: with a single copy the scheduler keeps placing fits next
                # to it (data locality) and the other workers idle. Workers that join later (adaptive)
                # fetch it from a peer. Either way the features travel once per worker, never per fit.
                futures_of = [client.scatter(d, hash=False, broadcast=True) for d in data]
                sent = sum(d.nbytes for d in data) * present
            else:
                # an adaptive cluster at zero workers: scatter would wait for a worker that is only
                # started once a task is pending, so the features ride along one task instead (still once)
                futures_of = [client.submit(_same, d, pure=False) for d in data]
                sent = sum(d.nbytes for d in data)
            futures = [client.submit(fit_one, futures_of[g], i, fitted, params, seed, cv_folds, pure=False)
                       for i, (g, fitted, params) in enumerate(fits)]
            for future in as_completed(futures):
                on_result(future.result())
                future.release()  # the fitted pipeline now lives in the run history
                bar.update()
            return sent, task_bytes, link
    finally:
        bar.close()


def _same(value: Any) -> Any:
    return value


def _record_fit(outcome: FitOutcome, params: Mapping[str, Any], data: FeatureSet, split: TrainingSplit,
                classifier: str, seed: int, sweep_name: str, parent_id: str, cv_folds: int | None,
                runs_dir: PathLike | None, baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Record one fit as a child run with its model artifact, as ``geoclf train`` records a run."""
    classes = split.classes
    evaluation = evaluate(split.y_val, outcome.val_pred, classes)
    extra: dict[str, float] = {"fit_seconds": outcome.fit_seconds}
    if outcome.cv_pred is not None:
        # the mean over folds of each fold's score (the folds are GroupKFold's, deterministic given the blocks)
        y_train = split.y_train
        folds = GroupKFold(n_splits=int(cv_folds or 0)).split(y_train, y_train, groups=split.groups)
        scores = [scalar_metrics(evaluate(y_train[held], outcome.cv_pred[held], classes)) for _, held in folds]
        for key in scores[0]:
            if "." not in key:  # headline metrics only; per-class scores stay with the validation split
                values = [s[key] for s in scores if key in s]
                extra[f"cv_{key}"] = float(np.mean(values))
    name = f"{sweep_name}-{outcome.index:03d}"
    run_id = record_features_model(name, outcome.pipeline, data, split, evaluation, classifier=classifier,
                                   params=params, seed=seed, metrics=extra, notes=outcome.warnings,
                                   run_params={"cv_folds": cv_folds}, provenance={"sweep_parent": parent_id},
                                   parent=parent_id, compared=comparison(split, outcome.val_pred, baseline),
                                   runs_dir=runs_dir)
    row: dict[str, Any] = {"index": outcome.index, "run_name": name, "run_id": run_id, **params}
    row.update({k: evaluation.get(k) for k in runs.HEADLINE_METRICS})
    row.update(extra)
    return row


def _classifier_grids(classifiers: Sequence[str], space: Mapping[str, Sequence[Any]], search: str,
                      n_iter: int | None, seed: int, comparing: bool) -> list[tuple[str, list[dict[str, Any]]]]:
    """Each classifier's parameter sets: one classifier takes the whole grid (:func:`candidates`); several each
    take the parameters they have, their defaults when none (an empty grid is fine when comparing)."""
    if len(classifiers) == 1 and not comparing:
        return [(classifiers[0], candidates(classifiers[0], space, search, n_iter, seed))]
    if search not in SEARCHES:
        raise InputError(f"unknown search {search!r}; valid searches: {', '.join(SEARCHES)}")
    owned: list[tuple[str, dict[str, Sequence[Any]]]] = []
    for fitted in classifiers:
        valid = set(make_classifier(fitted, seed=seed).named_steps["classifier"].get_params())
        owned.append((fitted, {k: v for k, v in space.items() if k in valid}))
    unused = sorted(set(space) - {k for _, own in owned for k in own})
    if unused:
        raise InputError(f"unknown parameter {unused[0]!r} for {', '.join(classifiers)}")
    return [(fitted, candidates(fitted, own, search, n_iter, seed) if own else [{}]) for fitted, own in owned]


def _check_same_chips(groups: Sequence[FeatureSet]) -> None:
    """Featurizers are compared on the same labelled chips, split alike, or not at all."""
    def chips(data: FeatureSet) -> set[tuple[str, str]]:
        rows = data.rows[data.rows["label"].notna()]
        return set(zip(rows["chip_id"].astype(str), rows["split"].astype(str), strict=True))

    first = chips(groups[0])
    for data in groups[1:]:
        if chips(data) != first:
            raise InputError(f"features of {data.directories[0]} and {groups[0].directories[0]} hold different "
                             "labelled chips or splits; compare featurizers on the features of one chip index")


def _group_labels(groups: Sequence[FeatureSet]) -> list[str]:
    """A short name of each group's featurizer (``efficientnet_lite0``, ``spectral``,
    ``efficientnet_lite0+spectral``), made unique with the directory name where two would read alike."""
    labels = []
    for data in groups:
        kind, backbone = data.featurizer.kind, str(data.meta.get("backbone") or data.featurizer.kind)
        labels.append({"spectral": "spectral", "combined": f"{backbone}+spectral"}.get(kind, backbone))
    return [label if labels.count(label) == 1 else f"{label} ({data.directories[0].name})"
            for label, data in zip(labels, groups, strict=True)]


def _metric_names(y_val: np.ndarray, classes: list[str]) -> list[str]:
    return list(scalar_metrics(evaluate(y_val, y_val, classes)))


def _validate_values(estimator: Any, params: Mapping[str, Any]) -> None:
    """Check parameter values (types and ranges) now rather than on a worker after minutes of other fits."""
    check = getattr(estimator, "_validate_params", None)  # scikit-learn's own checks, run before fitting
    if check is None:
        return
    try:
        check()
    except ValueError as exc:
        if type(exc).__name__ != "InvalidParameterError":
            raise
        raise InputError(f"{dict(params)}: {str(exc).strip().splitlines()[0]}") from exc


def _split_values(text: str) -> list[str]:
    values, depth, current = [], 0, []
    for char in text:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            values.append("".join(current))
            current = []
        else:
            current.append(char)
    values.append("".join(current))
    return values
