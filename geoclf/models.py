"""Loading models by reference: an artifact directory, a run of the run history, or a registered version.

The one entry point scoring, reports and users call (:func:`load_model`). It sits above the artifact format
(:mod:`geoclf.artifact`, which knows directories only), the run history (:mod:`geoclf.runs`) and the model
registry (:mod:`geoclf.registry`), and turns a reference into a directory before the artifact module loads it.
"""

from __future__ import annotations

import os
from pathlib import Path

from geoclf import registry, runs
from geoclf.artifact import MODEL_JSON, LandUseModel, PathLike, load_model_dir
from tiling.errors import InputError


def load_model(ref: PathLike | str, trusted: bool = False, runs_dir: PathLike | None = None,
               device: str | None = None, batch_size: int = 32) -> LandUseModel:
    """Load a model artifact, whatever its kind.

    Args:
        ref: an artifact directory (or its ``model.json``), or a run name or run id from the run history
            (the run's ``model`` artifact; a sweep's parent run gives its winning fit's), or a model registry
            reference ``NAME@ALIAS`` / ``NAME/VERSION`` (see :mod:`geoclf.registry`).
        trusted: accept a classifier file holding types outside geoclf's allowlist. Only for files whose
            origin you trust: loading them may run code.
        runs_dir: runs directory or tracking URI for run names (see :func:`geoclf.runs.run_store`).
        device: torch device for inference (default: CUDA if available, else CPU).
        batch_size: chips per forward pass.

    Raises:
        InputError: nothing found at ``ref``, a damaged or newer artifact, an unknown kind, untrusted types.
    """
    return load_model_dir(resolve_model_dir(ref, runs_dir), trusted=trusted, device=device, batch_size=batch_size)


def resolve_model_dir(ref: PathLike | str, runs_dir: PathLike | None = None) -> Path:
    """The artifact directory ``ref`` points to (see :func:`load_model`).

    Raises:
        InputError: ``ref`` is a directory without ``model.json``, a path that does not exist, or a name
            that is neither a registered version nor a run (the message lists what exists).
    """
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.is_file() and path.name == MODEL_JSON:
        path = path.parent
    if path.is_dir():
        if not (path / MODEL_JSON).is_file():
            raise InputError(f"is not a model artifact (no {MODEL_JSON})", path)
        return path.resolve()
    if registry.is_model_ref(text):  # NAME@ALIAS or NAME/VERSION, before "/" is taken for a path
        return registry.resolve_model_ref(text, runs_dir)
    if os.sep in text or text.startswith("."):
        raise InputError("no such model directory", text)
    record = runs.get_run(text, runs_dir=runs_dir)
    best = record.tags.get(runs.SWEEP_BEST_RUN_TAG)
    if best:  # a sweep's parent holds no model: it names the fit that won (e.g. by spatial cross-validation)
        record = runs.get_run(best, runs_dir=runs_dir)
    return runs.artifact_path(record, runs.MODEL_ARTIFACT, runs_dir=runs_dir)


__all__ = ["load_model", "resolve_model_dir"]
