"""Random corruptions of what geoclf reads: chip indexes, model descriptions and recipes.

A seeded loop (the same cases on every run: every kind of damage in turn, then as many more as fit the
time budget) damages a real
``chips.parquet``, ``model.json`` or recipe in one of many ways, runs the command a user would run on it
and accepts exactly two outcomes:

- exit 0 and a correct output (every chip of the index scored once, into the model's classes, with
  probabilities that sum to 1; a recipe check naming every stage), or
- exit 2 with one line on stderr and no traceback, and no output left half-written: no final output
  file, and nothing in the output directory that does not read back whole.

Each case says what it did, so a failure names the corruption that found it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import tiling
from geoclf.cli import main

#: Seconds the three fuzz tests spend on cases together (after their setup), split 2:2:1 between chip
#: indexes, model descriptions and recipes; a case runs to its end once started. Set it higher to hunt.
BUDGET_S = float(os.environ.get("GEOCLF_FUZZ_BUDGET_S", "45"))
SEED = 20240611
WEIRD = [None, "", "abc", -1, 0, 10**12, 0.5, True, [], {}, ["x"], {"a": 1}, "../../../../etc/passwd",
         "<img src=x onerror=alert(1)>", "NaN", 1e308]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from tiling.synth import make_scene

    return make_scene(tmp_path_factory.mktemp("fuzz-scene"), size_m=672, seed=3, collar_m=0)


@pytest.fixture(scope="module")
def chips(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz-chips")
    tiling.tile([scene.naip], scene.nlcd, out, scheduler="sync", progress=False,
                params=tiling.TileParams(min_purity=0.0))
    return out / "chips.parquet"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A ``features`` artifact that scores fast: ResNet-18 (seeded random weights) at 32 pixels."""
    from sklearn.linear_model import LogisticRegression

    from geoclf.backbones import load_backbone
    from geoclf.features_model import save_features_model

    backbone = load_backbone("resnet18", "none")
    scheme = tiling.ClassScheme.default()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * len(scheme.names), backbone.feature_dim)).astype(np.float32)
    return save_features_model(
        tmp_path_factory.mktemp("fuzz-model") / "model",
        classifier=LogisticRegression(max_iter=30).fit(x, np.repeat(scheme.names, 4)), classes=scheme.names,
        backbone="resnet18", weights="none", weights_ref=backbone.weights_ref, feature_layer=backbone.feature_layer,
        feature_dim=backbone.feature_dim, mean=backbone.mean, std=backbone.std, input_size=32, bands=[1, 2, 3],
        chip_size=224, name="fuzz", class_groups=scheme.to_dict())


def run(args: list[str], capsys) -> tuple[int, str, str]:
    """``geoclf ARGS`` in this process: (exit status, stdout, stderr).

    An exception escaping the CLI (what a user sees as a traceback) comes back as status -1 with the
    traceback as stderr.
    """
    capsys.readouterr()
    trace = ""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception:
        code, trace = -1, traceback.format_exc()
    out, err = capsys.readouterr()
    return code, out, err + trace


def check_refusal(case: str, code: int, err: str, out_dir: Path | None = None,
                  finals: tuple[str, ...] = ()) -> None:
    """Exit 2, one line, no traceback, and nothing half-written under ``out_dir``."""
    lines = [line for line in err.replace("\r", "\n").split("\n") if line.strip() and "%|" not in line]
    assert code == 2, f"{case}: exit {code}\n{err}"
    assert "Traceback" not in err, f"{case}: traceback\n{err}"
    assert len(lines) == 1 and lines[0].startswith("geoclf: error: "), f"{case}: not one line\n{err}"
    if out_dir is not None and out_dir.exists():
        for name in finals:
            assert not (out_dir / name).exists(), f"{case}: {name} written although the command failed\n{err}"
        for path in out_dir.rglob("*"):
            assert not path.name.endswith(".tmp"), f"{case}: temporary file left: {path}"
            if path.suffix == ".parquet":
                pd.read_parquet(path)  # whole, or the rename would not have happened
            elif path.suffix == ".json":
                json.loads(path.read_text())


@contextmanager
def collect(failures: list[str]):
    """Record a failed check and go on with the next case (a run reports every case that failed)."""
    try:
        yield
    except AssertionError as exc:
        failures.append(str(exc))


def budget(share: float, at_least: int):
    """Case numbers 0, 1, ... while ``share`` of the time budget lasts, and at least ``at_least`` of them (every
    kind of damage once, whatever the machine's speed)."""
    deadline = time.monotonic() + share * BUDGET_S
    i = 0
    while i < at_least or time.monotonic() < deadline:
        yield i
        i += 1


# -- chips.parquet ---------------------------------------------------------------------------------------


INDEX_DAMAGE = ["truncate", "overwrite", "garbage", "empty", "drop", "null", "text", "number", "duplicate", "no-rows",
                "missing-source", "not-a-raster", "shuffle", "rename", "label", "geometry"]


def corrupt_index(rng: random.Random, kind: str, original: Path, target: Path) -> str:
    """Write a copy of a chip index damaged in the way ``kind`` names to ``target``; returns what was done."""
    data = original.read_bytes()
    if kind == "truncate":
        cut = rng.randrange(len(data))
        target.write_bytes(data[:cut])
        return f"truncated at byte {cut}"
    if kind == "overwrite":
        at, size = rng.randrange(len(data)), rng.randint(1, 16)
        target.write_bytes(data[:at] + rng.randbytes(size) + data[at + size:])
        return f"{size} random bytes at {at}"
    if kind == "garbage":
        target.write_bytes(rng.randbytes(rng.randint(1, 4096)))
        return "random bytes"
    if kind == "empty":
        target.write_bytes(b"")
        return "empty file"
    index = tiling.read_index(original)
    column = rng.choice([c for c in index.columns if c != "geometry"])
    row = rng.randrange(len(index))
    what = f"{kind} {column}[{row}]"
    if kind == "drop":
        index = index.drop(columns=column)
    elif kind == "null":
        index[column] = index[column].astype(object).where(index.index != index.index[row], None)
    elif kind == "text":
        index[column] = index[column].astype(str) + "x"
    elif kind == "number":
        column = rng.choice([c for c in index.columns if pd.api.types.is_numeric_dtype(index[c])])
        value = rng.choice([-5, 0, 10**9, 0.5, float("nan"), 2.0])
        index[column] = index[column].astype("float64")
        index.loc[index.index[row], column] = value
        what = f"{kind} {column}[{row}] = {value}"
    elif kind == "duplicate":
        index = pd.concat([index, index.iloc[[row]]])
    elif kind == "no-rows":
        index = index.iloc[:0]
    elif kind == "missing-source":
        index["source"] = "/nonexistent/naip.tif"
    elif kind == "not-a-raster":
        index["source"] = str(original)
    elif kind == "shuffle":
        index = index.sample(frac=1.0, random_state=rng.randrange(1000))
    elif kind == "rename":
        index = index.rename(columns={column: column + "_"})
    elif kind == "label":
        index["label"] = index["label"].astype(object)
        index.loc[index.index[row], "label"] = rng.choice(["Martian", "", "<b>x</b>"])
    elif kind == "geometry":
        index = index.set_geometry(index.geometry.buffer(rng.choice([-1e6, 1e6])))
    index.to_parquet(target)
    return what


def check_scored(case: str, out_dir: Path, chips: Path, classes: list[str]) -> None:
    """A score output that is correct for the chip index it was given."""
    predictions = pd.read_parquet(out_dir / "predictions.parquet")
    index = tiling.read_index(chips)
    assert sorted(predictions["chip_id"]) == sorted(index["chip_id"]), f"{case}: chips scored != chips given"
    assert set(predictions["pred"]) <= set(classes), case
    probs = predictions[[f"prob_{c}" for c in classes]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4), f"{case}: probabilities do not sum to 1"
    assert (out_dir / "landuse.tif").exists(), case


def test_corrupted_chip_indexes_score_correctly_or_fail_in_one_line(chips, model, tmp_path, capsys):
    classes = json.loads((model / "model.json").read_text())["classes"]
    outcomes: dict[int, int] = {}
    failures: list[str] = []
    for i in budget(0.4, len(INDEX_DAMAGE)):
        rng = random.Random(SEED * 1000 + i)
        case_dir = tmp_path / f"case-{i}"
        case_dir.mkdir()
        damaged = case_dir / "chips.parquet"
        case = f"chips case {i}: {corrupt_index(rng, INDEX_DAMAGE[i % len(INDEX_DAMAGE)], chips, damaged)}"
        out_dir = case_dir / "map"
        code, _, err = run(["score", "--model", str(model), "--chips", str(damaged), "--out", str(out_dir),
                            "--scheduler", "sync"], capsys)
        with collect(failures):
            if code == 0:
                check_scored(case, out_dir, damaged, classes)
            else:
                check_refusal(case, code, err, out_dir, finals=("predictions.parquet", "landuse.tif", "map.html"))
        outcomes[code] = outcomes.get(code, 0) + 1
        shutil.rmtree(case_dir, ignore_errors=True)
    assert not failures, "\n\n".join(failures)
    assert outcomes.get(2), outcomes  # the corruptions are real: some are refused


# -- model.json --------------------------------------------------------------------------------------------


def _paths(value, prefix=()):
    """Every key path of a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))


SPEC_DAMAGE = ["value", "delete", "value", "truncate", "value", "delete", "garbage", "classes"]


def corrupt_spec(rng: random.Random, kind: str, text: str) -> tuple[str, str]:
    """A ``model.json`` text damaged in the way ``kind`` names; returns it and what was done."""
    if kind == "truncate":
        cut = rng.randrange(len(text))
        return text[:cut], f"truncated at {cut}"
    if kind == "garbage":
        return rng.choice(["null", "[]", "42", "\"model\"", "{", "\x00\x01"]), "not an object"
    spec = json.loads(text)
    if kind == "classes":
        classes = list(spec["classes"])
        variant = rng.choice(["reorder", "duplicate", "drop", "empty"])
        spec["classes"] = {"reorder": classes[::-1], "duplicate": [classes[0], *classes],
                           "drop": classes[1:], "empty": []}[variant]
        return json.dumps(spec), f"classes {variant}"
    path = rng.choice(list(_paths(spec)))
    holder = spec
    for key in path[:-1]:
        holder = holder[key]
    if kind == "delete":
        del holder[path[-1]]
        return json.dumps(spec), f"deleted {'.'.join(path)}"
    value = rng.choice(WEIRD)
    holder[path[-1]] = value
    return json.dumps(spec), f"{'.'.join(path)} = {value!r}"


def test_corrupted_model_descriptions_score_correctly_or_fail_in_one_line(chips, model, tmp_path, capsys):
    text = (model / "model.json").read_text()
    outcomes: dict[int, int] = {}
    failures: list[str] = []
    for i in budget(0.4, 2 * len(SPEC_DAMAGE)):
        rng = random.Random(SEED * 2000 + i)
        case_dir = tmp_path / f"case-{i}"
        damaged = case_dir / "model"
        shutil.copytree(model, damaged)
        corrupted, what = corrupt_spec(rng, SPEC_DAMAGE[i % len(SPEC_DAMAGE)], text)
        (damaged / "model.json").write_text(corrupted)
        case = f"model case {i}: {what}"
        out_dir = case_dir / "map"
        code, _, err = run(["score", "--model", str(damaged), "--chips", str(chips), "--out", str(out_dir),
                            "--scheduler", "sync"], capsys)
        with collect(failures):
            if code == 0:
                check_scored(case, out_dir, chips, list(json.loads(corrupted)["classes"]))
            else:
                check_refusal(case, code, err, out_dir, finals=("predictions.parquet", "landuse.tif", "map.html"))
        outcomes[code] = outcomes.get(code, 0) + 1
        shutil.rmtree(case_dir, ignore_errors=True)
    assert not failures, "\n\n".join(failures)
    assert outcomes.get(2), outcomes


# -- recipes ---------------------------------------------------------------------------------------------


RECIPE_DAMAGE = ["value", "delete", "stage-name", "params-list", "value", "params-text", "top", "stage-list",
                 "text", "params-number", "two-keys"]


def corrupt_recipe(rng: random.Random, kind: str, document: dict) -> tuple[str, str]:
    """A recipe damaged in the way ``kind`` names, as text; returns it and what was done."""
    document = json.loads(json.dumps(document))  # a deep copy
    stages = document["stages"]
    i = rng.randrange(len(stages))
    (name, params), = stages[i].items()
    if kind == "text":
        text = yaml.safe_dump(document)
        cut = rng.randrange(len(text))
        return text[:cut] + rng.choice(["", ":", "- [", "\t", "{{", "\x00"]), f"text cut at {cut}"
    if kind == "stage-name":
        stages[i] = {rng.choice(["", "tiles", "score2", "__import__"]): params}
        return yaml.safe_dump(document), f"stage {i + 1} renamed"
    shapes = {"params-list": {name: list((params or {}).values())}, "params-text": {name: "x"},
              "params-number": {name: 3}, "stage-list": [name], "two-keys": {name: params, "extra": {}}}
    if kind in shapes:
        stages[i] = shapes[kind]
        return yaml.safe_dump(document), f"stage {i + 1}: {kind}"
    if kind == "top":
        key = rng.choice(["name", "workdir", "runs_dir", "stages", "extra"])
        document[key] = rng.choice(WEIRD)
        return yaml.safe_dump(document), f"{key} = {document[key]!r}"
    if not params:
        return yaml.safe_dump(document), "unchanged"
    key = rng.choice(list(params))
    if kind == "delete":
        del params[key]
        return yaml.safe_dump(document), f"stage {i + 1} ({name}): {key} deleted"
    params[key] = rng.choice(WEIRD)
    return yaml.safe_dump(document), f"stage {i + 1} ({name}): {key} = {params[key]!r}"


def test_corrupted_recipes_check_or_fail_in_one_line(tmp_path, capsys):
    recipes = ["quickstart", "seed-features", "middlesex-urbanization-2010-2016", "seed-finetune"]
    documents = {name: yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text()) for name in recipes}
    outcomes: dict[int, int] = {}
    failures: list[str] = []
    for i in budget(0.2, 4 * len(RECIPE_DAMAGE)):
        rng = random.Random(SEED * 3000 + i)
        recipe = recipes[i % len(recipes)]
        document = documents[recipe]
        text, what = corrupt_recipe(rng, RECIPE_DAMAGE[i % len(RECIPE_DAMAGE)], document)
        path = tmp_path / f"case-{i}.yaml"
        path.write_text(text)
        case = f"{recipe} case {i}: {what}"
        code, out, err = run(["run", str(path), "--check"], capsys)
        with collect(failures):
            if code == 0:
                stages = yaml.safe_load(text)["stages"]
                assert f"{len(stages)} stages OK" in out, f"{case}: {out}"
            else:
                check_refusal(case, code, err)
        outcomes[code] = outcomes.get(code, 0) + 1
    assert not failures, "\n\n".join(failures)
    assert outcomes.get(2), outcomes
