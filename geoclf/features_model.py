"""The ``features`` model kind: chips -> a featurizer -> a scikit-learn classifier -> class probabilities.

What ``geoclf train`` and ``geoclf sweep`` save (:func:`save_features_model`) and scoring loads
(:class:`FeaturesModel`, through :func:`geoclf.models.load_model`). The artifact holds ``model.json`` and
the classifier as a skops file (``classifier.skops``), loaded with geoclf's type allowlist
(:func:`geoclf.artifact.load_skops`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geoclf.artifact import (
    MODEL_JSON,
    TRUSTED_SKOPS_TYPES,
    LandUseModel,
    PathLike,
    check_fields,
    check_file,
    file_checksum,
    import_skops_io,
    is_mapping,
    list_of,
    load_skops,
    nonempty_text,
    optional,
    positive_number,
    whole_number,
    write_model_dir,
)
from geoclf.featurizers import (
    DEFAULT_KIND,
    KIND_FIELD,
    Featurizer,
    featurizer_from_meta,
    featurizer_from_model,
)
from geoclf.featurizers.exported import on_runtime
from geoclf.runtime import check_model_runtime
from tiling.errors import InputError

#: Classifier file of a ``features`` artifact.
CLASSIFIER_FILE = "classifier.skops"

#: The ``model.json`` fields of this kind beyond the common ones, as :func:`geoclf.artifact.check_fields` takes them.
FIELDS = {
    "backbone": (nonempty_text, "a backbone name"),
    "weights": (optional(lambda v: isinstance(v, str)), "a weights reference or null"),
    "weights_ref": (optional(lambda v: is_mapping(v) and optional(nonempty_text)(v.get("sha256"))),
                    "a mapping (with sha256 a string) or null"),
    "feature_dim": (whole_number(1), "the length of a feature vector"),
    "normalization": (lambda v: is_mapping(v) and list_of(positive_number)(v.get("std"))
                      and list_of(lambda m: isinstance(m, int | float) and not isinstance(m, bool))(v.get("mean"))
                      and len(v["mean"]) == len(v["std"]) and optional(whole_number(1, 8192))(v.get("input_size")),
                      "a mapping of mean and std (lists of numbers, std above 0, as long as each other) and "
                      "input_size (pixels or null)"),
    "classifier": (optional(lambda v: is_mapping(v) and optional(nonempty_text)(v.get("file"))
                            and optional(nonempty_text)(v.get("sha256"))), "a mapping of file and sha256, or null"),
}


class FeaturesModel(LandUseModel):
    """A ``features`` model: a featurizer's vector (a CNN backbone's penultimate layer), then a classifier.

    The featurizer is the one the training features were computed with, rebuilt from ``model.json``
    (:func:`geoclf.featurizers.featurizer_from_model`): chips are featurized by the same code and
    description as ``geoclf featurize`` used. It is built only when chips are first predicted (or at
    :meth:`prepare`), so reading metadata or classifying precomputed features never imports torch.

    Args:
        spec: ``model.json`` content.
        classifier: fitted scikit-learn estimator (a ``Pipeline`` of scaling and classifier) on feature
            vectors; its ``classes_`` must be the model's classes.
        path: artifact directory, if loaded from one.
        device, batch_size: see :class:`LandUseModel`.
    """

    kind = "features"

    def __init__(self, spec: Mapping[str, Any], classifier: Any, path: Path | None = None,
                 device: str | None = None, batch_size: int = 32) -> None:
        super().__init__(spec, path, device, batch_size)
        self.classifier = classifier
        learned = [str(c) for c in classifier.classes_]
        missing = sorted(set(self.classes) ^ set(learned))
        if missing:
            raise InputError(f"model.json classes {self.classes} differ from the classifier's {learned}",
                             path)
        # sklearn orders classes_ alphabetically; the artifact promises scheme order
        self._columns = np.array([learned.index(c) for c in self.classes])
        self._featurizer: Featurizer | None = None

    @property
    def feature_dim(self) -> int:
        """Length of the feature vector, the classifier's input."""
        return int(self.spec["feature_dim"])

    @property
    def featurizer(self) -> Featurizer:
        """The featurizer of the training features, as ``model.json`` describes it, on :attr:`device`."""
        if self._featurizer is None:
            featurizer = featurizer_from_model(self.spec)
            if self.path is not None:  # the files it names (weights) are the artifact's own
                featurizer = featurizer.located(self.path)
            if tuple(featurizer.bands) != tuple(self.bands):
                raise InputError(f"model.json bands {self.bands} differ from its featurizer's "
                                 f"{list(featurizer.bands)}", self.path)
            featurizer.device = self.device
            self._featurizer = featurizer
        return self._featurizer

    def use_runtime(self, runtime: str = "torch", precision: str = "auto",
                    threads: int | None = None) -> FeaturesModel:
        """Run the featurizer's network on an inference runtime (see
        :meth:`geoclf.artifact.LandUseModel.use_runtime`): ``"openvino"`` runs the export recorded in
        ``model.json`` (:class:`geoclf.featurizers.exported.ExportedCNNFeaturizer`); a combined featurizer runs
        its CNN block so and its spectral block as on torch (:func:`geoclf.featurizers.exported.on_runtime`)."""
        if not check_model_runtime(runtime, precision):
            return self
        try:
            self._featurizer = on_runtime(self.featurizer, self.path or ".", self.spec.get("export") or {},
                                          runtime=runtime, precision=precision, threads=threads)
        except InputError as exc:
            raise InputError(str(exc), self.path) from exc
        return self

    def prepare(self) -> FeaturesModel:
        """Build the featurizer's network now, checked against ``model.json`` (e.g. that its weights did
        not change since training); returns the model.

        Raises:
            InputError: the featurizer cannot be built as recorded.
        """
        try:
            self.featurizer.load()
        except InputError as exc:
            if exc.path is not None:  # already names its file
                raise
            raise InputError(str(exc), self.path) from exc
        return self

    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities from precomputed feature vectors ``(N, feature_dim)``."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise InputError(f"model {self.name!r} takes feature vectors of length {self.feature_dim} "
                             f"(backbone {self.spec.get('backbone')!r}), got shape {x.shape}")
        return self.classifier.predict_proba(x)[:, self._columns].astype(np.float32)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Most probable class names from precomputed feature vectors."""
        return self._names(self.predict_proba_features(features))

    def featurize(self, chips: np.ndarray) -> np.ndarray:
        """Feature vectors ``(N, feature_dim)`` float32 of chips, exactly as at training time."""
        chips = self.check_chips(chips)
        if len(chips) == 0:
            return np.empty((0, self.feature_dim), dtype=np.float32)
        return np.concatenate([f for f, _ in self._batches(chips, classify=False)])

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        """Class probabilities of chips: featurizer then classifier, batch by batch (bounded memory)."""
        chips = self.check_chips(chips)
        if len(chips) == 0:
            return np.empty((0, len(self.classes)), dtype=np.float32)
        return np.concatenate([p for _, p in self._batches(chips, classify=True)])

    def _batches(self, chips: np.ndarray, classify: bool) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        featurizer = self.prepare().featurizer
        for start in range(0, len(chips), self.batch_size):
            features = featurizer.featurize(chips[start:start + self.batch_size])
            yield features, (self.predict_proba_features(features) if classify else None)

    @classmethod
    def load(cls, directory: Path, spec: Mapping[str, Any], trusted: bool = False) -> FeaturesModel:
        """Load a ``features`` artifact (the :data:`LOADERS` entry for this kind)."""
        where = directory / MODEL_JSON
        kind = str(spec.get(KIND_FIELD) or DEFAULT_KIND)
        # a CNN's description is checked field by field here; other featurizers check their own description
        required = ("backbone", "feature_dim", "normalization") if kind == DEFAULT_KIND else ("feature_dim",)
        missing = [k for k in required if k not in spec]
        if missing:
            raise InputError(f"lacks {', '.join(missing)} (a features model needs them)", where)
        check_fields(spec, FIELDS if kind == DEFAULT_KIND else {k: FIELDS[k] for k in ("feature_dim", "classifier")},
                     where)
        try:
            featurizer_from_model(spec)
        except InputError as exc:
            raise InputError(str(exc), where) from exc
        path = check_file(directory, spec.get("classifier") or {}, CLASSIFIER_FILE, "classifier")
        model = cls(spec, load_skops(path, trusted=trusted), path=directory)
        _ = model.featurizer  # its description checked now (files outside the artifact refused), not at scoring
        expected = getattr(model.classifier, "n_features_in_", None)
        if expected is not None and int(expected) != model.feature_dim:
            raise InputError(f"says feature_dim {model.feature_dim}, but its classifier takes {expected} features",
                             directory / MODEL_JSON)
        return model




def save_features_model(directory: PathLike, *, classifier: Any, classes: Sequence[str], chip_size: int,
                        featurizer: Featurizer | None = None, backbone: str | None = None,
                        weights: str | None = None, feature_layer: str | None = None, feature_dim: int | None = None,
                        mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                        bands: Sequence[int] | None = None, input_size: int | None = None,
                        weights_ref: Mapping[str, Any] | None = None, name: str | None = None,
                        metrics: Mapping[str, Any] | None = None,
                        class_groups: Mapping[str, Sequence[int]] | None = None,
                        provenance: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Save a ``features`` model artifact: ``model.json`` + ``classifier.skops``.

    Args:
        directory: artifact directory to create (written atomically).
        classifier: fitted scikit-learn estimator on feature vectors (with ``classes_`` and
            ``predict_proba``).
        classes: class names in output order (scheme order); the same set as ``classifier.classes_``.
        chip_size: input side in pixels.
        featurizer: the featurizer the classifier's training features came from (as
            :func:`geoclf.featurizers.featurizer_from_meta` rebuilds it from ``features.json``); its
            description goes into ``model.json``, and scoring rebuilds it from there. Without it, a CNN
            featurizer is described by the arguments below.
        backbone: backbone name in :mod:`geoclf.backbones`' registry.
        weights: weights the features were computed with, as ``load_backbone`` takes them (``default``,
            ``imagenet``, a file path: the file is copied into the artifact, whose ``model.json`` then names
            it beside itself).
        feature_layer: layer the features were taken from.
        feature_dim: length of a feature vector.
        mean, std: per-band normalization applied to chips scaled to [0, 1].
        bands: 1-based bands read, in input order.
        input_size: network input side chips are resized to (``None``: the chip size).
        weights_ref: the backbone's description of the weights (``Backbone.weights_ref``); its ``sha256``
            is checked when the backbone is loaded for scoring, so other weights cannot slip in.
        name: model name (the run name).
        metrics: validation metrics (as :func:`geoclf.metrics.evaluation_to_json` gives).
        class_groups: NLCD codes of each class (map legends and colours), if known.
        provenance: where it came from (features directories, chip index hash, run id, seed, ...).
        overwrite: replace an existing directory.

    Returns:
        The artifact directory.
    """
    sio = import_skops_io()  # see load_skops: seconds to import, only when saving

    learned = sorted(str(c) for c in classifier.classes_)
    if sorted(classes) != learned:
        raise InputError(f"classes {list(classes)} differ from the classifier's {learned}")
    if featurizer is None:
        featurizer = featurizer_from_meta({
            "backbone": backbone, "weights": weights, "weights_ref": weights_ref, "feature_layer": feature_layer,
            "feature_dim": feature_dim, "mean": mean, "std": std, "input_size": input_size, "bands": bands})
    spec = {
        "name": name,
        "classes": [str(c) for c in classes],
        "bands": [int(b) for b in featurizer.bands],
        "chip_size": int(chip_size),
        **featurizer.describe_model(),
        "class_groups": None if class_groups is None else {str(k): [int(c) for c in v]
                                                           for k, v in class_groups.items()},
        "metrics": dict(metrics or {}),
        "provenance": dict(provenance or {}),
    }

    def write(staging: Path) -> dict[str, Any]:
        # the artifact carries the files its featurizer loads (weights of a file) and names them beside it
        described = featurizer.embed(staging).describe_model()
        path = staging / CLASSIFIER_FILE
        sio.dump(classifier, path)
        # check now, not at scoring time, that the file loads with the allowlist
        untrusted = sorted(set(sio.get_untrusted_types(file=path)) - TRUSTED_SKOPS_TYPES)
        if untrusted:
            raise InputError(f"the classifier holds types outside geoclf's allowlist ({', '.join(untrusted)}); "
                             "it could not be loaded without trusted=True")
        return {**described, "classifier": {"file": CLASSIFIER_FILE, "sha256": file_checksum(path),
                               "estimator": _describe(classifier)}}

    return write_model_dir(directory, FeaturesModel.kind, spec, write, overwrite=overwrite)


def _describe(estimator: Any) -> str:
    steps = getattr(estimator, "steps", None)
    if steps:
        return " -> ".join(type(step).__name__ for _, step in steps)
    return type(estimator).__name__





__all__ = ["CLASSIFIER_FILE", "FeaturesModel", "save_features_model"]
