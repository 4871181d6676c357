"""Run history: every featurize, train and fine-tune run, recorded in MLflow's tracking store.

This module is the one place geoclf talks to MLflow. A run has a name, a kind (``featurize``, ``train``,
``finetune``), parameters, metrics (with per-epoch curves where there are epochs) and artifacts; a run
that produced a model keeps its model artifact under the artifact path ``model/``
(:data:`MODEL_ARTIFACT`). Runs live in the MLflow experiment ``geoclf``.

Where runs are stored:
    The *runs directory* is ``--runs-dir``, else the ``GEOCLF_RUNS`` environment variable, else the current
    directory. It holds ``mlflow.db`` (an SQLite tracking database) and ``mlruns/`` (the artifacts):
    exactly MLflow's own default layout, so ``mlflow ui`` started in that directory (or
    ``mlflow ui --backend-store-uri sqlite:///<dir>/mlflow.db``) browses the same runs, with no server.
    A value containing ``://`` is taken as a tracking URI as it is (``http://host:5000``,
    ``postgresql://...``), for a shared tracking server.

Why SQLite and not MLflow's ``./mlruns`` file store:
    the file store is in maintenance mode in MLflow 3 (it refuses to start unless ``MLFLOW_ALLOW_FILE_STORE``
    is set) and has no model registry, which the sweeps work will need (``NAME@ALIAS`` references). An
    SQLite file needs no server, is one file to copy, and queries runs without walking thousands of YAML
    files. Creating a new database costs a few seconds once (schema migrations); opening one is quick.

MLflow is imported inside the functions that use it: ``geoclf --help`` must not pay for it. The client
API (``MlflowClient``) is used rather than MLflow's global "active run", so runs recorded from worker
threads or beside Lightning's own logger never step on each other; Lightning's ``MLFlowLogger`` can log
into a geoclf run with ``MLFlowLogger(tracking_uri=tracking_uri(runs_dir), run_id=recorder.run_id)``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import pandas as pd

from geoclf import metrics
from geoclf.artifact import MODEL_JSON, read_model_json
from geoclf.pyfunc import add_mlflow_model
from tiling.errors import InputError
from tiling.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

#: Environment variable naming the runs directory (or a tracking URI).
RUNS_ENV = "GEOCLF_RUNS"
#: MLflow experiment holding every geoclf run.
EXPERIMENT = "geoclf"
#: SQLite database file inside a runs directory (MLflow's default name).
DB_NAME = "mlflow.db"
#: Artifact root inside a runs directory (MLflow's default name).
ARTIFACTS_DIRNAME = "mlruns"
#: Artifact path, inside a run, of the model artifact (see :mod:`geoclf.artifact`).
MODEL_ARTIFACT = "model"
#: Experiment tag MLflow 3's UI reads to tell model training from GenAI work (else it guesses, and shows
#: geoclf's runs as "evaluation runs").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: The experiment kind of geoclf's runs: model training.
EXPERIMENT_KIND = "custom_model_development"
#: Run tag holding the run kind.
KIND_TAG = "geoclf.kind"
#: Run kinds geoclf records.
KINDS = ("featurize", "train", "finetune")
#: Metrics shown first, in this order, wherever runs are compared.
#: Tag on a sweep's parent run naming its winning child (:mod:`geoclf.sweep`): a model reference to the
#: parent loads that child's model.
SWEEP_BEST_RUN_TAG = "geoclf.sweep.best_run_id"

HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "kappa", "accuracy_3class")

# The parameters shown as their own columns when listing runs.
_LISTED_PARAMS = ("backbone", "classifier")
# MLflow accepts these characters in metric and parameter keys; anything else is replaced by "_".
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")
_MAX_PARAM_CHARS = 6000
_BATCH = 100

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunStore:
    """Where runs are recorded.

    Attributes:
        location: what the user gave (a directory or a URI), for messages.
        tracking_uri: the MLflow tracking URI.
        directory: the local runs directory, or ``None`` for a tracking server.
    """

    location: str
    tracking_uri: str
    directory: Path | None

    @property
    def artifact_root(self) -> str | None:
        """Artifact location of the experiment (a ``file:`` URI) for a local store, else the server's."""
        # <dir>/mlruns/geoclf/<run_id>/artifacts: MLflow would use the experiment id, unknown before creation
        return None if self.directory is None else (self.directory / ARTIFACTS_DIRNAME / EXPERIMENT).as_uri()

    def exists(self) -> bool:
        """False for a local runs directory where nothing was ever recorded."""
        return self.directory is None or (self.directory / DB_NAME).is_file()


def run_store(runs_dir: str | os.PathLike[str] | None = None) -> RunStore:
    """Resolve the run store: ``runs_dir``, else ``$GEOCLF_RUNS``, else the current directory."""
    location = os.fspath(runs_dir) if runs_dir is not None else os.environ.get(RUNS_ENV) or "."
    if "://" in location:
        return RunStore(location, location, None)
    directory = Path(location).expanduser().resolve()
    if directory.exists() and not directory.is_dir():
        raise InputError("is a file; the runs directory must be a directory", location)
    # four slashes for an absolute path: sqlite:/// + /abs/path
    return RunStore(location, f"sqlite:///{directory.as_posix()}/{DB_NAME}", directory)


def tracking_uri(runs_dir: str | os.PathLike[str] | None = None) -> str:
    """The MLflow tracking URI of the run store (for tools that talk to MLflow themselves)."""
    return run_store(runs_dir).tracking_uri


@dataclass(frozen=True)
class RunRecord:
    """One recorded run, as read back from the run history.

    Attributes:
        run_id: MLflow run id (32 hex digits).
        name: run name given by the user (not necessarily unique; lookups by name take the latest).
        kind: ``featurize``, ``train`` or ``finetune``.
        status: MLflow status: ``FINISHED``, ``RUNNING``, ``FAILED`` or ``KILLED``.
        start_time, end_time: UTC timestamps.
        params: parameters, decoded back to numbers, booleans, lists where they were logged as such.
        metrics: latest value of every metric.
        tags: user tags (MLflow's own ``mlflow.*`` tags left out).
        artifact_uri: root of the run's artifacts.
        parent_id: run id of the parent run (sweeps), if any.
    """

    run_id: str
    name: str
    kind: str
    status: str
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    params: dict[str, Any]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifact_uri: str
    parent_id: str | None = None

    @property
    def artifact_dir(self) -> Path | None:
        """Local directory of the run's artifacts, or ``None`` when they live on a server."""
        return local_path(self.artifact_uri)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: name, run_id, kind, status, times, parameters, metrics, tags, artifacts."""
        return {
            "name": self.name,
            "run_id": self.run_id,
            "kind": self.kind,
            "status": self.status,
            "start_time": None if self.start_time is None else self.start_time.isoformat(),
            "end_time": None if self.end_time is None else self.end_time.isoformat(),
            "parent_id": self.parent_id,
            "parameters": self.params,
            "metrics": {k: (None if math.isnan(v) else v) for k, v in self.metrics.items()},
            "tags": self.tags,
            "artifact_uri": self.artifact_uri,
        }


@dataclass
class RunRecorder:
    """Records into one open run; yielded by :func:`start_run`.

    Attributes:
        run_id: MLflow run id.
        name: run name.
        kind: run kind.
        store: where the run is recorded.
    """

    run_id: str
    name: str
    kind: str
    store: RunStore
    _client: MlflowClient = field(repr=False)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record parameters (each key once per run); values that are not text are stored as JSON."""
        from mlflow.entities import Param

        items = [Param(_safe_key(k), _encode_param(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self._client.log_batch(self.run_id, params=items[i:i + _BATCH], synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Record tags (free-form labels; unlike parameters they may change)."""
        from mlflow.entities import RunTag

        items = [RunTag(_safe_key(k), str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self._client.log_batch(self.run_id, tags=items[i:i + _BATCH], synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record metric values; pass ``step`` (the epoch) to build per-epoch curves.

        ``None`` values are skipped (a metric that does not apply, such as a regrouped accuracy for a
        class scheme without the seed's classes).
        """
        from mlflow.entities import Metric

        now = _now_ms()
        items = [Metric(_safe_key(k), float(v), now, int(step or 0)) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), _BATCH):
            self._client.log_batch(self.run_id, metrics=items[i:i + _BATCH], synchronous=True)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy one file into the run's artifacts (under ``artifact_path`` if given)."""
        self._client.log_artifact(self.run_id, os.fspath(path), artifact_path)

    def log_artifact_dir(self, path: str | os.PathLike[str], artifact_path: str = MODEL_ARTIFACT) -> None:
        """Copy a directory's content into the run's artifacts at ``artifact_path`` (default ``model``).

        On a local store the copy lands under a temporary name and is then renamed, so a reader never
        sees half a model. A geoclf model artifact (a directory with ``model.json``) is recorded as an MLflow
        model too (:func:`geoclf.pyfunc.add_mlflow_model`: ``MLmodel``, signature, input example), which
        ``mlflow models serve`` and ``mlflow.pyfunc.load_model`` accept.
        """
        source = Path(path)
        local = self.artifact_dir
        if local is None:
            with tempfile.TemporaryDirectory(prefix="geoclf-artifact-") as tmp:
                staging = Path(tmp) / artifact_path
                shutil.copytree(source, staging)
                _add_mlflow_model(staging)
                self._client.log_artifacts(self.run_id, os.fspath(staging), artifact_path)
            return
        target = local / artifact_path
        if target.exists():
            raise InputError(f"run {self.name!r} already has an artifact at {artifact_path!r}")
        with atomic_path(target, directory=True) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            _add_mlflow_model(staging)

    def log_json(self, data: Any, name: str) -> None:
        """Write ``data`` as a JSON artifact file ``name`` (e.g. ``evaluation.json``)."""
        self._client.log_dict(self.run_id, data, name)

    def log_figure(self, figure: Figure, name: str) -> None:
        """Save a matplotlib figure as an image artifact ``name`` (e.g. ``confusion_matrix.png``)."""
        self._client.log_figure(self.run_id, figure, name)

    def log_evaluation(self, evaluation: Mapping[str, Any], step: int | None = None) -> None:
        """Record a :func:`geoclf.metrics.evaluate` result: scalar metrics, ``evaluation.json`` and the
        confusion matrix (``confusion_matrix.csv`` and ``.png``). ``geoclf runs show`` reads these back.
        """
        self.log_metrics(metrics.scalar_metrics(evaluation), step=step)
        self.log_json(metrics.evaluation_to_json(evaluation), "evaluation.json")
        with tempfile.TemporaryDirectory(prefix="geoclf-eval-") as tmp:
            csv = Path(tmp) / "confusion_matrix.csv"
            evaluation["confusion_matrix"].to_csv(csv)
            self.log_artifact(csv)
            png = metrics.plot_confusion_matrix(evaluation["confusion_matrix"], Path(tmp) / "confusion_matrix.png",
                                                title=self.name)
            self.log_artifact(png)

    @property
    def artifact_dir(self) -> Path | None:
        """Local directory of this run's artifacts (``None`` on a tracking server)."""
        return local_path(self._client.get_run(self.run_id).info.artifact_uri)


@contextmanager
def start_run(name: str, kind: str, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, Any] | None = None, runs_dir: str | os.PathLike[str] | None = None,
              parent: str | None = None) -> Iterator[RunRecorder]:
    """Open a run, yield a :class:`RunRecorder`, and close the run when the block ends.

    The run ends ``FINISHED`` when the block completes. If the block raises :class:`InputError` (bad input
    found after the run was opened) the run and its artifacts are deleted: bad input leaves no trace in
    the history. Any other error marks it ``FAILED`` (``KILLED`` on Ctrl-C) and keeps what was logged, for
    diagnosis; listings hide unfinished runs unless asked.

    Args:
        name: run name, e.g. ``lr-lite0``.
        kind: one of :data:`KINDS`.
        params: parameters to record at once.
        tags: extra tags.
        runs_dir: runs directory or tracking URI (see :func:`run_store`).
        parent: run id or name of a parent run, to group runs (sweeps).
    """
    if kind not in KINDS:
        raise InputError(f"unknown run kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if not name or not name.strip():
        raise InputError("a run needs a non-empty name")
    store = run_store(runs_dir)
    client = _client(store.tracking_uri)
    experiment_id = _experiment_id(store, create=True)
    run_tags = {KIND_TAG: kind, **{_safe_key(k): str(v) for k, v in (tags or {}).items()}}
    if parent is not None:
        run_tags["mlflow.parentRunId"] = get_run(parent, runs_dir=runs_dir).run_id
    run = client.create_run(experiment_id, run_name=name, tags=run_tags)
    recorder = RunRecorder(run.info.run_id, name, kind, store, client)
    try:
        if params:
            recorder.log_params(params)
        yield recorder
    except InputError:
        _delete_run(client, run)
        raise
    except KeyboardInterrupt:
        client.set_terminated(run.info.run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    else:
        client.set_terminated(run.info.run_id, "FINISHED")


def list_run_records(sort: str | None = "accuracy", kind: str | None = None,
                     runs_dir: str | os.PathLike[str] | None = None,
                     include_unfinished: bool = False) -> list[RunRecord]:
    """Recorded runs, best first by ``sort`` (newest first when ``sort`` is ``None``).

    "Best" is the highest value, or the lowest for metrics named like ``*loss``/``*error``; runs without
    the metric come last, newest first among themselves.

    Args:
        sort: metric to rank by.
        kind: only runs of this kind.
        runs_dir: runs directory or tracking URI (see :func:`run_store`).
        include_unfinished: also list running, failed and killed runs.

    Raises:
        InputError: ``sort`` is neither a headline metric nor a metric of any listed run.
    """
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown run kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    records = [_record(run) for run in _search(run_store(runs_dir))]
    if kind is not None:
        records = [r for r in records if r.kind == kind]
    if not include_unfinished:
        records = [r for r in records if r.status == "FINISHED"]
    if sort is None or not records:
        return records
    known = sorted({m for r in records for m in r.metrics})
    if sort not in known and sort not in HEADLINE_METRICS:  # a typo, not merely a metric no run has yet
        raise InputError(f"no listed run has a metric {sort!r}; metrics: {', '.join(known) or 'none'}")
    sign = 1.0 if lower_is_better(sort) else -1.0

    def rank(record: RunRecord) -> tuple[int, float]:
        value = record.metrics.get(sort, math.nan)
        return (1, 0.0) if math.isnan(value) else (0, sign * value)

    # records arrive newest first and sorted() is stable, so ties stay newest first
    return sorted(records, key=rank)


def list_runs(sort: str | None = "accuracy", kind: str | None = None,
              runs_dir: str | os.PathLike[str] | None = None, include_unfinished: bool = False) -> pd.DataFrame:
    """Recorded runs as a table, best first (see :func:`list_run_records` for the arguments).

    Columns: ``name``, ``kind``, ``backbone``, ``classifier``, the headline metrics (``accuracy``,
    ``balanced_accuracy``, ``kappa``, ``accuracy_3class``), every other metric, then ``status``,
    ``start_time``, ``parent_id`` and ``run_id``. Missing values are NaN/None.
    """
    return runs_table(list_run_records(sort, kind, runs_dir, include_unfinished))


def runs_table(records: list[RunRecord]) -> pd.DataFrame:
    """Run records as the table :func:`list_runs` returns, in the given order."""
    other = sorted({m for r in records for m in r.metrics} - set(HEADLINE_METRICS))
    rows = []
    for r in records:
        row: dict[str, Any] = {"name": r.name, "kind": r.kind}
        row.update({p: r.params.get(p) for p in _LISTED_PARAMS})
        row.update({m: r.metrics.get(m, math.nan) for m in (*HEADLINE_METRICS, *other)})
        row.update({"status": r.status, "start_time": r.start_time, "parent_id": r.parent_id, "run_id": r.run_id})
        rows.append(row)
    columns = ["name", "kind", *_LISTED_PARAMS, *HEADLINE_METRICS, *other, "status", "start_time", "parent_id",
               "run_id"]
    return pd.DataFrame(rows, columns=columns)


def best_run(metric: str = "accuracy", kind: str | None = None,
             runs_dir: str | os.PathLike[str] | None = None) -> RunRecord:
    """The finished run with the best ``metric`` (see :func:`list_run_records`)."""
    records = [r for r in list_run_records(metric, kind, runs_dir) if not math.isnan(r.metrics.get(metric, math.nan))]
    if not records:
        raise InputError(f"no finished run with a metric {metric!r} in {run_store(runs_dir).location}")
    return records[0]


def get_run(name_or_id: str, runs_dir: str | os.PathLike[str] | None = None) -> RunRecord:
    """Find a run by run id, unique run-id prefix (8+ hex digits) or name.

    A name can be used more than once; the latest finished run with that name wins (the latest of any
    status if none finished).

    Raises:
        InputError: nothing matches; the message lists some recorded names.
    """
    store = run_store(runs_dir)
    if not store.exists():
        raise InputError(f"no runs recorded yet (looked for {name_or_id!r}); "
                         f"train a model first or pass --runs-dir / set {RUNS_ENV}", store.location)
    text = name_or_id.strip()
    runs = _search(store)
    by_name = [r for r in runs if r.info.run_name == text]
    if by_name:
        finished = [r for r in by_name if r.info.status == "FINISHED"]
        return _record((finished or by_name)[0])
    if re.fullmatch(r"[0-9a-f]{8,32}", text):
        by_id = [r for r in runs if r.info.run_id.startswith(text)]
        if len(by_id) == 1:
            return _record(by_id[0])
        if len(by_id) > 1:
            raise InputError(f"run id prefix {text!r} matches {len(by_id)} runs; give more digits")
    names = list(dict.fromkeys(r.info.run_name for r in runs))
    listed = ", ".join(names[:10]) + (f" (and {len(names) - 10} more)" if len(names) > 10 else "")
    raise InputError(f"no run named {text!r}; recorded runs: {listed or 'none'}", store.location)


def artifact_path(run: RunRecord | str, subpath: str = MODEL_ARTIFACT,
                  runs_dir: str | os.PathLike[str] | None = None) -> Path:
    """Local path of a run's artifact (by default its model artifact directory).

    Artifacts on a tracking server are downloaded into a temporary directory first.

    Args:
        run: a :class:`RunRecord`, or a run name or id.
        subpath: artifact path inside the run.
        runs_dir: runs directory or tracking URI, used when ``run`` is a name or id.

    Raises:
        InputError: the run has no such artifact (e.g. a featurize run has no model).
    """
    record = run if isinstance(run, RunRecord) else get_run(run, runs_dir=runs_dir)
    local = record.artifact_dir
    if local is not None:
        path = local / subpath
        if not path.exists():
            raise InputError(f"run {record.name!r} ({record.kind}, {record.run_id[:8]}) has no artifact "
                             f"{subpath!r}")
        return path
    store = run_store(runs_dir)
    try:
        return Path(_client(store.tracking_uri).download_artifacts(
            record.run_id, subpath, tempfile.mkdtemp(prefix="geoclf-artifact-")))
    except Exception as exc:  # MLflow raises its own exception types per store; one message for the user
        raise InputError(f"run {record.name!r} has no artifact {subpath!r} ({exc})") from exc


def read_json_artifact(run: RunRecord, name: str) -> Any | None:
    """A JSON artifact of a run (e.g. ``evaluation.json``), or ``None`` if the run has none."""
    try:
        path = artifact_path(run, name)
    except InputError:
        return None
    return json.loads(path.read_text())


def metric_history(run: RunRecord, key: str, runs_dir: str | os.PathLike[str] | None = None) -> list[
        tuple[int, float]]:
    """Every ``(step, value)`` of a metric, in step order: a per-epoch curve."""
    client = _client(run_store(runs_dir).tracking_uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, key))


def lower_is_better(metric: str) -> bool:
    """True for metrics where smaller is better (losses and errors)."""
    return metric.endswith(("loss", "error", "rmse", "mae"))


def mlflow_client(runs_dir: str | os.PathLike[str] | None = None) -> MlflowClient:
    """The MLflow client of a run store (see :func:`run_store`), for code that talks to MLflow itself (the
    model registry): one client per store, MLflow's telemetry off and its log chatter silenced; a runs
    directory that was moved or copied is first pointed at its own artifacts (:func:`relocate`)."""
    store = run_store(runs_dir)
    client = _client(store.tracking_uri)
    if store.exists():
        _relocated(store)
    return client


def relocate(runs_dir: str | os.PathLike[str] | None = None) -> str | None:
    """Point a moved or copied runs directory's history at its own artifacts; done on every open.

    MLflow records absolute artifact locations (the experiment's, every run's, every registered version's
    source), so a runs directory copied elsewhere would read -- and write new runs' artifacts into -- the
    original. Opening a local store whose recorded artifact root is another directory's ``mlruns/geoclf``
    rewrites those locations to this directory's (in one transaction), so the copy stands alone and the
    original is never touched.

    Returns:
        The artifact root the history pointed at before, or ``None`` if it was in place already.

    Raises:
        InputError: the database cannot be updated (a read-only copy).
    """
    store = run_store(runs_dir)
    if store.directory is None or not store.exists():
        return None
    _relocated.cache_clear()
    return _relocated(store)


def local_path(uri: str) -> Path | None:
    """The local path of a ``file:`` URI or a plain path (an artifact location); ``None`` for a server's."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri:
        return Path(uri)
    return None


# -- internals ---------------------------------------------------------------------------------------------


def _add_mlflow_model(directory: Path) -> None:
    """The MLflow model files of a geoclf model artifact (nothing for other directories)."""
    if not (directory / MODEL_JSON).is_file():
        return
    try:
        read_model_json(directory)
    except InputError:  # some other tool's model.json: the directory is recorded as it is
        return
    add_mlflow_model(directory)


def _quiet_mlflow() -> None:
    """Keep MLflow's and Alembic's INFO chatter and warnings away from CLI users."""
    for name in ("mlflow", "alembic", "sqlalchemy", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
    warnings.filterwarnings("ignore", module=r"alembic(\.|$)")


@lru_cache(maxsize=8)
def _client(uri: str) -> MlflowClient:
    # MLflow's usage telemetry is pointless for an embedded local store and tries the network on offline
    # machines; set before the import, which starts it. A user who wants it sets the variable themselves.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    _quiet_mlflow()  # after the import, which configures MLflow's loggers, before the store logs anything
    if uri.startswith("sqlite:///"):
        Path(unquote(uri[len("sqlite:///"):])).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


# Tables and columns of MLflow's SQL schema that hold artifact locations.
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("model_versions", "source"),
                     ("model_versions", "storage_location"), ("logged_models", "artifact_location"))


@lru_cache(maxsize=64)
def _relocated(store: RunStore) -> str | None:
    """See :func:`relocate`; once per store and process."""
    import sqlalchemy as sa

    new = store.artifact_root
    if store.directory is None or new is None:
        return None
    client = _client(store.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    old = None if experiment is None else str(experiment.artifact_location).rstrip("/")
    suffix = f"/{ARTIFACTS_DIRNAME}/{EXPERIMENT}"
    # only the layout geoclf itself creates is moved; an artifact root chosen elsewhere on purpose stays
    if old is None or old == new or not old.startswith("file:") or not old.endswith(suffix):
        return None
    engine = sa.create_engine(store.tracking_uri)
    try:
        with engine.begin() as db:
            tables = set(sa.inspect(db).get_table_names())
            for table, column in _LOCATION_COLUMNS:
                if table not in tables or column not in {c["name"] for c in sa.inspect(db).get_columns(table)}:
                    continue
                # table and column names come from _LOCATION_COLUMNS, the values are bound parameters
                db.execute(sa.text(f"UPDATE {table} SET {column} = :new || substr({column}, :cut) "
                                   f"WHERE {column} = :old OR substr({column}, 1, :length) = :prefix"),
                           {"new": new, "cut": len(old) + 1, "old": old, "length": len(old) + 1, "prefix": old + "/"})
    except sa.exc.SQLAlchemyError as exc:
        raise InputError(f"was moved or copied from {local_path(old).parent.parent}, and its run history cannot "
                         f"be pointed at its own artifacts ({str(exc).splitlines()[0]})", store.location) from exc
    finally:
        engine.dispose()
    _log.info("runs directory %s was moved: artifact locations rewritten from %s", store.location, old)
    return old


def _experiment_id(store: RunStore, create: bool) -> str | None:
    from mlflow.exceptions import MlflowException

    client = _client(store.tracking_uri)
    _relocated(store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted" and create:
            client.restore_experiment(experiment.experiment_id)
        if create and experiment.tags.get(EXPERIMENT_KIND_TAG) is None:  # recorded by an older geoclf
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id
    if not create:
        return None
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=store.artifact_root,
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException:  # another process created it in between
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            raise
        return experiment.experiment_id


def _search(store: RunStore) -> list[Run]:
    """All active runs of the geoclf experiment, newest first."""
    if not store.exists():
        return []
    experiment_id = _experiment_id(store, create=False)
    if experiment_id is None:
        return []
    client = _client(store.tracking_uri)
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.start_time DESC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _record(run: Run) -> RunRecord:
    info, data = run.info, run.data
    tags = {k: v for k, v in data.tags.items() if not k.startswith("mlflow.") and k != KIND_TAG}
    return RunRecord(
        run_id=info.run_id,
        name=info.run_name or "",
        kind=data.tags.get(KIND_TAG, ""),
        status=info.status,
        start_time=_time(info.start_time),
        end_time=_time(info.end_time),
        params={k: _decode_param(v) for k, v in sorted(data.params.items())},
        metrics=dict(data.metrics),
        tags=tags,
        artifact_uri=info.artifact_uri,
        parent_id=data.tags.get("mlflow.parentRunId"),
    )


def _delete_run(client: MlflowClient, run: Run) -> None:
    local = local_path(run.info.artifact_uri)
    client.delete_run(run.info.run_id)
    if local is not None:
        # the run directory (<root>/<experiment>/<run_id>/artifacts): remove the run's folder entirely
        shutil.rmtree(local.parent if local.name == "artifacts" else local, ignore_errors=True)


def _time(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _now_ms() -> int:
    return int(dt.datetime.now(tz=dt.UTC).timestamp() * 1000)


def _safe_key(key: str) -> str:
    return _KEY_UNSAFE.sub("_", str(key))


def _encode_param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > _MAX_PARAM_CHARS:
        # MLflow caps parameter values; keep the start and say it was cut rather than fail the run
        text = text[:_MAX_PARAM_CHARS - 12] + "...[cut]"
    return text


def _decode_param(text: str) -> Any:
    # only JSON-looking values are decoded, so plain words ("default", "lbfgs") stay text
    if text in ("true", "false", "null") or re.match(r"^[\[{\-0-9]", text):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text
