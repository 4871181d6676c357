"""The CNN featurizer: a backbone's penultimate layer (:mod:`geoclf.backbones`) over normalized RGB chips.

torch and the backbone registry are imported when a network is first built, not with this module: describing
a CNN featurizer (training a classifier on its features, reading a ``model.json``) needs no torch, whose
import costs seconds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from geoclf.artifact import file_checksum, file_inside
from geoclf.featurizers import KIND_FIELD, Featurizer
from tiling.errors import InputError

#: What ``weights`` may be besides a file (see :func:`geoclf.backbones.load_backbone`).
WEIGHTS_KEYWORDS = ("default", "imagenet", "none")

#: The backbone weights of a file, as a ``features`` model artifact carries them (:meth:`CNNFeaturizer.embed`).
WEIGHTS_FILE = "backbone-weights.pth"

if TYPE_CHECKING:
    import torch
    from torch import nn

    from geoclf.backbones import Backbone


@dataclass(eq=False)
class CNNFeaturizer(Featurizer):
    """Penultimate-layer features of a pretrained CNN: chips scaled to [0, 1], resized to the network's input
    side, normalized per band, then the headless network (:meth:`geoclf.backbones.Backbone.feature_extractor`).

    The description (every field but :attr:`device`) is what ``features.json`` and ``model.json`` record; the
    network is built from it on first use and checked against it: the weights must still hash to what
    :attr:`weights_ref` recorded, and the network must give :attr:`feature_dim` features.

    Attributes:
        backbone: backbone name (:func:`geoclf.backbones.get_spec`).
        weights: the argument that loads the weights again (``default``, ``imagenet``, ``none``, a file).
        weights_ref: the backbone's description of the weights (:attr:`geoclf.backbones.Backbone.weights_ref`).
        feature_layer: what the feature vector is, in words.
        feature_dim: length of the feature vector.
        mean, std: per-band normalization of [0, 1] input.
        input_size: network input side chips are resized to (``None``: as they are).
        bands: 1-based bands fed to the network (RGB).
        device: torch device the network runs on (``None``: CUDA when available, else the CPU). Not part of
            the description: the same features wherever they are computed, up to float rounding.
    """

    kind: ClassVar[str] = "cnn"

    backbone: str
    weights: str
    weights_ref: dict[str, Any]
    feature_layer: str | None
    feature_dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int | None
    bands: tuple[int, ...] = (1, 2, 3)
    device: str | None = None
    _network: Any = field(default=None, init=False, repr=False)

    @classmethod
    def create(cls, backbone: str, weights: Any = "default", device: str | None = None) -> CNNFeaturizer:
        """Load a backbone and describe it as a featurizer (the network is kept, loaded once).

        Raises:
            InputError: unknown backbone, weights that cannot be had.
        """
        from geoclf.backbones import load_backbone

        return cls.from_backbone(load_backbone(backbone, weights), device=device)

    @classmethod
    def from_backbone(cls, backbone: Backbone, device: str | None = None) -> CNNFeaturizer:
        """The featurizer of a loaded backbone; it reuses the backbone's network."""
        ref = dict(backbone.weights_ref)
        featurizer = cls(backbone=backbone.name, weights=str(ref.get("weights", "default")), weights_ref=ref,
                         feature_layer=backbone.feature_layer, feature_dim=int(backbone.feature_dim),
                         mean=tuple(float(v) for v in backbone.mean), std=tuple(float(v) for v in backbone.std),
                         input_size=int(backbone.input_size), device=device)
        featurizer._network = featurizer._extractor(backbone)
        return featurizer

    # -- the description --

    def to_meta(self) -> dict[str, Any]:
        """The ``features.json`` fields: ``backbone``, ``weights``, ``weights_ref``, ``feature_layer``,
        ``feature_dim``, ``bands``, ``mean``, ``std``, ``input_size``."""
        return {"backbone": self.backbone, "weights": self.weights, "weights_ref": dict(self.weights_ref),
                "feature_layer": self.feature_layer, "feature_dim": self.feature_dim, "bands": list(self.bands),
                "mean": list(self.mean), "std": list(self.std),
                "input_size": None if self.input_size is None else int(self.input_size)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> CNNFeaturizer:
        """The featurizer of a ``features.json`` (or of the flat fields of a ``model.json``)."""
        ref = dict(meta.get("weights_ref") or {})
        size = meta.get("input_size")
        try:
            return cls(backbone=str(meta["backbone"]),
                       weights=str(ref.get("weights") or meta.get("weights") or "default"), weights_ref=ref,
                       feature_layer=meta.get("feature_layer"), feature_dim=int(meta["feature_dim"]),
                       mean=tuple(float(v) for v in meta["mean"]), std=tuple(float(v) for v in meta["std"]),
                       input_size=None if size is None else int(size),
                       bands=tuple(int(b) for b in meta.get("bands") or (1, 2, 3)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the CNN featurizer's description is incomplete or damaged ({type(exc).__name__}: "
                             f"{exc})") from exc

    def model_fields(self) -> dict[str, Any]:
        """The ``model.json`` fields: as :meth:`to_meta`, with ``mean``, ``std`` and ``input_size`` under
        ``normalization`` (``bands`` is a common field of every artifact, written by the model)."""
        meta = self.to_meta()
        normalization = {k: meta.pop(k) for k in ("mean", "std", "input_size")}
        meta.pop("bands")
        return {**meta, "normalization": normalization}

    @classmethod
    def from_model_fields(cls, spec: Mapping[str, Any]) -> CNNFeaturizer:
        """The featurizer of a ``features`` model's ``model.json``."""
        return cls.from_meta({**spec, **(spec.get("normalization") or {})})

    @property
    def key(self) -> str:
        """Identity as text; weights of a file are identified by their SHA-256, wherever the file lies (the
        features' copy and a model artifact's copy are the same weights)."""
        meta = self.to_meta()
        if self.weights_file:
            sha = self.weights_ref.get("sha256")
            meta["weights"] = f"sha256:{sha}"
            meta["weights_ref"] = {"kind": "file", "sha256": sha}
        return json.dumps({KIND_FIELD: self.kind, **meta}, sort_keys=True, default=str)

    @property
    def weights_file(self) -> bool:
        """Whether the weights are a local file (rather than embedded, torchvision's or random ones)."""
        return self.weights.strip() not in WEIGHTS_KEYWORDS  # as load_backbone reads it

    def embed(self, directory: Path) -> CNNFeaturizer:
        """Weights of a file are copied into the artifact as :data:`WEIGHTS_FILE` (after checking they are still
        the ones the features were computed with); other weights are found by name and need no copy."""
        if not self.weights_file:
            return self
        source = Path(self.weights).expanduser()
        recorded = self.weights_ref.get("sha256")
        if not source.is_file():
            raise InputError("no such weights file (the backbone weights the features were computed with)", source)
        if not recorded or file_checksum(source) != recorded:
            raise InputError(f"is not the weights file the features were computed with (sha256 "
                             f"{(recorded or 'not recorded')[:12]}...)", source)
        shutil.copyfile(source, Path(directory) / WEIGHTS_FILE)
        return replace(self, weights=WEIGHTS_FILE, weights_ref={**self.weights_ref, "weights": WEIGHTS_FILE,
                                                                 "source": WEIGHTS_FILE})

    def located(self, directory: Path) -> CNNFeaturizer:
        """Weights of a file must be a file of the artifact directory (never a path elsewhere)."""
        if not self.weights_file:
            return self
        path = str(file_inside(directory, self.weights, "backbone weights"))
        return replace(self, weights=path, weights_ref={**self.weights_ref, "weights": path})

    # -- computing --

    def load(self) -> CNNFeaturizer:
        """Build the network now (see :meth:`network`); returns itself."""
        self.network()
        return self

    def network(self) -> nn.Module:
        """The feature network on :meth:`torch_device`, built on first use and checked against the description.

        Raises:
            InputError: the weights now resolve to another file than recorded, or the network gives
                another number of features.
        """
        if self._network is None:
            from geoclf.backbones import load_backbone

            loaded = load_backbone(self.backbone, self.weights)
            if int(loaded.feature_dim) != self.feature_dim:
                raise InputError(f"backbone {self.backbone!r} gives {loaded.feature_dim} features where "
                                 f"{self.feature_dim} were recorded")
            recorded = self.weights_ref.get("sha256")
            found = (loaded.weights_ref or {}).get("sha256")
            if recorded != found:
                # other weights give other features: a classifier trained on these would be meaningless. A
                # description without the checksum (weights_ref removed) cannot vouch for weights that have one.
                if recorded is None:
                    raise InputError(f"records no checksum of its backbone weights (weights_ref.sha256), so "
                                     f"{self.backbone!r} with weights {self.weights!r} (sha256 {found[:12]}...) "
                                     "cannot be told to be the network its features came from")
                raise InputError(f"backbone weights {self.weights!r} now resolve to "
                                 f"{'another file (sha256 ' + found[:12] + '...)' if found else 'no file'} than "
                                 f"the features were computed with ({recorded[:12]}...)")
            self._network = self._extractor(loaded)
        return self._network

    def torch_device(self) -> torch.device:
        """The device of :attr:`device` (``None``: CUDA when available, else the CPU)."""
        import torch

        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def featurize(self, chips: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S)`` uint8 RGB chips -> ``(N, feature_dim)`` float32, one forward pass."""
        import torch

        from geoclf.backbones import to_tensor

        chips = self.check_chips(chips)
        network = self.network()
        with torch.inference_mode():
            batch = to_tensor(chips, self.mean, self.std, rgb=range(len(self.bands)), size=self.input_size)
            batch = batch.to(self.torch_device()).contiguous(memory_format=torch.channels_last)
            return network(batch).reshape(len(batch), -1).float().cpu().numpy()

    def _extractor(self, backbone: Backbone) -> nn.Module:
        import torch

        return backbone.feature_extractor().eval().to(self.torch_device(), memory_format=torch.channels_last)

    def __getstate__(self) -> dict[str, Any]:
        # the description travels (to Dask workers), the network does not: each process builds its own
        return {**self.__dict__, "_network": None}


__all__ = ["CNNFeaturizer"]
