"""Every recipe in recipes/ validates; bad recipes are one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from geoclf.cli import main
from geoclf.recipes import STAGES, load_recipe
from tiling.errors import InputError

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_there_are_recipes_for_the_seed_study():
    names = {p.stem for p in RECIPES}
    assert {"quickstart", "seed-features", "seed-finetune", "middlesex-2016-map",
            "middlesex-urbanization-2010-2016"} <= names
    assert {"cluster-azure", "cluster-aws", "cluster-gcp"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_validates(path):
    document = yaml.safe_load(path.read_text())
    if "provider" in document:  # a cluster recipe (for --cluster), not a pipeline recipe
        from geoclf.cluster import read_recipe

        read_recipe(path)
        return
    recipe = load_recipe(path)
    assert recipe.stages and all(kind in STAGES for kind, _ in recipe.stages)


@pytest.mark.parametrize(("document", "needle"), [
    ({"stages": [{"tile": {"naip": ["a.tif"], "nlcd": "n.tif", "out": "c", "purity": 0.5}}]},
     "unknown parameter(s) purity"),
    ({"stages": [{"paint": {}}]}, "unknown stage 'paint'"),
    ({"stages": [{"featurize": {"out": "f"}}]}, "missing parameter(s) chips"),
    ({"stages": []}, "non-empty 'stages'"),
    ({"stages": [{"train": {"features": "f"}}], "workers": 2}, "unknown recipe keys: workers"),
    ({"stages": [{"train": {"features": "f", "export": "sometimes"}}]},
     'export must be true or false or null, not "sometimes"'),
])
def test_bad_recipes_are_one_line(tmp_path, capsys, document, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(SystemExit) as exited:
        main(["run", str(path), "--check"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and needle in err and "bad.yaml" in err and "Traceback" not in err


# CLI-only options: what a shell needs and a recipe spells otherwise (positional lists, --param parsing,
# printing, registering after a sweep, a cluster recipe file).
_CLI_ONLY = {"more_naip", "more_maps", "more_years", "as_json", "json", "param", "params", "register", "register_as",
             "cluster_recipe", "quiet", "nir", "no_augment", "classes_file", "materialize", "utm_pair", "nodata_kind"}


@pytest.mark.parametrize("kind", [k for k in STAGES if k not in ("synth",)])
def test_recipe_stages_take_the_command_lines_option_names(kind):
    import click

    from geoclf.cli import cli
    from geoclf.recipes import cli_names

    with click.Context(cli) as ctx:
        command = cli.get_command(ctx, "naip" if kind == "naip_search" else kind)
    if isinstance(command, click.Group):
        command = command.commands["search"]
    accepted = STAGES[kind].accepted()
    for param in command.params:
        if getattr(param, "hidden", False):
            continue  # an old spelling kept working on the command line (--no-smooth), not part of the vocabulary
        spelled = {o.lstrip("-").replace("-", "_") for o in getattr(param, "opts", [])} - {"cluster"}
        for name in sorted(spelled - _CLI_ONLY):
            translated = cli_names(kind, {name: None})
            assert set(translated) <= accepted, f"{kind}: --{name.replace('_', '-')} has no recipe spelling"


def test_a_recipe_spells_parameters_as_the_cli_does(tmp_path):
    path = tmp_path / "cli-names.yaml"
    path.write_text(yaml.safe_dump({"stages": [
        {"featurize": {"chips": "chips", "out": "feats", "name": "feats-lite0", "workers": 2}},
        {"score": {"model": "m", "chips": "chips", "out": "map", "trust": True, "workers": 2}}]}))
    recipe = load_recipe(path)
    assert recipe.stages[0][1] == {"chips": "chips", "out": "feats", "run_name": "feats-lite0", "n_workers": 2}
    assert recipe.stages[1][1]["trusted"] is True and recipe.stages[1][1]["n_workers"] == 2
    path.write_text(yaml.safe_dump({"stages": [{"featurize": {"chips": "c", "out": "f", "name": "a",
                                                              "run_name": "b"}}]}))
    with pytest.raises(InputError, match="give name or run_name, not both"):
        load_recipe(path)


def test_a_recipe_records_into_its_run_history_and_leaves_the_callers_as_it_was(tmp_path, monkeypatch):
    """A recipe's ``runs_dir`` holds for its stages only: once it returns (or fails), a notebook's next run is
    recorded where it was before (a recipe once left ``GEOCLF_RUNS`` pointing at its own history, so later runs
    of the process were recorded there)."""
    from geoclf import runs
    from geoclf.recipes import run_recipe

    mine = tmp_path / "my-runs"
    monkeypatch.setenv(runs.RUNS_ENV, str(mine))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "runs_dir": "recipe-runs", "stages": [
        {"synth": {"out": "scene", "years": [2016], "size_m": 448, "seed": 0}}]}))
    run_recipe(load_recipe(path, tmp_path / "work"), echo=lambda _: None)
    assert (tmp_path / "work" / "scene").is_dir()
    assert os.environ[runs.RUNS_ENV] == str(mine)
    path.write_text(yaml.safe_dump({"name": "r", "runs_dir": "recipe-runs", "stages": [
        {"featurize": {"chips": "no-such-chips", "out": "features"}}]}))
    with pytest.raises(InputError):
        run_recipe(load_recipe(path, tmp_path / "work"), echo=lambda _: None)
    assert os.environ[runs.RUNS_ENV] == str(mine)
