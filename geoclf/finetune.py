"""Fine-tuning: a pretrained CNN retrained on labelled chips with PyTorch Lightning, saved as a model artifact.

Three pieces, each usable on its own:

- :class:`ChipDataModule`: the train and validation splits of a chip index (or a PNG folder), read straight
  from the source rasters by DataLoader worker processes, augmented the way overhead imagery allows.
- :class:`LandUseModule`: a backbone from :mod:`geoclf.backbones` with a new head for the land-use classes,
  trained to a chosen depth; a user can hand it to their own ``lightning.Trainer``.
- :func:`finetune` (``geoclf finetune``): both on a Trainer with early stopping, best and last
  checkpoints, resume after an interruption, the run recorded in the run history with per-epoch curves,
  and the result saved as a ``finetune`` model artifact that scoring loads exactly like a features
  classifier (:func:`geoclf.artifact.load_model`).

Retrain depths (:data:`RETRAIN_DEPTHS`):
    ``last_only``: a new head on the frozen backbone.
    ``fully_connected``: the backbone's fully connected part, :attr:`BackboneSpec.fc_modules`. For AlexNet
    that is its classifier (fc6-fc8), as in the seed study. A network with a single linear layer would
    make this a mere ``last_only``, so there it means the last convolutional stage plus the head (ResNet:
    ``layer4`` + ``fc``; MobileNetV2: ``features.17-18`` + ``classifier``).
    ``all``: every layer.

Frozen layers stay frozen: their parameters get no gradient and are not given to the optimizer, and they
run in eval mode, so batch-norm statistics learned on ImageNet do not drift towards small batches of chips
and dropout inside them stays off.

Four-band input (R, G, B, NIR): the first convolution gets a fourth input channel initialized from its RGB
filters (their mean), all four scaled by 3/4 so that activations keep their scale (:func:`extend_first_conv`).
That convolution then always trains, whatever the depth: its NIR weights are new, like the head's.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset

from geoclf import artifact
from geoclf.artifact import LandUseModel
from geoclf.backbones import DEFAULT_BACKBONE, Backbone, TrainablePart, get_spec, load_backbone, to_tensor
from geoclf.chips import iter_batches, read_batch
from geoclf.training import class_groups, class_order
from tiling.errors import InputError
from tiling.index import index_scheme
from tiling.io import ChipReader

if TYPE_CHECKING:
    from geoclf.runs import RunRecorder

PathLike = str | os.PathLike[str]

#: Retrain depth -> the part of the backbone that trains (see :meth:`geoclf.backbones.Backbone.set_trainable`).
RETRAIN_DEPTHS: dict[str, TrainablePart] = {"last_only": "head", "fully_connected": "fc", "all": "all"}

#: AdamW learning rates by depth: a new head alone takes large steps, pretrained layers need small ones.
#: SGD uses ten times these (it has no per-parameter step scaling).
DEFAULT_LR: dict[str, float] = {"last_only": 1e-3, "fully_connected": 3e-4, "all": 1e-4}

OPTIMIZERS = ("adamw", "sgd")

#: Band sets a model can read: RGB, or RGB + NIR (1-based NAIP bands; RGB first, in the order the
#: pretrained filters expect).
BAND_SETS: tuple[tuple[int, ...], ...] = ((1, 2, 3), (1, 2, 3, 4))

#: File of the network weights (a plain state dict) inside a ``finetune`` artifact.
NETWORK_FILE = "model.pt"

#: Class counts further apart than this ratio (largest / smallest, train split) get balanced class weights
#: when ``class_weights="auto"``.
UNBALANCED_RATIO = 1.5

def check_choice(value: str, valid: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``valid``, else an InputError listing them."""
    if value not in valid:
        raise InputError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


def check_bands(bands: Sequence[int]) -> tuple[int, ...]:
    """The band tuple if it is one of :data:`BAND_SETS`."""
    chosen = tuple(int(b) for b in bands)
    if chosen not in BAND_SETS:
        raise InputError(f"bands {list(chosen)} are not supported; use {' or '.join(map(str, map(list, BAND_SETS)))}")
    return chosen


# -- data ---------------------------------------------------------------------------------------------------


def augment_chips(chips: np.ndarray, rng: np.random.Generator, jitter: float = 0.1) -> np.ndarray:
    """Random symmetries of the square and mild colour jitter, chip by chip.

    Overhead imagery has no "up": each chip gets one of the 8 rotations/reflections of the square. Colour
    jitter is kept mild (brightness and contrast within ``±jitter``, a per-band gain within ``±jitter/2``)
    because colour carries the class (vegetation vs. bare soil); it mimics the differences in sun, haze and
    colour balance between NAIP acquisitions. Hue shifts are left out: they have no meaning for NIR.
    Nodata pixels (all bands 0) stay 0.

    Args:
        chips: ``(N, bands, S, S)`` uint8, square.
        rng: random generator.
        jitter: jitter strength; 0 for symmetries only.

    Returns:
        A new ``(N, bands, S, S)`` uint8 array.
    """
    out = np.empty_like(chips)
    for i, k in enumerate(rng.integers(0, 8, len(chips))):
        chip = np.rot90(chips[i], k % 4, axes=(1, 2))
        out[i] = chip[:, :, ::-1] if k >= 4 else chip
    if jitter <= 0 or len(chips) == 0:
        return out
    n, bands = out.shape[:2]
    x = out.astype(np.float32)
    valid = out.any(axis=1, keepdims=True)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    contrast = rng.uniform(1 - jitter, 1 + jitter, (n, 1, 1, 1)).astype(np.float32)
    brightness = rng.uniform(1 - jitter, 1 + jitter, (n, 1, 1, 1)).astype(np.float32)
    gain = rng.uniform(1 - jitter / 2, 1 + jitter / 2, (n, bands, 1, 1)).astype(np.float32)
    x = ((x - mean) * contrast + mean) * (brightness * gain)
    return np.where(valid, np.clip(np.rint(x), 0, 255), 0).astype(np.uint8)


class ChipDataset(Dataset):
    """Labelled chips read on demand: ``(chip uint8 (bands, S, S), class index)`` items.

    Each process (the main one or a DataLoader worker) opens its own :class:`~tiling.io.ChipReader` on first
    use and keeps its rasters open; batches are read in one call (``__getitems__``) through
    :func:`geoclf.chips.read_batch`, which also reads the PNG layout.

    Args:
        rows: chip rows (an index's window columns, or PNG ``path``), with ``label``.
        classes: class names; a row's target is its label's position here.
        bands: 1-based bands to read.
        size: chip side in pixels (windows of another size are resampled).
        augment: apply :func:`augment_chips`.
        jitter: colour jitter strength of the augmentation.
    """

    def __init__(self, rows: pd.DataFrame, classes: Sequence[str], bands: Sequence[int], size: int,
                 augment: bool = False, jitter: float = 0.1) -> None:
        self.rows = rows.reset_index(drop=True)
        lookup = {name: i for i, name in enumerate(classes)}
        self.targets = np.array([lookup[label] for label in self.rows["label"]], dtype=np.int64)
        self.bands = tuple(bands)
        self.size = int(size)
        self.augment = augment
        self.jitter = float(jitter)
        self._pid: int | None = None
        self._reader: ChipReader | None = None
        self._rng: np.random.Generator | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _state(self) -> tuple[ChipReader, np.random.Generator]:
        # keyed by process: a forked worker must not share the parent's open GDAL datasets
        if self._pid != os.getpid() or self._reader is None or self._rng is None:
            self._reader = ChipReader(self.bands, self.size)
            # torch seeds every worker differently (and from the global seed): augmentations differ
            # between workers yet repeat from run to run
            self._rng = np.random.default_rng(torch.initial_seed())
            self._pid = os.getpid()
        return self._reader, self._rng

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        reader, rng = self._state()
        chips = read_batch(self.rows.iloc[list(indices)], reader)
        if self.augment:
            chips = augment_chips(chips, rng, self.jitter)
        return [(torch.from_numpy(chip), int(t)) for chip, t in zip(chips, self.targets[list(indices)], strict=True)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getstate__(self) -> dict[str, Any]:
        # open rasters cannot be pickled (spawned workers, DDP): each process opens its own
        return {**self.__dict__, "_pid": None, "_reader": None, "_rng": None}


def default_num_workers() -> int:
    """DataLoader worker processes: one per core beyond the one training, at most 4 (8 with a GPU).

    On a CPU, reading a batch of chips costs a small fraction of a training step, so one or two workers
    keep up and more would only take cores from the step itself. A GPU steps many times faster, so it
    gets more readers.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8 if torch.cuda.is_available() else 4, cores - 1))


class ChipDataModule(L.LightningDataModule):
    """The train and validation splits of a chip index as Lightning data.

    The index is read when the module is built, so :attr:`classes`, :attr:`class_counts` and
    :attr:`chip_size` are known before a model is made. Batches are ``(chips, targets)``: chips stay uint8
    (four times less to move to a GPU than floats); :class:`LandUseModule` normalizes them on the device.

    Args:
        chips: chip index (``chips.parquet`` or its directory) or a PNG folder (``split/Class/*.png``).
        batch_size: chips per batch (per device under DDP).
        num_workers: DataLoader worker processes (default :func:`default_num_workers`); 0 reads in the
            training process.
        bands: 1-based bands to read: ``(1, 2, 3)`` or ``(1, 2, 3, 4)`` (not from PNG chips, which are RGB).
        size: chip side in pixels (default: the index's chip size).
        augment: augment training chips (:func:`augment_chips`); validation chips never are.
        jitter: colour jitter strength.
        min_chips_per_class: fewest training chips a class may have.

    Raises:
        InputError: an unlabelled index, no training or validation chips, a validation class absent from
            training, a class with too few training chips, NIR asked of PNG chips.
    """

    def __init__(self, chips: PathLike, batch_size: int = 32, num_workers: int | None = None,
                 bands: Sequence[int] = (1, 2, 3), size: int | None = None, augment: bool = True,
                 jitter: float = 0.1, min_chips_per_class: int = 10) -> None:
        super().__init__()
        from geoclf.features import load_chip_table

        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, not {batch_size}")
        self.batch_size = int(batch_size)
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        self.bands = check_bands(bands)
        self.augment = augment
        self.jitter = float(jitter)
        table, self.source = load_chip_table(chips)
        where = self.source.get("path", os.fspath(chips))
        attrs = _index_attrs(self.source)
        if self.source["kind"] == "png" and max(self.bands) > 3:
            raise InputError("PNG chips hold only the RGB bands; use the chip index for 4-band input", where)
        if "label" not in table.columns or "split" not in table.columns or table["label"].isna().all():
            raise InputError("has no labels or no train/validation split; tile it with --nlcd", where)
        table = table[table["label"].notna()]
        self.train_rows = table[table["split"] == "train"].reset_index(drop=True)
        self.val_rows = table[table["split"] == "val"].reset_index(drop=True)
        if self.train_rows.empty:
            raise InputError("has no training chips (split == 'train')", where)
        if self.val_rows.empty:
            raise InputError("has no validation chips (split == 'val'); tile it with a validation fraction "
                             "above 0 (--val-fraction)", where)
        counts = self.train_rows["label"].value_counts()
        unseen = sorted(set(self.val_rows["label"]) - set(counts.index))
        if unseen:
            raise InputError(f"class {', '.join(map(repr, unseen))} has validation chips but no training chips; "
                             "re-tile with another split seed or drop the class", where)
        # the same order and legend as a features model trained on these chips gets (geoclf.training)
        scheme = index_scheme(attrs) if self.source["kind"] == "index" else None
        self.classes: list[str] = class_order(set(counts.index), scheme)
        if len(self.classes) < 2:
            raise InputError(f"the training chips hold a single class ({self.classes[0]!r}); fine-tuning needs "
                             "two or more", where)
        few = {c: int(counts[c]) for c in self.classes if counts[c] < min_chips_per_class}
        if few:
            listed = ", ".join(f"{c} ({n})" for c, n in few.items())
            raise InputError(f"too few training chips per class (at least {min_chips_per_class} needed): {listed}; "
                             "tile a larger area, merge classes with --classes, or lower --min-chips-per-class",
                             where)
        self.class_counts: dict[str, int] = {c: int(counts[c]) for c in self.classes}
        self.class_groups: dict[str, list[int]] | None = class_groups(self.classes, scheme)
        self.chip_size = int(size) if size is not None else _chip_size(table, attrs)

    @property
    def unbalanced(self) -> bool:
        """True when training class counts differ by more than :data:`UNBALANCED_RATIO`."""
        counts = list(self.class_counts.values())
        return max(counts) > UNBALANCED_RATIO * min(counts)

    def class_weights(self) -> list[float]:
        """Balanced class weights ``n / (classes * n_class)``, in :attr:`classes` order."""
        total = sum(self.class_counts.values())
        return [total / (len(self.classes) * self.class_counts[c]) for c in self.classes]

    def dataset(self, split: str, augment: bool | None = None) -> ChipDataset:
        """The chips of ``split`` (``"train"`` or ``"val"``) as a dataset."""
        rows = {"train": self.train_rows, "val": self.val_rows}[check_choice(split, ("train", "val"), "split")]
        augment = (self.augment and split == "train") if augment is None else augment
        return ChipDataset(rows, self.classes, self.bands, self.chip_size, augment=augment, jitter=self.jitter)

    def _loader(self, dataset: ChipDataset, train: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=train, num_workers=workers,
            # a last batch of one chip breaks batch norm in train mode; one chip less per epoch is no loss
            drop_last=train and len(dataset) > self.batch_size,
            persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented training batches."""
        return self._loader(self.dataset("train"), train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, in index order, not augmented."""
        return self._loader(self.dataset("val"), train=False)

    def predict_dataloader(self) -> DataLoader:
        """The validation batches, for ``Trainer.predict``."""
        return self.val_dataloader()


def _index_attrs(source: Mapping[str, Any]) -> dict[str, Any]:
    """The ``geoclf`` attributes stored with a chip index (classes, tiling parameters); empty for PNGs."""
    if source.get("kind") != "index":
        return {}
    from tiling.index import read_index

    return dict(read_index(source["path"]).attrs.get("geoclf") or {})


def _chip_size(table: pd.DataFrame, attrs: Mapping[str, Any]) -> int:
    """The chip size the index was tiled at, else its windows' (or the first PNG's) side."""
    size = (attrs.get("params") or {}).get("chip_size")
    if size:
        return int(size)
    if "width" in table.columns:
        return int(table["width"].mode().iloc[0])
    from PIL import Image

    with Image.open(table["path"].iloc[0]) as image:
        return int(image.size[0])


# -- the network --------------------------------------------------------------------------------------------


def extend_first_conv(model: nn.Module, in_channels: int) -> str:
    """Give the network's first convolution ``in_channels`` inputs, the extra ones from its RGB filters.

    The extra channels start as the mean of the RGB filters, and every filter is then scaled by
    3/in_channels: an input whose channels are all equal gives the same response as before, so activations
    keep the scale the following (pretrained) layers expect. The layer is changed in place, keeping its
    class (e.g. timm's "same"-padding convolution).

    Returns:
        The dotted name of the convolution.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            weight = module.weight.detach()
            extra = weight.mean(dim=1, keepdim=True).expand(-1, in_channels - 3, -1, -1)
            module.weight = nn.Parameter(torch.cat([weight, extra], dim=1) * (3.0 / in_channels))
            module.in_channels = in_channels
            return name
    raise InputError(f"the network has no 3-channel convolution to extend to {in_channels} bands")


def build_network(backbone: str, num_classes: int, bands: Sequence[int], weights: Any = "default") -> tuple[
        Backbone, str | None]:
    """A backbone with a new ``num_classes`` head and, for 4 bands, an extended first convolution.

    Returns:
        The backbone (its ``model`` is the network) and the name of the extended convolution, if any.
    """
    loaded = load_backbone(backbone, weights)
    loaded.replace_head(num_classes)
    first_conv = extend_first_conv(loaded.model, len(bands)) if len(bands) > 3 else None
    loaded.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return loaded, first_conv


def normalization(backbone: Backbone, bands: Sequence[int]) -> tuple[list[float], list[float]]:
    """Per-band mean and std of [0, 1] input: the weights' RGB values, and for NIR the mean of those.

    NAIP's NIR has no ImageNet statistics; the RGB average keeps it on the same scale as the other inputs
    without tying the model to one survey's statistics.
    """
    mean, std = [float(v) for v in backbone.mean], [float(v) for v in backbone.std]
    extra = len(bands) - len(mean)
    return mean + [float(np.mean(mean))] * extra, std + [float(np.mean(std))] * extra


class LandUseModule(L.LightningModule):
    """A backbone fine-tuned to land-use classes, as a LightningModule.

    Batches are ``(chips uint8 (N, bands, S, S), targets)`` as :class:`ChipDataModule` yields them; chips
    are normalized on the device (:meth:`normalize`), exactly as the saved artifact's ``predict_proba``
    does. Logged per epoch: ``train_loss``, ``train_error`` and ``val_loss``, ``val_error`` (errors in %).

    Args:
        backbone: backbone name (:mod:`geoclf.backbones`).
        classes: land-use class names, in output order.
        retrain: a key of :data:`RETRAIN_DEPTHS`.
        weights: backbone weights to start from (see :func:`geoclf.backbones.load_backbone`). When loading a
            checkpoint, ``LandUseModule.load_from_checkpoint(path, weights="none")`` skips loading
            pretrained weights the checkpoint overwrites anyway.
        bands: ``(1, 2, 3)`` or ``(1, 2, 3, 4)``.
        lr: peak learning rate (default :data:`DEFAULT_LR`, ten times that for SGD).
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum 0.9, Nesterov).
        weight_decay: default 0.05 for AdamW, 1e-4 for SGD; never applied to biases and norm layers.
        label_smoothing: of the training loss.
        class_weights: per-class loss weights in ``classes`` order, or ``None``.
        warmup: share of the training steps with a linear warm-up, before a cosine decay.
        input_size: network input side; chips are resized to it (``None``: chips as they are, which
            pretrained CNNs accept at any size down to ~32 px thanks to global pooling).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, classes: Sequence[str] = (), retrain: str = "last_only",
                 weights: str = "default", bands: Sequence[int] = (1, 2, 3), lr: float | None = None,
                 optimizer: str = "adamw", weight_decay: float | None = None, label_smoothing: float = 0.1,
                 class_weights: Sequence[float] | None = None, warmup: float = 0.05,
                 input_size: int | None = None) -> None:
        super().__init__()
        check_choice(retrain, list(RETRAIN_DEPTHS), "retrain depth")
        check_choice(optimizer, OPTIMIZERS, "optimizer")
        bands = check_bands(bands)
        classes = [str(c) for c in classes]
        if len(classes) < 2:
            raise InputError(f"fine-tuning needs at least two classes, got {classes}")
        if class_weights is not None and len(class_weights) != len(classes):
            raise InputError(f"{len(class_weights)} class weights for {len(classes)} classes")
        if not 0 <= label_smoothing < 1:
            raise InputError(f"label smoothing must be in [0, 1), not {label_smoothing}")
        # plain types only: the hyperparameters go into checkpoints read with torch.load(weights_only=True)
        self.save_hyperparameters({
            "backbone": backbone, "classes": classes, "retrain": retrain, "weights": str(weights),
            "bands": list(bands), "lr": lr, "optimizer": optimizer, "weight_decay": weight_decay,
            "label_smoothing": float(label_smoothing),
            "class_weights": None if class_weights is None else [float(w) for w in class_weights],
            "warmup": float(warmup), "input_size": input_size})
        loaded, first_conv = build_network(backbone, len(classes), bands, weights)
        self.backbone_spec = loaded.spec
        self.weights_ref: dict[str, Any] = dict(loaded.weights_ref)
        self.first_conv = first_conv
        self.network = loaded.model
        loaded.set_trainable(RETRAIN_DEPTHS[retrain])
        roots = {"head": [loaded.spec.head], "fc": list(loaded.spec.fc_modules), "all": [""]}[
            RETRAIN_DEPTHS[retrain]]
        if first_conv is not None:
            self.network.get_submodule(first_conv).requires_grad_(True)
            roots.append(first_conv)
        self.trained_modules: tuple[str, ...] = tuple(roots)
        self.mean, self.std = normalization(loaded, bands)
        # (x / 255 - mean) / std as one multiply-add, with the same constants as backbones.to_tensor
        self.register_buffer("_scale", torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("_shift", torch.tensor([m / s for m, s in zip(self.mean, self.std, strict=True)]
                                                    ).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_class_weight", None if class_weights is None else torch.tensor(
            [float(w) for w in class_weights]), persistent=False)
        self.train()

    # -- parameters and modes --

    @property
    def classes(self) -> list[str]:
        """Class names in output order."""
        return list(self.hparams["classes"])

    @property
    def bands(self) -> list[int]:
        """1-based bands the network reads."""
        return list(self.hparams["bands"])

    @property
    def trainable_params(self) -> int:
        """Number of parameters that train."""
        return sum(p.numel() for p in self.network.parameters() if p.requires_grad)

    @property
    def total_params(self) -> int:
        """Number of parameters of the network."""
        return sum(p.numel() for p in self.network.parameters())

    def _is_trained(self, name: str) -> bool:
        return any(root == "" or name == root or name.startswith(root + ".") for root in self.trained_modules)

    def train(self, mode: bool = True) -> LandUseModule:
        """Set train/eval mode; the frozen part of the network stays in eval mode (BN statistics, dropout)."""
        super().train(mode)
        if mode:
            for name, module in self.network.named_modules():
                if not self._is_trained(name):
                    # one flag per module, not module.eval(), which would also reach trained children
                    module.training = False
        return self

    # -- computation --

    def normalize(self, chips: torch.Tensor) -> torch.Tensor:
        """uint8 chips ``(N, bands, S, S)`` -> the network's normalized float input (channels_last)."""
        x = chips.float()
        size = self.hparams["input_size"]
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=min(x.shape[-2:]) > size)
        return (x * self._scale - self._shift).contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of normalized input."""
        return self.network(x)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalize chips on the device they were moved to."""
        if isinstance(batch, list | tuple):
            return (self.normalize(batch[0]), *batch[1:])
        return self.normalize(batch)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], prefix: str) -> torch.Tensor:
        x, y = batch
        logits = self(x).float()
        if prefix == "train":
            loss = F.cross_entropy(logits, y, weight=self._class_weight,
                                   label_smoothing=self.hparams["label_smoothing"])
        else:  # plain cross-entropy: comparable across runs whatever their smoothing and weights
            loss = F.cross_entropy(logits, y)
        error = (logits.argmax(dim=1) != y).float().mean() * 100.0
        # epoch values are means weighted by batch size: exact over the epoch; sync_dist averages ranks
        self.log(f"{prefix}_loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log(f"{prefix}_error", error, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of one training batch."""
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Loss and error of one validation batch."""
        self._step(batch, "val")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Class probabilities of a batch."""
        x = batch[0] if isinstance(batch, list | tuple) else batch
        return torch.softmax(self(x).float(), dim=1)

    def configure_optimizers(self) -> Any:
        """AdamW (or SGD) on the trainable parameters, linear warm-up then cosine decay per step."""
        hp = self.hparams
        sgd = hp["optimizer"] == "sgd"
        lr = hp["lr"] or DEFAULT_LR[hp["retrain"]] * (10 if sgd else 1)
        decay = hp["weight_decay"] if hp["weight_decay"] is not None else (1e-4 if sgd else 0.05)
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        # weight decay shrinks weights towards 0; biases and norm scales have no reason to shrink
        groups = [{"params": [p for p in trainable if p.ndim > 1], "weight_decay": decay},
                  {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        optimizer = (torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True) if sgd
                     else torch.optim.AdamW(groups, lr=lr))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp["warmup"] * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))  # down to 1% of the peak

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# -- run history --------------------------------------------------------------------------------------------


class EpochHistory(L.Callback):
    """Per-epoch curves: train loss, train error %, validation loss and error %, epoch duration, samples/s.

    Kept in :attr:`history` (and in checkpoints, so a resumed run has the whole curve) and, with a
    recorder, logged to the run history with ``step`` = epoch number (1-based). ``samples_per_second``
    counts training chips over the time from the start of the epoch to its last training batch, data
    waits included: the throughput the whole pipeline reached. ``epoch_seconds`` includes validation.

    Args:
        recorder: the run to log into (only on the global-zero process), or ``None``.
    """

    def __init__(self, recorder: RunRecorder | None = None) -> None:
        self.recorder = recorder
        self.history: list[dict[str, float]] = []
        self._logged = 0
        self._start = self._last = 0.0
        self._samples = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the epoch's clock (and log the epochs a resumed run restored from its checkpoint)."""
        self._flush(trainer)
        self._start = self._last = time.perf_counter()
        self._samples = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Count the batch's chips."""
        self._samples += len(batch[1])
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the epoch (this runs before the checkpoint of the epoch is written, so it holds it)."""
        metrics = trainer.callback_metrics
        train_seconds = max(self._last - self._start, 1e-9)
        entry = {"epoch": trainer.current_epoch + 1, "global_step": int(trainer.global_step),
                 "epoch_seconds": time.perf_counter() - self._start,
                 "samples_per_second": self._samples * trainer.world_size / train_seconds}
        for key in ("train_loss", "train_error", "val_loss", "val_error"):
            if key in metrics:
                entry[key] = float(metrics[key])
        optimizers = trainer.optimizers
        if optimizers:
            entry["lr"] = float(optimizers[0].param_groups[0]["lr"])
        self.history.append(entry)
        self._flush(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log what is left (a run resumed after its last epoch trains no epoch, yet has its curves)."""
        self._flush(trainer)

    def _flush(self, trainer: L.Trainer) -> None:
        if self.recorder is None or not trainer.is_global_zero:
            return
        for entry in self.history[self._logged:]:
            values = {k: v for k, v in entry.items() if k not in ("epoch", "global_step")}
            self.recorder.log_metrics(values, step=int(entry["epoch"]))
        self._logged = len(self.history)

    def state_dict(self) -> dict[str, Any]:
        """The curves so far (saved in checkpoints)."""
        return {"history": [dict(e) for e in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the curves of a resumed run; they are logged to its new run record."""
        self.history = [dict(e) for e in state_dict.get("history", [])]
        self._logged = 0


# -- the model artifact -------------------------------------------------------------------------------------


class FinetuneModel(LandUseModel):
    """A ``finetune`` model artifact: a fine-tuned CNN, chips in, class probabilities out.

    Chips are normalized with :func:`geoclf.backbones.to_tensor` using the artifact's normalization, the
    same arithmetic :meth:`LandUseModule.normalize` applied in training.

    Args:
        spec: ``model.json`` content.
        network: the fine-tuned network (logits out).
        path: artifact directory, if loaded from one.
        device, batch_size: see :class:`geoclf.artifact.LandUseModel`.
    """

    kind = "finetune"

    def __init__(self, spec: Mapping[str, Any], network: nn.Module, path: Path | None = None,
                 device: str | None = None, batch_size: int = 32) -> None:
        super().__init__(spec, path, device, batch_size)
        self.network = network.eval()
        self._device: torch.device | None = None

    def predict_proba(self, chips: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)`` float32 of uint8 chips ``(N, len(bands), chip_size, chip_size)``."""
        chips = self.check_chips(chips)
        out = np.empty((len(chips), len(self.classes)), dtype=np.float32)
        norm = self.spec["normalization"]
        device = self.torch_device()
        if self._device != device:
            self.network.to(device)
            self._device = device
        with torch.inference_mode():
            for start in range(0, len(chips), self.batch_size):
                batch = to_tensor(chips[start:start + self.batch_size], norm["mean"], norm["std"],
                                  rgb=range(chips.shape[1]), size=norm.get("input_size"))
                logits = self.network(batch.to(device)).float()
                out[start:start + len(batch)] = torch.softmax(logits, dim=1).cpu().numpy()
        return out

    @classmethod
    def load(cls, directory: Path, spec: Mapping[str, Any], trusted: bool = False) -> FinetuneModel:
        """Load a ``finetune`` artifact (its :data:`geoclf.artifact.LOADERS` entry).

        The weights are a plain state dict read with ``torch.load(weights_only=True)``: no code runs on
        load, so ``trusted`` changes nothing here.
        """
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
        return cls(spec, loaded.model, path=directory)


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


# -- the fine-tuning run ------------------------------------------------------------------------------------


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced.

    Attributes:
        name: run name.
        run_id: run id in the run history (``None`` when not recorded).
        artifact_dir: the model artifact (the run's ``model`` artifact when recorded, else ``out/model``).
        out_dir: the fine-tune's working directory (checkpoints, a copy of the artifact).
        best_checkpoint, last_checkpoint: Lightning checkpoints (lowest validation loss; last epoch).
        classes: class names in output order.
        evaluation: :func:`geoclf.metrics.evaluate` result of the best checkpoint on the validation split.
        history: one dict per epoch (see :class:`EpochHistory`).
        epochs: epochs completed (including those before a resume).
        global_step: optimizer steps taken.
        best_epoch: epoch of the best checkpoint.
        stopped_early: early stopping ended the run before ``epochs``.
        trainable_params, total_params: parameters trained, and in the network.
    """

    name: str
    run_id: str | None
    artifact_dir: Path
    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    classes: list[str]
    evaluation: dict[str, Any]
    history: list[dict[str, float]] = field(repr=False)
    epochs: int
    global_step: int
    best_epoch: int | None
    stopped_early: bool
    trainable_params: int
    total_params: int


def default_out_dir(name: str, runs_dir: PathLike | None = None) -> Path:
    """Working directory of a fine-tune: ``<runs directory>/finetune/<name>`` (``./finetune/<name>`` when
    runs go to a tracking server)."""
    from geoclf.runs import run_store

    base = run_store(runs_dir).directory or Path.cwd()
    return base / "finetune" / name


def read_checkpoint_hparams(path: PathLike) -> dict[str, Any]:
    """The hyperparameters stored in a :class:`LandUseModule` checkpoint (loaded without running code)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle/zip/runtime errors: one message
        raise InputError(f"cannot be read as a Lightning checkpoint ({type(exc).__name__})", path) from exc
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    if not isinstance(hparams, Mapping) or "backbone" not in hparams:
        raise InputError("is not a geoclf fine-tuning checkpoint (no backbone in its hyperparameters)", path)
    return dict(hparams)


def check_checkpoint(path: PathLike, module: LandUseModule) -> None:
    """Refuse to resume from a checkpoint of another backbone, depth, class list or band set."""
    stored = read_checkpoint_hparams(path)
    for key, what in (("backbone", "backbone"), ("retrain", "retrain depth"), ("classes", "classes"),
                      ("bands", "bands")):
        if _plain(stored.get(key)) != _plain(module.hparams[key]):
            raise InputError(f"is a checkpoint of {what} {stored.get(key)!r}, not {module.hparams[key]!r}; "
                             "resume with the settings it was trained with, or start a new run", path)


def check_input_size(module: LandUseModule, chip_size: int) -> None:
    """Refuse chips too small for the network (e.g. AlexNet's pooling below 63 px) with advice, not a
    traceback from deep inside the first training step."""
    size = module.hparams["input_size"] or chip_size
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(1, len(module.bands), size, size).contiguous(memory_format=torch.channels_last))
    except RuntimeError as exc:
        raise InputError(f"{chip_size} px chips are too small for {module.hparams['backbone']} "
                         f"({str(exc).strip().splitlines()[0]}); resize them with --input-size (e.g. 224) or "
                         "tile larger chips") from exc
    finally:
        module.train(was_training)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _resume_path(resume: PathLike | None, checkpoints: Path) -> Path | None:
    if resume is None:
        return None
    if os.fspath(resume) in ("last", "best"):
        path = checkpoints / f"{os.fspath(resume)}.ckpt"
        if not path.is_file():
            raise InputError(f"no {os.fspath(resume)} checkpoint to resume from (looked for {path}); check --name "
                             "and --out")
        return path
    path = Path(resume).expanduser()
    if not path.is_file():
        raise InputError("no such checkpoint", path)
    return path


def _is_global_zero() -> bool:
    # Lightning sets this from the launcher's environment (RANK/LOCAL_RANK) on import, before a Trainer exists
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def evaluate_model(model: LandUseModel, rows: pd.DataFrame, batch_size: int = 64) -> dict[str, Any]:
    """Score a model artifact on labelled chip rows through its ``predict_proba``, as scoring would."""
    from geoclf.metrics import evaluate

    predictions = []
    with ChipReader(model.bands, model.chip_size) as reader:
        for _, chips in iter_batches(rows, reader, batch_size):
            predictions.append(model.predict(chips))
    return evaluate(rows["label"].to_numpy(), np.concatenate(predictions), model.classes)


def finetune(chips: PathLike, *, backbone: str = DEFAULT_BACKBONE, retrain: str = "last_only", epochs: int = 10,
              name: str | None = None, weights: str = "default", batch_size: int = 32, lr: float | None = None,
              optimizer: str = "adamw", weight_decay: float | None = None, label_smoothing: float = 0.1,
              class_weights: str | Sequence[float] = "auto", patience: int | None = 5,
              bands: Sequence[int] = (1, 2, 3), augment: bool = True, input_size: int | None = None,
              accelerator: str = "auto", devices: int | str = "auto", precision: str = "32-true",
              strategy: str = "auto", num_workers: int | None = None, seed: int = 0,
              resume: PathLike | None = None, out: PathLike | None = None, runs_dir: PathLike | None = None,
              record_run: bool = True, min_chips_per_class: int = 10, progress: bool = True,
              trainer_options: Mapping[str, Any] | None = None) -> FinetuneResult:
    """Fine-tune a pretrained CNN on a chip index; save, evaluate and record the model.

    Checkpoints ``best.ckpt`` (lowest validation loss) and ``last.ckpt`` (end of the latest epoch) go to
    ``out/checkpoints``; the model artifact (the best checkpoint's network) to ``out/model`` and, when
    recorded, to the run's ``model`` artifact, beside ``evaluation.json`` and the confusion matrix. The
    validation split both picks the best epoch and scores it, so the scores are slightly optimistic, as for
    any model chosen on its validation set.

    Args:
        chips: chip index (``chips.parquet`` or its directory) or a PNG folder.
        backbone: backbone name (:mod:`geoclf.backbones`).
        retrain: ``last_only``, ``fully_connected`` or ``all`` (see the module docstring).
        epochs: maximum number of epochs (in total, counting those before a resume).
        name: run name (default ``<backbone>-<retrain>``).
        weights: pretrained weights to start from (see :func:`geoclf.backbones.load_backbone`).
        batch_size: chips per batch and device.
        lr, optimizer, weight_decay, label_smoothing: see :class:`LandUseModule`.
        class_weights: ``"auto"`` (balanced weights when the training classes are unbalanced, see
            :data:`UNBALANCED_RATIO`), ``"balanced"``, ``"none"`` or explicit weights in class order.
        patience: epochs without a lower validation loss before stopping; ``None`` never stops early.
        bands: ``(1, 2, 3)`` or ``(1, 2, 3, 4)`` (RGB + NIR).
        augment: augment training chips.
        input_size: network input side (default: the chip size).
        accelerator, devices, precision, strategy: Lightning's (e.g. ``devices=8, precision="bf16-mixed"``
            on GPUs; DDP is Lightning's choice for several devices).
        num_workers: DataLoader workers (default :func:`default_num_workers`).
        seed: seed of everything random (initialization of the head, shuffling, augmentation).
        resume: ``"last"`` or ``"best"`` (this run's checkpoints) or a checkpoint path: continue that run.
        out: working directory (default :func:`default_out_dir`).
        runs_dir: runs directory or tracking URI (see :func:`geoclf.runs.run_store`).
        record_run: record the run in the run history.
        min_chips_per_class: fewest training chips per class.
        progress: show Lightning's progress bar.
        trainer_options: more ``lightning.Trainer`` arguments (e.g. ``limit_train_batches``).

    Returns:
        The result: artifact, checkpoints, evaluation, per-epoch history.

    Raises:
        InputError: unknown backbone, depth or optimizer, an index without validation chips, too few chips
            per class, a checkpoint of another backbone, an existing run directory without ``resume``.
    """
    from geoclf import runs
    from geoclf.metrics import evaluation_to_json

    check_choice(retrain, list(RETRAIN_DEPTHS), "retrain depth")
    check_choice(optimizer, OPTIMIZERS, "optimizer")
    get_spec(backbone)  # an unknown name fails here, before the index is read
    if epochs < 1:
        raise InputError(f"epochs must be at least 1, not {epochs}")
    name = name or f"{backbone}-{retrain}"
    out_dir = Path(out).expanduser() if out is not None else default_out_dir(name, runs_dir)
    checkpoints = out_dir / "checkpoints"
    resume_path = _resume_path(resume, checkpoints)
    if resume_path is None and (checkpoints / "last.ckpt").exists():
        raise InputError("holds the checkpoints of an earlier fine-tune; continue it with --resume last, or "
                         "choose another --name or --out", out_dir)

    L.seed_everything(seed, workers=True, verbose=False)
    data = ChipDataModule(chips, batch_size=batch_size, num_workers=num_workers, bands=bands, augment=augment,
                          min_chips_per_class=min_chips_per_class)
    if isinstance(class_weights, str):
        check_choice(class_weights, ("auto", "balanced", "none"), "class weights")
        use = class_weights == "balanced" or (class_weights == "auto" and data.unbalanced)
        weight_values: list[float] | None = data.class_weights() if use else None
    else:
        weight_values = [float(w) for w in class_weights]
    module = LandUseModule(backbone, data.classes, retrain=retrain, weights=weights, bands=bands, lr=lr,
                           optimizer=optimizer, weight_decay=weight_decay, label_smoothing=label_smoothing,
                           class_weights=weight_values, input_size=input_size)
    check_input_size(module, data.chip_size)
    if resume_path is not None:
        check_checkpoint(resume_path, module)

    history = EpochHistory()
    checkpoint = ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val_loss", mode="min",
                                 save_top_k=1, save_last=True, enable_version_counter=False)
    callbacks: list[L.Callback] = [history, checkpoint]
    if patience is not None:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=patience))
    steps_per_epoch = max(1, len(data.train_rows) // batch_size)
    options: dict[str, Any] = {"log_every_n_steps": min(50, steps_per_epoch), **dict(trainer_options or {})}
    trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=devices, precision=precision,
                        strategy=strategy, callbacks=callbacks, logger=False, default_root_dir=out_dir,
                        enable_progress_bar=progress, enable_model_summary=False, **options)
    params = {
        "backbone": backbone, "classifier": f"finetune/{retrain}", "retrain": retrain, "weights": weights,
        "weights_ref": module.weights_ref, "trained_modules": list(module.trained_modules),
        "trainable_params": module.trainable_params, "total_params": module.total_params,
        "bands": list(data.bands), "chip_size": data.chip_size, "input_size": input_size, "epochs": epochs,
        "batch_size": batch_size, "lr": lr or DEFAULT_LR[retrain] * (10 if optimizer == "sgd" else 1),
        "optimizer": optimizer, "weight_decay": module.hparams["weight_decay"],
        "label_smoothing": label_smoothing, "class_weights": weight_values, "patience": patience,
        "augment": augment, "seed": seed, "precision": precision, "accelerator": accelerator,
        "devices": devices, "num_workers": data.num_workers, "classes": data.classes,
        "n_train": len(data.train_rows), "n_val": len(data.val_rows), "chip_index": data.source.get("path"),
        "chip_index_sha256": data.source.get("sha256"), "out_dir": str(out_dir.resolve()),
        "resumed_from": None if resume_path is None else str(resume_path.resolve()),
    }
    run_id: str | None = None
    with contextlib.ExitStack() as stack:
        recorder = None
        if record_run and _is_global_zero():
            recorder = stack.enter_context(runs.start_run(name, "finetune", params=params, runs_dir=runs_dir))
        history.recorder = recorder
        with warnings.catch_warnings():
            # both are deliberate here: the module normalizes batches, and frozen layers run in eval mode
            warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
            trainer.fit(module, datamodule=data, ckpt_path=resume_path)
        best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else checkpoints / "last.ckpt"
        last = checkpoints / "last.ckpt"
        if not trainer.is_global_zero:  # other DDP ranks are done; rank zero evaluates and saves
            return FinetuneResult(name, None, out_dir / runs.MODEL_ARTIFACT, out_dir, best, last, data.classes, {},
                                  history.history, trainer.current_epoch, trainer.global_step, None,
                                  trainer.current_epoch < epochs, module.trainable_params, module.total_params)
        best_state = torch.load(best, map_location="cpu", weights_only=True)
        best_epoch = int(best_state.get("epoch", -1)) + 1 or None
        module.load_state_dict(best_state["state_dict"])
        module.cpu()
        provenance = {"run_id": None if recorder is None else recorder.run_id, "chip_index": data.source.get("path"),
                      "chip_index_sha256": data.source.get("sha256"), "chip_size_m": data.source.get("chip_size_m"),
                      "checkpoint": str(best.resolve()),
                      "best_epoch": best_epoch, "epochs": trainer.current_epoch, "seed": seed,
                      "n_train": len(data.train_rows), "n_val": len(data.val_rows)}
        spec = finetune_spec(module, chip_size=data.chip_size, name=name, class_groups=data.class_groups,
                             provenance=provenance)
        evaluation = evaluate_model(FinetuneModel(spec, module.network), data.val_rows, batch_size)
        local = save_finetune_model(out_dir / runs.MODEL_ARTIFACT, module, chip_size=data.chip_size, name=name,
                                    metrics=evaluation_to_json(evaluation), class_groups=data.class_groups,
                                    provenance=provenance, overwrite=True)
        artifact_dir = local
        if recorder is not None:
            recorder.log_evaluation(evaluation)
            recorder.log_metrics({"best_epoch": best_epoch or 0, "epochs_run": trainer.current_epoch})
            recorder.log_artifact_dir(local, runs.MODEL_ARTIFACT)
            run_id: str | None = recorder.run_id
    if run_id is not None:
        artifact_dir = runs.artifact_path(runs.get_run(run_id, runs_dir=runs_dir))
    return FinetuneResult(
        name=name, run_id=run_id, artifact_dir=artifact_dir, out_dir=out_dir, best_checkpoint=best,
        last_checkpoint=last, classes=data.classes, evaluation=evaluation, history=list(history.history),
        epochs=trainer.current_epoch, global_step=trainer.global_step, best_epoch=best_epoch,
        stopped_early=trainer.current_epoch < epochs, trainable_params=module.trainable_params,
        total_params=module.total_params)


__all__ = [
    "BAND_SETS",
    "DEFAULT_LR",
    "RETRAIN_DEPTHS",
    "ChipDataModule",
    "ChipDataset",
    "EpochHistory",
    "FinetuneModel",
    "FinetuneResult",
    "LandUseModule",
    "augment_chips",
    "build_network",
    "evaluate_model",
    "extend_first_conv",
    "finetune",
    "save_finetune_model",
]
