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

The same export is made where a model is made or published, so that a model scores on OpenVINO without a
separate step: ``geoclf train`` and ``geoclf finetune`` export the artifact before the run records it
(:func:`wants_export` decides, :func:`export_trained` exports without ever losing the trained model), and
``geoclf models register --export`` exports the run's artifact before the version is created.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geoclf.artifact import MODEL_JSON, LandUseModel, PathLike, load_model_dir, read_model_json
from geoclf.featurizers import Featurizer
from geoclf.featurizers.exported import network_block
from geoclf.models import resolve_model_dir
from geoclf.runtime import ONNX_FILE, export_onnx, onnx_exporter_installed, verified_onnx
from tiling.errors import InputError
from tiling.io import atomic_path

#: The ``model.json`` field recording the exported network (what :func:`geoclf.runtime.export_onnx` returns).
EXPORT_FIELD = "export"
#: Run tag of a training run whose model artifact holds its export: the SHA-256 of ``network.onnx``.
EXPORT_TAG = "geoclf.export.sha256"
#: Run tag of a training run whose export failed (the model was kept, on torch): the one-line reason.
EXPORT_ERROR_TAG = "geoclf.export.error"


def featurizer_has_network(featurizer: Featurizer) -> bool:
    """Whether a featurizer holds a network to export (a CNN one, a combined one's CNN block), found from its
    description: nothing is built."""
    try:
        network_block(featurizer)
    except InputError:
        return False
    return True


def model_has_network(model: LandUseModel) -> bool:
    """Whether a loaded model predicts through a torch network that :func:`export_model` can export."""
    if model.kind == "finetune":
        return True
    return model.kind == "features" and featurizer_has_network(model.featurizer)  # type: ignore[attr-defined]


def wants_export(export: bool | None, has_network: bool, what: str) -> bool:
    """Whether a training run exports its model: ``export`` as given, or for ``None`` (``auto``, the CLI's
    default) where the model has a network and torch's ONNX exporter is installed.

    Checked before training, so that an export asked for and impossible costs no training time.

    Args:
        export: ``True``, ``False`` or ``None`` (auto).
        has_network: the model will predict through a network (:func:`featurizer_has_network`).
        what: the model, for messages (e.g. ``"a model on spectral features"``).

    Raises:
        InputError: ``export=True`` for a model without a network, or where the exporter is not installed.
    """
    if export is None:
        return has_network and onnx_exporter_installed()
    if export and not has_network:
        raise InputError(f"{what} has no network to export (it scores with numpy on any runtime); train it "
                         "without --export")
    if export and not onnx_exporter_installed():
        raise InputError("exporting needs torch's ONNX exporter (torch, onnx and onnxscript), which is not "
                         "installed here; train with --no-export")
    return bool(export)


def export_trained(directory: PathLike, name: str) -> tuple[dict[str, Any] | None, str | None]:
    """Export a model artifact that training just wrote (:func:`export_model`), never losing the model.

    Returns:
        ``(record, None)``, or ``(None, reason)`` where the export failed: one line saying why and how to
        retry (``geoclf models export NAME``). The artifact is then as it was (``network.onnx`` is written
        atomically once it passed its check against torch, ``model.json`` after it): a valid model on torch.
    """
    try:
        return export_model(directory), None
    except Exception as exc:  # hours of training outweigh an exporter's failure of any kind: warn and keep
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, (f"model {name!r} was not exported to ONNX ({first}); it scores on torch until "
                      f"`geoclf models export {name}` exports it")


def export_tags(record: dict[str, Any] | None, error: str | None) -> dict[str, str]:
    """The run tags recording an export's outcome (:data:`EXPORT_TAG` or :data:`EXPORT_ERROR_TAG`)."""
    if record is not None:
        return {EXPORT_TAG: str(record["sha256"])}
    return {EXPORT_ERROR_TAG: error} if error else {}


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


__all__ = ["EXPORT_ERROR_TAG", "EXPORT_FIELD", "EXPORT_TAG", "export_model", "export_tags", "export_trained",
           "featurizer_has_network", "inference_network", "model_has_network", "wants_export"]
