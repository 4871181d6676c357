"""Options shared by several commands."""

from __future__ import annotations

import click

scheduler_option = click.option(
    "--scheduler", default="local", show_default=True,
    help="Where tasks run: 'local' (a LocalCluster of worker processes), 'sync' (this process), a Dask "
         "scheduler address such as tcp://10.0.0.5:8786, or (score) a cluster recipe file.")
