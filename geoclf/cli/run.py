"""``geoclf run RECIPE``: run a recipe's stages in order, skipping those already done."""

from __future__ import annotations

import sys

import click


@click.command("run")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Working directory (default: the recipe's 'workdir', else the current directory).")
@click.option("--force", is_flag=True, default=False, help="Rerun every stage, even those done before.")
@click.option("--check", is_flag=True, default=False, help="Only validate the recipe (stages and parameters).")
def run(recipe: str, workdir: str | None, force: bool, check: bool) -> None:
    """Run RECIPE (a YAML file naming stages and their parameters)."""
    from geoclf.recipes import load_recipe, run_recipe  # here: typeguard and the stages' checks

    parsed = load_recipe(recipe, workdir)
    if check:
        click.echo(f"{recipe}: {len(parsed.stages)} stages OK ({', '.join(k for k, _ in parsed.stages)})")
        return
    def echo(line: str) -> None:
        # a stage's progress bar may have left its line open on stderr (the terminal shares it with stdout)
        getattr(sys.stderr, "end_line", lambda: None)()
        click.echo(line)

    run_recipe(parsed, force=force, echo=echo)
