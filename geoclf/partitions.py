"""Resumable, partitioned work over chips on Dask: the engine behind featurization and scoring.

A chip table is cut into partitions of a fixed number of chips, in a stable order. Each partition is one
Dask task that reads its chips, runs a model and returns a table, which is written as
``part-NNNNN.parquet`` under a temporary name and renamed into place. Hence:

- a rerun skips partitions that exist and does only the rest (resume after a crash or Ctrl-C);
- a worker killed mid-task loses only that task, which Dask reruns elsewhere; the rename makes the
  partition appear once, whole, so every chip ends up exactly once;
- memory is bounded by one partition per worker, whatever the size of the area.

``_inputs.json`` in the output directory fingerprints what the partitions were computed from, so a rerun
with other inputs stops with a clear message instead of mixing results.

Work is planned in one of two ways:

- :func:`run_partitions` cuts a chip table the client holds (a chip index, a PNG folder) into partitions;
- :func:`run_plan` takes task *descriptions* (e.g. :class:`tiling.blocks.SceneBlock`, a rectangle of one raster's
  grid) that workers turn into their chips themselves: the client holds a few numbers per partition and each
  task's small summary (stored in its partition's Parquet metadata, so a rerun reads it back without the
  rows), never a chip table. Partitions are then named by their description (``<scene>/part-NNNNN.parquet``),
  a dataset that pyarrow, geopandas, dask and DuckDB read as one table.

Tasks keep their model (a featurizer's network, a model artifact) in the worker process between partitions
(:func:`worker_model`), and give it the threads :func:`task_threads` chose for their scheduler.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tiling.errors import InputError
from tiling.io import atomic_path
from tiling.parallel import Scheduler, dashboard_link, dask_client, default_workers, for_tasks

PART_GLOB = "part-*.parquet"
_FINGERPRINT = "_inputs.json"

T = TypeVar("T")

# The model of this process, by key: loading one costs seconds, so tasks on a worker share it; one at a time,
# so a worker's memory holds a single model whatever the run asked of it before.
_WORKER_MODEL: dict[str, Any] = {}
#: Held while a model loads: threads of one process running tasks side by side load it once.
_WORKER_MODEL_LOCK = threading.Lock()


#: On this many cores or fewer, one process given every core scored faster than a new LocalCluster of one worker
#: per core at every size issue 17 measured (900 chips: 34-36 against 23.5-26 chips/s; 3,600: 45.0 against
#: 35.8): the workers' start and model loads are fixed costs their parallelism does not repay.
IN_PROCESS_MAX_CORES = 2


def partition_scheduler(scheduler: Scheduler, n_tasks: int, n_workers: int | None = None) -> Scheduler:
    """Where a run of ``n_tasks`` partitions goes: ``scheduler`` as given, except that ``None``/``"auto"`` run
    in this process (``"sync"``) where worker processes cannot pay off - a single partition, or (no
    ``n_workers`` asked for) a machine of at most :data:`IN_PROCESS_MAX_CORES` cores - and on a new
    LocalCluster (``None``) otherwise; ``"local"`` too runs a single partition here (as
    :func:`tiling.parallel.for_tasks` would).

    Decide before building the task: its thread budget depends on it (:func:`task_threads`), and a task built
    for a LocalCluster's worker would get one core's share in this process.
    """
    if scheduler not in (None, "auto", "local"):
        return scheduler
    if n_tasks <= 1:
        return "sync"
    if scheduler == "local":
        return scheduler
    if n_workers is None and default_workers() <= IN_PROCESS_MAX_CORES:
        return "sync"
    return None


def task_threads(scheduler: Scheduler, n_workers: int | None = None) -> int | None:
    """Threads a task's model may use for ``scheduler``: every core in this process (``"sync"``), the cores
    shared out among the workers of a new LocalCluster (workers x threads = cores), or ``None`` on an existing
    cluster, where each worker has its own thread count (see :func:`worker_model`)."""
    if scheduler == "sync":
        return default_workers()
    if scheduler in (None, "local"):
        return max(1, default_workers() // (n_workers or default_workers()))
    return None


def worker_model(key: str, load: Callable[[], T], threads: int | None = None) -> T:
    """The model ``key`` names, in this process: loaded by ``load()`` on first use, then kept between tasks.

    A task calls this at its start. Loading another key drops the previous model first. When the model runs
    on torch, torch's intra-op threads are set to ``threads``, else to this Dask worker's thread count.

    Args:
        key: identifies the model (its description or artifact directory): equal keys, the same model.
        load: builds it.
        threads: threads it may use (see :func:`task_threads`); ``None`` for the worker's own count.
    """
    with _WORKER_MODEL_LOCK:
        if key not in _WORKER_MODEL:
            _WORKER_MODEL.clear()  # before loading: never two models in memory at once
            _WORKER_MODEL[key] = load()
        model = _WORKER_MODEL[key]
    _limit_torch_threads(threads or _dask_worker_threads())
    return model


def _limit_torch_threads(threads: int | None) -> None:
    # a model that runs on torch has imported it by now (its loader does); one that does not (spectral
    # statistics) must not pay seconds to import it just to set a thread count
    torch = sys.modules.get("torch")
    if threads and torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _dask_worker_threads() -> int | None:
    try:
        from distributed import get_worker  # installed with geoclf, but a sync run never needs to import it
    except ImportError:
        return None
    try:
        return get_worker().state.nthreads
    except ValueError:  # not on a Dask worker
        return None


def part_name(i: int) -> str:
    """File name of partition ``i``."""
    return f"part-{i:05d}.parquet"


#: How :func:`split_partitions` cuts, recorded in ``_inputs.json``: outputs cut another way are never resumed.
PARTITION_LAYOUT = "even"


def split_partitions(chips: pd.DataFrame, chips_per_partition: int) -> list[pd.DataFrame]:
    """Cut a chip table into partitions in a stable order (by ``chip_id``), of at most ``chips_per_partition``
    chips and even sizes: 900 chips at 512 are 450 + 450, not 512 + 388, so that no worker idles while
    another finishes a larger last partition."""
    if chips_per_partition < 1:
        raise InputError(f"chips per partition must be at least 1, not {chips_per_partition}")
    ordered = chips.sort_values("chip_id", kind="stable").reset_index(drop=True)
    size = math.ceil(len(ordered) / max(1, math.ceil(len(ordered) / chips_per_partition))) or 1
    return [ordered.iloc[i:i + size] for i in range(0, len(ordered), size)]


def fingerprint(chips: pd.DataFrame, chips_per_partition: int, settings: dict[str, Any]) -> dict[str, Any]:
    """What a partitioned output was computed from: chip ids, partition size and the task's settings."""
    digest = hashlib.sha256("\n".join(sorted(chips["chip_id"].astype(str))).encode()).hexdigest()
    return {"chips": len(chips), "chip_ids_sha256": digest, "chips_per_partition": chips_per_partition,
            "layout": PARTITION_LAYOUT, "settings": json.loads(json.dumps(settings, default=str, sort_keys=True))}


def write_table_atomic(table: pd.DataFrame | pa.Table, path: Path) -> None:
    """Write a Parquet file under a temporary name, then rename it into place (:func:`tiling.io.atomic_path`)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _refuse_other_inputs(out: Path, stamp: dict[str, Any], finished: bool) -> None:
    """Refuse an ``out`` whose finished partitions were computed from other inputs (or of unknown origin)."""
    if not finished:  # a first run, or one that stopped before finishing a partition: nothing to keep consistent
        return
    stamp_path = out / _FINGERPRINT
    if not stamp_path.exists():
        raise InputError("holds partitions of unknown origin; choose another output directory", out)
    if json.loads(stamp_path.read_text()) != stamp:
        raise InputError("holds results computed from other chips or settings; choose another output "
                         "directory or remove it", out)


def _claim(out: Path, stamp: dict[str, Any], finished: bool) -> None:
    """Make ``out`` the output of ``stamp``: refuse one holding results of other inputs, else record it."""
    _refuse_other_inputs(out, stamp, finished)
    out.mkdir(parents=True, exist_ok=True)
    if not finished:
        with atomic_path(out / _FINGERPRINT) as tmp:
            tmp.write_text(json.dumps(stamp, indent=2))


def recorded_settings(out_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The settings an output directory's partitions were computed with (``_inputs.json``), if any finished."""
    out = Path(out_dir)
    stamp_path = out / _FINGERPRINT
    if not stamp_path.is_file() or not any(out.rglob(PART_GLOB)):
        return None
    return json.loads(stamp_path.read_text()).get("settings")


def _run_one(part: pd.DataFrame, index: int, out_dir: str, task: Callable[[pd.DataFrame], pd.DataFrame]) -> int:
    path = Path(out_dir) / part_name(index)
    if path.exists():  # another attempt of this task finished first
        return len(part)
    result = task(part)
    write_table_atomic(result, path)
    return len(result)


def check_resumable(chips: pd.DataFrame, out_dir: str | os.PathLike[str], chips_per_partition: int,
                    settings: dict[str, Any]) -> dict[str, Any]:
    """Check that ``out_dir`` holds no partitions computed from other inputs; returns the fingerprint.

    :func:`run_partitions` checks this itself; a stage that writes other files into ``out_dir`` before it
    runs (an exported network) calls it first, so that a refused rerun leaves the directory as it was.

    Raises:
        InputError: ``out_dir`` holds partitions computed from other chips or settings, or of unknown origin.
    """
    out = Path(out_dir)
    stamp = fingerprint(chips, chips_per_partition, settings)
    _refuse_other_inputs(out, stamp, out.is_dir() and any(out.glob(PART_GLOB)))
    return stamp


def run_partitions(chips: pd.DataFrame, out_dir: str | os.PathLike[str], task: Callable[[pd.DataFrame], pd.DataFrame],
                   *, settings: dict[str, Any], chips_per_partition: int = 512, scheduler: Scheduler = None,
                   n_workers: int | None = None, desc: str = "partitions", progress: bool = True,
                   on_client: Callable[[Any], None] | None = None) -> list[Path]:
    """Run ``task`` over every partition of ``chips`` not yet written in ``out_dir``; return all partitions.

    Args:
        chips: the chip table (at least ``chip_id``).
        out_dir: output directory of ``part-NNNNN.parquet`` files.
        task: a picklable callable mapping one partition's rows to its result table. Heavy state (a model)
            belongs in a per-process cache inside the task, so it loads once per worker.
        settings: everything besides the chips that determines the results (model, bands, ...).
        chips_per_partition: partition size; bounds each worker's memory.
        scheduler: see :func:`tiling.parallel.dask_client`.
        n_workers: worker processes of a new LocalCluster (default: one per core).
        on_client: called with the client once it exists (e.g. to print the dashboard address).

    Raises:
        InputError: ``out_dir`` holds partitions computed from other inputs.
    """
    out = Path(out_dir)
    _claim(out, fingerprint(chips, chips_per_partition, settings), out.is_dir() and any(out.glob(PART_GLOB)))
    for leftover in out.glob(".part-*.tmp"):  # written by attempts that died before renaming (atomic_path's names)
        leftover.unlink(missing_ok=True)
    parts = split_partitions(chips, chips_per_partition)
    todo = [i for i in range(len(parts)) if not (out / part_name(i)).exists()]
    if todo:
        _compute(parts, todo, out, task, scheduler, n_workers, desc, progress, on_client)
    return [out / part_name(i) for i in range(len(parts))]


def _compute(parts: Sequence[pd.DataFrame], todo: list[int], out: Path, task: Callable, scheduler: Scheduler,
             n_workers: int | None, desc: str, progress: bool, on_client: Callable[[Any], None] | None) -> None:
    bar = None
    try:
        with dask_client(for_tasks(scheduler, len(todo)), n_workers=n_workers) as client:
            if client is not None and on_client is not None:
                on_client(client)  # before the bar is drawn: a line printed later would land inside the bar
            bar = tqdm(total=sum(len(parts[i]) for i in todo), desc=desc, unit="chip", disable=not progress)
            if client is None:
                for i, _ in _in_process(todo, lambda i: _run_one(parts[i], i, str(out), task),
                                        getattr(task, "side_by_side", False)):
                    bar.update(len(parts[i]))
                return
            # distributed only with a cluster: a run in this process does without its import
            from distributed import as_completed
            from distributed.client import FutureCancelledError
            from distributed.scheduler import KilledWorker

            task_future = client.scatter(task, broadcast=True, hash=False)
            futures = {client.submit(_run_one, parts[i], i, str(out), task_future, pure=False,
                                     key=f"{desc.replace(' ', '-')}-{i:05d}-{os.urandom(4).hex()}"): i for i in todo}
            for future in as_completed(futures):
                try:
                    future.result()
                except KilledWorker as exc:
                    raise InputError(f"workers died repeatedly on partition {futures[future]} (out of memory?); "
                                     "rerun to resume from the partitions already written") from exc
                except FutureCancelledError as exc:
                    raise InputError("the Dask cluster went away; rerun to resume") from exc
                bar.update(len(parts[futures[future]]))
    finally:
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------------------------------------------
# planned partitions: task descriptions in, summaries out


class PlannedPartition(Protocol):
    """A task description of :func:`run_plan` (e.g. :class:`tiling.blocks.SceneBlock`): small and picklable."""

    @property
    def name(self) -> str:
        """Its partition's path under the output directory (``<group>/part-NNNNN.parquet``), unique in a plan."""

    @property
    def cells(self) -> int:
        """How much work it is (grid cells, for the progress bar)."""

    def describe(self) -> dict[str, Any]:
        """What its result is computed from, as JSON (the plan's fingerprint)."""


#: Parquet key-value metadata key of a planned partition's summary.
SUMMARY_KEY = b"geoclf:summary"

#: How :func:`run_plan` lays out partitions, recorded in ``_inputs.json``.
PLAN_LAYOUT = "planned"


def plan_fingerprint(plan: Sequence[PlannedPartition], settings: dict[str, Any]) -> dict[str, Any]:
    """What a planned output was computed from: every task's description and the task's settings."""
    digest = hashlib.sha256()
    for spec in plan:
        digest.update(json.dumps([spec.name, spec.describe()], sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return {"partitions": len(plan), "plan_sha256": digest.hexdigest(), "layout": PLAN_LAYOUT,
            "settings": json.loads(json.dumps(settings, default=str, sort_keys=True))}


def check_plan_resumable(plan: Sequence[PlannedPartition], out_dir: str | os.PathLike[str],
                         settings: dict[str, Any]) -> dict[str, Any]:
    """:func:`check_resumable` for a planned output (:func:`run_plan`): refuse one of another plan or settings.

    Raises:
        InputError: ``out_dir`` holds partitions of another plan or other settings, or of unknown origin.
    """
    out = Path(out_dir)
    stamp = plan_fingerprint(plan, settings)
    _refuse_other_inputs(out, stamp, out.is_dir() and any(out.rglob(PART_GLOB)))
    return stamp


def write_partition(table: pa.Table, path: Path, summary: dict[str, Any]) -> None:
    """Write a planned partition atomically, its summary in the file's metadata (read by :func:`read_summary`)."""
    metadata = dict(table.schema.metadata or {})
    metadata[SUMMARY_KEY] = json.dumps(summary, default=str).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(metadata), tmp)


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The summary of a planned partition, from its footer (no row is read)."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata[SUMMARY_KEY]) if SUMMARY_KEY in metadata else {}


def _run_planned(spec: PlannedPartition, out_dir: str,
                 task: Callable[[PlannedPartition], tuple[pa.Table, dict[str, Any]]]) -> dict[str, Any]:
    path = Path(out_dir) / spec.name
    if path.exists():  # another attempt of this task finished first
        return read_summary(path)
    started = time.perf_counter()
    table, summary = task(spec)
    summary = {**summary, "rows": table.num_rows, "task_s": time.perf_counter() - started}
    write_partition(table, path, summary)
    return summary


def run_plan(plan: Sequence[PlannedPartition], out_dir: str | os.PathLike[str],
             task: Callable[[PlannedPartition], tuple[pa.Table, dict[str, Any]]], *, settings: dict[str, Any],
             scheduler: Scheduler = None, n_workers: int | None = None, desc: str = "partitions",
             progress: bool = True, on_client: Callable[[Any], None] | None = None) -> list[dict[str, Any]]:
    """Run ``task`` on every planned partition not yet written in ``out_dir``; return every partition's summary.

    Each task turns its description into a table on the worker (reading rasters, running a model) and returns
    it with a small JSON summary; the table is written as ``out_dir/<spec.name>`` and the summary goes into its
    metadata and back to the client. Only descriptions travel to the workers and only summaries come back, so
    the client's memory does not grow with the chips. Resumable and exactly-once like :func:`run_partitions`:
    a partition appears once, whole, by rename; a rerun skips written ones (reading their summaries from their
    footers); ``_inputs.json`` refuses a rerun with another plan or other settings.

    Args:
        plan: the task descriptions, in output order (names unique).
        out_dir: the output directory (a dataset of ``<group>/part-NNNNN.parquet`` files).
        task: picklable; maps a description to ``(table, summary)``. Side outputs (map tiles) it writes itself,
            atomically, before returning: the partition file, written last, marks the task done.
        settings: everything besides the plan that determines the results.
        scheduler, n_workers, desc, progress, on_client: as :func:`run_partitions`.

    Returns:
        The summaries in plan order, each with ``rows`` (the partition's row count) and ``task_s`` added.

    Raises:
        InputError: ``out_dir`` holds partitions of another plan or other settings.
    """
    out = Path(out_dir)
    names = [spec.name for spec in plan]
    if len(set(names)) != len(names):
        raise ValueError("planned partitions need unique names")
    _claim(out, plan_fingerprint(plan, settings), out.is_dir() and any(out.rglob(PART_GLOB)))
    for leftover in out.rglob(".part-*.tmp"):  # attempts that died before renaming
        leftover.unlink(missing_ok=True)
    summaries: list[dict[str, Any] | None] = [None] * len(plan)
    todo = []
    for i, spec in enumerate(plan):
        if (out / spec.name).exists():
            summaries[i] = read_summary(out / spec.name)
        else:
            todo.append(i)
    bar = None
    try:
        if todo:
            with dask_client(for_tasks(scheduler, len(todo)), n_workers=n_workers) as client:
                if client is not None and on_client is not None:
                    on_client(client)  # before the bar is drawn: a line printed later would land inside the bar
                bar = tqdm(total=sum(plan[i].cells for i in todo), desc=desc, unit="cell", disable=not progress)
                if client is None:
                    for i, summary in _in_process(todo, lambda i: _run_planned(plan[i], str(out), task),
                                                  getattr(task, "side_by_side", False)):
                        summaries[i] = summary
                        bar.update(plan[i].cells)
                else:
                    _compute_planned(client, plan, todo, out, task, desc, summaries, bar)
    finally:
        if bar is not None:
            bar.close()
    return summaries  # type: ignore[return-value]


#: Tasks run side by side in this process (``scheduler="sync"``) when the task allows it (its
#: ``side_by_side`` attribute): one task's raster reads and Python work run while the other's model runs
#: (runners take turns for the forward pass itself, see :class:`geoclf.runtime.Runner`), where one task at a
#: time left a core idle through every read.
SIDE_BY_SIDE = 2


class RunStopped(Exception):
    """Raised in a task running beside another (:data:`SIDE_BY_SIDE`) at its next batch once the run stopped: the
    other task failed, or Ctrl-C reached the run. Its partition is not written; a rerun computes it."""


#: The stop event of the run whose task this thread runs (threads of :func:`_in_process` only).
_TASK_THREAD = threading.local()


def check_stopped() -> None:
    """Raise :class:`RunStopped` in a task thread whose run has stopped; called between a task's batches
    (:func:`geoclf.chips.iter_batches`), so that an error or Ctrl-C ends the run within a batch, not a block.
    Anywhere else (the main thread, a Dask worker) it does nothing."""
    stop = getattr(_TASK_THREAD, "stop", None)
    if stop is not None and stop.is_set():
        raise RunStopped("the run stopped")


def _in_process(todo: list[int], run: Callable[[int], T], side_by_side: bool) -> Iterator[tuple[int, T]]:
    """Run ``run(i)`` for every ``i`` of ``todo`` in this process, yielding ``(i, result)`` as each finishes:
    in turn, or with ``side_by_side`` :data:`SIDE_BY_SIDE` at a time on threads of their own.

    An error (or Ctrl-C) ends the run: no further task starts, and the one running beside it stops at its next
    batch (:func:`check_stopped`) without writing its partition."""
    if not side_by_side or SIDE_BY_SIDE < 2 or len(todo) < 2:
        for i in todo:
            yield i, run(i)
        return
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    stop = threading.Event()

    def in_thread(i: int) -> T:
        _TASK_THREAD.stop = stop
        try:
            return run(i)
        finally:
            _TASK_THREAD.stop = None

    pool = ThreadPoolExecutor(max_workers=SIDE_BY_SIDE, thread_name_prefix="geoclf-task")
    queue = iter(todo)
    pending = {pool.submit(in_thread, i): i for i in itertools.islice(queue, SIDE_BY_SIDE)}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                result = future.result()
                for j in itertools.islice(queue, 1):
                    pending[pool.submit(in_thread, j)] = j
                yield i, result
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)


def _compute_planned(client: Any, plan: Sequence[PlannedPartition], todo: list[int], out: Path, task: Callable,
                     desc: str, summaries: list[dict[str, Any] | None], bar: Any) -> None:
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    task_future = client.scatter(task, broadcast=True, hash=False)
    prefix = f"{desc.replace(' ', '-')}-{os.urandom(4).hex()}"
    futures = {client.submit(_run_planned, plan[i], str(out), task_future, pure=False, key=f"{prefix}-{i:06d}"): i
               for i in todo}
    for future in as_completed(futures):
        i = futures[future]
        try:
            summaries[i] = future.result()
        except KilledWorker as exc:
            raise InputError(f"workers died repeatedly on partition {plan[i].name} (out of memory?); rerun to "
                             "resume from the partitions already written") from exc
        except FutureCancelledError as exc:
            raise InputError("the Dask cluster went away; rerun to resume") from exc
        future.release()  # its summary is kept here; the scheduler can forget the task
        bar.update(plan[i].cells)


def dataset_files(out_dir: str | os.PathLike[str], plan: Sequence[PlannedPartition] | None = None) -> list[Path]:
    """The partition files of a planned output: in plan order when the plan is given, else sorted by name."""
    out = Path(out_dir)
    if plan is not None:
        return [out / spec.name for spec in plan]
    return sorted(out.rglob(PART_GLOB))


def read_partitions(out_dir: str | os.PathLike[str], columns: list[str] | None = None) -> pd.DataFrame:
    """Concatenate the partitions of a partitioned output (in partition order)."""
    paths = sorted(Path(out_dir).glob(PART_GLOB))
    if not paths:
        raise InputError("holds no partitions (part-*.parquet)", out_dir)
    return pd.concat([pd.read_parquet(p, columns=columns) for p in paths], ignore_index=True)


def print_dashboard(client: Any) -> None:
    """Print where the Dask dashboard of a run is (to stderr, so stdout stays clean)."""
    link = dashboard_link(client)
    if link:
        print(f"Dask dashboard: {link}", file=sys.stderr)
