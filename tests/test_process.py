"""The command's own process runs with geoclf's glibc malloc tunables, as its Dask workers do."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from geoclf import cli
from tiling.parallel import WORKER_GLIBC_TUNABLES

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc tunables only exist on glibc")


class _Exec(Exception):
    pass


def _capture_exec(monkeypatch):
    calls = []

    def execve(path, args, env):
        calls.append((path, args, env))
        raise _Exec

    monkeypatch.setattr(os, "execve", execve)
    return calls


def test_a_command_without_tunables_reexecutes_itself_with_them(monkeypatch):
    calls = _capture_exec(monkeypatch)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/geoclf", "score", "--model", "m", "--out", "o"])
    with pytest.raises(_Exec):
        cli.main()  # as the console script calls it
    (path, args, env), = calls
    assert path == sys.executable and args == [sys.executable, "-m", "geoclf", "score", "--model", "m", "--out", "o"]
    assert env["GLIBC_TUNABLES"] == WORKER_GLIBC_TUNABLES


def test_set_tunables_and_in_process_calls_are_left_alone(monkeypatch, capsys):
    calls = _capture_exec(monkeypatch)
    monkeypatch.setenv("GLIBC_TUNABLES", "")  # the user's choice, even empty
    monkeypatch.setattr(sys, "argv", ["geoclf", "--version"])
    cli.main()
    monkeypatch.delenv("GLIBC_TUNABLES")
    cli.main(["--version"])  # called from Python (tests, notebooks): never replaces the process
    assert calls == []
    assert "geoclf, version" in capsys.readouterr().out


def test_the_reexecuted_command_runs():
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    code = "import os, sys; sys.argv = ['geoclf', 'runs', '--help']; from geoclf.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Usage: geoclf runs" in done.stdout  # the new process (python -m geoclf) parsed the same arguments


def test_partitions_are_even_and_an_older_cut_is_not_resumed(tmp_path):
    """900 chips at 512 per partition are 450 + 450 (one worker no longer idles while the other finishes 512),
    and an output cut the old way (512 + 388) is refused rather than completed with overlapping chips."""
    import json

    import pandas as pd

    from geoclf.partitions import fingerprint, run_partitions, split_partitions
    from tiling.errors import InputError

    chips = pd.DataFrame({"chip_id": [f"s:{i:04d}" for i in range(900)]})
    assert [len(p) for p in split_partitions(chips, 512)] == [450, 450]
    more = pd.DataFrame({"chip_id": [f"s:{i:04d}" for i in range(1025)]})
    assert [len(p) for p in split_partitions(more, 512)] == [342, 342, 341]
    assert [len(p) for p in split_partitions(chips.iloc[:512], 512)] == [512]
    out = tmp_path / "out"
    out.mkdir()
    old = fingerprint(chips, 512, {})
    del old["layout"]  # what geoclf wrote before partitions were even
    (out / "_inputs.json").write_text(json.dumps(old))
    chips.iloc[:512].to_parquet(out / "part-00000.parquet")  # its first partition, 512 chips, finished
    with pytest.raises(InputError, match="other chips or settings"):
        run_partitions(chips, out, lambda part: part, settings={}, chips_per_partition=512, scheduler="sync",
                       progress=False)
