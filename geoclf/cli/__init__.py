"""The ``geoclf`` command line: a thin layer over the library, one module per command.

Commands are loaded lazily so that ``geoclf tile --help`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from tiling.errors import InputError

# command name -> "module:attribute" of its click command
COMMANDS: dict[str, str] = {
    "tile": "geoclf.cli.tile:tile",
    "synth": "geoclf.cli.synth:synth",
    "featurize": "geoclf.cli.featurize:featurize",
    "score": "geoclf.cli.score:score",
    "trend": "geoclf.cli.trend:trend",
    "change": "geoclf.cli.change:change",
    "naip": "geoclf.cli.naip:naip",
    "run": "geoclf.cli.run:run",
    "map": "geoclf.cli.map:map_command",
    "train": "geoclf.cli.train:train",
    "runs": "geoclf.cli.runs:runs",
    "sweep": "geoclf.cli.sweep:sweep",
    "models": "geoclf.cli.models:models",
    "finetune": "geoclf.cli.finetune:finetune",
    "report": "geoclf.cli.report:report",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attr = COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="geoclf")
def cli() -> None:
    """geoclf: land-use classification of aerial imagery (NAIP x NLCD)."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``geoclf`` console script.

    Bad input is one line on stderr and exit status 2; an operating-system error (disk full, permission
    denied) is one line and status 1 (set ``GEOCLF_DEBUG=1`` for its traceback).
    """
    try:
        cli.main(args=argv, prog_name="geoclf", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("geoclf: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except InputError as exc:
        click.echo(f"geoclf: error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # disk full, permission denied, a network drive gone: the system's own words
        if os.environ.get("GEOCLF_DEBUG"):
            raise
        click.echo(f"geoclf: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("geoclf: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
