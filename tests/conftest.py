"""Shared fixtures: synthetic scenes made once per test session with the product's own generator."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

# Runs recorded by tests go to a temporary store, never into the developer's working directory.
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _runs_in_tmp(tmp_path_factory):
    """Every test (and every module or session fixture) records its runs in a temporary runs directory."""
    saved = os.environ.get("GEOCLF_RUNS")
    os.environ["GEOCLF_RUNS"] = str(tmp_path_factory.getbasetemp() / "runs")
    yield
    if saved is None:
        os.environ.pop("GEOCLF_RUNS", None)
    else:
        os.environ["GEOCLF_RUNS"] = saved


@contextlib.contextmanager
def shared_turn(shared: str, name: str) -> Iterator[None]:
    """Hold ``$GEOCLF_TEST_SHARED``'s lock for ``name``: ``make test`` runs its pytest processes two at a time,
    and the one that builds a shared fixture must finish before another reads (or builds) it."""
    with open(Path(shared) / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or its process dies)
        yield


def built_once(tmp_path_factory, name: str, build):
    """``build(directory)`` of a session fixture whose files tests only read, made once for the whole suite.

    Without ``$GEOCLF_TEST_SHARED`` it is built in a temporary directory of this session. With it (``make test``'s
    pytest processes), the first process to ask builds it in ``$GEOCLF_TEST_SHARED/name``, holding the name's
    lock (:func:`shared_turn`), and leaves what it returned beside it (pickled, written last); the others wait for
    the lock and load that. A directory without it (a process killed while building) is built again.
    """
    import pickle

    shared = os.environ.get("GEOCLF_TEST_SHARED")
    if not shared:
        return build(tmp_path_factory.mktemp(name))
    directory = Path(shared) / name
    built = directory / ".built.pickle"
    with shared_turn(shared, name):
        if built.exists():
            return pickle.loads(built.read_bytes())
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        value = build(directory)
        partial = built.with_suffix(".partial")
        partial.write_bytes(pickle.dumps(value))
        partial.replace(built)
    return value


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory):
    """A 2,240 m synthetic scene (10 x 10 chips of 224 m at 1 m) with its NLCD, in EPSG:26919."""
    from tiling.synth import make_scene

    return built_once(tmp_path_factory, "scene", lambda directory: make_scene(directory, size_m=2240, seed=0))


@pytest.fixture(scope="session")
def utm_pair(tmp_path_factory):
    """Two synthetic scenes either side of the UTM 18/19 boundary, and one NLCD under both."""
    from tiling.synth import make_utm_pair

    return built_once(tmp_path_factory, "utm-pair", lambda directory: make_utm_pair(directory, size_m=1344, seed=1))


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory):
    """A migrated, empty MLflow database. Creating one takes seconds (schema migrations), copying it
    milliseconds, so each test that wants a fresh run history gets a copy."""
    from geoclf import runs

    def build(directory: Path) -> Path:
        runs.mlflow_client(directory)  # the client creates the tables, no experiment yet
        return directory / runs.DB_NAME

    return built_once(tmp_path_factory, "template", build)


@pytest.fixture
def runs_dir(tmp_path, empty_db, monkeypatch):
    """A fresh run history, also set as $GEOCLF_RUNS for the CLI."""
    import shutil

    from geoclf import runs

    directory = tmp_path / "history"
    directory.mkdir()
    shutil.copy(empty_db, directory / runs.DB_NAME)
    monkeypatch.setenv(runs.RUNS_ENV, str(directory))
    return directory


def shared_data(*parts: str) -> Path:
    """A file of ../shared/data (real rasters for development); skips the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available on this machine")
    return path


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory):
    """The quickstart recipe (what ``make demo`` runs), run once into a temporary working directory.

    Its outputs (scene, chips, features, two trained classifiers, maps of two years, change report) feed the
    end-to-end tests, so the whole pipeline is built once per test session.

    When ``$GEOCLF_TEST_SHARED`` names a directory (``make test`` sets a fresh one for its pytest processes,
    which run two at a time), the recipe runs there once, under the directory's lock for it (:func:`shared_turn`),
    and later processes resume it: every stage is skipped, and the first run's report is returned, so each
    process sees what one process for the whole suite would see.
    """
    from geoclf.recipes import load_recipe, run_recipe

    shared = os.environ.get("GEOCLF_TEST_SHARED")
    workdir = Path(shared) / "quickstart" if shared else tmp_path_factory.mktemp("quickstart")
    first_run = workdir / ".geoclf" / "first-run-report.json"
    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml", workdir)
    # scored in fp32, not at the auto precision (bf16 where the CPU has it): bf16 kernels round differently
    # from one CPU to another (the maps of this machine's AMD EPYC and of the Intel CPU it replaced differ by
    # ~1e-3 in probabilities and a chip of change), and the golden fingerprints must hold on every machine
    recipe.stages = [(kind, {**args, "precision": "fp32"} if kind == "score" else args) for kind, args in recipe.stages]
    with shared_turn(shared, "quickstart") if shared else contextlib.nullcontext():
        report = run_recipe(recipe, echo=lambda _: None)
        if shared:
            if first_run.exists():
                report = [tuple(entry) for entry in json.loads(first_run.read_text())]
            else:
                first_run.write_text(json.dumps(report))
    return workdir, recipe, report


#: Debian's headless Chromium, for the tests that open geoclf's HTML pages in a real browser.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


#: Seconds a first Chromium run may take before it is taken for hung and run once more (a page renders in 1-10 s,
#: but now and then headless Chromium never exits after a --screenshot under load: 120 s lost, then a failure).
CHROMIUM_FIRST_TRY_S = 45


def chromium(tmp_path: Path, page: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Open ``page`` in headless Chromium with no network services (``--dump-dom``, ``--screenshot``...).

    A run that has not exited after :data:`CHROMIUM_FIRST_TRY_S` is killed and started again, once, with a fresh
    profile and 120 s; what the page shows is checked on the run that finished, never on a partial one.
    """
    def run(timeout: float) -> subprocess.CompletedProcess[str]:
        profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
                   *flags, page.as_uri()]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)

    try:
        return run(CHROMIUM_FIRST_TRY_S)
    except subprocess.TimeoutExpired:
        return run(120)
