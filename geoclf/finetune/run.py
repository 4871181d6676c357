"""The fine-tuning run (``geoclf finetune``): data, module and Trainer, checkpoints, the run history, the artifact.

:func:`finetune` puts :class:`~geoclf.finetune.data.ChipDataModule` and
:class:`~geoclf.finetune.module.LandUseModule` on a Trainer with early stopping, best and last checkpoints and
resume after an interruption, records the run with per-epoch curves (:class:`EpochHistory`) and saves the
best epoch as a ``finetune`` model artifact (:mod:`geoclf.finetune.model`). Its settings are one
:class:`FinetuneConfig`.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from geoclf import runs
from geoclf.artifact import LandUseModel
from geoclf.backbones import DEFAULT_BACKBONE, get_spec
from geoclf.chips import iter_batches
from geoclf.export import export_tags, export_trained, wants_export
from geoclf.finetune.data import ChipDataModule
from geoclf.finetune.model import FinetuneModel, finetune_spec, save_finetune_model
from geoclf.finetune.module import (
    HEAD_INITS,
    OPTIMIZERS,
    RETRAIN_DEPTHS,
    LandUseModule,
    check_checkpoint,
    check_input_size,
    default_lr,
)
from geoclf.finetune.network import check_choice
from geoclf.metrics import evaluate, evaluation_to_json
from geoclf.runs import RunRecorder, run_store
from tiling.errors import InputError
from tiling.io import ChipReader

PathLike = str | os.PathLike[str]


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


@dataclass
class FinetuneConfig:
    """How to fine-tune: every setting of :func:`finetune` but the chips.

    Fields are checked when :func:`finetune` runs (as scikit-learn checks parameters when fitting), so a
    config can be built, copied (``dataclasses.replace``) and stored before it is used.

    Attributes:
        backbone: backbone name (:mod:`geoclf.backbones`).
        retrain: ``last_only``, ``fully_connected`` or ``all`` (see :mod:`geoclf.finetune.module`).
        epochs: maximum number of epochs (in total, counting those before a resume).
        name: run name (default ``<backbone>-<retrain>``).
        weights: pretrained weights to start from (see :func:`geoclf.backbones.load_backbone`).
        batch_size: chips per batch and device.
        lr, optimizer, weight_decay, label_smoothing: see :class:`~geoclf.finetune.module.LandUseModule`
            (default learning rate: :func:`~geoclf.finetune.module.default_lr`).
        head_init: ``"probe"`` (the new head starts as the logistic regression of the frozen features on
            the training chips) or ``"random"``; see :mod:`geoclf.finetune.module`.
        class_weights: ``"auto"`` (balanced weights when the training classes are unbalanced, see
            :data:`~geoclf.finetune.data.UNBALANCED_RATIO`), ``"balanced"``, ``"none"`` or explicit weights in
            class order.
        patience: epochs without a lower validation loss before stopping; ``None`` never stops early.
        bands: ``(1, 2, 3)`` or ``(1, 2, 3, 4)`` (RGB + NIR); default (``None``) RGB + NIR when the imagery
            has four bands (:func:`~geoclf.finetune.data.imagery_bands`).
        augment: augment training chips.
        input_size: network input side (default: the chip size).
        accelerator, devices, precision, strategy: Lightning's (e.g. ``devices=8, precision="bf16-mixed"``
            on GPUs; DDP is Lightning's choice for several devices).
        num_workers: DataLoader workers (default :func:`~geoclf.finetune.data.default_num_workers`).
        seed: seed of everything random (initialization of the head, shuffling, augmentation).
        resume: ``"last"`` or ``"best"`` (this run's checkpoints) or a checkpoint path: continue that run.
        out: working directory (default :func:`default_out_dir`).
        runs_dir: runs directory or tracking URI (see :func:`geoclf.runs.run_store`).
        record_run: record the run in the run history.
        export: export the fine-tuned network into the model artifact (``network.onnx``, its hash in
            ``model.json``, as ``geoclf models export`` does) before the run records it, so the model scores
            on OpenVINO by default; ``None``: where the ONNX exporter is installed (``geoclf finetune``'s
            default). A failed export keeps the model (without export) and adds a warning to the result;
            see :func:`geoclf.export.export_trained`.
        min_chips_per_class: fewest training chips per class.
        progress: show Lightning's progress bar.
        trainer_options: more ``lightning.Trainer`` arguments (e.g. ``limit_train_batches``).
    """

    backbone: str = DEFAULT_BACKBONE
    retrain: str = "last_only"
    epochs: int = 10
    name: str | None = None
    weights: str = "default"
    batch_size: int = 32
    lr: float | None = None
    optimizer: str = "adamw"
    weight_decay: float | None = None
    label_smoothing: float = 0.1
    head_init: str = "probe"
    class_weights: str | Sequence[float] = "auto"
    patience: int | None = 5
    bands: Sequence[int] | None = None
    augment: bool = True
    input_size: int | None = None
    accelerator: str = "auto"
    devices: int | str = "auto"
    precision: str = "32-true"
    strategy: str = "auto"
    num_workers: int | None = None
    seed: int = 0
    resume: PathLike | None = None
    out: PathLike | None = None
    runs_dir: PathLike | None = None
    record_run: bool = True
    export: bool | None = False
    min_chips_per_class: int = 10
    progress: bool = True
    trainer_options: Mapping[str, Any] | None = None


def _config(config: FinetuneConfig | Mapping[str, Any] | None, options: Mapping[str, Any]) -> FinetuneConfig:
    """``config`` (default: the defaults) with ``options`` over it; unknown names are one-line errors."""
    given = {} if config is None or isinstance(config, FinetuneConfig) else dict(config)
    valid = [f.name for f in fields(FinetuneConfig)]
    unknown = sorted(set(given) - set(valid) | set(options) - set(valid))
    if unknown:
        raise InputError(f"unknown fine-tuning option(s) {', '.join(unknown)} (valid: {', '.join(valid)})")
    base = config if isinstance(config, FinetuneConfig) else FinetuneConfig(**given)
    return replace(base, **options)


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
        warnings: what went wrong without stopping the run (a failed export).
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
    warnings: tuple[str, ...] = ()


def default_out_dir(name: str, runs_dir: PathLike | None = None) -> Path:
    """Working directory of a fine-tune: ``<runs directory>/finetune/<name>`` (``./finetune/<name>`` when
    runs go to a tracking server)."""
    base = run_store(runs_dir).directory or Path.cwd()
    return base / "finetune" / name


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
    return getattr(rank_zero_only, "rank", 0) == 0


def evaluate_model(model: LandUseModel, rows: pd.DataFrame, batch_size: int = 64) -> dict[str, Any]:
    """Score a model artifact on labelled chip rows through its ``predict_proba``, as scoring would."""
    predictions = []
    with ChipReader(model.bands, model.chip_size) as reader:
        for _, chips in iter_batches(rows, reader, batch_size):
            predictions.append(model.predict(chips))
    return evaluate(rows["label"].to_numpy(), np.concatenate(predictions), model.classes)


def finetune(chips: PathLike, config: FinetuneConfig | Mapping[str, Any] | None = None,
             **options: Any) -> FinetuneResult:
    """Fine-tune a pretrained CNN on a chip index; save, evaluate and record the model.

    Checkpoints ``best.ckpt`` (lowest validation loss) and ``last.ckpt`` (end of the latest epoch) go to
    ``out/checkpoints``; the model artifact (the best checkpoint's network) to ``out/model`` and, when
    recorded, to the run's ``model`` artifact, beside ``evaluation.json`` and the confusion matrix. The
    validation split both picks the best epoch and scores it, so the scores are slightly optimistic, as for
    any model chosen on its validation set.

    Args:
        chips: chip index (``chips.parquet`` or its directory) or a PNG folder.
        config: the settings (a :class:`FinetuneConfig`, or a mapping of its fields); default all defaults.
        **options: :class:`FinetuneConfig` fields that override ``config`` (``finetune(chips, epochs=3)``).

    Returns:
        The result: artifact, checkpoints, evaluation, per-epoch history.

    Raises:
        InputError: an unknown option, backbone, depth or optimizer, an index without validation chips, too
            few chips per class, a checkpoint of another backbone, an existing run directory without
            ``resume``.
    """
    config = _config(config, options)
    check_choice(config.retrain, list(RETRAIN_DEPTHS), "retrain depth")
    check_choice(config.optimizer, OPTIMIZERS, "optimizer")
    check_choice(config.head_init, HEAD_INITS, "head initialization")
    get_spec(config.backbone)  # an unknown name fails here, before the index is read
    if config.epochs < 1:
        raise InputError(f"epochs must be at least 1, not {config.epochs}")
    export = wants_export(config.export, True, "a fine-tuned model")  # before hours of training, not after
    name = config.name or f"{config.backbone}-{config.retrain}"
    out_dir = Path(config.out).expanduser() if config.out is not None else default_out_dir(name, config.runs_dir)
    checkpoints = out_dir / "checkpoints"
    resume_path = _resume_path(config.resume, checkpoints)
    if resume_path is None and (checkpoints / "last.ckpt").exists():
        raise InputError("holds the checkpoints of an earlier fine-tune; continue it with --resume last, or "
                         "choose another --name or --out", out_dir)

    L.seed_everything(config.seed, workers=True, verbose=False)
    data = ChipDataModule(chips, batch_size=config.batch_size, num_workers=config.num_workers, bands=config.bands,
                          augment=config.augment, min_chips_per_class=config.min_chips_per_class)
    if isinstance(config.class_weights, str):
        check_choice(config.class_weights, ("auto", "balanced", "none"), "class weights")
        use = config.class_weights == "balanced" or (config.class_weights == "auto" and data.unbalanced)
        weight_values: list[float] | None = data.class_weights() if use else None
    else:
        weight_values = [float(w) for w in config.class_weights]
    module = LandUseModule(config.backbone, data.classes, retrain=config.retrain, weights=config.weights,
                           bands=data.bands, lr=config.lr, optimizer=config.optimizer,
                           weight_decay=config.weight_decay, label_smoothing=config.label_smoothing,
                           class_weights=weight_values, input_size=config.input_size, head_init=config.head_init)
    check_input_size(module, data.chip_size)
    probe_accuracy: float | None = None
    if resume_path is not None:
        check_checkpoint(resume_path, module)
    elif config.head_init == "probe":
        # here, before the Trainer: under DDP every rank then starts from the same (broadcast) network
        probe_accuracy = module.fit_head(data.dataset("train", augment=False), batch_size=config.batch_size)

    history = EpochHistory()
    checkpoint = ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val_loss", mode="min",
                                 save_top_k=1, save_last=True, enable_version_counter=False)
    callbacks: list[L.Callback] = [history, checkpoint]
    if config.patience is not None:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=config.patience))
    steps_per_epoch = max(1, len(data.train_rows) // config.batch_size)
    options: dict[str, Any] = {"log_every_n_steps": min(50, steps_per_epoch), **dict(config.trainer_options or {})}
    trainer = L.Trainer(max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices,
                        precision=config.precision, strategy=config.strategy, callbacks=callbacks, logger=False,
                        default_root_dir=out_dir, enable_progress_bar=config.progress, enable_model_summary=False,
                        **options)
    params = {
        "backbone": config.backbone, "classifier": f"finetune/{config.retrain}", "retrain": config.retrain,
        "weights": config.weights,
        "weights_ref": module.weights_ref, "trained_modules": list(module.trained_modules),
        "trainable_params": module.trainable_params, "total_params": module.total_params,
        "bands": list(data.bands), "chip_size": data.chip_size, "input_size": config.input_size,
        "epochs": config.epochs, "batch_size": config.batch_size,
        "lr": config.lr or default_lr(config.retrain, config.optimizer, config.head_init),
        "head_init": config.head_init, "probe_train_accuracy": probe_accuracy,
        "optimizer": config.optimizer, "weight_decay": module.hparams["weight_decay"],
        "label_smoothing": config.label_smoothing, "class_weights": weight_values, "patience": config.patience,
        "augment": config.augment, "seed": config.seed, "precision": config.precision,
        "accelerator": config.accelerator,
        "devices": config.devices, "num_workers": data.num_workers, "classes": data.classes,
        "n_train": len(data.train_rows), "n_val": len(data.val_rows), "chip_index": data.source.get("path"),
        "chip_index_sha256": data.source.get("sha256"), "out_dir": str(out_dir.resolve()),
        "resumed_from": None if resume_path is None else str(resume_path.resolve()),
    }
    run_id: str | None = None
    with contextlib.ExitStack() as stack:
        recorder = None
        if config.record_run and _is_global_zero():
            recorder = stack.enter_context(runs.start_run(name, "finetune", params=params,
                                                          runs_dir=config.runs_dir))
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
                                  trainer.current_epoch < config.epochs, module.trainable_params, module.total_params)
        best_state = torch.load(best, map_location="cpu", weights_only=True)
        best_epoch = int(best_state.get("epoch", -1)) + 1 or None
        module.load_state_dict(best_state["state_dict"])
        module.cpu()
        provenance = {"run_id": None if recorder is None else recorder.run_id, "chip_index": data.source.get("path"),
                      "chip_index_sha256": data.source.get("sha256"), "chip_size_m": data.source.get("chip_size_m"),
                      "checkpoint": str(best.resolve()),
                      "best_epoch": best_epoch, "epochs": trainer.current_epoch, "seed": config.seed,
                      "n_train": len(data.train_rows), "n_val": len(data.val_rows)}
        spec = finetune_spec(module, chip_size=data.chip_size, name=name, class_groups=data.class_groups,
                             provenance=provenance)
        evaluation = evaluate_model(FinetuneModel(spec, module.network), data.val_rows, config.batch_size)
        local = save_finetune_model(out_dir / runs.MODEL_ARTIFACT, module, chip_size=data.chip_size, name=name,
                                    metrics=evaluation_to_json(evaluation), class_groups=data.class_groups,
                                    provenance=provenance, overwrite=True)
        artifact_dir = local
        exported, failed = export_trained(local, name) if export else (None, None)
        if recorder is not None:
            recorder.log_evaluation(evaluation)
            recorder.log_metrics({"best_epoch": best_epoch or 0, "epochs_run": trainer.current_epoch})
            recorder.set_tags(export_tags(exported, failed))
            recorder.log_artifact_dir(local, runs.MODEL_ARTIFACT)
            run_id: str | None = recorder.run_id
    if run_id is not None:
        artifact_dir = runs.artifact_path(runs.get_run(run_id, runs_dir=config.runs_dir))
    return FinetuneResult(
        name=name, run_id=run_id, artifact_dir=artifact_dir, out_dir=out_dir, best_checkpoint=best,
        last_checkpoint=last, classes=data.classes, evaluation=evaluation, history=list(history.history),
        epochs=trainer.current_epoch, global_step=trainer.global_step, best_epoch=best_epoch,
        stopped_early=trainer.current_epoch < config.epochs, trainable_params=module.trainable_params,
        total_params=module.total_params, warnings=(failed,) if failed else ())


__all__ = ["EpochHistory", "FinetuneConfig", "FinetuneResult", "default_out_dir", "evaluate_model", "finetune"]
