"""Fine-tuning data: the train and validation splits of a chip index (or a PNG folder) as Lightning data.

:class:`ChipDataModule` reads chips straight from the source rasters in DataLoader worker processes
(:class:`ChipDataset`), augmented the way overhead imagery allows (:func:`augment_chips`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from geoclf.chips import read_batch
from geoclf.features import load_chip_table
from geoclf.finetune.network import check_bands, check_choice
from geoclf.training import class_groups, class_order
from tiling.errors import InputError
from tiling.index import index_scheme, read_index
from tiling.io import ChipReader, describe_naip

PathLike = str | os.PathLike[str]

#: Class counts further apart than this ratio (largest / smallest, train split) get balanced class weights
#: when ``class_weights="auto"``.
UNBALANCED_RATIO = 1.5


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
        bands: 1-based bands to read: ``(1, 2, 3)`` or ``(1, 2, 3, 4)`` (not from PNG chips, which are RGB);
            default (``None``) all four when every source raster has four bands (RGB + NIR), else RGB.
        size: chip side in pixels (default: the index's chip size).
        augment: augment training chips (:func:`augment_chips`); validation chips never are.
        jitter: colour jitter strength.
        min_chips_per_class: fewest training chips a class may have.

    Raises:
        InputError: an unlabelled index, no training or validation chips, a validation class absent from
            training, a class with too few training chips, NIR asked of PNG chips.
    """

    def __init__(self, chips: PathLike, batch_size: int = 32, num_workers: int | None = None,
                 bands: Sequence[int] | None = None, size: int | None = None, augment: bool = True,
                 jitter: float = 0.1, min_chips_per_class: int = 10) -> None:
        super().__init__()
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, not {batch_size}")
        self.batch_size = int(batch_size)
        self.num_workers = default_num_workers() if num_workers is None else int(num_workers)
        self.augment = augment
        self.jitter = float(jitter)
        table, self.source = load_chip_table(chips)
        where = self.source.get("path", os.fspath(chips))
        attrs = _index_attrs(self.source)
        self.bands = check_bands(imagery_bands(table, self.source) if bands is None else bands)
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


def imagery_bands(table: pd.DataFrame, source: Mapping[str, Any]) -> tuple[int, ...]:
    """The bands a model reads from these chips by default: RGB + NIR when every source raster has four
    image bands (an alpha band is not one), else RGB; RGB for PNG chips."""
    if source.get("kind") != "index" or "source" not in table.columns or table.empty:
        return (1, 2, 3)
    counts = [describe_naip(path).count for path in table["source"].dropna().unique()]
    return (1, 2, 3, 4) if counts and min(counts) >= 4 else (1, 2, 3)


def _index_attrs(source: Mapping[str, Any]) -> dict[str, Any]:
    """The ``geoclf`` attributes stored with a chip index (classes, tiling parameters); empty for PNGs."""
    if source.get("kind") != "index":
        return {}
    return dict(read_index(source["path"]).attrs.get("geoclf") or {})


def _chip_size(table: pd.DataFrame, attrs: Mapping[str, Any]) -> int:
    """The chip size the index was tiled at, else its windows' (or the first PNG's) side."""
    size = (attrs.get("params") or {}).get("chip_size")
    if size:
        return int(size)
    if "width" in table.columns:
        return int(table["width"].mode().iloc[0])
    with Image.open(table["path"].iloc[0]) as image:
        return int(image.size[0])


__all__ = ["UNBALANCED_RATIO", "ChipDataModule", "ChipDataset", "augment_chips", "default_num_workers",
           "imagery_bands"]
