"""The ``geoclf`` command line: a thin layer over the library, one module per command.

Commands are loaded lazily so that ``geoclf tile --help`` does not pay for importing torch. ``geoclf --help``
imports every command module to list the commands, so a command module imports the light library modules
(run history, registry, clusters, STAC) at its top and the heavy stages (scikit-learn, maps, analyses) inside
its command, where a comment says so.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import traceback
from typing import Any, NoReturn

import click

from tiling.errors import InputError
from tiling.parallel import DASHBOARD_ENV, WORKER_GLIBC_TUNABLES, dashboard_address

# command name -> "module:attribute" of its click command
COMMANDS: dict[str, str] = {
    "tile": "geoclf.cli.tile:tile",
    "synth": "geoclf.cli.synth:synth",
    "featurize": "geoclf.cli.featurize:featurize",
    "score": "geoclf.cli.score:score",
    "trend": "geoclf.cli.trend:trend",
    "change": "geoclf.cli.change:change",
    "naip": "geoclf.cli.naip:naip",
    "nlcd": "geoclf.cli.nlcd:nlcd",
    "run": "geoclf.cli.run:run",
    "map": "geoclf.cli.map:map_command",
    "train": "geoclf.cli.train:train",
    "runs": "geoclf.cli.runs:runs",
    "sweep": "geoclf.cli.sweep:sweep",
    "models": "geoclf.cli.models:models",
    "finetune": "geoclf.cli.finetune:finetune",
    "report": "geoclf.cli.report:report",
}


class _Interrupted(Exception):
    """Ctrl-C, carried past click (which would print a blank line and turn it into a generic abort)."""


class _LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted() from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geoclf")
@click.option("--dashboard", metavar="HOST:PORT", default=None,
              help="Where the Dask dashboard of local clusters listens (default 127.0.0.1 on a free port, so "
                   f"only this machine reaches it; 0.0.0.0:8787 opens it to the network; off for none). Also "
                   f"${DASHBOARD_ENV}.")
def cli(dashboard: str | None) -> None:
    """geoclf: land-use classification of aerial imagery (NAIP x NLCD)."""
    if dashboard is not None:  # an environment variable, so worker processes and recipe stages see it too
        os.environ[DASHBOARD_ENV] = dashboard
        try:
            dashboard_address()
        except InputError as exc:
            raise click.BadParameter(str(exc).replace(f"{DASHBOARD_ENV}=", ""), param_hint="--dashboard") from exc


class _LineTracker:
    """``sys.stderr`` as seen by progress bars: remembers whether the last write ended its line.

    A progress bar leaves the cursor after its last character (or after a carriage return once cleared);
    an error printed then would be glued onto the bar's line, so :func:`main` ends that line first.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._last = "\n"

    def write(self, text: str) -> int:
        if text:
            self._last = text[-1]
        return self._stream.write(text)

    def end_line(self) -> None:
        """Start a new line unless the cursor is at the start of one (a cleared bar on a terminal is)."""
        at_start = self._last == "\n" or (self._last == "\r" and _isatty(self._stream))
        if not at_start:
            self._stream.write("\n")
            self._last = "\n"
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def with_malloc_tunables() -> None:
    """Re-execute this command with :data:`tiling.parallel.WORKER_GLIBC_TUNABLES` when ``GLIBC_TUNABLES`` is unset.

    The tunables (no trimming, no mmap for large blocks) speed up CPU inference by 9-12% in the process that
    runs it, and glibc reads them only when a process starts. Dask workers get them through their environment;
    the command's own process - which scores and featurizes itself with ``--scheduler sync`` or a single
    partition - gets them here, before anything heavy is imported. ``GLIBC_TUNABLES`` set to anything (even
    empty) is left as it is; on a C library other than glibc nothing happens.
    """
    if "GLIBC_TUNABLES" in os.environ or platform.libc_ver()[0] != "glibc":
        return
    env = {**os.environ, "GLIBC_TUNABLES": WORKER_GLIBC_TUNABLES}
    # -m geoclf rather than argv[0]: the same interpreter and import path whether run as the console script
    # or as python -m geoclf; the process id (and so Ctrl-C and the shell's job control) stays the same
    os.execve(sys.executable, [sys.executable, "-m", "geoclf", *sys.argv[1:]], env)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``geoclf`` console script.

    Run as a command (``argv`` is ``None``) it first re-executes itself with geoclf's glibc malloc settings
    when ``GLIBC_TUNABLES`` is unset (see :func:`with_malloc_tunables`).

    Bad input is one line on stderr and exit status 2; an operating-system error (disk full, permission
    denied) is one line and status 1; Ctrl-C is one line and status 130. Set ``GEOCLF_DEBUG=1`` to see the
    traceback of bad input and system errors too.
    """
    if argv is None:
        with_malloc_tunables()
    original, dashboard = sys.stderr, os.environ.get(DASHBOARD_ENV)
    tracker = _LineTracker(original)
    sys.stderr = tracker  # progress bars created by the command write through it

    def fail(message: str, status: int, exc: BaseException | None = None) -> NoReturn:
        tracker.end_line()
        if exc is not None and os.environ.get("GEOCLF_DEBUG"):
            traceback.print_exception(exc, file=original)
        click.echo(f"geoclf: {message}", err=True)
        sys.exit(status)

    try:
        cli.main(args=argv, prog_name="geoclf", standalone_mode=False)
    except (_Interrupted, KeyboardInterrupt):
        fail("interrupted", 130)
    except click.exceptions.Abort:  # an aborted prompt, or Ctrl-C while click parsed the command line
        fail("aborted", 130)
    except click.ClickException as exc:
        tracker.end_line()
        exc.show()
        sys.exit(exc.exit_code)
    except InputError as exc:
        fail(f"error: {exc}", 2, exc)
    except OSError as exc:  # disk full, permission denied, a network drive gone: the system's own words
        fail(f"error: {exc}", 1, exc)
    finally:
        sys.stderr = original
        if dashboard is None:  # main() is also called in-process (tests, notebooks): leave no setting behind
            os.environ.pop(DASHBOARD_ENV, None)
        else:
            os.environ[DASHBOARD_ENV] = dashboard


if __name__ == "__main__":
    main()
