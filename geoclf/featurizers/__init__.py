"""Featurizers: chips in, one feature vector per chip out; the same object at training and at scoring time.

A featurizer is what turns chips into the vectors a classifier is trained on. ``geoclf featurize`` runs one
over every chip (:class:`geoclf.features.FeaturizeTask`) and records it in ``features.json``; a ``features``
model artifact records the same description in ``model.json`` and rebuilds an equal featurizer when it
scores chips (:class:`geoclf.features_model.FeaturesModel`). So scoring computes what training computed by
construction, not by keeping two copies of the preprocessing in step.

The contract (:class:`Featurizer`):

- ``featurize(chips)``: ``(N, len(bands), S, S)`` uint8 chips, bands in :attr:`~Featurizer.bands` order ->
  ``(N, feature_dim)`` float32, one batch at a time (callers batch: one partition's reader, a model's
  ``batch_size``);
- ``bands``, ``feature_dim``: what it reads and what it gives;
- ``to_meta()`` / ``from_meta(meta)``: the JSON description recorded with features and models, and back;
  ``model_fields()`` / ``from_model_fields(spec)`` for ``model.json``, whose layout may differ (the CNN's
  normalization is nested there);
- ``key``: its identity as text (equal descriptions, equal keys), for per-process caches.

Heavy state (a network) is built on first use and never pickled, so a featurizer travels to Dask workers as
its description and each worker process loads it once (:func:`geoclf.partitions.worker_model`).

Kinds are registered in :data:`FEATURIZERS` (``kind -> "module:Class"``, imported when first needed, so a
featurizer without torch never imports it). ``features.json`` and ``model.json`` name their kind under
``"featurizer"``; files without it are ``"cnn"``, the only kind geoclf wrote before there were others. A new
kind (e.g. spectral statistics without a network, or a CNN block beside a spectral one) is a subclass
registered here; a new inference runtime for the CNN (ONNX, OpenVINO) is a subclass of
:class:`geoclf.featurizers.cnn.CNNFeaturizer` that overrides how the network is built and run, keeping its
preprocessing and description.
"""

from __future__ import annotations

import json
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tiling.errors import InputError

#: Featurizer kind -> ``"module:Class"`` (a :class:`Featurizer` subclass), imported on first use.
FEATURIZERS: dict[str, str] = {
    "cnn": "geoclf.featurizers.cnn:CNNFeaturizer",
    "spectral": "geoclf.featurizers.spectral:SpectralFeaturizer",
    "combined": "geoclf.featurizers.combined:CombinedFeaturizer",
}

#: Kind of a description that names none (everything written before featurizers had kinds).
DEFAULT_KIND = "cnn"

#: The ``features.json`` / ``model.json`` field naming the featurizer kind.
KIND_FIELD = "featurizer"


class Featurizer(ABC):
    """Chips -> feature vectors; see the module docstring for the contract.

    Attributes:
        bands: 1-based bands the featurizer reads, in input order (1 R, 2 G, 3 B, 4 NIR).
        feature_dim: length of a feature vector.
        device: torch device a network runs on (``None``: CUDA when available, else the CPU); not part of
            the description, and ignored by featurizers without a network.
    """

    #: The kind recorded with features and models (a key of :data:`FEATURIZERS`).
    kind: ClassVar[str]

    bands: tuple[int, ...]
    feature_dim: int
    device: str | None = None

    @abstractmethod
    def featurize(self, chips: np.ndarray) -> np.ndarray:
        """Feature vectors of one batch of chips.

        Args:
            chips: ``(N, len(bands), S, S)`` uint8, bands in :attr:`bands` order.

        Returns:
            ``(N, feature_dim)`` float32.
        """

    @abstractmethod
    def to_meta(self) -> dict[str, Any]:
        """The JSON-ready description recorded in ``features.json`` (:meth:`from_meta` rebuilds it)."""

    @classmethod
    @abstractmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Featurizer:
        """The featurizer a ``features.json`` describes."""

    def describe(self) -> dict[str, Any]:
        """What ``features.json`` records: :meth:`to_meta`, after the kind unless it is the default one."""
        return {**self._kind_field(), **self.to_meta()}

    def describe_model(self) -> dict[str, Any]:
        """What a ``features`` model's ``model.json`` records: :meth:`model_fields`, after the kind unless it is
        the default one."""
        return {**self._kind_field(), **self.model_fields()}

    def _kind_field(self) -> dict[str, str]:
        # files written before there were kinds have none, and mean the default one: keep writing them so
        return {} if self.kind == DEFAULT_KIND else {KIND_FIELD: self.kind}

    def model_fields(self) -> dict[str, Any]:
        """The description as ``model.json`` records it (by default as in ``features.json``)."""
        return self.to_meta()

    @classmethod
    def from_model_fields(cls, spec: Mapping[str, Any]) -> Featurizer:
        """The featurizer a ``model.json`` describes (by default read as ``features.json``)."""
        return cls.from_meta(spec)

    def for_band_count(self, count: int) -> Featurizer:
        """This featurizer for imagery of ``count`` bands: one that reads NIR where it is optional (spectral
        statistics) drops it from RGB imagery; by default itself (it reads what it reads).

        ``geoclf featurize`` calls it with the fewest bands any of its chips has, so one features directory
        is one featurizer: NIR is used when every chip has it.
        """
        return self

    def embed(self, directory: Path) -> Featurizer:
        """Copy the local files this featurizer loads (e.g. backbone weights of a file) into a model artifact
        being written in ``directory``; returns the featurizer that names them there (by default: itself, no files).

        A model artifact carries everything it loads, so it can be moved or scored by workers elsewhere, and
        its ``model.json`` never names a file outside it (see :meth:`located`).

        Raises:
            InputError: a file is no longer the one the features were computed with.
        """
        return self

    def located(self, directory: Path) -> Featurizer:
        """The featurizer a ``model.json`` in ``directory`` describes, with the files it names found beside it
        (by default: itself, no files).

        Raises:
            InputError: the description names a file outside ``directory``.
        """
        return self

    def load(self) -> Featurizer:
        """Build what :meth:`featurize` needs (a network) now rather than on first use; returns itself.

        Raises:
            InputError: it cannot be built as described (e.g. the weights changed since).
        """
        return self

    @property
    def key(self) -> str:
        """Identity as text: featurizers with the same description have the same key."""
        return json.dumps({KIND_FIELD: self.kind, **self.to_meta()}, sort_keys=True, default=str)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Featurizer) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def check_chips(self, chips: np.ndarray) -> np.ndarray:
        """``chips`` as a uint8 ``(N, len(bands), H, W)`` array, or an InputError saying what is wrong."""
        array = np.asarray(chips)
        if array.ndim != 4 or array.shape[1] != len(self.bands):
            raise InputError(f"the {self.kind} featurizer takes chips of shape (N, {len(self.bands)}, H, W) "
                             f"(bands {list(self.bands)}), got {array.shape}")
        if array.dtype != np.uint8:
            raise InputError(f"the {self.kind} featurizer takes uint8 chips, got {array.dtype}")
        return array


def featurizer_class(kind: str) -> type[Featurizer]:
    """The registered class of a featurizer kind.

    Raises:
        InputError: an unknown kind (the message lists the known ones).
    """
    if kind not in FEATURIZERS:
        raise InputError(f"featurizer kind {kind!r} is unknown to this geoclf (known: "
                         f"{', '.join(sorted(FEATURIZERS))})")
    return pkgutil.resolve_name(FEATURIZERS[kind])


def featurizer_from_meta(meta: Mapping[str, Any]) -> Featurizer:
    """The featurizer a ``features.json`` describes (its kind from the ``featurizer`` field)."""
    return featurizer_class(str(meta.get(KIND_FIELD) or DEFAULT_KIND)).from_meta(meta)


def featurizer_from_model(spec: Mapping[str, Any]) -> Featurizer:
    """The featurizer a ``features`` model's ``model.json`` describes."""
    return featurizer_class(str(spec.get(KIND_FIELD) or DEFAULT_KIND)).from_model_fields(spec)


#: Backbones of the combined featurizer ``--backbone combined`` means.
COMBINED_BACKBONE = "efficientnet_lite0"


def make_featurizer(name: str, weights: Any = "default", device: str | None = None,
                    spectral: bool = False) -> Featurizer:
    """The featurizer ``geoclf featurize --backbone NAME`` means, loaded (fails here on bad names/weights).

    Args:
        name: ``spectral`` (band statistics, no network), ``combined`` (:data:`COMBINED_BACKBONE` beside the
            spectral statistics), else a backbone name: a CNN featurizer of its penultimate layer (see
            :mod:`geoclf.backbones`).
        weights: the backbone's weights (see :func:`geoclf.backbones.load_backbone`).
        device: torch device a network runs on (``None``: CUDA when available, else the CPU).
        spectral: a backbone's CNN features beside the spectral statistics (a ``combined`` featurizer, what
            ``geoclf featurize`` makes by default) rather than alone.

    Raises:
        InputError: an unknown backbone, weights that cannot be had.
    """
    if name == "combined":
        name, spectral = COMBINED_BACKBONE, True
    if name in FEATURIZERS and name != DEFAULT_KIND:
        return featurizer_class(name).from_meta({}).load()
    factory: Any = featurizer_class("combined" if spectral else DEFAULT_KIND)
    return factory.create(name, weights, device=device)


__all__ = [
    "COMBINED_BACKBONE",
    "DEFAULT_KIND",
    "FEATURIZERS",
    "KIND_FIELD",
    "Featurizer",
    "featurizer_class",
    "featurizer_from_meta",
    "featurizer_from_model",
    "make_featurizer",
]
