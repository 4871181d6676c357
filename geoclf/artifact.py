"""The model artifact format: one directory holding everything needed to score imagery, and its contract.

A model artifact is a directory with ``model.json`` (what the model is: kind, classes, bands, chip size,
backbone, weights reference, feature layer, normalization, metrics, geoclf version) beside the files its
kind needs. Whatever its kind, it loads as a :class:`LandUseModel`; scoring code only ever uses that
contract, and finds artifacts by reference with :func:`geoclf.models.load_model`::

    model = load_model("lr-lite0")            # a directory, a run name/id, or NAME@ALIAS from the registry
    probs = model.predict_proba(chips)        # (N, len(model.bands), size, size) uint8 -> (N, C)

Kinds:
    ``features``: a featurizer + scikit-learn classifier (:class:`geoclf.features_model.FeaturesModel`).
    The classifier is stored with skops, which rebuilds objects without unpickling; on load only the types
    geoclf's own classifiers are made of are accepted (:data:`TRUSTED_SKOPS_TYPES` plus skops' defaults),
    anything else needs ``trusted=True`` (:func:`load_skops`).

    ``finetune``: a fine-tuned CNN (:class:`geoclf.finetune.model.FinetuneModel`), its weights a plain
    state dict.

    Other kinds plug in through :data:`LOADERS`: ``"kind": "module:callable"``, where the callable takes
    ``(directory, spec, trusted)`` and returns a :class:`LandUseModel`. A kind writes its directory with
    :func:`write_model_dir` so every artifact gets the same common fields and the same atomic write, and
    records the checksums of its files with :func:`file_checksum` (checked again by :func:`check_file`).

This module sits below the run history and the registry and imports neither: it knows directories only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import math
import os
import pkgutil
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from geoclf import __version__
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.io import atomic_path

#: File describing a model artifact.
MODEL_JSON = "model.json"
#: Version of the artifact layout this geoclf writes and the newest it reads.
FORMAT_VERSION = 1

#: Types geoclf's classifiers need beyond the ones skops trusts by default (scikit-learn estimators and
#: numpy arrays are trusted by skops already; a random forest's trees are not). Keep this list to types
#: geoclf itself saves: it is what stands between a downloaded artifact and arbitrary code.
TRUSTED_SKOPS_TYPES: frozenset[str] = frozenset({"sklearn.tree._tree.Tree"})

#: Artifact kind -> ``"module:callable"`` loading it, imported only when such an artifact is loaded. The
#: callable's signature is ``(directory: Path, spec: dict, trusted: bool) -> LandUseModel``.
LOADERS: dict[str, str] = {
    "features": "geoclf.features_model:FeaturesModel.load",
    "finetune": "geoclf.finetune.model:FinetuneModel.load",
}

PathLike = str | os.PathLike[str]

# Names that moved to the modules above this one, still importable from here (loaded on first use: importing
# them at the top would make this module depend on the run history, the registry and scikit-learn's side).
_MOVED = {
    "load_model": "geoclf.models",
    "resolve_model_dir": "geoclf.models",
    "FeaturesModel": "geoclf.features_model",
    "save_features_model": "geoclf.features_model",
    "CLASSIFIER_FILE": "geoclf.features_model",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

    def prepare(self) -> LandUseModel:
        """Build what :meth:`predict_proba` needs (a network) now rather than at the first chips, so that
        problems surface before any work; returns the model. Kinds that load everything at once keep this."""
        return self

    def use_runtime(self, runtime: str = "torch", precision: str = "auto",
                    threads: int | None = None) -> LandUseModel:
        """Run the model's network on an inference runtime (:mod:`geoclf.runtime`); returns the model.

        ``"openvino"`` runs the network exported into the artifact (``model.json``'s ``export``, made by
        ``geoclf models export``), after checking its SHA-256. Kinds without a network only take torch in fp32.

        Args:
            runtime: ``"torch"`` or ``"openvino"``.
            precision: ``"auto"``, ``"fp32"`` or ``"bf16"``.
            threads: the thread budget (``None``: the Dask worker's, else the runtime's default).

        Raises:
            InputError: an unknown runtime or precision, no valid export, or a kind without a network.
        """
        # the kinds with a network override this (and check the choice with geoclf.runtime, a layer above)
        if runtime != "torch" or precision not in ("auto", "fp32"):
            raise InputError(f"model kind {self.kind!r} runs on torch in fp32 only, not {runtime} {precision}",
                             self.path)
        return self

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
        import torch  # here: reading an artifact's metadata, or a model without a network, needs no torch

        if self.device is not None:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _names(self, proba: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes, dtype=object)[np.argmax(proba, axis=1)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, classes={self.classes}, path={self.path})"


#: The scikit-learn estimator names skops trusts by default (``skops.io``'s ``SKLEARN_ESTIMATOR_TYPE_NAMES``,
#: which it computes with ``sklearn.utils.all_estimators()`` when imported), recorded with the versions of
#: scikit-learn and skops they came from (tests/test_artifact.py checks them against skops' own list; rewrite
#: with ``GEOCLF_UPDATE_SKOPS_TYPES=1``).
SKOPS_SKLEARN_TYPES = Path(__file__).with_name("skops_sklearn_types.json")


def import_skops_io() -> Any:
    """``skops.io``, imported without walking every scikit-learn estimator where the versions allow.

    skops builds its default trusted list from ``sklearn.utils.all_estimators()`` when it is imported, which
    imports every scikit-learn module (and, through them, torch): 3-4 s on a quiet machine, paid by every
    command that reads a classifier. When the installed scikit-learn and skops are the versions
    :data:`SKOPS_SKLEARN_TYPES` was recorded from, ``all_estimators`` answers from that record during the import
    instead, so skops trusts exactly the names it would have computed; with other versions skops computes them.
    """
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    names = _recorded_skops_sklearn_types()
    if names is None:
        import skops.io as sio  # other versions than recorded: skops walks the estimators itself

        return sio
    import sklearn.utils

    def recorded(*_args: Any, **_kwargs: Any) -> list[tuple[str, type]]:
        # skops only reads each class's module and name (skops.io._utils.get_type_name)
        return [(name.rsplit(".", 1)[1], type(name.rsplit(".", 1)[1], (), {"__module__": name.rsplit(".", 1)[0]}))
                for name in names]

    walk = sklearn.utils.all_estimators
    sklearn.utils.all_estimators = recorded
    try:
        import skops.io as sio
    finally:
        sklearn.utils.all_estimators = walk
    return sio


def _recorded_skops_sklearn_types() -> list[str] | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        record = json.loads(SKOPS_SKLEARN_TYPES.read_text())
        installed = {"scikit-learn": version("scikit-learn"), "skops": version("skops")}
    except (OSError, ValueError, PackageNotFoundError):
        return None
    if record.get("versions") != installed:
        return None
    names = record.get("names")
    # names of scikit-learn's own classes only, as skops keeps them: a record cannot widen trust beyond sklearn
    if not isinstance(names, list) or not all(isinstance(n, str) and n.startswith("sklearn.")
                                                and all(p.isidentifier() for p in n.split(".")) for n in names):
        return None
    return names


def load_skops(path: PathLike, trusted: bool = False) -> Any:
    """Load a skops file, accepting only types geoclf's classifiers are made of unless ``trusted``.

    Raises:
        InputError: the file holds other types (listed in the message) and ``trusted`` is false.
    """
    sio = import_skops_io()  # only when loading one: skops' import is seconds even without the estimator walk

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
    check_fields(spec, COMMON_FIELDS, path)
    groups = spec.get("class_groups")
    if groups:
        if set(groups) != set(spec["classes"]):
            raise InputError(f"class_groups names {sorted(groups)}, not the classes {spec['classes']}", path)
        try:
            ClassScheme.from_mapping(groups)
        except (TypeError, ValueError) as exc:  # InputError included: codes that are not NLCD codes
            raise InputError(f"class_groups is not a class scheme ({exc})", path) from exc
    return spec


# -- checks of model.json fields: a tampered or damaged file fails on load, in one line, not later on a worker


def whole_number(low: int = 1, high: int | None = None) -> Callable[[Any], bool]:
    """Test for a whole number (not a boolean) in ``[low, high]``."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high)


def positive_number(v: Any) -> bool:
    """Test for a finite number above 0 (not a boolean)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def nonempty_text(v: Any) -> bool:
    """Test for a non-empty string."""
    return isinstance(v, str) and bool(v.strip())


def optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """``test``, or null."""
    return lambda v: v is None or test(v)


def list_of(test: Callable[[Any], bool], unique: bool = False) -> Callable[[Any], bool]:
    """Test for a non-empty list whose items all pass ``test`` (and are distinct, with ``unique``)."""
    def check(v: Any) -> bool:
        return (isinstance(v, list) and bool(v) and all(test(item) for item in v)
                and (not unique or len({json.dumps(item) for item in v}) == len(v)))
    return check


def is_mapping(v: Any) -> bool:
    """Test for a JSON object."""
    return isinstance(v, dict)


#: What every kind's ``model.json`` fields must be: name -> (test, the expectation in words).
COMMON_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": (nonempty_text, "a kind name"),
    "name": (optional(lambda v: isinstance(v, str)), "a string or null"),
    "classes": (list_of(nonempty_text, unique=True), "a list of distinct class names"),
    "bands": (list_of(whole_number(1), unique=True), "a list of distinct band numbers (1 R, 2 G, 3 B, 4 NIR)"),
    "chip_size": (whole_number(1, 8192), "a chip side in pixels (1-8192)"),
    "chip_size_m": (optional(positive_number), "a chip side in metres or null"),
    "class_groups": (optional(is_mapping), "a mapping of class names to NLCD codes, or null"),
    "metrics": (optional(is_mapping), "a mapping or null"),
    "provenance": (optional(lambda v: is_mapping(v) and optional(positive_number)(v.get("chip_size_m"))),
                   "a mapping (with chip_size_m a number or null) or null"),
}


def check_fields(spec: Mapping[str, Any], fields: Mapping[str, tuple[Callable[[Any], bool], str]],
                 path: PathLike) -> None:
    """Check ``model.json`` fields: every field present must pass its test (required ones are checked for
    presence by the caller).

    Raises:
        InputError: naming the first field that does not, what it must be and what it is.
    """
    for key, (test, expected) in fields.items():
        if key in spec and not test(spec[key]):
            shown = json.dumps(spec[key], default=str)
            raise InputError(f"{key} must be {expected}, not {shown[:60]}{'...' if len(shown) > 60 else ''}", path)


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
    target = Path(directory).expanduser().resolve()
    if target.exists() and not overwrite:
        raise InputError("already exists; choose another directory or allow overwriting", target)
    missing = [k for k in ("classes", "bands", "chip_size") if k not in spec]
    if missing:
        raise InputError(f"a model description needs {', '.join(missing)}")
    with atomic_path(target, directory=True) as staging:
        extra = write_payload(staging) or {}
        document = {"format_version": FORMAT_VERSION, "kind": kind, **spec, **extra,
                    "geoclf_version": __version__, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        (staging / MODEL_JSON).write_text(json.dumps(_jsonable(document), indent=2) + "\n")
    return target


def load_model_dir(directory: PathLike, trusted: bool = False, device: str | None = None,
                   batch_size: int = 32) -> LandUseModel:
    """Load the model artifact in ``directory``, whatever its kind (through :data:`LOADERS`).

    :func:`geoclf.models.load_model` also takes run names and registry references; this takes a directory
    only, so it needs no run history (what a scoring worker calls).

    Args:
        directory: the artifact directory.
        trusted: accept a classifier file holding types outside geoclf's allowlist. Only for files whose
            origin you trust: loading them may run code.
        device: torch device for inference (default: CUDA if available, else CPU).
        batch_size: chips per forward pass.

    Raises:
        InputError: a damaged or newer artifact, an unknown kind, untrusted types.
    """
    directory = Path(directory)
    spec = read_model_json(directory)
    kind = spec["kind"]
    if kind not in LOADERS:
        raise InputError(f"model kind {kind!r} is unknown to this geoclf (known: {', '.join(sorted(LOADERS))})",
                         directory)
    loader: Callable[[Path, dict[str, Any], bool], LandUseModel] = pkgutil.resolve_name(LOADERS[kind])
    model = loader(directory, spec, trusted)
    model.device = device
    model.batch_size = int(batch_size)
    return model


def file_checksum(path: PathLike) -> str:
    """SHA-256 (hex) of a file: what ``model.json`` records for each file of an artifact."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_digest(directory: PathLike) -> str:
    """SHA-256 of a whole artifact directory: every file's path and content (``model.json`` included).

    What a scoring client checked travels with its tasks as this digest, and a worker refuses an artifact that
    no longer has it (replaced on shared storage between the client's check and the worker's load).
    """
    root = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_checksum(path)}\n".encode())
    return digest.hexdigest()


def file_inside(directory: PathLike, name: str, what: str) -> Path:
    """``directory / name``, refused unless it is a file of ``directory`` itself (what a data file may name).

    A ``model.json`` (or ``features.json``) is data: it may name files beside it, never an absolute path, a
    ``../`` path or a link that leads elsewhere, which would make loading a model read (and, for a classifier
    loaded with ``--trust``, run) whatever file the description points at.

    Args:
        directory: the artifact (or output) directory.
        name: the file name the description gives.
        what: what the file holds, for the message.

    Raises:
        InputError: ``name`` is not a plain file name, or resolves outside ``directory``.
    """
    folder = Path(directory)
    path = folder / name
    plain = name not in ("", ".", "..") and Path(name).name == name and "\\" not in name
    if not plain or not path.resolve().is_relative_to(folder.resolve()):
        raise InputError(f"names its {what} file {name!r}, which is not a file of the artifact directory; a "
                         f"{MODEL_JSON} names files beside it only", folder)
    return path


def check_file(directory: Path, entry: Mapping[str, Any], default: str, what: str) -> Path:
    """The payload file a ``model.json`` entry (``{"file": ..., "sha256": ...}``) names, checked.

    Args:
        directory: the artifact directory.
        entry: the entry (e.g. ``spec["classifier"]``); may lack ``file`` (then ``default``) and ``sha256``.
        default: the kind's file name.
        what: what the file holds, for messages (``classifier``, ``network``).

    Raises:
        InputError: the entry names a file outside the artifact directory, or the file is missing or does not
            match its recorded checksum.
    """
    path = file_inside(directory, str(entry.get("file", default)), what)
    if not path.is_file():
        raise InputError(f"model artifact lacks its {what} file {path.name}", directory)
    digest = entry.get("sha256")
    if digest and file_checksum(path) != digest:
        raise InputError(f"{path.name} does not match the checksum in {MODEL_JSON} (file changed or "
                         "truncated since it was saved)", directory)
    return path


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
