"""Shared helpers of the tiling, featurization and scoring benchmarks: cached scenes, clusters, fair clocks.

What makes the figures comparable on a shared, loaded machine:

* every rate is measured **side by side** with its reference in the same run, in the same worker processes
  (:func:`on_each_worker` starts the same function on every worker at one wall-clock instant, so with two
  workers the reference runs concurrently, as the real work does);
* the clusters are the library's own (:func:`tiling.parallel.dask_client`): same ``GLIBC_TUNABLES`` in the
  workers, one thread per worker, so the reference sees the very process settings the real work sees;
* the machine load is recorded with every figure (:func:`machine_load`).

Synthetic scenes are slow to render (minutes for 10,000 x 10,000 px), so :func:`cached_scene` writes each
one once under the benchmark work directory (``--work``, default ``$GEOCLF_BENCH_DIR`` or
``~/.cache/geoclf-bench``) and later runs reuse it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a checkout without ``pip install -e``; appended, so PYTHONPATH still wins
    sys.path.append(str(REPO))

from tiling.parallel import WORKER_GLIBC_TUNABLES, dask_client, default_workers  # noqa: E402

#: Environment variable naming the benchmark work directory (cached scenes, models, outputs).
WORK_ENV = "GEOCLF_BENCH_DIR"


def default_work_dir() -> Path:
    """Where cached scenes and benchmark outputs go: ``$GEOCLF_BENCH_DIR`` or ``~/.cache/geoclf-bench``."""
    return Path(os.environ.get(WORK_ENV) or Path.home() / ".cache" / "geoclf-bench").expanduser()


def cached_scene(work: Path, size_m: float, resolution: float = 1.0, seed: int = 0) -> tuple[Path, Path]:
    """A synthetic NAIP-like scene with its NLCD raster, rendered once and reused: ``(naip, nlcd)`` paths.

    A ``scene.json`` written after both rasters marks a finished scene, so an interrupted render is redone
    rather than reused half-written.
    """
    from tiling.synth import make_scene

    out = work / f"scene-{size_m:g}m-{resolution:g}m-seed{seed}"
    marker = out / "scene.json"
    if marker.exists():
        meta = json.loads(marker.read_text())
        return Path(meta["naip"]), Path(meta["nlcd"])
    log(f"rendering a {size_m:g} m synthetic scene at {resolution:g} m into {out} (once; minutes)")
    started = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 30 or done == total:
            last[0] = time.perf_counter()
            log(f"  {done}/{total} blocks")

    scene = make_scene(out, size_m=size_m, resolution=resolution, seed=seed, progress=progress)
    seconds = time.perf_counter() - started
    marker.write_text(json.dumps({"naip": str(scene.naip), "nlcd": str(scene.nlcd), "seconds": seconds,
                                  "shape": list(scene.shape)}))
    return scene.naip, Path(str(scene.nlcd))



def train_scoring_model(work: Path, naip: Path, nlcd: Path, name: str, per_class: int = 20) -> Path:
    """A ``features`` model artifact (EfficientNet-Lite0 + logistic regression) trained once on ``per_class``
    chips of each class and split of the scene, cached as ``work/name``: what the scoring benchmarks score with."""
    import shutil

    import tiling
    from geoclf.classifiers import train_classifier
    from geoclf.features import featurize

    out = work / name
    if (out / "model.json").exists():
        return out
    log(f"training the scoring model {name} once (tile, featurize a few hundred chips, logistic regression)")
    train = work / f"{name}-training"
    shutil.rmtree(train, ignore_errors=True)
    index = tiling.tile([naip], nlcd, params=tiling.TileParams(), progress=False)
    subset = index.groupby(["label", "split"], group_keys=False).head(per_class)
    subset.attrs = index.attrs
    tiling.write_index(subset, train / "chips" / "chips.parquet")
    featurize(train / "chips", train / "features", scheduler="sync", record_run=False, progress=False)
    result = train_classifier(train / "features", "logistic_regression", runs_dir=train / "runs")
    shutil.copytree(result.artifact_dir, out)
    return out

def log(message: str) -> None:
    """Progress messages go to stderr; stdout holds only the results table."""
    print(message, file=sys.stderr, flush=True)


def machine_load() -> dict[str, Any]:
    """The load the figures were taken under: load averages, cores, and other busy processes."""
    one, five, fifteen = os.getloadavg()
    return {"date": dt.datetime.now().isoformat(timespec="minutes"), "cores": os.cpu_count(),
            "load_1m": round(one, 1), "load_5m": round(five, 1), "load_15m": round(fifteen, 1),
            "python": platform.python_version()}


def describe_load(start: dict[str, Any], end: dict[str, Any]) -> str:
    """One line saying when the run was and how loaded the machine was before and after it."""
    return (f"{start['date']} -> {end['date'][11:]}, {start['cores']} cores, load average (1 min) "
            f"{start['load_1m']} at start, {end['load_1m']} at end (15 min: {end['load_15m']})")


def torch_threads_for(n_workers: int) -> int:
    """Torch threads per worker as the library gives a LocalCluster of ``n_workers`` (workers x threads = cores).

    Same rule as :func:`geoclf.features.featurize` and :func:`geoclf.score.score` for ``scheduler=None``.
    """
    return max(1, default_workers() // n_workers)


@contextmanager
def local_cluster(n_workers: int) -> Iterator[Any]:
    """A LocalCluster exactly as the library makes one (its worker environment, one thread per worker)."""
    with dask_client(None, n_workers=n_workers, threads_per_worker=1) as client:
        client.wait_for_workers(n_workers)
        env = client.run(lambda: os.environ.get("GLIBC_TUNABLES"))
        if set(env.values()) != {WORKER_GLIBC_TUNABLES}:
            log(f"warning: workers run with GLIBC_TUNABLES={env}")
        yield client


def on_each_worker(client: Any, func: Callable[..., Any], *args: Any, delay: float = 1.0) -> list[Any]:
    """Run ``func(*args)`` on every worker at once (same wall-clock start), as a task; results by worker.

    It runs in the worker's task thread, like real tasks (``client.run`` would block the worker's event
    loop instead). The common start makes two workers compete for the cores as they do in the real work.
    """
    workers = sorted(client.scheduler_info()["workers"])
    start_at = time.time() + delay + 0.2 * len(workers)
    futures = [client.submit(_at, start_at, func, *args, workers=[w], allow_other_workers=False, pure=False)
               for w in workers]
    return client.gather(futures)


def _at(start_at: float, func: Callable[..., Any], *args: Any) -> Any:
    time.sleep(max(0.0, start_at - time.time()))
    return func(*args)


def timed_rate(results: Sequence[dict[str, float]]) -> float:
    """Items per second of a concurrent measurement: all items over the span from first start to last end.

    Each result holds ``items``, ``start`` and ``end`` (``time.time()`` on one machine). Counting the whole
    span is conservative: a worker that finishes early does not inflate the rate.
    """
    items = sum(r["items"] for r in results)
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return items / span


def bare_forward(network_factory: Callable[[], Any], threads: int, batches: int, batch_size: int = 32,
                 warmup: int = 2, size: int = 224) -> dict[str, float]:
    """Forward passes of a network on a random batch: the model's own speed, nothing else (runs on a worker).

    Same batch size, channels_last input, ``torch.inference_mode`` and torch thread count as the real work;
    ``network_factory`` returns the very network object the real task uses (from its per-process cache).
    Returns the items, wall-clock start and end, and the CPU time of the worker process meanwhile.
    """
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    network = network_factory()
    x = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(warmup):
            network(x)
        start, cpu = time.time(), time.process_time()
        for _ in range(batches):
            network(x)
        end, cpu = time.time(), time.process_time() - cpu
    return {"items": batches * batch_size, "start": start, "end": end, "cpu": cpu}


def cpu_rate(results: Sequence[dict[str, float]]) -> float:
    """Items per CPU-second of a measurement on several workers (each result holds ``items`` and ``cpu``)."""
    return sum(r["items"] for r in results) / sum(r["cpu"] for r in results)


def worker_peak_rss(client: Any) -> dict[str, float]:
    """Peak resident memory (MB) of each worker process since it started (``getrusage``'s ``ru_maxrss``)."""
    return client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class RssSampler:
    """Samples the resident memory of the worker processes from this process (psutil), in a thread.

    ``progress()`` is called at each sample and its value stored beside the RSS, so memory can be read as a
    function of work done (e.g. chips scored) from one run.
    """

    def __init__(self, client: Any, progress: Callable[[], float], interval: float = 0.5) -> None:
        import psutil

        self._procs = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        self._progress = progress
        self._interval = interval
        self.samples: list[tuple[float, float]] = []  # (progress, RSS in MB of the largest worker)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = max(p.memory_info().rss for p in self._procs) / 2**20
            except Exception:  # a worker restarting
                rss = float("nan")
            self.samples.append((self._progress(), rss))
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_until(self, done: float) -> float:
        """Highest RSS (MB) of any worker while progress was at most ``done``."""
        values = [rss for p, rss in self.samples if p <= done and rss == rss]
        return max(values) if values else float("nan")


def cpu_seconds(client: Any) -> float:
    """CPU time used so far by this process and every worker process (user + system, seconds).

    Differences of it give the CPU cost of a piece of work whatever else runs on the machine: on a loaded
    machine wall-clock rates mostly measure the load, CPU-second rates what an idle core would do.
    """
    return sum(cpu_split(client))


def cpu_split(client: Any) -> tuple[float, float]:
    """CPU time used so far by this process (the Dask client) and by all worker processes, apart."""
    return time.process_time(), sum(client.run(time.process_time).values())


def median(values: Sequence[float]) -> float:
    """The median (statistics.median, named here for the tables)."""
    return statistics.median(values)


def pct(value: float) -> str:
    """A ratio as a percentage with no decimals."""
    return f"{100 * value:.0f}%"


def command_line() -> str:
    """The command that was run, for the README."""
    return ".venv/bin/python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


class TreeMemory:
    """Peak of the summed resident memory of a process and all its descendants, sampled in a thread (MB)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self._interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            with contextlib.suppress(psutil.Error):  # the root just ended
                for proc in [self._root, *self._root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):  # a process that just ended
                        total += proc.memory_info().rss
            self.peak = max(self.peak, total / 2**20)
            self._stop.wait(self._interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_tree(command: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run ``command`` to its end: wall seconds, CPU seconds of its process tree, peak tree memory, stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    epoch, started = time.time(), time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    memory = TreeMemory(proc.pid)
    stdout, stderr = proc.communicate(timeout=3600)
    seconds = time.perf_counter() - started
    peak = memory.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... failed ({proc.returncode}): {stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu": cpu, "peak_mb": peak, "stdout": stdout, "epoch": epoch}
