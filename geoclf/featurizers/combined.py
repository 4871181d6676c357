"""The combined featurizer (geoclf's default): a CNN's features of the RGB bands beside the spectral statistics
of every band, NIR included.

A pretrained CNN sees texture and shape in RGB; the spectral statistics (:mod:`geoclf.featurizers.spectral`) see
the near-infrared band and the radiometry the CNN's normalization blurs. The vector is the two blocks one
after the other, and ``features.json`` records where each block lies (``blocks``), so that a classifier can
standardize and weigh each block on its own (:func:`geoclf.classifiers.make_classifier`): 1,280 CNN numbers
must not drown 22 spectral ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from geoclf.featurizers import KIND_FIELD, Featurizer
from geoclf.featurizers.cnn import CNNFeaturizer
from geoclf.featurizers.spectral import SpectralFeaturizer
from tiling.errors import InputError

if TYPE_CHECKING:
    from torch import nn


class CombinedFeaturizer(Featurizer):
    """A CNN block then a spectral block; see the module docstring.

    Args:
        cnn: the CNN featurizer (reads RGB).
        spectral: the spectral featurizer (reads RGB and NIR where the imagery has it).
        device: torch device of the CNN (``None``: CUDA when available, else the CPU).
    """

    kind: ClassVar[str] = "combined"

    def __init__(self, cnn: CNNFeaturizer, spectral: SpectralFeaturizer, device: str | None = None) -> None:
        self.cnn = cnn
        self.spectral = spectral
        self.device = device if device is not None else cnn.device
        self.bands = tuple(dict.fromkeys((*cnn.bands, *spectral.bands)))
        self.feature_dim = cnn.feature_dim + spectral.feature_dim
        self._picks = ([self.bands.index(b) for b in cnn.bands], [self.bands.index(b) for b in spectral.bands])

    @classmethod
    def create(cls, backbone: str, weights: Any = "default", device: str | None = None) -> CombinedFeaturizer:
        """A backbone's CNN featurizer (loaded) beside RGBN spectral statistics."""
        return cls(CNNFeaturizer.create(backbone, weights, device=device), SpectralFeaturizer(), device=device)

    @property
    def blocks(self) -> dict[str, list[int]]:
        """Where each block lies in the vector: ``{"cnn": [0, 1280], "spectral": [1280, 1302]}``."""
        return {"cnn": [0, self.cnn.feature_dim], "spectral": [self.cnn.feature_dim, self.feature_dim]}

    def with_cnn(self, cnn: CNNFeaturizer) -> CombinedFeaturizer:
        """The same spectral block beside another CNN block of the same description (e.g. the CNN run from its
        export on another runtime: :func:`geoclf.featurizers.exported.on_runtime`).

        Raises:
            InputError: ``cnn`` reads other bands or gives another number of features than the CNN block.
        """
        if tuple(cnn.bands) != tuple(self.cnn.bands) or cnn.feature_dim != self.cnn.feature_dim:
            raise InputError(f"a CNN block of bands {list(cnn.bands)} and {cnn.feature_dim} features cannot stand "
                             f"for one of bands {list(self.cnn.bands)} and {self.cnn.feature_dim}")
        return CombinedFeaturizer(cnn, self.spectral, self.device)

    @property
    def key(self) -> str:
        """The blocks' keys: weights of a file are keyed by their hash, a CNN block on another runtime by its
        runtime and export (as the blocks key themselves), so a worker caches one of each."""
        return json.dumps({KIND_FIELD: self.kind, "cnn": self.cnn.key, "spectral": self.spectral.key}, sort_keys=True)

    def for_band_count(self, count: int) -> CombinedFeaturizer:
        """The spectral block without NIR for RGB imagery (the CNN reads RGB either way)."""
        spectral = self.spectral.for_band_count(count)
        return self if spectral is self.spectral else CombinedFeaturizer(self.cnn, spectral, self.device)

    # -- the description --

    def to_meta(self) -> dict[str, Any]:
        """The ``features.json`` fields: the CNN's (``backbone``, ``weights``, ``weights_ref``, ``feature_layer``
        at the top, as records and messages read them), ``feature_dim``, ``bands``, ``blocks`` and each block's
        own description under ``cnn`` and ``spectral``."""
        cnn = self.cnn.to_meta()
        return {"backbone": cnn["backbone"], "weights": cnn["weights"], "weights_ref": cnn["weights_ref"],
                "feature_layer": cnn["feature_layer"], "feature_dim": self.feature_dim, "bands": list(self.bands),
                "blocks": self.blocks, "cnn": cnn, "spectral": self.spectral.to_meta()}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> CombinedFeaturizer:
        """The featurizer of a ``features.json`` or a ``model.json`` (both nest the blocks alike).

        Raises:
            InputError: a block's description is missing or damaged, or the sizes do not add up.
        """
        cnn, spectral = meta.get("cnn"), meta.get("spectral")
        if not isinstance(cnn, Mapping) or not isinstance(spectral, Mapping):
            raise InputError("the combined featurizer's description lacks its cnn or spectral block")
        featurizer = cls(CNNFeaturizer.from_meta(cnn), SpectralFeaturizer.from_meta(spectral))
        recorded = meta.get("feature_dim")
        if recorded is not None and int(recorded) != featurizer.feature_dim:
            raise InputError(f"the combined featurizer's blocks give {featurizer.feature_dim} features where "
                             f"{recorded} were recorded")
        return featurizer

    def model_fields(self) -> dict[str, Any]:
        """The ``model.json`` fields: as :meth:`to_meta` without ``bands`` (a common field of every artifact)."""
        meta = self.to_meta()
        meta.pop("bands")
        return meta

    # -- computing --

    def load(self) -> CombinedFeaturizer:
        """Build the CNN's network now; returns itself."""
        self.cnn.device = self.device
        self.cnn.load()
        return self

    def network(self) -> nn.Module:
        """The CNN block's torch network (see :meth:`geoclf.featurizers.cnn.CNNFeaturizer.network`)."""
        self.cnn.device = self.device
        return self.cnn.network()

    def featurize(self, chips: np.ndarray) -> np.ndarray:
        """``(N, len(bands), S, S)`` uint8 chips -> ``(N, feature_dim)`` float32: the CNN block, then the
        spectral block (numpy: the same code on every runtime the CNN block runs on)."""
        chips = self.check_chips(chips)
        self.cnn.device = self.device
        cnn, spectral = self._picks
        return np.concatenate([self.cnn.featurize(np.ascontiguousarray(chips[:, cnn])),
                               self.spectral.featurize(chips[:, spectral])], axis=1)


__all__ = ["CombinedFeaturizer"]
