"""Fine-tuning: a pretrained CNN retrained on labelled chips with PyTorch Lightning, saved as a model artifact.

The pieces, each usable on its own:

- :mod:`geoclf.finetune.data`: :class:`ChipDataModule`, the train and validation splits of a chip index (or a
  PNG folder), read straight from the source rasters by DataLoader worker processes, augmented the way
  overhead imagery allows;
- :mod:`geoclf.finetune.network`: the backbone with a new head, four-band input, input normalization;
- :mod:`geoclf.finetune.module`: :class:`LandUseModule`, trained to a chosen depth; a user can hand it to
  their own ``lightning.Trainer``;
- :mod:`geoclf.finetune.run`: :func:`finetune` (``geoclf finetune``), configured by one
  :class:`FinetuneConfig`: both on a Trainer with early stopping, best and last checkpoints, resume after an
  interruption, the run recorded in the run history with per-epoch curves;
- :mod:`geoclf.finetune.model`: the ``finetune`` model artifact (:class:`FinetuneModel`), which scoring loads
  exactly like a features classifier (:func:`geoclf.models.load_model`).

Every name is importable from here too (``from geoclf.finetune import finetune, FinetuneConfig``). They are
loaded on first use: a scoring worker that loads a fine-tuned artifact needs torch and
:mod:`geoclf.finetune.model`, not Lightning, whose import costs seconds.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the submodule defining it.
_HOMES: dict[str, str] = {
    **dict.fromkeys(("UNBALANCED_RATIO", "ChipDataModule", "ChipDataset", "augment_chips", "default_num_workers",
                     "imagery_bands"), "data"),
    **dict.fromkeys(("NETWORK_FILE", "FinetuneModel", "finetune_spec", "save_finetune_model"), "model"),
    **dict.fromkeys(("DEFAULT_LR", "HEAD_INITS", "OPTIMIZERS", "RANDOM_HEAD_LR", "RETRAIN_DEPTHS", "LandUseModule",
                     "check_checkpoint", "check_input_size", "default_lr", "read_checkpoint_hparams"), "module"),
    **dict.fromkeys(("BAND_SETS", "build_network", "check_bands", "check_choice", "extend_first_conv",
                     "normalization"), "network"),
    **dict.fromkeys(("EpochHistory", "FinetuneConfig", "FinetuneResult", "default_out_dir", "evaluate_model",
                     "finetune"), "run"),
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "BAND_SETS",
    "DEFAULT_LR",
    "HEAD_INITS",
    "NETWORK_FILE",
    "OPTIMIZERS",
    "RANDOM_HEAD_LR",
    "RETRAIN_DEPTHS",
    "UNBALANCED_RATIO",
    "ChipDataModule",
    "ChipDataset",
    "EpochHistory",
    "FinetuneConfig",
    "FinetuneModel",
    "FinetuneResult",
    "LandUseModule",
    "augment_chips",
    "build_network",
    "check_bands",
    "check_checkpoint",
    "check_choice",
    "check_input_size",
    "default_lr",
    "default_num_workers",
    "default_out_dir",
    "evaluate_model",
    "extend_first_conv",
    "finetune",
    "finetune_spec",
    "imagery_bands",
    "normalization",
    "read_checkpoint_hparams",
    "save_finetune_model",
]
