"""The planned partition engine (geoclf.partitions.run_plan): descriptions out, summaries back, files once.

Workers turn a small task description into a table and write it as ``<group>/part-NNNNN.parquet`` with their
summary in its footer; a rerun reads the summaries back from the footers and computes only what is missing;
an output of another plan or other settings is refused.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoclf.partitions import RunStopped, check_stopped, read_summary, recorded_settings, run_plan
from tiling.errors import InputError


@dataclass(frozen=True)
class Part:
    group: str
    number: int
    rows: int

    @property
    def name(self) -> str:
        return f"{self.group}/part-{self.number:05d}.parquet"

    @property
    def cells(self) -> int:
        return self.rows

    def describe(self) -> dict[str, Any]:
        return {"group": self.group, "rows": self.rows}


@dataclass
class Squares:
    """A task: the squares of the part's row numbers; it records which parts it ran in ``log``."""

    log: str

    def __call__(self, part: Part) -> tuple[pa.Table, dict[str, Any]]:
        with open(self.log, "a") as log:
            log.write(f"{part.name}\n")
        values = [part.number * 100 + i for i in range(part.rows)]
        return pa.table({"value": values, "square": [v * v for v in values]}), {"total": sum(values)}


PLAN = [Part("a", 0, 3), Part("a", 1, 0), Part("b", 0, 5), Part("b", 1, 2)]


def ran(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_a_plan_runs_once_and_a_rerun_reads_the_summaries_back(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log.txt"
    first = run_plan(PLAN, out, Squares(str(log)), settings={"k": 1}, scheduler="sync", progress=False)
    assert sorted(ran(log)) == sorted(p.name for p in PLAN)
    assert [s["rows"] for s in first] == [3, 0, 5, 2]
    assert [s["total"] for s in first] == [3, 0, 10, 201]
    assert read_summary(out / "b/part-00000.parquet")["total"] == 10
    assert recorded_settings(out) == {"k": 1}
    table = pq.read_table(out / "b/part-00001.parquet")
    assert table.column("value").to_pylist() == [100, 101]

    (out / "b/part-00000.parquet").unlink()  # a partition lost (or never written: a killed worker)
    (out / "a" / ".part-00009.parquet.tmp").write_bytes(b"half a file")  # a dead attempt's leftover
    again = run_plan(PLAN, out, Squares(str(log)), settings={"k": 1}, scheduler="sync", progress=False)
    assert ran(log).count("b/part-00000.parquet") == 2 and len(ran(log)) == len(PLAN) + 1
    assert [{k: v for k, v in s.items() if k != "task_s"} for s in again] == [
        {k: v for k, v in s.items() if k != "task_s"} for s in first]
    assert not list(out.rglob("*.tmp"))


def test_an_output_of_another_plan_or_other_settings_is_refused(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log.txt"
    run_plan(PLAN, out, Squares(str(log)), settings={"k": 1}, scheduler="sync", progress=False)
    with pytest.raises(InputError, match="other chips or settings"):
        run_plan(PLAN, out, Squares(str(log)), settings={"k": 2}, scheduler="sync", progress=False)
    with pytest.raises(InputError, match="other chips or settings"):
        run_plan([*PLAN[:3], Part("b", 1, 4)], out, Squares(str(log)), settings={"k": 1}, scheduler="sync",
                 progress=False)
    assert len(ran(log)) == len(PLAN)


def test_a_plan_runs_on_a_local_cluster(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log.txt"
    summaries = run_plan(PLAN, out, Squares(str(log)), settings={}, scheduler="local", n_workers=2,
                         progress=False)
    assert [s["rows"] for s in summaries] == [3, 0, 5, 2]
    assert sorted(ran(log)) == sorted(p.name for p in PLAN)
    dataset = pq.read_table(out)  # the partitions are one dataset
    assert sorted(dataset.column("value").to_pylist()) == [0, 0, 1, 1, 2, 2, 3, 4, 100, 101]


@dataclass
class Overlapping(Squares):
    """Squares that say how many of its calls ran at once (``running`` and ``most``, shared by the threads of
    one process), each call ``pause`` seconds long; a call of part ``fail`` raises."""

    pause: float = 0.2
    fail: str | None = None
    side_by_side = True  # a class attribute, as the real tasks declare it

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.running = self.most = 0

    def __call__(self, part: Part) -> tuple[pa.Table, dict[str, Any]]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.pause)
            if part.name == self.fail:
                raise InputError("cannot be read", part.name)
            return super().__call__(part)
        finally:
            with self.lock:
                self.running -= 1


def test_tasks_that_allow_it_run_two_at_a_time_in_this_process(tmp_path):
    # a scene block's raster reads run while the other block's model runs (geoclf.score.ScoreBlockTask)
    out, log = tmp_path / "out", tmp_path / "log.txt"
    task = Overlapping(str(log))
    summaries = run_plan(PLAN, out, task, settings={}, scheduler="sync", progress=False)
    assert task.most == 2
    assert [s["rows"] for s in summaries] == [3, 0, 5, 2] and [s["total"] for s in summaries] == [3, 0, 10, 201]
    assert sorted(ran(log)) == sorted(p.name for p in PLAN)  # each once

    plain = Squares(str(tmp_path / "plain.txt"))  # a task that does not say so runs one at a time
    run_plan(PLAN, tmp_path / "plain", plain, settings={}, scheduler="sync", progress=False)
    assert pq.read_table(tmp_path / "plain").sort_by("value").equals(pq.read_table(out).sort_by("value"))


def test_a_task_failing_beside_another_ends_the_run_and_a_rerun_resumes(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log.txt"
    with pytest.raises(InputError, match="cannot be read"):
        run_plan(PLAN, out, Overlapping(str(log), fail="a/part-00001.parquet"), settings={}, scheduler="sync",
                 progress=False)
    time.sleep(0.5)  # the task beside it finishes and writes its partition after the error reached the caller
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("part-*.parquet"))
    assert "a/part-00001.parquet" not in written and "a/part-00000.parquet" in written
    assert len(written) < len(PLAN)  # no task started after the error
    again = Overlapping(str(log))
    summaries = run_plan(PLAN, out, again, settings={}, scheduler="sync", progress=False)
    assert [s["total"] for s in summaries] == [3, 0, 10, 201]
    assert sorted(ran(log)) == sorted(p.name for p in PLAN)  # across both runs each once: the written ones not again
    assert not list(out.rglob("*.tmp"))


@dataclass
class Patient(Squares):
    """Part ``a/0`` fails at once; any other part works ``batches`` batches of 20 ms, asking between them
    whether its run stopped (as a model's batches do, geoclf.chips.iter_batches); ``stopped`` names the parts
    that were told to stop."""

    batches: int = 200
    side_by_side = True

    def __post_init__(self) -> None:
        self.stopped: list[str] = []

    def __call__(self, part: Part) -> tuple[pa.Table, dict[str, Any]]:
        if part.name == "a/part-00000.parquet":
            time.sleep(0.1)
            raise InputError("cannot be read", part.name)
        try:
            for _ in range(self.batches):
                time.sleep(0.02)
                check_stopped()
        except RunStopped:
            self.stopped.append(part.name)
            raise
        return super().__call__(part)


def test_a_task_beside_a_failed_one_stops_at_its_next_batch(tmp_path):
    # Ctrl-C or an error in one block must not wait for the block beside it (seconds of a model's batches)
    out, log = tmp_path / "out", tmp_path / "log.txt"
    task = Patient(str(log))
    with pytest.raises(InputError, match="cannot be read"):
        run_plan([Part("a", 0, 1), Part("a", 1, 1)], out, task, settings={}, scheduler="sync", progress=False)
    deadline = time.monotonic() + 2  # its 200 batches would take 4 s
    while not task.stopped and time.monotonic() < deadline:
        time.sleep(0.02)
    assert task.stopped == ["a/part-00001.parquet"]
    assert not list(out.rglob("part-*.parquet")) and not ran(log)
    check_stopped()  # this thread runs no task: nothing to stop
