"""One way to get a Dask client: synchronous, a LocalCluster of worker processes, an address, or a cluster.

Every parallel stage (tiling, featurization, scoring, sweeps) takes a ``scheduler`` argument and passes it
to :func:`dask_client`, so the same code runs on a laptop, on ``dask scheduler``/``dask worker`` processes
or on a cloud cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dask

from tiling.errors import InputError

#: glibc malloc settings that stop worker processes from returning memory to the OS after every batch;
#: CPU inference with large temporary tensors runs markedly faster with them. They only take effect when
#: set before a process starts, hence Dask's pre-spawn environment.
WORKER_GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"

Scheduler = Any  # None | "sync" | "local" | "tcp://host:port" | distributed.Client | a cluster object


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


def for_tasks(scheduler: Scheduler, n_tasks: int) -> Scheduler:
    """``"sync"`` instead of a new LocalCluster when there is a single task: workers would cost more than it."""
    return "sync" if n_tasks <= 1 and scheduler in (None, "local") else scheduler


@contextmanager
def dask_client(scheduler: Scheduler = None, n_workers: int | None = None, threads_per_worker: int = 1,
                memory_limit: str | None = "auto") -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``scheduler``, or ``None`` to run synchronously in this process.

    Args:
        scheduler: ``None``/``"local"`` for a new LocalCluster of worker processes (closed afterwards),
            ``"sync"`` for no cluster at all, an address such as ``"tcp://10.0.0.5:8786"``, an existing
            ``Client`` (used as is) or a cluster object (LocalCluster, dask-cloudprovider clusters).
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
    if scheduler is None or scheduler == "local":
        with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment(),
                              "distributed.worker.daemon": False}):
            cluster = LocalCluster(n_workers=n_workers or default_workers(), threads_per_worker=threads_per_worker,
                                   processes=True, memory_limit=memory_limit, dashboard_address=":0")
            client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    if isinstance(scheduler, str):
        try:
            client = Client(scheduler, timeout="10s")
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
    """The Dask dashboard address of a client, if it has one."""
    try:
        return client.dashboard_link
    except Exception:
        return None


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
