"""The ``finetune`` model kind: a fine-tuned CNN as a model artifact, chips in, class probabilities out.

Written by :func:`save_finetune_model` (``model.json`` + ``model.pt``, a plain state dict), loaded by
:class:`FinetuneModel` through :func:`geoclf.models.load_model`. Running the network needs torch, not Lightning;
a model run from its export (``--runtime openvino``) needs neither, so torch is imported only where the torch
network is built or run: a slim worker (the ``geoclf[score]`` install) scores a fine-tuned exported model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoclf import artifact
from geoclf.artifact import LandUseModel, PathLike
from geoclf.runtime import Runner, check_model_runtime, open_runner, thread_budget, verified_onnx
from tiling.errors import InputError

if TYPE_CHECKING:  # the module is Lightning's; a scoring worker loading an artifact never imports it
    from torch import nn

    from geoclf.finetune.module import LandUseModule

#: File of the network weights (a plain state dict) inside a ``finetune`` artifact.
NETWORK_FILE = "model.pt"


class FinetuneModel(LandUseModel):
    """A ``finetune`` model artifact: a fine-tuned CNN, chips in, class probabilities out.

    Chips are normalized with :func:`geoclf.backbones.to_tensor` using the artifact's normalization, the
    same arithmetic :meth:`LandUseModule.normalize` applied in training.

    The torch network is built from the artifact's ``model.pt`` when it is first needed (:meth:`prepare`,
    :attr:`network`, a prediction on torch), not when the artifact is loaded: a model run from its export
    (:meth:`use_runtime`) never builds it, nor imports torch when its chips are of the network's input size.

    Args:
        spec: ``model.json`` content.
        network: the fine-tuned network (logits out); ``None`` to build it from ``path`` on first use.
        path: artifact directory, if loaded from one.
        device, batch_size: see :class:`geoclf.artifact.LandUseModel`.
    """

    kind = "finetune"

    def __init__(self, spec: Mapping[str, Any], network: nn.Module | None = None, path: Path | None = None,
                 device: str | None = None, batch_size: int = 32) -> None:
        super().__init__(spec, path, device, batch_size)
        if network is None and path is None:
            raise ValueError("a FinetuneModel needs its network or the artifact directory holding it")
        self._network = None if network is None else network.eval()
        self._device: Any = None  # the torch device the network was moved to
        self._runner: Any = None  # an inference runtime's compiled network (use_runtime), else torch

    @property
    def network(self) -> nn.Module:
        """The fine-tuned torch network (logits out), built from the artifact's ``model.pt`` on first use.

        Raises:
            InputError: ``model.pt`` is missing, changed since it was saved, unreadable, or does not fit the
                backbone, classes and bands ``model.json`` records.
        """
        if self._network is None:
            self._network = _read_network(Path(self.path or "."), self.spec).eval()
        return self._network

    def prepare(self) -> FinetuneModel:
        """Build what predictions need now: the torch network, or (after :meth:`use_runtime`) nothing more, the
        export being compiled by it; returns the model.

        Raises:
            InputError: as :attr:`network`.
        """
        if self._runner is None:
            _ = self.network
        return self

    def use_runtime(self, runtime: str = "torch", precision: str = "auto",
                    threads: int | None = None) -> FinetuneModel:
        """Run the network on an inference runtime (see :meth:`geoclf.artifact.LandUseModel.use_runtime`)."""
        self._runner = None
        if check_model_runtime(runtime, precision):
            path = verified_onnx(self.path or ".", self.spec.get("export"))
            norm = self.spec["normalization"]
            self._runner = open_runner(runtime, onnx=path, precision=precision, threads=thread_budget(threads),
                                       normalization=(norm["mean"], norm["std"]))
        return self

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)`` float32 of uint8 chips ``(N, len(bands), chip_size, chip_size)``."""
        chips = self.check_chips(chips)
        out = np.empty((len(chips), len(self.classes)), dtype=np.float32)
        norm = self.spec["normalization"]
        if self._runner is not None:
            for start in range(0, len(chips), self.batch_size):
                batch = chips[start:start + self.batch_size]
                logits = _run_exported(self._runner, batch, norm)
                out[start:start + len(batch)] = _softmax(np.asarray(logits, dtype=np.float32))
            return out
        import torch

        from geoclf.backbones import to_tensor

        device = self.torch_device()
        network = self.network
        if self._device != device:
            network.to(device)
            self._device = device
        with torch.inference_mode():
            for start in range(0, len(chips), self.batch_size):
                batch = to_tensor(chips[start:start + self.batch_size], norm["mean"], norm["std"],
                                  rgb=range(chips.shape[1]), size=norm.get("input_size"))
                logits = network(batch.to(device)).float()
                out[start:start + len(batch)] = torch.softmax(logits, dim=1).cpu().numpy()
        return out

    def __getstate__(self) -> dict[str, Any]:
        # a compiled export does not travel (a worker compiles its own in use_runtime); nor does a network a
        # model run from its export never built
        return {**self.__dict__, "_runner": None}

    @classmethod
    def load(cls, directory: Path, spec: Mapping[str, Any], trusted: bool = False) -> FinetuneModel:
        """Load a ``finetune`` artifact (its :data:`geoclf.artifact.LOADERS` entry); the network is built on
        first use (see :attr:`network`).

        The weights are a plain state dict read with ``torch.load(weights_only=True)``: no code runs on
        load, so ``trusted`` changes nothing here.

        Raises:
            InputError: the network file is missing or is not the one ``model.json`` records.
        """
        artifact.check_file(directory, spec.get("network") or {}, NETWORK_FILE, "network")
        return cls(spec, path=directory)


def _read_network(directory: Path, spec: Mapping[str, Any]) -> nn.Module:
    """The fine-tuned network of an artifact: its architecture from ``model.json``, its weights from ``model.pt``."""
    import torch

    from geoclf.finetune.network import build_network

    path = artifact.check_file(directory, spec.get("network") or {}, NETWORK_FILE, "network")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for a damaged file
        raise InputError(f"cannot be read as a PyTorch state dict ({type(exc).__name__})", path) from exc
    loaded, _ = build_network(spec["backbone"], len(spec["classes"]), spec["bands"], weights="none")
    try:
        loaded.model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"does not fit {spec['backbone']} with {len(spec['classes'])} classes and "
                         f"{len(spec['bands'])} bands ({first})", path) from exc
    return loaded.model


def _run_exported(runner: Runner, chips: np.ndarray, norm: Mapping[str, Any]) -> np.ndarray:
    """The exported network's outputs of a batch: chips of its input size go to the runtime as they are
    (normalized in its graph, no torch needed); others are resized and normalized by torch as in training."""
    size = norm.get("input_size")
    if size is None or chips.shape[-2:] == (size, size):
        return runner.chips(chips)
    from geoclf.backbones import to_tensor  # resizing as torch did at training time needs torch

    return runner(to_tensor(chips, norm["mean"], norm["std"], rgb=range(chips.shape[1]), size=size).numpy())


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def save_finetune_model(directory: PathLike, module: LandUseModule, *, chip_size: int, name: str | None = None,
                        metrics: Mapping[str, Any] | None = None,
                        class_groups: Mapping[str, Sequence[int]] | None = None,
                        provenance: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Save a fine-tuned module as a ``finetune`` model artifact: ``model.json`` + ``model.pt``.

    Args:
        directory: artifact directory to create (written atomically).
        module: the fine-tuned module.
        chip_size: chip side in pixels the model reads.
        name: model name (the run name).
        metrics: validation metrics (as :func:`geoclf.metrics.evaluation_to_json` gives).
        class_groups: NLCD codes of each class (map legends), if known.
        provenance: where it came from (chip index and hash, run id, seed, checkpoint, ...).
        overwrite: replace an existing directory.

    Returns:
        The artifact directory.
    """
    spec = finetune_spec(module, chip_size=chip_size, name=name, metrics=metrics, class_groups=class_groups,
                         provenance=provenance)
    import torch

    state = {k: v.detach().cpu().contiguous() for k, v in module.network.state_dict().items()}

    def write(staging: Path) -> dict[str, Any]:
        path = staging / NETWORK_FILE
        torch.save(state, path)
        return {"network": {**spec["network"], "sha256": artifact.file_checksum(path)}}

    return artifact.write_model_dir(directory, FinetuneModel.kind, spec, write, overwrite=overwrite)


def finetune_spec(module: LandUseModule, *, chip_size: int, name: str | None = None,
                  metrics: Mapping[str, Any] | None = None, class_groups: Mapping[str, Sequence[int]] | None = None,
                  provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``model.json`` fields of a fine-tuned module (without the common ones the writer adds)."""
    hp = module.hparams
    return {
        "name": name,
        "classes": module.classes,
        "bands": module.bands,
        "chip_size": int(chip_size),
        "backbone": hp["backbone"],
        "weights": hp["weights"],
        "weights_ref": module.weights_ref,
        "feature_layer": module.backbone_spec.feature_layer,
        "retrain": hp["retrain"],
        "trained_modules": list(module.trained_modules),
        "trainable_params": module.trainable_params,
        "total_params": module.total_params,
        "normalization": {"mean": module.mean, "std": module.std, "input_size": hp["input_size"]},
        "network": {"file": NETWORK_FILE, "head": module.backbone_spec.head, "first_conv": module.first_conv,
                    "num_classes": len(module.classes), "in_channels": len(module.bands)},
        "class_groups": None if class_groups is None else {str(k): [int(c) for c in v]
                                                           for k, v in class_groups.items()},
        "metrics": dict(metrics or {}),
        "provenance": dict(provenance or {}),
    }


__all__ = ["NETWORK_FILE", "FinetuneModel", "finetune_spec", "save_finetune_model"]
