"""The fine-tuning LightningModule: a backbone trained to a chosen depth on land-use classes.

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

Head initialization (:data:`HEAD_INITS`): ``probe`` (the default) starts the new head as the logistic
regression of the frozen network's features on the training chips (:meth:`LandUseModule.fit_head`, a linear
probe), so training starts where ``geoclf featurize`` + ``geoclf train`` ends, and the small default learning
rate refines it instead of undoing it. A random head needs hundreds of steps to reach that level: one epoch
of a few hundred chips is six steps, which left a one-epoch fine-tune of the demo scene at 58% where
features + logistic regression score 98% (docs/finetune.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.utils.data import Dataset

from geoclf.backbones import DEFAULT_BACKBONE, TrainablePart
from geoclf.classifiers import make_classifier
from geoclf.finetune.network import build_network, check_bands, check_choice, normalization
from tiling.errors import InputError

PathLike = str | os.PathLike[str]

#: Retrain depth -> the part of the backbone that trains (see :meth:`geoclf.backbones.Backbone.set_trainable`).
RETRAIN_DEPTHS: dict[str, TrainablePart] = {"last_only": "head", "fully_connected": "fc", "all": "all"}

#: How the new head starts: ``probe`` (the logistic regression of the frozen features, see
#: :meth:`LandUseModule.fit_head`) or ``random`` (PyTorch's default initialization).
HEAD_INITS = ("probe", "random")

#: AdamW learning rates by depth, for a head that starts as a linear probe: every part is already good, and
#: larger steps (1e-3) make the head drift off its optimum in a few dozen noisy steps (docs/finetune.md).
#: SGD uses ten times these (it has no per-parameter step scaling).
DEFAULT_LR: dict[str, float] = {"last_only": 1e-4, "fully_connected": 1e-4, "all": 1e-4}

#: AdamW learning rates by depth for a random head (``head_init="random"``): it must take large steps.
RANDOM_HEAD_LR: dict[str, float] = {"last_only": 1e-3, "fully_connected": 3e-4, "all": 1e-4}


def default_lr(retrain: str, optimizer: str = "adamw", head_init: str = "probe") -> float:
    """The default peak learning rate of a depth, optimizer and head initialization."""
    table = DEFAULT_LR if head_init == "probe" else RANDOM_HEAD_LR
    return table[retrain] * (10 if optimizer == "sgd" else 1)

OPTIMIZERS = ("adamw", "sgd")


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
        head_init: ``"probe"`` or ``"random"`` (:data:`HEAD_INITS`). With ``"probe"``, call
            :meth:`fit_head` before training (:func:`~geoclf.finetune.run.finetune` does); it sets the
            default learning rate too (:func:`default_lr`).
        input_size: network input side; chips are resized to it (``None``: chips as they are, which
            pretrained CNNs accept at any size down to ~32 px thanks to global pooling).
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, classes: Sequence[str] = (), retrain: str = "last_only",
                 weights: str = "default", bands: Sequence[int] = (1, 2, 3), lr: float | None = None,
                 optimizer: str = "adamw", weight_decay: float | None = None, label_smoothing: float = 0.1,
                 class_weights: Sequence[float] | None = None, warmup: float = 0.05,
                 input_size: int | None = None, head_init: str = "probe") -> None:
        super().__init__()
        check_choice(retrain, list(RETRAIN_DEPTHS), "retrain depth")
        check_choice(optimizer, OPTIMIZERS, "optimizer")
        check_choice(head_init, HEAD_INITS, "head initialization")
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
            "warmup": float(warmup), "input_size": input_size, "head_init": head_init})
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
        self.head_fitted = False
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

    # -- the head --

    def fit_head(self, dataset: Dataset, batch_size: int = 64) -> float:
        """Set the new head to the logistic regression of the network's frozen features (a linear probe).

        The chips of ``dataset`` (``(chip, class index)`` items, unaugmented: e.g.
        ``ChipDataModule.dataset("train", augment=False)``) go through the network in eval mode; the
        head's inputs are fitted by geoclf's features classifier (:func:`geoclf.classifiers.make_classifier`:
        standardized, logistic regression, the class weights as sample weights), and its standardization is
        folded into the head's weights. The network then predicts what ``geoclf train`` would on the same
        features. Costs one forward pass over the chips.

        Args:
            dataset: labelled chips.
            batch_size: chips per forward pass.

        Returns:
            The probe's accuracy on ``dataset``.

        Raises:
            InputError: the backbone's head is not a linear layer.
        """
        head = self.network.get_submodule(self.backbone_spec.head)
        if not isinstance(head, nn.Linear):
            raise InputError(f"{self.hparams['backbone']}'s head is a {type(head).__name__}, not a linear layer; "
                             "fine-tune it with head_init='random' (--head-init random)")
        inputs: list[torch.Tensor] = []
        hook = head.register_forward_pre_hook(lambda _, args: inputs.append(args[0].flatten(1).float().cpu()))
        targets: list[int] = []
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(dataset), batch_size):
                    indices = list(range(start, min(start + batch_size, len(dataset))))  # type: ignore[arg-type]
                    many = getattr(dataset, "__getitems__", None)  # ChipDataset reads a batch in one call
                    items = many(indices) if many is not None else [dataset[i] for i in indices]
                    self(self.normalize(torch.stack([chip for chip, _ in items]).to(self.device)))
                    targets.extend(int(t) for _, t in items)
        finally:
            hook.remove()
            self.train(was_training)
        x, y = torch.cat(inputs).numpy(), np.asarray(targets)
        weights = None if self._class_weight is None else self._class_weight.cpu().numpy()[y]
        probe = make_classifier("logistic_regression").fit(x, y, classifier__sample_weight=weights)
        scaler, linear = probe.named_steps["scale"], probe.named_steps["classifier"]
        coef, intercept = linear.coef_, linear.intercept_
        if coef.shape[0] == 1:  # two classes: scikit-learn keeps one logit, the head has two
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        full_coef = np.zeros((len(self.classes), coef.shape[1]))
        full_intercept = np.full(len(self.classes), -1e4)  # a class without training chips is never predicted
        full_coef[linear.classes_], full_intercept[linear.classes_] = coef, intercept
        weight = full_coef / scaler.scale_
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
            if head.bias is not None:
                head.bias.copy_(torch.as_tensor(full_intercept - weight @ scaler.mean_, dtype=head.bias.dtype))
        self.head_fitted = True
        return float(probe.score(x, y))

    def on_fit_start(self) -> None:
        """Fit the head as a probe on the datamodule's training chips, unless done already or resuming.

        Also refuses a datamodule that reads other bands than the module takes (ChipDataModule reads NIR by
        default when the imagery has it).

        :func:`~geoclf.finetune.run.finetune` fits it before the Trainer starts (before DDP copies the
        network to every device); this covers a module handed to one's own ``Trainer``.
        """
        datamodule = self.trainer.datamodule
        bands = getattr(datamodule, "bands", None)
        if bands is not None and tuple(bands) != tuple(self.bands):
            raise InputError(f"the chips are read as bands {list(bands)} but the module takes {self.bands}; build "
                             "it with LandUseModule(..., bands=data.bands)")
        if self.hparams["head_init"] != "probe" or self.head_fitted or self.trainer.ckpt_path is not None:
            return
        dataset = getattr(datamodule, "dataset", None)
        if dataset is None:
            rank_zero_warn("head_init='probe' needs the training chips: call module.fit_head(dataset) before "
                           "fitting without a ChipDataModule; the head starts random, at a probe's small "
                           "learning rate")
            return
        self.fit_head(dataset("train", augment=False))

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
        lr = hp["lr"] or default_lr(hp["retrain"], hp["optimizer"], hp.get("head_init", "random"))
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


__all__ = ["DEFAULT_LR", "HEAD_INITS", "OPTIMIZERS", "RANDOM_HEAD_LR", "RETRAIN_DEPTHS", "LandUseModule",
           "check_checkpoint", "check_input_size", "default_lr", "read_checkpoint_hparams"]
