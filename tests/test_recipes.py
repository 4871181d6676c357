"""Every recipe in recipes/ validates; bad recipes are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from geoclf.cli import main
from geoclf.recipes import STAGES, load_recipe

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
])
def test_bad_recipes_are_one_line(tmp_path, capsys, document, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(SystemExit) as exited:
        main(["run", str(path), "--check"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and needle in err and "bad.yaml" in err and "Traceback" not in err
