"""The fine-tuning network: a backbone with a new head, four-band input, and its input normalization.

Four-band input (R, G, B, NIR): the first convolution gets a fourth input channel initialized from its RGB
filters (their mean), all four scaled by 3/4 so that activations keep their scale (:func:`extend_first_conv`).
That convolution then always trains, whatever the depth: its NIR weights are new, like the head's.

torch only (no Lightning): a scoring worker builds a fine-tuned artifact's network from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from geoclf.backbones import Backbone, load_backbone
from tiling.errors import InputError

#: Band sets a model can read: RGB, or RGB + NIR (1-based NAIP bands; RGB first, in the order the
#: pretrained filters expect).
BAND_SETS: tuple[tuple[int, ...], ...] = ((1, 2, 3), (1, 2, 3, 4))


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


__all__ = ["BAND_SETS", "build_network", "check_bands", "check_choice", "extend_first_conv", "normalization"]
