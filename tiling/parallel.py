"""One way to get a Dask client: synchronous, a LocalCluster of worker processes, an address, or a cluster.

Every parallel stage (tiling, featurization, scoring, sweeps) takes a ``scheduler`` argument and passes it
to :func:`dask_client`, so the same code runs on a laptop, on ``dask scheduler``/``dask worker`` processes
or on a cloud cluster.

A LocalCluster's dashboard listens on 127.0.0.1 only (other machines on the network cannot reach it) unless
``GEOCLF_DASHBOARD`` names another address, and its worker processes ignore Ctrl-C: the client process
takes the interrupt and closes the cluster, so an interrupted command stops with one line instead of a
traceback from every worker.
"""

from __future__ import annotations

import logging
import numbers
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import dask

from tiling.errors import InputError

#: glibc malloc settings that stop worker processes from returning memory to the OS after every batch;
#: CPU inference with large temporary tensors runs markedly faster with them. They only take effect when
#: set before a process starts, hence Dask's pre-spawn environment. At most two malloc arenas: each thread
#: that allocates (two blocks side by side in one process, their chip readers) otherwise gets an arena of its
#: own, which the trim threshold never gives back (-400 MB of a 2.7 GB peak at 3,600 chips in-process, the
#: same wall time: benchmarks/README.md).
WORKER_GLIBC_TUNABLES = (
    "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184:glibc.malloc.arena_max=2")

Scheduler = Any  # None | "sync" | "local" | "tcp://host:port" | distributed.Client | StartingCluster | a cluster

#: Environment variable naming where the dashboard of the LocalClusters geoclf starts listens: ``HOST:PORT``
#: (``0.0.0.0:8787`` to open it to the network, ``:8787`` for every interface), or ``off`` for no dashboard.
DASHBOARD_ENV = "GEOCLF_DASHBOARD"
#: The default: loopback only, on a free port.
DEFAULT_DASHBOARD = "127.0.0.1:0"
#: How long :func:`dask_client` keeps trying a scheduler's address before calling it unreachable.
SCHEDULER_CONNECT_TIMEOUT = "10s"

# A worker preload (Python source, which Dask runs in each worker process as it starts): Ctrl-C in a
# terminal reaches every process of the group, and a worker that dies of it prints a traceback and makes
# the scheduler reschedule its task, while the client is already shutting the cluster down.
_IGNORE_SIGINT = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"


def worker_environment() -> dict[str, str]:
    """Environment set in worker processes before they start (Dask's defaults plus our malloc tunables)."""
    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.setdefault("GLIBC_TUNABLES", os.environ.get("GLIBC_TUNABLES", WORKER_GLIBC_TUNABLES))
    return {k: str(v) for k, v in env.items()}


def default_workers() -> int:
    """Worker processes for a LocalCluster: one per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def dashboard_address() -> str | None:
    """Where a new LocalCluster's dashboard listens: ``GEOCLF_DASHBOARD``, else 127.0.0.1 on a free port.

    Returns ``None`` (no dashboard) for ``off``/``none``/``false``/``0``.

    Raises:
        InputError: the variable is not ``HOST:PORT``, ``:PORT`` or ``off``.
    """
    value = os.environ.get(DASHBOARD_ENV, "").strip() or DEFAULT_DASHBOARD
    if value.lower() in ("off", "none", "false", "0", "no"):
        return None
    _, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InputError(f"{DASHBOARD_ENV}={value!r} is not a dashboard address: give HOST:PORT "
                         "(e.g. 127.0.0.1:8787, 0.0.0.0:8787), :PORT for every interface, or off")
    return value


def local_cluster_config() -> dict[str, Any]:
    """Dask settings a LocalCluster's worker processes must start with (to pass to ``dask.config.set``).

    The malloc tunables and BLAS threads of :func:`worker_environment`, non-daemonic workers (they may
    start processes of their own), and workers that leave Ctrl-C to the client.
    """
    preload = list(dask.config.get("distributed.worker.preload", default=[]) or [])
    return {"distributed.nanny.pre-spawn-environ": worker_environment(), "distributed.worker.daemon": False,
            "distributed.worker.preload": [*preload, _IGNORE_SIGINT] if _IGNORE_SIGINT not in preload else preload}


@contextmanager
def quiet_shutdown(interrupted: bool, client: Any = None) -> Iterator[None]:
    """Silence Dask's log (here and, given a client, on its workers) while a cluster closes after an error.

    Closing a cluster whose tasks are still running makes the scheduler, nannies and workers log every
    cancelled task, lost key and killed worker; after Ctrl-C those lines would bury the one line the user
    needs.
    """
    if not interrupted:
        yield
        return
    if client is not None:
        with suppress(Exception):
            client.run(_silence_dask_log)
    log = logging.getLogger("distributed")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _silence_dask_log() -> None:
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def check_counts(**counts: int | None) -> None:
    """Check that sizes of parallel work (batch size, chips per partition, workers) are whole numbers >= 1.

    Called before any work starts: a batch size of 0 would otherwise fail inside a worker task, after
    tiling, with a traceback. ``None`` means "the default" and passes.

    Raises:
        InputError: naming the first count that is not a whole number of at least 1.
    """
    for name, value in counts.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise InputError(f"{name.replace('_', ' ')} must be a whole number of at least 1, not {value!r}")


def for_tasks(scheduler: Scheduler, n_tasks: int) -> Scheduler:
    """``"sync"`` instead of a new LocalCluster when there is a single task: workers would cost more than it."""
    return "sync" if n_tasks <= 1 and scheduler in (None, "local") else scheduler


class StartingCluster:
    """A new LocalCluster started on a background thread, so that the client plans while its workers start.

    Give it to :func:`dask_client` as the scheduler: it yields the cluster's client once every worker process
    of it is up (waiting only for what is left of the start), and leaves the cluster open; its owner closes it
    with :meth:`close`, which can run on a thread too (:meth:`close_soon`), e.g. while the maps are written.

    Args:
        n_workers: worker processes (default: one per core).
        threads_per_worker: threads per worker.
        memory_limit: per-worker memory limit.
    """

    def __init__(self, n_workers: int | None = None, threads_per_worker: int = 1,
                 memory_limit: str | None = "auto") -> None:
        self.n_workers = n_workers or default_workers()
        self._cluster: Any = None
        self._client: Any = None
        self._error: BaseException | None = None
        self._closing: threading.Thread | None = None
        # the dashboard address is read here: a bad GEOCLF_DASHBOARD is the caller's one-line error, now
        address = dashboard_address()
        config = local_cluster_config()
        self._started = threading.Thread(target=self._start, args=(address, config, threads_per_worker,
                                                                   memory_limit), daemon=True,
                                         name="geoclf-cluster-start")
        self._started.start()

    def _start(self, address: str | None, config: dict[str, Any], threads_per_worker: int,
               memory_limit: str | None) -> None:
        try:
            from distributed import Client, LocalCluster

            with dask.config.set(config):
                self._cluster = LocalCluster(n_workers=self.n_workers, threads_per_worker=threads_per_worker,
                                             processes=True, memory_limit=memory_limit, dashboard_address=address)
                self._client = Client(self._cluster)
        except BaseException as exc:  # raised where the client is asked for
            self._error = exc

    def client(self) -> Any:
        """The cluster's ``distributed.Client``, once the cluster has started (re-raises its start's error)."""
        self._started.join()
        if self._error is not None:
            raise self._error
        return self._client

    def close_soon(self) -> None:
        """Start closing the cluster on a thread (:meth:`close` waits for it)."""
        if self._closing is None:
            self._closing = threading.Thread(target=self._close, daemon=True, name="geoclf-cluster-close")
            self._closing.start()

    def close(self, failed: bool = False) -> None:
        """Close the cluster (after its start, if still under way) and wait until it is closed.

        Args:
            failed: the work stopped on an error (or Ctrl-C): Dask's shutdown log is silenced
                (:func:`quiet_shutdown`).
        """
        if self._closing is None:
            if failed:
                self._started.join()
                with quiet_shutdown(True, self._client):
                    self._close()
                return
            self.close_soon()
        assert self._closing is not None
        self._closing.join()

    def _close(self) -> None:
        self._started.join()
        for part in (self._client, self._cluster):
            if part is not None:
                with suppress(Exception):
                    part.close()

    def __enter__(self) -> StartingCluster:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self.close(failed=kind is not None)


@contextmanager
def dask_client(scheduler: Scheduler = None, n_workers: int | None = None, threads_per_worker: int = 1,
                memory_limit: str | None = "auto") -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``scheduler``, or ``None`` to run synchronously in this process.

    Args:
        scheduler: ``None``/``"local"`` for a new LocalCluster of worker processes (closed afterwards),
            ``"sync"`` for no cluster at all, an address such as ``"tcp://10.0.0.5:8786"``, an existing
            ``Client`` or a :class:`StartingCluster` (used as is: their owner closes them) or a cluster object
            (LocalCluster, dask-cloudprovider clusters).
        n_workers: worker processes of a new LocalCluster (default: one per core).
        threads_per_worker: threads per worker of a new LocalCluster.
        memory_limit: per-worker memory limit of a new LocalCluster.

    Raises:
        InputError: the scheduler address cannot be reached.
    """
    if scheduler == "sync":
        yield None
        return
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if isinstance(scheduler, StartingCluster):  # its owner closes it
        yield scheduler.client()
        return
    if scheduler is None or scheduler == "local":
        address = dashboard_address()
        with dask.config.set(local_cluster_config()):
            cluster = LocalCluster(n_workers=n_workers or default_workers(), threads_per_worker=threads_per_worker,
                                   processes=True, memory_limit=memory_limit, dashboard_address=address)
            client = Client(cluster)
        failed = True
        try:
            yield client
            failed = False
        finally:
            with quiet_shutdown(failed, client):
                client.close()
                cluster.close()
        return
    if isinstance(scheduler, str):
        try:
            client = Client(scheduler, timeout=SCHEDULER_CONNECT_TIMEOUT)
        except OSError as exc:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from exc
        try:
            yield client
        finally:
            client.close()
        return
    client = Client(scheduler)  # a cluster object
    try:
        yield client
    finally:
        client.close()


def dashboard_link(client: Any) -> str | None:
    """The Dask dashboard address of a client, if it has one.

    Dask builds the link from the scheduler's host; for a cluster whose scheduler runs in this process
    (a LocalCluster) the host the dashboard really listens on is used instead, so the link printed is the
    one that answers (a dashboard bound to another interface than the scheduler's is not on 127.0.0.1).
    """
    try:
        link = client.dashboard_link
    except Exception:
        return None
    server = getattr(getattr(getattr(client, "cluster", None), "scheduler", None), "http_server", None)
    host, port = getattr(server, "address", None), getattr(server, "port", None)
    if link and host and port and host not in ("0.0.0.0", "::", ""):
        from distributed.utils import format_dashboard_link

        with suppress(Exception):
            return format_dashboard_link(f"[{host}]" if ":" in host else host, port)
    return link


def map_tasks(func: Any, items: list[Any], client: Any = None, *args: Any, desc: str = "tasks",
              progress: bool = True) -> list[Any]:
    """Run ``func(item, *args)`` for every item, on ``client`` or here, with a progress bar.

    Results come back in the order of ``items``. The first task error is raised as is (an
    :class:`InputError` from a worker keeps its one-line message).
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), desc=desc, unit="task", disable=not progress, leave=False)
    try:
        if client is None:
            results = []
            for item in items:
                results.append(func(item, *args))
                bar.update()
            return results
        from distributed import as_completed

        futures = client.map(func, items, *[[a] * len(items) for a in args], pure=False)
        for _ in as_completed(futures):
            bar.update()
        return client.gather(futures)
    finally:
        bar.close()
