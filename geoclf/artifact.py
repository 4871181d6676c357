"""The model artifact: one directory holding everything needed to score imagery, and the one way to load it.

A model artifact is a directory with ``model.json`` (what the model is: kind, classes, bands, chip size,
backbone, weights reference, feature layer, normalization, metrics, geoclf version) beside the files its
kind needs. Scoring code only ever calls :func:`load_model` and uses the :class:`LandUseModel` contract::

    model = load_model("lr-lite0")            # a directory, or a run name/id from the run history
    probs = model.predict_proba(chips)        # (N, len(model.bands), size, size) uint8 -> (N, C)

Kinds:
    ``features``: CNN features + scikit-learn classifier (:class:`FeaturesModel`), written by
    :func:`save_features_model`. The classifier is stored with skops, which rebuilds objects without
    unpickling; on load only the types geoclf's own classifiers are made of are accepted
    (:data:`TRUSTED_SKOPS_TYPES` plus skops' defaults), anything else needs ``trusted=True``.

    ``finetune``: a fine-tuned CNN (``geoclf.finetune.FinetuneModel``), its weights a plain state dict.

    Other kinds plug in through :data:`LOADERS`: ``"kind": "module:callable"``, where the callable takes
    ``(directory, spec, trusted)`` and returns a :class:`LandUseModel`. A kind writes its directory with
    :func:`write_model_dir` so every artifact gets the same common fields and the same atomic write.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tiling.errors import InputError

#: File describing a model artifact.
MODEL_JSON = "model.json"
#: Version of the artifact layout this geoclf writes and the newest it reads.
FORMAT_VERSION = 1
#: Classifier file of a ``features`` artifact.
CLASSIFIER_FILE = "classifier.skops"

#: Types geoclf's classifiers need beyond the ones skops trusts by default (scikit-learn estimators and
#: numpy arrays are trusted by skops already; a random forest's trees are not). Keep this list to types
#: geoclf itself saves: it is what stands between a downloaded artifact and arbitrary code.
TRUSTED_SKOPS_TYPES: frozenset[str] = frozenset({"sklearn.tree._tree.Tree"})

#: Artifact kind -> ``"module:callable"`` loading it, imported only when such an artifact is loaded. The
#: callable's signature is ``(directory: Path, spec: dict, trusted: bool) -> LandUseModel``.
LOADERS: dict[str, str] = {
    "features": "geoclf.artifact:FeaturesModel.load",
    "finetune": "geoclf.finetune:FinetuneModel.load",
}

PathLike = str | os.PathLike[str]


class LandUseModel(ABC):
    """What every model artifact loads as: chips in, class probabilities out.

    Attributes:
        spec: the content of ``model.json``.
        path: the artifact directory it was loaded from (``None`` for an unsaved model).
        device: torch device for inference; ``None`` picks CUDA when available, else the CPU.
        batch_size: chips per forward pass.
    """

    #: The ``kind`` written in ``model.json``.
    kind: ClassVar[str]

    def __init__(self, spec: Mapping[str, Any], path: Path | None = None, device: str | None = None,
                 batch_size: int = 32) -> None:
        self.spec = dict(spec)
        self.path = path
        self.device = device
        self.batch_size = int(batch_size)

    @property
    def name(self) -> str:
        """The model's name (the run name it was trained under)."""
        return str(self.spec.get("name") or (self.path.name if self.path else self.kind))

    @property
    def classes(self) -> list[str]:
        """Class names, in the order of :meth:`predict_proba`'s columns."""
        return list(self.spec["classes"])

    @property
    def bands(self) -> list[int]:
        """1-based bands the model reads, in input order (1 R, 2 G, 3 B, 4 NIR)."""
        return [int(b) for b in self.spec["bands"]]

    @property
    def chip_size(self) -> int:
        """Input chip side in pixels."""
        return int(self.spec["chip_size"])

    @property
    def chip_size_m(self) -> float | None:
        """Ground side of the training chips in metres, when known: scoring cuts chips of that size (and
        resamples them to :attr:`chip_size` pixels), so imagery of another resolution sees the same scale."""
        value = self.spec.get("chip_size_m") or self.spec.get("provenance", {}).get("chip_size_m")
        return float(value) if value else None

    @property
    def class_groups(self) -> dict[str, list[int]] | None:
        """NLCD codes of each class, when known (map legends and colours)."""
        groups = self.spec.get("class_groups")
        return {str(k): [int(c) for c in v] for k, v in groups.items()} if groups else None

    @property
    def metrics(self) -> dict[str, Any]:
        """Validation metrics recorded when the model was trained."""
        return dict(self.spec.get("metrics") or {})

    @abstractmethod
    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        """Class probabilities of chips.

        Args:
            chips: ``(N, len(bands), chip_size, chip_size)`` uint8.

        Returns:
            ``(N, len(classes))`` float32, rows summing to 1, columns in :attr:`classes` order.
        """

    def predict(self, chips: np.ndarray) -> np.ndarray:
        """Most probable class name of each chip, as an ``(N,)`` object array."""
        return self._names(self.predict_proba(chips))

    def check_chips(self, chips: np.ndarray) -> np.ndarray:
        """Validate a chip batch against the model's bands and size; returns it as a numpy array."""
        array = np.asarray(chips)
        expected = (len(self.bands), self.chip_size, self.chip_size)
        if array.ndim != 4 or array.shape[1:] != expected:
            raise InputError(f"model {self.name!r} takes chips of shape (N, {', '.join(map(str, expected))}), "
                             f"got {array.shape}")
        if array.dtype != np.uint8:
            raise InputError(f"model {self.name!r} takes uint8 chips, got {array.dtype}")
        return array

    def torch_device(self) -> Any:
        """The torch device inference runs on (see :attr:`device`)."""
        import torch

        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _names(self, proba: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes, dtype=object)[np.argmax(proba, axis=1)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, classes={self.classes}, path={self.path})"


class FeaturesModel(LandUseModel):
    """A ``features`` model: a CNN backbone's feature vector, then a scikit-learn classifier.

    The backbone is loaded (through :func:`geoclf.backbones.load_backbone`) only when chips are first
    predicted, so scoring precomputed features or reading metadata never touches torch.

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
        self._extractor: Any = None

    @property
    def feature_dim(self) -> int:
        """Length of the backbone's feature vector, the classifier's input."""
        return int(self.spec["feature_dim"])

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
        """Backbone feature vectors ``(N, feature_dim)`` float32 of chips, exactly as at training time."""
        chips = self.check_chips(chips)
        if len(chips) == 0:
            return np.empty((0, self.feature_dim), dtype=np.float32)
        return np.concatenate([f for f, _ in self._batches(chips, classify=False)])

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        """Class probabilities of chips: backbone then classifier, batch by batch (bounded memory)."""
        chips = self.check_chips(chips)
        if len(chips) == 0:
            return np.empty((0, len(self.classes)), dtype=np.float32)
        return np.concatenate([p for _, p in self._batches(chips, classify=True)])

    def _batches(self, chips: np.ndarray, classify: bool) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        import torch

        from geoclf.backbones import to_tensor

        network, device = self._network()
        norm = self.spec["normalization"]
        with torch.inference_mode():
            for start in range(0, len(chips), self.batch_size):
                batch = to_tensor(chips[start:start + self.batch_size], norm["mean"], norm["std"],
                                  size=norm.get("input_size"))
                batch = batch.to(device).contiguous(memory_format=torch.channels_last)
                features = network(batch).reshape(len(batch), -1).float().cpu().numpy()
                yield features, (self.predict_proba_features(features) if classify else None)

    def _network(self) -> tuple[Any, Any]:
        if self._extractor is None:
            import torch

            from geoclf.backbones import load_backbone

            backbone = load_backbone(self.spec["backbone"], self.spec.get("weights") or "default")
            if int(backbone.feature_dim) != self.feature_dim:
                raise InputError(f"backbone {self.spec['backbone']!r} gives {backbone.feature_dim} features, "
                                 f"the classifier was trained on {self.feature_dim}", self.path)
            trained = (self.spec.get("weights_ref") or {}).get("sha256")
            loaded = (backbone.weights_ref or {}).get("sha256")
            if trained and loaded and trained != loaded:
                # other weights give other features: the classifier's predictions would be meaningless
                raise InputError(f"backbone weights {self.spec.get('weights')!r} now resolve to another file "
                                 f"(sha256 {loaded[:12]}...) than the classifier was trained on "
                                 f"({trained[:12]}...)", self.path)
            device = self.torch_device()
            network = backbone.feature_extractor().eval().to(device, memory_format=torch.channels_last)
            self._extractor = (network, device)
        return self._extractor

    @classmethod
    def load(cls, directory: Path, spec: Mapping[str, Any], trusted: bool = False) -> FeaturesModel:
        """Load a ``features`` artifact (the :data:`LOADERS` entry for this kind)."""
        entry = spec.get("classifier") or {}
        path = directory / str(entry.get("file", CLASSIFIER_FILE))
        if not path.is_file():
            raise InputError(f"model artifact lacks its classifier file {path.name}", directory)
        digest = entry.get("sha256")
        if digest and _sha256(path) != digest:
            raise InputError(f"{path.name} does not match the checksum in {MODEL_JSON} (file changed or "
                             "truncated since it was saved)", directory)
        return cls(spec, load_skops(path, trusted=trusted), path=directory)


def load_skops(path: PathLike, trusted: bool = False) -> Any:
    """Load a skops file, accepting only types geoclf's classifiers are made of unless ``trusted``.

    Raises:
        InputError: the file holds other types (listed in the message) and ``trusted`` is false.
    """
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # skops raises zipfile/json/key errors on damaged files; one message
        raise InputError(f"cannot be read as a skops file ({type(exc).__name__}: {exc})", path) from exc
    unknown = sorted(set(untrusted) - TRUSTED_SKOPS_TYPES)
    if unknown and not trusted:
        raise InputError(f"holds types geoclf does not trust: {', '.join(unknown)}. Loading them could run "
                         "code from the file; load it with trusted=True (CLI: --trust) only if you trust "
                         "where it came from", path)
    return sio.load(path, trusted=list(untrusted))


def load_model(ref: PathLike | str, trusted: bool = False, runs_dir: PathLike | None = None,
               device: str | None = None, batch_size: int = 32) -> LandUseModel:
    """Load a model artifact, whatever its kind.

    Args:
        ref: an artifact directory (or its ``model.json``), or a run name or run id from the run history
            (the run's ``model`` artifact), or a model registry reference ``NAME@ALIAS`` / ``NAME/VERSION``
            (see :mod:`geoclf.registry`).
        trusted: accept a classifier file holding types outside geoclf's allowlist. Only for files whose
            origin you trust: loading them may run code.
        runs_dir: runs directory or tracking URI for run names (see :func:`geoclf.runs.run_store`).
        device: torch device for inference (default: CUDA if available, else CPU).
        batch_size: chips per forward pass.

    Raises:
        InputError: nothing found at ``ref``, a damaged or newer artifact, an unknown kind, untrusted types.
    """
    directory = resolve_model_dir(ref, runs_dir)
    spec = read_model_json(directory)
    kind = spec["kind"]
    if kind not in LOADERS:
        raise InputError(f"model kind {kind!r} is unknown to this geoclf (known: {', '.join(sorted(LOADERS))})",
                         directory)
    model = _import(LOADERS[kind])(directory, spec, trusted)
    model.device = device
    model.batch_size = int(batch_size)
    return model


def resolve_model_dir(ref: PathLike | str, runs_dir: PathLike | None = None) -> Path:
    """The artifact directory ``ref`` points to (see :func:`load_model`)."""
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.is_file() and path.name == MODEL_JSON:
        path = path.parent
    if path.is_dir():
        if not (path / MODEL_JSON).is_file():
            raise InputError(f"is not a model artifact (no {MODEL_JSON})", path)
        return path.resolve()
    from geoclf import registry

    if registry.is_model_ref(text):  # NAME@ALIAS or NAME/VERSION, before "/" is taken for a path
        return registry.resolve_model_ref(text, runs_dir)
    if os.sep in text or text.startswith("."):
        raise InputError("no such model directory", text)
    from geoclf import runs

    return runs.artifact_path(runs.get_run(text, runs_dir=runs_dir), runs.MODEL_ARTIFACT)


def read_model_json(directory: PathLike) -> dict[str, Any]:
    """Read and check the common fields of an artifact's ``model.json``."""
    path = Path(directory) / MODEL_JSON
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"is not a model artifact (no {MODEL_JSON})", directory) from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot be read as JSON ({exc})", path) from exc
    if not isinstance(spec, dict):
        raise InputError("is not a geoclf model description (not a JSON object)", path)
    version = spec.get("format_version")
    if not isinstance(version, int):
        raise InputError("is not a geoclf model description (no format_version)", path)
    if version > FORMAT_VERSION:
        raise InputError(f"was written by a newer geoclf (format {version}, this one reads up to "
                         f"{FORMAT_VERSION}); upgrade geoclf", path)
    missing = [k for k in ("kind", "classes", "bands", "chip_size") if k not in spec]
    if missing:
        raise InputError(f"lacks {', '.join(missing)}", path)
    return spec


def write_model_dir(directory: PathLike, kind: str, spec: Mapping[str, Any],
                    write_payload: Callable[[Path], Mapping[str, Any] | None], overwrite: bool = False) -> Path:
    """Write a model artifact directory atomically: into a temporary sibling, then renamed into place.

    Every kind writes through here, so every ``model.json`` carries ``format_version``, ``kind``,
    ``geoclf_version`` and ``created``, and a crash never leaves half an artifact under the final name.

    Args:
        directory: the artifact directory to create.
        kind: the artifact kind (a key of :data:`LOADERS`).
        spec: the kind's ``model.json`` fields (``classes``, ``bands``, ``chip_size`` at least).
        write_payload: writes the kind's files into the directory it is given; may return extra
            ``model.json`` fields (e.g. checksums of what it wrote).
        overwrite: replace an existing directory instead of refusing.

    Returns:
        The artifact directory.

    Raises:
        InputError: the directory exists and ``overwrite`` is false, or ``spec`` lacks a common field.
    """
    from geoclf import __version__

    target = Path(directory).expanduser().resolve()
    if target.exists() and not overwrite:
        raise InputError("already exists; choose another directory or allow overwriting", target)
    missing = [k for k in ("classes", "bands", "chip_size") if k not in spec]
    if missing:
        raise InputError(f"a model description needs {', '.join(missing)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        extra = write_payload(staging) or {}
        document = {"format_version": FORMAT_VERSION, "kind": kind, **spec, **extra,
                    "geoclf_version": __version__, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        (staging / MODEL_JSON).write_text(json.dumps(_jsonable(document), indent=2) + "\n")
        if target.exists():
            # move the old artifact aside first: a directory cannot be renamed over a non-empty one
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def save_features_model(directory: PathLike, *, classifier: Any, classes: Sequence[str], backbone: str,
                        weights: str | None, feature_layer: str | None, feature_dim: int,
                        mean: Sequence[float], std: Sequence[float], bands: Sequence[int], chip_size: int,
                        input_size: int | None = None, weights_ref: Mapping[str, Any] | None = None,
                        name: str | None = None, metrics: Mapping[str, Any] | None = None,
                        class_groups: Mapping[str, Sequence[int]] | None = None,
                        provenance: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Save a ``features`` model artifact: ``model.json`` + ``classifier.skops``.

    Args:
        directory: artifact directory to create (written atomically).
        classifier: fitted scikit-learn estimator on feature vectors (with ``classes_`` and
            ``predict_proba``).
        classes: class names in output order (scheme order); the same set as ``classifier.classes_``.
        backbone: backbone name in :mod:`geoclf.backbones`' registry.
        weights: weights the features were computed with, as ``load_backbone`` takes them (``default``,
            ``imagenet``, a file path).
        feature_layer: layer the features were taken from.
        feature_dim: length of a feature vector.
        mean, std: per-band normalization applied to chips scaled to [0, 1].
        bands: 1-based bands read, in input order.
        chip_size: input side in pixels.
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
    import skops.io as sio

    learned = sorted(str(c) for c in classifier.classes_)
    if sorted(classes) != learned:
        raise InputError(f"classes {list(classes)} differ from the classifier's {learned}")
    spec = {
        "name": name,
        "classes": [str(c) for c in classes],
        "bands": [int(b) for b in bands],
        "chip_size": int(chip_size),
        "backbone": backbone,
        "weights": weights,
        "weights_ref": dict(weights_ref or {}),
        "feature_layer": feature_layer,
        "feature_dim": int(feature_dim),
        "normalization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
                          "input_size": None if input_size is None else int(input_size)},
        "class_groups": None if class_groups is None else {str(k): [int(c) for c in v]
                                                           for k, v in class_groups.items()},
        "metrics": dict(metrics or {}),
        "provenance": dict(provenance or {}),
    }

    def write(staging: Path) -> dict[str, Any]:
        path = staging / CLASSIFIER_FILE
        sio.dump(classifier, path)
        # check now, not at scoring time, that the file loads with the allowlist
        untrusted = sorted(set(sio.get_untrusted_types(file=path)) - TRUSTED_SKOPS_TYPES)
        if untrusted:
            raise InputError(f"the classifier holds types outside geoclf's allowlist ({', '.join(untrusted)}); "
                             "it could not be loaded without trusted=True")
        return {"classifier": {"file": CLASSIFIER_FILE, "sha256": _sha256(path),
                               "estimator": _describe(classifier)}}

    return write_model_dir(directory, FeaturesModel.kind, spec, write, overwrite=overwrite)


def _describe(estimator: Any) -> str:
    steps = getattr(estimator, "steps", None)
    if steps:
        return " -> ".join(type(step).__name__ for _, step in steps)
    return type(estimator).__name__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _import(target: str) -> Callable[..., LandUseModel]:
    module, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def _jsonable(value: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays and paths nested in dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value
