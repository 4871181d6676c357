"""Recipes: YAML files that name pipeline stages and their parameters, run in order with resumption.

A recipe::

    name: quickstart
    workdir: demo              # relative paths below resolve here (default: the current directory)
    runs_dir: runs             # run history of the recipe's stages (default: GEOCLF_RUNS or the cwd)
    stages:
      - synth: {out: scene, years: [2010, 2016]}
      - tile: {naip: [scene/naip_2010.tif], nlcd: scene/nlcd.tif, out: chips}
      - featurize: {chips: chips, out: feats}
      - train: {features: feats, classifier: logistic_regression, name: lr-lite0}
      - score: {model: lr-lite0, naip: [scene/naip_2016.tif], out: map-2016}

Each stage is a call of one library function (the same one the CLI command of that name calls), with the
stage's mapping as keyword arguments, checked against the function's signature before anything runs: every
name must be a parameter of the function and every value must fit its type annotation (``size_m: big``
fails when the recipe is read, also with ``geoclf run --check``, not minutes later inside the stage).
After a stage completes, a stamp (its parameters and the size and modification time of its input files) is
written under ``<workdir>/.geoclf/``; a rerun skips every stage whose stamp matches and whose outputs still
exist, so an interrupted recipe resumes and an edited one reruns only what changed. Recipes that share a
working directory share the stages they have in common (the seed study's recipes share their chips).

Where a stage takes NAIP rasters (``naip``), a recipe may give a list of paths or URLs, or the path of a
text file listing them one per line (what the ``naip_search`` stage writes beside its GeoJSON).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import time
import types
import typing
from collections import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml
from typeguard import CollectionCheckStrategy, TypeCheckError, check_type

from geoclf import runs
from geoclf.runs import RUNS_ENV
from geoclf.stac import search_naip, write_scenes
from geoclf.tile_area import tile_area
from tiling import synth
from tiling.errors import InputError
from tiling.index import TileParams
from tiling.io import atomic_path


@dataclass(frozen=True)
class Stage:
    """A stage kind: the function it calls and which of its arguments are paths.

    Attributes:
        target: ``"module:function"``.
        inputs: arguments naming files or directories read (relative to the workdir).
        outputs: arguments naming what it writes; a stage with outputs that exist and a matching stamp
            is skipped.
        run_name: the argument naming a run in the run history (its output, for training stages).
    """

    target: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    run_name: str | None = None
    extra: tuple[str, ...] = ()

    def function(self) -> Callable[..., Any]:
        """The library function this stage calls."""
        return _load(self.target)

    def annotations(self) -> dict[str, Any]:
        """The type annotation of every argument the stage accepts (the function's own first, then the
        functions and classes its ``**kwargs`` go to); arguments annotated ``Any`` are left out."""
        hints: dict[str, Any] = {}
        for target in (self.target, *self.extra):
            try:
                found = typing.get_type_hints(_load(target))
            except (NameError, TypeError):  # an annotation that cannot be resolved is not checked
                continue
            for name, hint in found.items():
                if name != "return" and name not in hints and hint is not Any:
                    hints[name] = hint
        return hints

    def accepted(self) -> set[str] | None:
        """Every argument name the stage accepts, or ``None`` when it takes any."""
        names: set[str] = set()
        for target in (self.target, *self.extra):
            params = inspect.signature(_load(target)).parameters
            names |= {n for n, p in params.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                     inspect.Parameter.VAR_KEYWORD)}
            if not self.extra and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                return None
        return names


def _load(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


#: Every stage a recipe may name.
STAGES: dict[str, Stage] = {
    "synth": Stage("geoclf.recipes:synth_stage", outputs=("out",),
                   extra=("tiling.synth:make_scene", "tiling.synth:make_years")),
    "naip_search": Stage("geoclf.recipes:naip_search_stage", inputs=("aoi",), outputs=("out",),
                         extra=("geoclf.stac:search_naip",)),
    "tile": Stage("geoclf.recipes:tile_stage", inputs=("naip", "nlcd", "aoi"), outputs=("out",),
                  extra=("tiling.index:TileParams",)),
    "featurize": Stage("geoclf.features:featurize", inputs=("chips",), outputs=("out",)),
    "train": Stage("geoclf.recipes:train_stage", inputs=("features",), run_name="name"),
    "finetune": Stage("geoclf.finetune:finetune", inputs=("chips",), run_name="name",
                      extra=("geoclf.finetune:FinetuneConfig",)),
    "sweep": Stage("geoclf.sweep:run_sweep", inputs=("features",), run_name="name"),
    "score": Stage("geoclf.recipes:score_stage", inputs=("naip", "chips", "aoi"), outputs=("out",),
                   extra=("geoclf.score:score",)),
    "change": Stage("geoclf.change:run_change", inputs=("before", "after", "zones", "reference"),
                    outputs=("out",)),
    "report": Stage("geoclf.analysis:results_report", inputs=("chips", "features", "predictions"),
                    outputs=("out",)),
    "trend": Stage("geoclf.trend:analyze_trends", inputs=("maps", "zones", "reference"), outputs=("out",)),
}


@dataclass
class Recipe:
    """A parsed recipe: its name, working directory and stages (kind, arguments)."""

    name: str
    workdir: Path
    stages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    path: Path | None = None
    runs_dir: str | None = None


def load_recipe(path: str | os.PathLike[str], workdir: str | os.PathLike[str] | None = None) -> Recipe:
    """Parse and validate a recipe file: stage names, and arguments against each function's signature."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise InputError("no such recipe", path) from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"is not a text file ({exc.reason} at byte {exc.start})", path) from exc
    except yaml.YAMLError as exc:
        raise InputError(f"is not valid YAML ({str(exc).splitlines()[0]})", path) from exc
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise InputError("a recipe is a mapping with a non-empty 'stages' list", path)
    unknown = set(map(str, data)) - {"name", "workdir", "runs_dir", "stages", "description"}
    if unknown:
        raise InputError(f"unknown recipe keys: {', '.join(sorted(unknown))} (valid: name, workdir, runs_dir, "
                         "stages, description)", path)
    for key in ("name", "workdir", "runs_dir"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InputError(f"'{key}' must be a string, not {_shown(data[key])}", path)
    recipe = Recipe(name=str(data.get("name") or path.stem),
                    workdir=Path(workdir or data.get("workdir") or ".").expanduser(), path=path,
                    runs_dir=data.get("runs_dir"))
    for i, entry in enumerate(data["stages"], 1):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise InputError(f"stage {i} must be a mapping with one key, the stage name", path)
        (kind, args), = entry.items()
        if kind not in STAGES:
            raise InputError(f"stage {i}: unknown stage {kind!r} (valid: {', '.join(STAGES)})", path)
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise InputError(f"stage {i} ({kind}): its parameters must be a mapping (name: value, or "
                             f"{{name: value, ...}}), not {_shown(args)}", path)
        bad = [k for k in args if not isinstance(k, str)]
        if bad:
            raise InputError(f"stage {i} ({kind}): parameter names are words, not {_shown(bad[0])}", path)
        args = cli_names(kind, dict(args), f"stage {i} ({kind})", path)
        _check_arguments(kind, args, f"stage {i} ({kind})", path)
        recipe.stages.append((kind, args))
    return recipe


#: A stage's parameters may be spelled as the command's options are (``--workers`` -> ``workers``, ``--name``
#: of ``geoclf featurize`` -> ``name``): CLI spelling -> library argument, where the library spells it otherwise.
CLI_NAMES: dict[str, str] = {"workers": "n_workers", "trust": "trusted", "html": "html_map"}
#: The same, for one stage only.
STAGE_CLI_NAMES: dict[str, dict[str, str]] = {"featurize": {"name": "run_name"}}


def cli_names(kind: str, args: dict[str, Any], where: str = "", path: Path | None = None) -> dict[str, Any]:
    """A stage's parameters with the command line's spellings turned into the library's (see :data:`CLI_NAMES`).

    Raises:
        InputError: both spellings of one parameter are given.
    """
    accepted = STAGES[kind].accepted()
    names = {**CLI_NAMES, **STAGE_CLI_NAMES.get(kind, {})}
    out: dict[str, Any] = {}
    for key, value in args.items():
        target = names.get(key)
        if target is not None and accepted is not None and key not in accepted and target in accepted:
            if target in args:
                raise InputError(f"{where}: give {key} or {target}, not both (they are the same parameter)", path)
            key = target
        out[key] = value
    return out


def _check_arguments(kind: str, args: Mapping[str, Any], where: str, path: Path | None) -> None:
    stage = STAGES[kind]
    try:
        accepted = stage.accepted()
        params = inspect.signature(stage.function()).parameters
    except (ImportError, AttributeError) as exc:
        raise InputError(f"{where}: this geoclf cannot run {kind!r} stages ({exc})", path) from exc
    if accepted is not None:
        unknown = sorted(set(args) - accepted)
        if unknown:
            raise InputError(f"{where}: unknown parameter(s) {', '.join(unknown)} "
                             f"(valid: {', '.join(sorted(accepted))})", path)
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
               and n not in args]
    if missing:
        raise InputError(f"{where}: missing parameter(s) {', '.join(missing)}", path)
    hints = stage.annotations()
    for name, value in args.items():
        if name in hints and not _fits(value, hints[name]):
            raise InputError(f"{where}: {name} must be {_type_name(hints[name])}, not {_shown(value)}", path)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a parameter's annotation.

    YAML has lists but no tuples, so a list also fits a tuple annotation of the same items; a string does
    not fit a list annotation (it would be taken letter by letter) nor ``true``/``false`` a number.
    """
    members = _members(hint)
    if isinstance(value, bool) and bool not in members and any(m in (int, float) for m in members):
        return False
    if isinstance(value, str) and not any(_takes_text(m) for m in members):
        return False
    for candidate in (value, tuple(value)) if isinstance(value, list) else (value,):
        try:
            check_type(candidate, hint, collection_check_strategy=CollectionCheckStrategy.ALL_ITEMS)
            return True
        except TypeCheckError:
            continue
    return False


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _takes_text(hint: Any) -> bool:
    """Whether an annotation member may be given a string: anything but an abstract sequence of items
    (which a string satisfies letter by letter)."""
    return typing.get_origin(hint) not in (abc.Sequence, abc.Iterable, abc.Collection)


def _type_name(hint: Any, plural: bool = False) -> str:
    """An annotation in words: ``a number or null``, ``a list of 2 numbers``, ``a list of strings or paths``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_type_name(m, plural) for m in typing.get_args(hint)))
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    words = {str: ("a string", "strings"), int: ("a whole number", "whole numbers"), float: ("a number", "numbers"),
             bool: ("true or false", "booleans"), type(None): ("null", "nulls"), os.PathLike: ("a path", "paths"),
             dict: ("a mapping", "mappings"), abc.Mapping: ("a mapping", "mappings"),
             abc.Callable: ("a function", "functions")}
    if origin in words:
        return words[origin][plural]
    if origin in (list, tuple, abc.Sequence, abc.Iterable, abc.Collection):
        items = [a for a in args if a is not Ellipsis]
        if origin is tuple and len(items) > 1 and len(set(items)) == 1 and Ellipsis not in args:
            return f"a list of {len(items)} {_type_name(items[0], True)}"
        if len(set(items)) == 1:
            return f"{'lists' if plural else 'a list'} of {_type_name(items[0], True)}"
        return "lists" if plural else "a list"
    return getattr(origin, "__name__", str(origin))


def _shown(value: Any) -> str:
    """A value of a recipe, short, with what YAML made of it."""
    kind = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)
    text = json.dumps(value, default=str)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({kind})"


def _resolve(value: Any, workdir: Path) -> Any:
    """Workdir-relative paths made absolute (URLs and absolute paths unchanged)."""
    if isinstance(value, list | tuple):
        return [_resolve(v, workdir) for v in value]
    if isinstance(value, str) and value and "://" not in value and not os.path.isabs(value):
        return str(workdir / value)
    return value


def _fingerprint(kind: str, args: Mapping[str, Any], stage: Stage) -> str:
    """Stage parameters plus the size and mtime of every input file, hashed."""
    inputs: dict[str, Any] = {}
    for name in stage.inputs:
        values = args.get(name)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and os.path.exists(value):
                inputs[value] = _stat_tree(Path(value))
    text = json.dumps({"stage": kind, "args": args, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _stat_tree(path: Path) -> list[Any]:
    if path.is_file():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))[:2000]
    return [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _outputs_exist(stage: Stage, args: Mapping[str, Any]) -> bool:
    for name in stage.outputs:
        if args.get(name) and not os.path.exists(args[name]):
            return False
    if stage.run_name and args.get(stage.run_name):
        try:
            runs.get_run(args[stage.run_name], runs_dir=args.get("runs_dir"))
        except InputError:
            return False
    return bool(stage.outputs or stage.run_name)


def run_recipe(recipe: Recipe | str | os.PathLike[str], *, force: bool = False,
               echo: Callable[[str], None] = print) -> list[tuple[str, str]]:
    """Run a recipe's stages in order, skipping those already done with the same inputs.

    Returns ``(stage, "ran" | "skipped")`` for every stage.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    for i, (kind, raw) in enumerate(recipe.stages, 1):  # a Recipe built in code is checked like a file
        if kind not in STAGES:
            raise InputError(f"stage {i}: unknown stage {kind!r} (valid: {', '.join(STAGES)})", recipe.path)
        raw = cli_names(kind, dict(raw), f"stage {i} ({kind})", recipe.path)
        recipe.stages[i - 1] = (kind, raw)
        _check_arguments(kind, raw, f"stage {i} ({kind})", recipe.path)
    workdir = recipe.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    if not recipe.runs_dir:
        return _run_stages(recipe, workdir, force, echo)
    # every stage, and model references by run name, use the recipe's run history (through the environment, so
    # that worker processes started by a stage inherit it); the caller's is back once the recipe is done
    previous = os.environ.get(RUNS_ENV)
    os.environ[RUNS_ENV] = str(_resolve(recipe.runs_dir, workdir.resolve()))
    try:
        return _run_stages(recipe, workdir, force, echo)
    finally:
        if previous is None:
            os.environ.pop(RUNS_ENV, None)
        else:
            os.environ[RUNS_ENV] = previous


def _run_stages(recipe: Recipe, workdir: Path, force: bool, echo: Callable[[str], None]) -> list[tuple[str, str]]:
    """:func:`run_recipe`'s stages, run or skipped in turn, once the recipe is checked."""
    stamps = workdir / ".geoclf"
    stamps.mkdir(exist_ok=True)
    report = []
    summary = []
    started = time.monotonic()
    for i, (kind, raw) in enumerate(recipe.stages, 1):
        stage = STAGES[kind]
        args = {k: (_resolve(v, workdir) if k in (*stage.inputs, *stage.outputs, "runs_dir") else v)
                for k, v in raw.items()}
        digest = _fingerprint(kind, args, stage)
        # named by content, so recipes sharing a working directory also share the stages they have in common
        stamp_path = stamps / f"{kind}-{digest[:16]}.json"
        if not force and stamp_path.exists() and json.loads(stamp_path.read_text()).get("digest") == digest \
                and _outputs_exist(stage, args):
            echo(f"[{i}/{len(recipe.stages)}] {kind}: done before with the same inputs, skipped")
            report.append((kind, "skipped"))
            summary.append((kind, "skipped", None, args))
            continue
        echo(f"[{i}/{len(recipe.stages)}] {kind}")
        began = time.monotonic()
        stage.function()(**args)
        with atomic_path(stamp_path) as tmp:
            tmp.write_text(json.dumps({"stage": kind, "args": args, "digest": digest}, indent=2, default=str))
        report.append((kind, "ran"))
        summary.append((kind, "ran", time.monotonic() - began, args))
    echo(f"{recipe.name}: {len(recipe.stages)} stages in {time.monotonic() - started:.0f} s "
         f"({sum(status == 'ran' for _, status, _, _ in summary)} ran), in {workdir}")
    for kind, _, seconds, args in summary:
        took = "skipped" if seconds is None else f"{seconds:.0f} s"
        echo(f"  {kind:<12} {took:>8}  {stage_headline(kind, args)}")
    return report


def stage_headline(kind: str, args: Mapping[str, Any]) -> str:
    """One line of what a finished stage made: chips, accuracy, km² changed, and where its output is.

    Read from the stage's outputs (so a skipped stage has one too); empty where they hold no such figure.
    """
    out = args.get("out")
    where = f" -> {out}" if out else ""
    try:
        if kind == "tile" and out:
            chips = pq.ParquetFile(Path(out) / "chips.parquet").metadata.num_rows
            return f"{chips} chips{where}"
        if kind == "featurize" and out:
            meta = json.loads((Path(out) / "features.json").read_text())
            return f"{meta.get('chips')} chips, {meta.get('feature_dim')} features each{where}"
        if kind in ("train", "finetune", "sweep") and args.get("name"):
            record = runs.get_run(str(args["name"]), runs_dir=args.get("runs_dir"))
            accuracy = record.metrics.get("accuracy", record.metrics.get("best_accuracy"))
            shown = "" if accuracy is None else f"validation accuracy {accuracy:.3f}, "
            return f"{shown}run {record.name} ({record.run_id[:8]})"
        if kind == "score" and out:
            chips = pq.ParquetFile(Path(out) / "predictions.parquet").metadata.num_rows
            return f"{chips} chips scored{where}"
        if kind == "change" and out:
            info = json.loads((Path(out) / "change.json").read_text())
            return f"{info['changed_km2']:.2f} km² changed of {info['compared_km2']:.2f} km² compared{where}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, InputError):  # a courtesy: never fail a recipe
        return where.lstrip(" ")
    return where.lstrip(" ")


# -- stage adapters: library calls whose arguments a recipe spells flat ---------------------------------


def raster_list(naip: list[str] | str) -> list[str]:
    """NAIP rasters of a stage: a list as it is, one path or URL, or a ``.txt`` file listing them."""
    if isinstance(naip, str) and naip.endswith(".txt"):
        if not os.path.exists(naip):
            raise InputError("no such raster list (run the naip_search stage first?)", naip)
        rasters = [line.strip() for line in Path(naip).read_text().splitlines() if line.strip()]
        if not rasters:
            raise InputError("lists no rasters", naip)
        return rasters
    return [naip] if isinstance(naip, str) else list(naip)


def tile_stage(naip: list[str] | str, nlcd: str, out: str, aoi: str | None = None, scheduler: Any = "sync",
               **params: Any) -> Any:
    """``tile`` stage: ``geoclf tile`` (:func:`geoclf.tile_area.tile_area`, the index :func:`tiling.tile` writes,
    never held in this process) with :class:`tiling.TileParams` fields given flat."""
    valid = set(inspect.signature(TileParams).parameters)
    unknown = sorted(set(params) - valid)
    if unknown:
        raise InputError(f"unknown tile parameter(s) {', '.join(unknown)} (valid: {', '.join(sorted(valid))})")
    return tile_area(raster_list(naip), nlcd, out, params=TileParams(**params), aoi=aoi, scheduler=scheduler)


def score_stage(model: str, out: str, naip: list[str] | str | None = None, **kwargs: Any) -> Any:
    """``score`` stage: :func:`geoclf.score.score`, NAIP rasters given as a list or a ``.txt`` list."""
    from geoclf.score import score  # here: maps and folium take a second; a recipe may not score

    valid = set(inspect.signature(score).parameters) - {"model", "out", "naip"}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise InputError(f"unknown score parameter(s) {', '.join(unknown)} (valid: {', '.join(sorted(valid))})")
    return score(model, out, naip=raster_list(naip) if naip is not None else None, **kwargs)


def train_stage(features: str | list[str], classifier: str = "logistic_regression",
                params: Mapping[str, Any] | None = None, name: str | None = None, seed: int = 0,
                runs_dir: str | None = None, export: bool | None = False) -> Any:
    """``train`` stage: :func:`geoclf.classifiers.train_classifier` (``export: true`` exports the model's network
    to ONNX, as ``geoclf train`` does by default)."""
    from geoclf.classifiers import train_classifier  # here: scikit-learn takes seconds to import

    return train_classifier(features, classifier, params=params, name=name, seed=seed, runs_dir=runs_dir,
                            export=export)


def synth_stage(out: str, **kwargs: Any) -> Any:
    """``synth`` stage: :func:`tiling.synth.make_scene`, or :func:`tiling.synth.make_years` with ``years``."""
    if "years" in kwargs:
        return synth.make_years(out, **kwargs)
    return synth.make_scene(out, **kwargs)


def naip_search_stage(aoi: str, out: str, year: int | None = None, **kwargs: Any) -> Any:
    """``naip_search`` stage: :func:`geoclf.stac.search_naip` written to ``out`` (GeoJSON + URL list)."""
    return write_scenes(search_naip(aoi, year, **kwargs), out)
