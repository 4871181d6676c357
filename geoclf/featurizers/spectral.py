"""The spectral featurizer: per-chip band statistics and NDVI, from every band of the chip, with numpy alone.

Per band (R, G, B and NIR when the imagery has it): mean, standard deviation and the 10th, 50th and 90th
percentiles of the pixels with data (a pixel is nodata when every band is 0, NAIP's collar value); with NIR
also NDVI's mean and standard deviation; optionally texture (local contrast of the brightness: the standard
deviation within 8 x 8 pixel cells, the spread of the cell means, the mean absolute gradient). Values are
reflectances scaled to [0, 1]. This is the baseline a CNN has to beat: on real 4-band NAIP these 22 numbers
and a logistic regression score higher than ImageNet features of the RGB bands (issue 13).

The statistics come from one 256-bin histogram per chip and band (chips are uint8), so percentiles are exact
and cost a ``bincount``, not a sort; bands are counted in pairs (one 65,536-bin histogram of value pairs, whose
margins are both bands'), red with NIR, whose pair values also look each pixel's NDVI up in a table of the
65,536 pairs': well under a tenth of a CNN forward pass per chip (``benchmarks/``).
This module imports neither torch nor scikit-learn: spectral features are computed, trained on and scored
without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from geoclf.featurizers import Featurizer
from tiling.errors import InputError

#: Per-band statistics, in feature order (the percentiles of the pixels with data).
BAND_STATS = ("mean", "std", "p10", "p50", "p90")
_PERCENTILES = (0.10, 0.50, 0.90)

#: Statistics of NDVI ((NIR - R) / (NIR + R)), when the featurizer reads NIR.
NDVI_STATS = ("ndvi_mean", "ndvi_std")

#: Texture of the brightness (mean of R, G, B): within-cell std, spread of cell means, mean absolute gradient.
TEXTURE_STATS = ("texture_cell_std", "texture_cell_spread", "texture_gradient")
_CELL = 8  # pixels: about a roof, a tree crown or a few crop rows at NAIP's 0.6-1 m

_BAND_NAMES = {1: "red", 2: "green", 3: "blue", 4: "nir"}
RED, NIR = 1, 4


@dataclass(eq=False)
class SpectralFeaturizer(Featurizer):
    """Band statistics of a chip (see the module docstring); no network, no torch.

    Attributes:
        bands: 1-based bands read, in input order: ``(1, 2, 3, 4)`` where the imagery has NIR, else
            ``(1, 2, 3)`` (then there is no NDVI).
        texture: also the :data:`TEXTURE_STATS`.
        feature_dim: length of the vector (follows from the bands and ``texture``).
    """

    kind: ClassVar[str] = "spectral"

    bands: tuple[int, ...] = (1, 2, 3, 4)
    texture: bool = False
    feature_dim: int = field(init=False)

    def __post_init__(self) -> None:
        self.bands = tuple(int(b) for b in self.bands)
        if not self.bands or len(set(self.bands)) != len(self.bands) or min(self.bands) < 1:
            raise InputError(f"the spectral featurizer needs distinct 1-based bands, not {list(self.bands)}")
        self.feature_dim = len(self.feature_names)

    @property
    def feature_names(self) -> list[str]:
        """Name of every feature, in vector order (e.g. ``nir_p90``, ``ndvi_mean``)."""
        names = [f"{_BAND_NAMES.get(b, f'band{b}')}_{s}" for b in self.bands for s in BAND_STATS]
        if self.has_ndvi:
            names += list(NDVI_STATS)
        if self.texture:
            names += list(TEXTURE_STATS)
        return names

    @property
    def has_ndvi(self) -> bool:
        """Whether the vector holds NDVI statistics (the red and NIR bands are read)."""
        return RED in self.bands and NIR in self.bands

    def for_band_count(self, count: int) -> SpectralFeaturizer:
        """This featurizer restricted to the bands imagery of ``count`` bands has (NIR dropped from RGB imagery)."""
        kept = tuple(b for b in self.bands if b <= count)
        if not kept:
            raise InputError(f"imagery of {count} band(s) has none of the bands {list(self.bands)}")
        return self if kept == self.bands else SpectralFeaturizer(bands=kept, texture=self.texture)

    # -- the description --

    def to_meta(self) -> dict[str, Any]:
        """The ``features.json`` fields: ``backbone`` (``"spectral"``), ``feature_dim``, ``bands``, ``texture``
        and ``feature_names``."""
        return {"backbone": self.kind, "feature_dim": self.feature_dim, "bands": list(self.bands),
                "texture": self.texture, "feature_names": self.feature_names}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> SpectralFeaturizer:
        """The featurizer of a ``features.json`` (or of a ``model.json``; defaults: RGBN, no texture).

        Raises:
            InputError: the description is damaged, or gives another ``feature_dim`` than its bands mean.
        """
        try:
            featurizer = cls(bands=tuple(int(b) for b in meta.get("bands") or (1, 2, 3, 4)),
                             texture=bool(meta.get("texture", False)))
        except (TypeError, ValueError) as exc:
            raise InputError(f"the spectral featurizer's description is damaged ({exc})") from exc
        recorded = meta.get("feature_dim")
        if recorded is not None and int(recorded) != featurizer.feature_dim:
            raise InputError(f"the spectral featurizer of bands {list(featurizer.bands)} gives "
                             f"{featurizer.feature_dim} features where {recorded} were recorded")
        return featurizer

    def model_fields(self) -> dict[str, Any]:
        """The ``model.json`` fields: as :meth:`to_meta` without ``bands`` (a common field of every artifact)."""
        meta = self.to_meta()
        meta.pop("bands")
        return meta

    # -- computing --

    def featurize(self, chips: np.ndarray) -> np.ndarray:
        """``(N, len(bands), S, S)`` uint8 chips -> ``(N, feature_dim)`` float32 statistics.

        A chip without any pixel with data gets zeros (it has no statistics; tiling drops such chips).
        """
        chips = self.check_chips(chips)
        n = len(chips)
        if n == 0:
            return np.empty((0, self.feature_dim), dtype=np.float32)
        valid = chips.any(axis=1)  # (N, S, S)
        count = np.count_nonzero(valid.reshape(n, -1), axis=1)
        red_nir = (self.bands.index(RED), self.bands.index(NIR)) if self.has_ndvi else None
        histogram, ndvi = _histograms(chips, count, red_nir)
        blocks = [_band_statistics(histogram, count)]
        if ndvi is not None:
            blocks.append(_ndvi_statistics(ndvi, count))
        if self.texture:
            rgb = [self.bands.index(b) for b in (1, 2, 3) if b in self.bands]
            blocks.append(_texture(chips[:, rgb], valid))
        return np.concatenate(blocks, axis=1).astype(np.float32)


def _histograms(chips: np.ndarray, count: np.ndarray, red_nir: tuple[int, int] | None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Every chip's 256-bin histogram per band of its pixels with data, ``(N, bands, 256)``, and with
    ``red_nir`` (the red and NIR bands' positions) the sums of NDVI and of its square over each chip's pixels
    ``(N, 2)``.

    Bands are counted two at a time, as one 65,536-bin histogram of their value pairs whose margins are the two
    bands' histograms: half the ``bincount`` passes over the pixels. Red and NIR make one pair, and the same
    pair values look NDVI up in a table of all 65,536 (float32, as NDVI was computed pixel by pixel). A pixel
    without data is 0 in every band: the pixels without data are taken off bin 0 (pair ``(0, 0)``, whose NDVI
    is 0), so every pixel is counted without a masking pass.
    """
    n, nbands = chips.shape[:2]
    order = [*(red_nir or ()), *(b for b in range(nbands) if b not in (red_nir or ()))]
    pairs = [tuple(order[i:i + 2]) for i in range(0, nbands, 2)]
    histogram = np.empty((n, nbands, 256), dtype=np.float64)
    ndvi = np.empty((n, 2), dtype=np.float32) if red_nir is not None else None
    missing = chips[0, 0].size - count
    for i in range(n):
        for pair in pairs:
            if len(pair) == 1:
                counts = np.bincount(chips[i, pair[0]].ravel(), minlength=256)
                counts[0] -= missing[i]
                histogram[i, pair[0]] = counts
                continue
            a, b = pair
            values = chips[i, a].astype(np.uint16) << 8
            values |= chips[i, b]
            counts = np.bincount(values.ravel(), minlength=65536)
            counts[0] -= missing[i]
            square = counts.reshape(256, 256)
            histogram[i, a] = square.sum(axis=1)
            histogram[i, b] = square.sum(axis=0)
            if pair == red_nir:
                index = _NDVI_TABLE[values]
                ndvi[i] = index.sum(), (index * index).sum()
    return histogram, ndvi


def _band_statistics(histogram: np.ndarray, count: np.ndarray) -> np.ndarray:
    """:data:`BAND_STATS` of every band, band-major, from the histograms of the pixels with data (percentiles
    exact: the lowest value whose cumulative share reaches the percentile)."""
    n = len(histogram)
    total = np.maximum(count, 1).astype(np.float64)[:, None]
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean = histogram @ levels / total
    std = np.sqrt(np.maximum(histogram @ levels**2 / total - mean**2, 0.0))
    cumulative = np.cumsum(histogram, axis=-1) / total[..., None]
    percentiles = [(cumulative < q).sum(axis=-1).clip(max=255) / 255.0 for q in _PERCENTILES]
    stats = np.stack([mean, std, *percentiles], axis=-1)  # (N, bands, stats)
    stats[count == 0] = 0.0
    return stats.reshape(n, -1)


#: NDVI of every (red, NIR) pair of 8-bit values, indexed ``red << 8 | nir``.
_NDVI_TABLE = ((lambda r, ir: (ir - r) / np.maximum(ir + r, np.float32(1.0)))(
    *np.meshgrid(np.arange(256, dtype=np.float32), np.arange(256, dtype=np.float32), indexing="ij")).ravel())


def _ndvi_statistics(sums: np.ndarray, count: np.ndarray) -> np.ndarray:
    """NDVI mean and standard deviation over the pixels with data, from the sums of NDVI and of its square."""
    total = np.maximum(count, 1)
    mean = sums[:, 0] / total
    std = np.sqrt(np.maximum(sums[:, 1] / total - mean**2, 0.0))
    return np.stack([mean, std], axis=1)


def _texture(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """:data:`TEXTURE_STATS` of the brightness; nodata pixels count as their cell's data (they are rare: tiling
    keeps chips with little nodata)."""
    n, _, height, width = rgb.shape
    brightness = rgb.astype(np.float32).mean(axis=1) / 255.0 * valid
    h, w = height // _CELL * _CELL, width // _CELL * _CELL
    cells = brightness[:, :h, :w].reshape(n, h // _CELL, _CELL, w // _CELL, _CELL)
    cell_std = np.sqrt(cells.var(axis=(2, 4))).mean(axis=(1, 2))
    spread = cells.mean(axis=(2, 4)).std(axis=(1, 2))
    gradient = (np.abs(np.diff(brightness, axis=2)).mean(axis=(1, 2))
                + np.abs(np.diff(brightness, axis=1)).mean(axis=(1, 2)))
    return np.stack([cell_std, spread, gradient], axis=1)


__all__ = ["BAND_STATS", "NDVI_STATS", "TEXTURE_STATS", "SpectralFeaturizer"]
