"""geoclf models as MLflow models: a ``python_function`` flavour over the artifact contract.

Every model artifact geoclf records in a run (``model/``) is also an MLflow model: beside ``model.json`` it
holds an ``MLmodel`` file whose ``python_function`` flavour loads the directory with this module
(``loader_module: geoclf.pyfunc``, ``data: .``), a signature and an input example. So MLflow's own tools
work on it, with no geoclf code of their own: ``mlflow.pyfunc.load_model("models:/landuse-naip/1")``,
``mlflow models serve -m models:/landuse-naip@production --env-manager local``, the registry's pages.

Why a loader module and not a pickled ``PythonModel``: loading runs no pickled code (the classifier stays a
skops file loaded with geoclf's allowlist), and the directory stays the one artifact that
:func:`geoclf.models.load_model` reads; nothing is stored twice.

The contract, as the signature states it: input a tensor of chips ``(N, len(bands), chip_size, chip_size)``
``uint8`` (the JSON ``{"inputs": [...]}`` of MLflow's scoring server); output a table with ``pred`` (class
name) and ``prob_<Class>`` per class, in the model's class order.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geoclf import __version__
from geoclf.artifact import LandUseModel, load_model_dir, read_model_json
from tiling.errors import InputError

#: The MLflow model description file.
MLMODEL = "MLmodel"
#: Files MLflow writes beside ``MLmodel`` and :func:`add_mlflow_model` copies into the artifact.
_MLFLOW_FILES = (MLMODEL, "input_example.json", "serving_input_example.json", "requirements.txt",
                 "python_env.yaml", "conda.yaml")


class ChipModel:
    """What ``mlflow.pyfunc.load_model`` wraps: a geoclf model answering MLflow's ``predict``.

    Attributes:
        model: the loaded :class:`geoclf.artifact.LandUseModel`.
    """

    def __init__(self, model: LandUseModel) -> None:
        self.model = model

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Class probabilities and the likeliest class of each chip.

        Args:
            model_input: chips ``(N, bands, size, size)`` of ``uint8`` (a numpy array or nested lists).
            params: unused (MLflow passes inference parameters here).

        Returns:
            ``pred`` and ``prob_<Class>`` per chip.
        """
        if isinstance(model_input, pd.DataFrame):
            raise InputError("a geoclf model scores chip arrays (N, bands, size, size) uint8, not tables; send "
                             "{\"inputs\": [...]} to the scoring server")
        if isinstance(model_input, dict) and len(model_input) == 1:
            model_input = next(iter(model_input.values()))
        chips = np.asarray(model_input)
        if chips.dtype != np.uint8:
            if chips.size and (chips.min() < 0 or chips.max() > 255 or not np.all(np.equal(np.mod(chips, 1), 0))):
                raise InputError("chip values must be whole numbers 0-255 (uint8)")
            chips = chips.astype(np.uint8)
        probs = np.asarray(self.model.predict_proba(chips), dtype=np.float32)
        classes = list(self.model.classes)
        table = pd.DataFrame(probs, columns=[f"prob_{c}" for c in classes])
        table.insert(0, "pred", np.asarray(classes, dtype=object)[probs.argmax(axis=1)] if len(probs) else [])
        return table


def _load_pyfunc(data_path: str) -> ChipModel:
    """MLflow's entry point for ``loader_module: geoclf.pyfunc``: the artifact directory -> a model."""
    return ChipModel(load_model_dir(data_path))


def signature(spec: dict[str, Any]) -> Any:
    """The MLflow signature of a model described by ``model.json``: chips in, ``pred`` and probabilities out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    size = int(spec["chip_size"])
    # unnamed: the scoring server's {"inputs": [...]} arrives as one array, not a dict of named tensors
    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, len(spec["bands"]), size, size))])
    outputs = Schema([ColSpec("string", "pred"), *(ColSpec("float", f"prob_{c}") for c in spec["classes"])])
    return ModelSignature(inputs=inputs, outputs=outputs)


def add_mlflow_model(directory: str | os.PathLike[str]) -> Path:
    """Make a geoclf model artifact directory an MLflow model too (``MLmodel`` and its companions).

    The input example is one chip of zeros of the model's shape; the requirements name geoclf, whose
    version the artifact records. Writes into ``directory`` (a staging copy, when a run records the model).

    Returns:
        The path of ``MLmodel``.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow.pyfunc
    from mlflow.models import Model

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # its INFO lines ("Validating input example") are noise

    directory = Path(directory)
    spec = read_model_json(directory)
    example = np.zeros((1, len(spec["bands"]), int(spec["chip_size"]), int(spec["chip_size"])), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="geoclf-mlmodel-") as tmp:
        # An empty data directory: MLflow copies data_path into the model, and the real data is the artifact
        # itself ("data: ."), so nothing is stored twice.
        empty = Path(tmp) / "data"
        empty.mkdir()
        saved = Path(tmp) / "mlflow-model"
        mlflow.pyfunc.save_model(saved, loader_module=__name__, data_path=os.fspath(empty),
                                 signature=signature(spec), input_example=example,
                                 pip_requirements=[f"geoclf=={spec.get('geoclf_version') or __version__}"])
        description = Model.load(saved / MLMODEL)
        description.flavors["python_function"]["data"] = "."
        description.metadata = {"geoclf_kind": spec.get("kind"), "classes": list(spec["classes"])}
        for name in _MLFLOW_FILES:
            if (saved / name).is_file() and name != MLMODEL:
                shutil.copy2(saved / name, directory / name)
        for name in ("input_example.json", "serving_input_example.json"):
            # MLflow indents a number per line: a 224-pixel RGB chip would take 2 MB; compact, 0.3 MB
            if (directory / name).is_file():
                document = json.loads((directory / name).read_text())
                (directory / name).write_text(json.dumps(document, separators=(",", ":")))
        description.save(os.fspath(directory / MLMODEL))
    return directory / MLMODEL


__all__ = ["MLMODEL", "ChipModel", "add_mlflow_model", "signature"]
