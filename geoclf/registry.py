"""The model registry: named models with numbered versions and aliases such as ``production``.

It is MLflow's own model registry, in the same store as the run history (:mod:`geoclf.runs`: an SQLite
database in the runs directory, or a tracking server). Registering a run's model artifact creates the next
version of a name; a version points at the run's ``model`` artifact directory and records where it came
from: the source run, the chip index hash of its training data, its validation metrics, the model kind and
the geoclf version. Aliases (MLflow's successor of stages) name a version: ``promote`` moves an alias.
``register --export`` exports the run's artifact to ONNX first (:mod:`geoclf.export`), so that the version
carries its export.

Model references, accepted wherever a model is (``geoclf score --model``, :func:`geoclf.models.load_model`):

- ``NAME@ALIAS``, e.g. ``landuse-naip@production``: the version the alias points at;
- ``NAME/VERSION``, e.g. ``landuse-naip/3``: that version;
- ``NAME@latest``: the newest version, unless an alias is really called ``latest``.

MLflow is imported only inside the functions that call it, as in :mod:`geoclf.runs`: resolving a directory or
a run name through :func:`geoclf.models.load_model` must not pay for its import.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from geoclf import __version__, runs
from geoclf.artifact import MODEL_JSON, read_model_json
from tiling.errors import InputError

PathLike = str | os.PathLike[str]

#: Model version tags geoclf writes (MLflow tags are text; JSON where the value is structured).
SOURCE_RUN_TAG = "geoclf.source_run"
SOURCE_RUN_NAME_TAG = "geoclf.source_run_name"
CHIP_INDEX_TAG = "geoclf.chip_index_sha256"
METRICS_TAG = "geoclf.metrics"
KIND_TAG = "geoclf.kind"
VERSION_TAG = "geoclf.version"
#: SHA-256 of the exported network (``network.onnx``) the version's artifact holds; absent without one.
EXPORT_TAG = "geoclf.export_sha256"

# A registered name: what MLflow allows minus the characters that make references ambiguous (@ and /).
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
_ALIAS = r"[A-Za-z][A-Za-z0-9_\-]*"
_REF = re.compile(rf"^(?P<name>{_NAME})(?:@(?P<alias>{_ALIAS})|/(?P<version>[0-9]+))$")


@dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model.

    Attributes:
        name: registered model name.
        version: version number (1, 2, ...).
        aliases: aliases pointing at this version (e.g. ``["production"]``).
        run_id: the run whose model artifact this version is.
        source: URI of the model artifact directory.
        created: when the version was registered (UTC).
        tags: provenance tags (source run, chip index hash, metrics, kind, geoclf version, export hash).
        description: free text given at registration.
    """

    name: str
    version: int
    aliases: list[str]
    run_id: str | None
    source: str
    created: dt.datetime | None
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def metrics(self) -> dict[str, Any]:
        """Validation metrics recorded with the version."""
        try:
            return dict(json.loads(self.tags.get(METRICS_TAG) or "{}"))
        except ValueError:
            return {}

    @property
    def ref(self) -> str:
        """The ``NAME/VERSION`` reference of this version."""
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "version": self.version, "aliases": self.aliases, "run_id": self.run_id,
                "source": self.source, "created": None if self.created is None else self.created.isoformat(),
                "metrics": self.metrics, "chip_index_sha256": self.tags.get(CHIP_INDEX_TAG),
                "kind": self.tags.get(KIND_TAG), "geoclf_version": self.tags.get(VERSION_TAG),
                "source_run_name": self.tags.get(SOURCE_RUN_NAME_TAG), "description": self.description,
                "export_sha256": self.tags.get(EXPORT_TAG)}


def is_model_ref(text: str) -> bool:
    """True if ``text`` has the form of a registry reference (``NAME@ALIAS`` or ``NAME/VERSION``)."""
    return bool(_REF.match(text.strip()))


def parse_model_ref(text: str) -> tuple[str, str | None, int | None]:
    """Split a reference into ``(name, alias, version)``; exactly one of alias and version is set.

    Raises:
        InputError: not a registry reference.
    """
    match = _REF.match(text.strip())
    if not match:
        raise InputError(f"{text!r} is not a model reference; use NAME@ALIAS (e.g. landuse-naip@production) "
                         "or NAME/VERSION (e.g. landuse-naip/3)")
    version = match.group("version")
    return match.group("name"), match.group("alias"), None if version is None else int(version)


def register_model(run: str, name: str, description: str | None = None,
                   runs_dir: PathLike | None = None, export: bool = False, trusted: bool = False) -> ModelVersion:
    """Register a run's model artifact as the next version of ``name`` (created if new).

    Any run with a model artifact can be registered: ``train``, sweep children and ``finetune`` runs alike.

    Args:
        run: run name, id or id prefix (see :func:`geoclf.runs.get_run`).
        name: registered model name (letters, digits, ``_``, ``-``, ``.``).
        description: free text stored with the version.
        runs_dir: runs directory or tracking URI (see :func:`geoclf.runs.run_store`).
        export: first export the network of the run's model artifact to ONNX
            (:func:`geoclf.export.export_model`, kept if a valid export is there already), into that artifact
            itself, which is what the version loads: the version then scores on OpenVINO. On a tracking server
            the exported files are uploaded into the run's ``model`` artifact.
        trusted: with ``export``, load a classifier with types outside geoclf's allowlist to export it.

    Raises:
        InputError: an invalid name, no such run, a run without a model artifact, or (with ``export``) a model
            that cannot be exported: then nothing is registered.
    """
    if not re.fullmatch(_NAME, name or ""):
        raise InputError(f"model name {name!r} must start with a letter or digit and hold only letters, digits, "
                         "'_', '-' and '.'")
    record = runs.get_run(run, runs_dir=runs_dir)
    directory = runs.artifact_path(record, runs.MODEL_ARTIFACT, runs_dir=runs_dir)  # fails if it has none
    if export:
        _export_artifact(record, directory, trusted, runs_dir)
    spec = read_model_json(directory)
    client = runs.mlflow_client(runs_dir)
    metrics = {k: v for k, v in record.metrics.items() if not math.isnan(v)}
    tags = {
        SOURCE_RUN_TAG: record.run_id,
        SOURCE_RUN_NAME_TAG: record.name,
        CHIP_INDEX_TAG: str(record.params.get("chip_index_sha256") or _provenance(spec).get("chip_index_sha256")
                            or ""),
        METRICS_TAG: json.dumps(metrics, sort_keys=True),
        KIND_TAG: str(spec.get("kind", "")),
        VERSION_TAG: str(spec.get("geoclf_version") or __version__),
    }
    if isinstance(spec.get("export"), dict) and spec["export"].get("sha256"):
        tags[EXPORT_TAG] = str(spec["export"]["sha256"])
    if _find_model(client, name) is None:
        _create_model(client, name)
    source = record.artifact_uri.rstrip("/") + "/" + runs.MODEL_ARTIFACT
    version = client.create_model_version(name, source=source, run_id=record.run_id, tags=tags,
                                          description=description or None)
    return get_version(name, int(version.version), runs_dir=runs_dir)


def promote(name: str, version: int, stage: str = "production", runs_dir: PathLike | None = None) -> ModelVersion:
    """Point the alias ``stage`` (e.g. ``production``, ``staging``) at a version of ``name``.

    The alias moves: a version that held it before no longer does.

    Raises:
        InputError: no such model or version, or an invalid alias name.
    """
    if not re.fullmatch(_ALIAS, stage or "") or stage == "latest":
        raise InputError(f"stage {stage!r} must start with a letter and hold only letters, digits, '_' and '-' "
                         "('latest' is reserved for the newest version)")
    client = runs.mlflow_client(runs_dir)
    get_version(name, version, runs_dir=runs_dir)  # one-line errors for a missing model or version
    client.set_registered_model_alias(name, stage, str(version))
    return get_version(name, version, runs_dir=runs_dir)


def get_version(name: str, version: int, runs_dir: PathLike | None = None) -> ModelVersion:
    """One version of a registered model.

    Raises:
        InputError: no such model (the message lists the registered ones) or no such version (lists them).
    """
    client = runs.mlflow_client(runs_dir)
    versions = _versions(client, _require_model(client, name, runs_dir).name)
    for candidate in versions:
        if candidate.version == int(version):
            return candidate
    listed = ", ".join(str(v.version) for v in versions) or "none"
    raise InputError(f"model {name!r} has no version {version}; versions: {listed}")


def resolve_version(ref: str, runs_dir: PathLike | None = None) -> ModelVersion:
    """The version a ``NAME@ALIAS`` or ``NAME/VERSION`` reference points at.

    Raises:
        InputError: not a reference, no such model, version or alias (the message lists what exists).
    """
    name, alias, number = parse_model_ref(ref)
    if number is not None:
        return get_version(name, number, runs_dir=runs_dir)
    client = runs.mlflow_client(runs_dir)
    model = _require_model(client, name, runs_dir)
    aliases = dict(getattr(model, "aliases", {}) or {})
    if alias in aliases:
        return get_version(name, int(aliases[alias]), runs_dir=runs_dir)
    versions = _versions(client, name)
    if alias == "latest" and versions:
        return versions[-1]
    listed = ", ".join(sorted(aliases)) or "none"
    raise InputError(f"model {name!r} has no version with alias {alias!r}; aliases: {listed} (promote a version "
                     f"with geoclf models promote {name} --version N --stage {alias})")


def resolve_model_ref(ref: str, runs_dir: PathLike | None = None) -> Path:
    """The local model artifact directory a registry reference points at (for :func:`load_model`).

    Raises:
        InputError: see :func:`resolve_version`; the version's artifact is gone.
    """
    version = resolve_version(ref, runs_dir=runs_dir)
    local = runs.local_path(version.source)
    if local is not None:
        if not local.is_dir():
            raise InputError(f"model {version.ref} points at {local}, which no longer exists (run deleted?)")
        return local
    if version.run_id is None:
        raise InputError(f"model {version.ref} has no source run to download its artifact from")
    return runs.artifact_path(version.run_id, runs.MODEL_ARTIFACT, runs_dir=runs_dir)


def list_models(runs_dir: PathLike | None = None) -> pd.DataFrame:
    """Registered models, one row each: ``name``, ``versions``, ``latest``, ``aliases`` (``alias:version``),
    the latest version's ``accuracy`` and ``source_run``, and ``updated``."""
    client = runs.mlflow_client(runs_dir)
    rows = []
    for model in _search_models(client):
        versions = _versions(client, model.name)
        latest = versions[-1] if versions else None
        aliases = dict(getattr(model, "aliases", {}) or {})
        rows.append({
            "name": model.name,
            "versions": len(versions),
            "latest": None if latest is None else latest.version,
            "aliases": ", ".join(f"{a}:{v}" for a, v in sorted(aliases.items())),
            "accuracy": math.nan if latest is None else latest.metrics.get("accuracy", math.nan),
            "source_run": None if latest is None else latest.tags.get(SOURCE_RUN_NAME_TAG),
            "updated": _time(model.last_updated_timestamp),
        })
    return pd.DataFrame(rows, columns=["name", "versions", "latest", "aliases", "accuracy", "source_run", "updated"])


def show_model(name: str, runs_dir: PathLike | None = None) -> list[ModelVersion]:
    """Every version of a registered model, oldest first.

    Raises:
        InputError: no such model (the message lists the registered ones).
    """
    client = runs.mlflow_client(runs_dir)
    return _versions(client, _require_model(client, name, runs_dir).name)


# -- internals ---------------------------------------------------------------------------------------------


def _search_models(client: Any) -> list[Any]:
    models: list[Any] = []
    token = None
    while True:
        page = client.search_registered_models(max_results=1000, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return sorted(models, key=lambda m: m.name)


def _find_model(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        return None


def _create_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException:  # registered by another process in between
        if _find_model(client, name) is None:
            raise


def _require_model(client: Any, name: str, runs_dir: PathLike | None) -> Any:
    model = _find_model(client, name) if runs.run_store(runs_dir).exists() else None
    if model is None:
        names = [m.name for m in _search_models(client)] if runs.run_store(runs_dir).exists() else []
        listed = ", ".join(names[:10]) + (f" (and {len(names) - 10} more)" if len(names) > 10 else "")
        raise InputError(f"no registered model named {name!r}; registered models: {listed or 'none'} "
                         f"(in {runs.run_store(runs_dir).location})")
    return model


def _versions(client: Any, name: str) -> list[ModelVersion]:
    # version searches do not fill in aliases; the registered model holds them (alias -> version)
    held: dict[int, list[str]] = {}
    for alias, number in (getattr(client.get_registered_model(name), "aliases", {}) or {}).items():
        held.setdefault(int(number), []).append(alias)
    found = client.search_model_versions(f"name = '{name}'")
    return sorted((_version(v, held.get(int(v.version), [])) for v in found), key=lambda v: v.version)


def _version(v: Any, aliases: list[str] | None = None) -> ModelVersion:
    aliases = aliases if aliases is not None else list(getattr(v, "aliases", []) or [])
    return ModelVersion(name=v.name, version=int(v.version), aliases=sorted(aliases),
                        run_id=v.run_id or None, source=v.source, created=_time(v.creation_timestamp),
                        tags=dict(v.tags or {}), description=v.description or "")


def _export_artifact(record: runs.RunRecord, directory: Path, trusted: bool, runs_dir: PathLike | None) -> None:
    """Export a run's model artifact in place (``register --export``) and tag the run with the export."""
    from geoclf.export import EXPORT_FIELD, export_model, export_tags  # here: torch's exporter

    before = read_model_json(directory).get(EXPORT_FIELD)
    exported = export_model(directory, trusted=trusted)
    client = runs.mlflow_client(runs_dir)
    if record.artifact_dir is None and exported != before:  # a server's artifact: downloaded, so upload the export
        for name in (str(exported["file"]), MODEL_JSON):
            client.log_artifact(record.run_id, str(directory / name), runs.MODEL_ARTIFACT)
    for key, value in export_tags(exported, None).items():
        client.set_tag(record.run_id, key, value)


def _provenance(spec: dict[str, Any]) -> dict[str, Any]:
    provenance = spec.get("provenance")
    return dict(provenance) if isinstance(provenance, dict) else {}


def _time(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
