"""Exporting a model artifact's network to ONNX, so that scoring can run it on another inference runtime.

``geoclf models export MODEL`` (or :func:`export_model`) loads a model artifact as scoring would, takes the torch
network its predictions go through - a ``features`` model's featurizer network (a combined featurizer's CNN
block: its spectral statistics are numpy code, run as they are), a ``finetune`` model's fine-tuned network -
exports it with :func:`geoclf.runtime.export_onnx` into the artifact directory
(``network.onnx``) and records the file and its SHA-256 under ``export`` in ``model.json``. Workers then run that
file with ``--runtime openvino`` and refuse it if its hash is not the recorded one.

The export is made from the artifact's own checked contents (weights verified against their recorded hashes,
a classifier loaded with geoclf's type allowlist), by geoclf's own code: a model from elsewhere is exported only
after it loaded as any model does, never by running a network file that came with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geoclf.artifact import MODEL_JSON, LandUseModel, PathLike, load_model_dir, read_model_json
from geoclf.featurizers.exported import network_block
from geoclf.models import resolve_model_dir
from geoclf.runtime import ONNX_FILE, export_onnx, verified_onnx
from tiling.errors import InputError
from tiling.io import atomic_path

#: The ``model.json`` field recording the exported network (what :func:`geoclf.runtime.export_onnx` returns).
EXPORT_FIELD = "export"


def inference_network(model: LandUseModel) -> tuple[Any, tuple[int, int, int]]:
    """The torch network a loaded model predicts through, on the CPU, and the shape of one input.

    Raises:
        InputError: the model kind has no network to export.
    """
    model.device = "cpu"
    if model.kind == "features":
        featurizer = model.featurizer  # type: ignore[attr-defined]
        try:  # a CNN featurizer's network, a combined one's CNN block (its spectral block has no network)
            block = network_block(featurizer)
        except InputError:
            raise InputError(f"the {featurizer.kind} featurizer of model {model.name!r} has no network to "
                             "export") from None
        featurizer.device = block.device = "cpu"
        size = block.input_size or model.chip_size
        return block.network(), (len(block.bands), int(size), int(size))
    size = (model.spec.get("normalization") or {}).get("input_size") or model.chip_size
    if model.kind == "finetune":
        return model.network.to("cpu"), (len(model.bands), int(size), int(size))  # type: ignore[attr-defined]
    raise InputError(f"model kind {model.kind!r} has no network geoclf can export")


def export_model(ref: PathLike | str, *, runs_dir: PathLike | None = None, trusted: bool = False,
                 force: bool = False) -> dict[str, Any]:
    """Export a model artifact's network to ``network.onnx`` in its directory and record it in ``model.json``.

    Args:
        ref: a model artifact directory, run name or id, or registry reference (as :func:`geoclf.models.load_model`).
        runs_dir: the run history ``ref`` refers to.
        trusted: load a classifier with types outside geoclf's allowlist (see :func:`geoclf.models.load_model`).
        force: export again even when a valid export is recorded.

    Returns:
        The export record now in ``model.json``.

    Raises:
        InputError: the model cannot be loaded, has no network, or the export fails its check against torch.
    """
    directory = resolve_model_dir(ref, runs_dir)
    spec = read_model_json(directory)
    recorded = spec.get(EXPORT_FIELD)
    if recorded and not force:
        try:
            verified_onnx(directory, recorded)
            return dict(recorded)
        except InputError:
            pass  # missing or changed: export again
    model = load_model_dir(directory, trusted=trusted, device="cpu")
    network, shape = inference_network(model)
    record = export_onnx(network, Path(directory) / ONNX_FILE, input_shape=shape)
    spec[EXPORT_FIELD] = record
    with atomic_path(Path(directory) / MODEL_JSON) as tmp:
        tmp.write_text(json.dumps(spec, indent=2) + "\n")
    return record


__all__ = ["EXPORT_FIELD", "export_model", "inference_network"]
