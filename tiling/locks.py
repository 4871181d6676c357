"""One writer per output: a lock file beside an output directory, with the owner's PID and stale-lock detection.

Two commands writing into one ``--out`` would both do all the work and race on the files they share (the
inputs fingerprint is checked, then written). The first takes ``.<name>.lock`` beside the output directory
(created with ``O_EXCL``: exactly one process can create it) and removes it when it ends, however it ends;
the second is refused with one line naming the first. A lock whose owner is gone (killed, machine rebooted)
is stale and taken over: on the same machine, when no process with that PID and start time is alive.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tiling.errors import InputError

PathLike = str | os.PathLike[str]
F = TypeVar("F", bound=Callable[..., Any])


def lock_path(out: PathLike) -> Path:
    """The lock file of an output directory: ``.<name>.lock`` beside it (so the output itself is not created
    before its inputs are checked)."""
    target = Path(out).expanduser().absolute()
    return target.with_name(f".{target.name}.lock")


def _started(pid: int) -> float | None:
    """Start time of process ``pid`` (seconds since the epoch), or ``None`` if there is none."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # another user's live process
        return 0.0


def _stale(owner: dict[str, Any]) -> bool:
    """Whether the run that wrote a lock is gone (only decidable for locks taken on this machine)."""
    if owner.get("host") != socket.gethostname():
        return False
    started = _started(int(owner.get("pid", -1)))
    # a live process with that PID that started after the lock was taken is another process (PID reuse)
    return started is None or (started > 0 and started > float(owner.get("started", 0)) + 1.0)


@contextmanager
def output_lock(out: PathLike, what: str = "geoclf") -> Iterator[Path]:
    """Hold the lock of output directory ``out`` for the duration of the block.

    Args:
        out: the output directory (need not exist yet).
        what: the command, recorded in the lock for the message another run gets.

    Raises:
        InputError: another live run holds the lock (the message names it and the lock file).
    """
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _started(os.getpid()) or time.time(),
          "command": what}
    for _ in range(3):  # take it, or take over a stale one (another process may be doing the same)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                owner = {}
            if not owner and time.time() - _mtime(path) < 5:  # being written right now
                time.sleep(0.2)
                continue
            if owner and not _stale(owner):
                since = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(owner.get("started", 0))))
                raise InputError(f"is being written by another run ({owner.get('command', 'geoclf')}, pid "
                                 f"{owner.get('pid')} on {owner.get('host')}, since {since}); wait for it to end, or "
                                 f"remove {path} if that run is gone", out) from None
            _remove_if_same(path, owner)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        break
    else:
        raise InputError(f"cannot take the lock {path}: other runs keep taking it", out)
    try:
        yield path
    finally:
        _remove_if_same(path, me)


def locks_output(argument: str = "out", what: str | None = None) -> Callable[[F], F]:
    """Decorate a function writing into the directory its ``argument`` names: it runs holding that output's lock.

    The signature (and so recipes' parameter checks and the API docs) stays the function's own.
    """
    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def locked(*args: Any, **kwargs: Any) -> Any:
            out = signature.bind_partial(*args, **kwargs).arguments.get(argument)
            if out is None:
                return func(*args, **kwargs)
            with output_lock(out, what or func.__name__):
                return func(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _remove_if_same(path: Path, owner: dict[str, Any]) -> None:
    """Remove a lock file if it still holds ``owner`` (not a lock another run took over meanwhile)."""
    try:
        current = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        current = {}
    if current == owner or (not current and not owner):
        path.unlink(missing_ok=True)


__all__ = ["lock_path", "locks_output", "output_lock"]
