"""``geoclf finetune``: fine-tune a pretrained CNN on a chip index with PyTorch Lightning."""

from __future__ import annotations

import logging

import click

from geoclf.cli.common import echo_evaluation, echo_export, export_option
from geoclf.cli.runs import runs_dir_option

_DEPTHS = ("last_only", "fully_connected", "all")


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


@click.command("finetune")
@click.option("--chips", required=True, type=click.Path(exists=True),
              help="Chip index (chips.parquet or its directory, from geoclf tile) or a PNG folder (split/Class/*.png).")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="Backbone: a registered one (efficientnet_lite0, mobilenet_v2, resnet18, resnet50, alexnet) or any "
                   "torchvision classification model.")
@click.option("--retrain", default="last_only", show_default=True, metavar="|".join(_DEPTHS),
              help="What trains: last_only (a new head on the frozen backbone), fully_connected (AlexNet's fc6-fc8; "
                   "for one-linear-layer networks the last stage plus the head), all.")
@click.option("--weights", default="default", show_default=True,
              help="Starting weights: default (offline where available), imagenet, none, or a .pth state dict.")
@click.option("--epochs", default=10, show_default=True, help="Maximum epochs (early stopping may end sooner).")
@click.option("--name", default=None, help="Run name (default: <backbone>-<retrain>).")
@click.option("--batch-size", default=32, show_default=True, help="Chips per batch and device.")
@click.option("--lr", type=float, default=None,
              help="Peak learning rate (default for AdamW: 1e-4 at every depth after a probe; with --head-init random "
                   "1e-3 last_only, 3e-4 fully_connected, 1e-4 all; ten times that for SGD).")
@click.option("--head-init", type=click.Choice(["probe", "random"]), default="probe", show_default=True,
              help="The new head starts as the logistic regression of the frozen features on the training chips "
                   "(probe: one extra forward pass), or random.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True,
              help="Optimizer (warm-up then cosine decay either way).")
@click.option("--label-smoothing", default=0.1, show_default=True, help="Label smoothing of the training loss.")
@click.option("--class-weights", type=click.Choice(["auto", "balanced", "none"]), default="auto", show_default=True,
              help="Loss weights per class; auto: balanced when the training classes are unbalanced.")
@click.option("--patience", default=5, show_default=True,
              help="Stop after this many epochs without a lower validation loss (0: never stop early).")
@click.option("--nir/--no-nir", default=None,
              help="Read 4 bands (RGB + NIR; the first convolution is extended from its RGB weights and trains), or "
                   "RGB only. Default: RGB + NIR when the imagery has four bands.")
@click.option("--no-augment", is_flag=True, help="Train without flips/rotations and colour jitter.")
@click.option("--input-size", type=int, default=None, help="Resize chips to this side (default: the chip size).")
@click.option("--accelerator", default="auto", show_default=True, help="Lightning accelerator: auto, cpu, gpu, ...")
@click.option("--devices", default="auto", show_default=True,
              help="Devices: auto, a count (e.g. 8 GPUs, trained with DDP) or a list such as 0,1.")
@click.option("--precision", default="32-true", show_default=True,
              help="Lightning precision, e.g. 32-true, bf16-mixed, 16-mixed.")
@click.option("--num-workers", type=int, default=None,
              help="DataLoader worker processes (default: cores - 1, at most 4; 8 with a GPU).")
@click.option("--seed", default=0, show_default=True, help="Seed of initialization, shuffling and augmentation.")
@click.option("--resume", default=None, metavar="last|best|CKPT",
              help="Continue an interrupted run (same --name) from its last or best checkpoint, or from a file.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Working directory for checkpoints (default: <runs dir>/finetune/<name>).")
@click.option("--min-chips-per-class", default=10, show_default=True, help="Fewest training chips a class may have.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@export_option
@runs_dir_option
def finetune(chips: str, backbone: str, retrain: str, weights: str, epochs: int, name: str | None, batch_size: int,
             lr: float | None, head_init: str, optimizer: str, label_smoothing: float, class_weights: str,
             patience: int, nir: bool | None,
             no_augment: bool, input_size: int | None, accelerator: str, devices: str, precision: str,
             num_workers: int | None, seed: int, resume: str | None, out: str | None, min_chips_per_class: int,
             quiet: bool, export: bool | None, runs_dir: str | None) -> None:
    """Fine-tune a CNN on the train split of CHIPS, evaluate it on the validation split, save and record it."""
    # the library (torch, Lightning) is imported when the command runs: `geoclf finetune --help` stays instant
    from geoclf.finetune import FinetuneConfig  # here: the fine-tuning run loads Lightning and torch
    from geoclf.finetune import finetune as run_finetune

    # Lightning's INFO lines (accelerator banner, tips) would bury the summary below
    for logger in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    config = FinetuneConfig(
        backbone=backbone, retrain=retrain, weights=weights, epochs=epochs, name=name, batch_size=batch_size,
        lr=lr, head_init=head_init, optimizer=optimizer, label_smoothing=label_smoothing,
        class_weights=class_weights, patience=patience or None,
        bands=None if nir is None else (1, 2, 3, 4) if nir else (1, 2, 3), augment=not no_augment,
        input_size=input_size, accelerator=accelerator, devices=_devices(devices), precision=precision,
        num_workers=num_workers, seed=seed, resume=resume, out=out, runs_dir=runs_dir,
        min_chips_per_class=min_chips_per_class, progress=not quiet, export=export)
    result = run_finetune(chips, config)
    if result.run_id is None and not result.evaluation:
        return  # a DDP worker process: rank zero reports
    for note in result.warnings:
        click.echo(f"geoclf: warning: {note}", err=True)
    click.echo(f"{result.name}: {backbone} {retrain}, {result.trainable_params:,} of {result.total_params:,} "
               f"parameters trained, {result.epochs} epoch(s){' (stopped early)' if result.stopped_early else ''}, "
               f"best epoch {result.best_epoch}")
    click.echo("epoch  train_loss  train_error%  val_error%  seconds  samples/s")
    for h in result.history:
        click.echo(f"{int(h['epoch']):>5}  {h.get('train_loss', float('nan')):>10.4f}  "
                   f"{h.get('train_error', float('nan')):>12.2f}  {h.get('val_error', float('nan')):>10.2f}  "
                   f"{h['epoch_seconds']:>7.1f}  {h['samples_per_second']:>9.1f}")
    echo_evaluation(result.evaluation)
    click.echo(f"checkpoints -> {result.best_checkpoint.parent}")
    click.echo(f"model artifact -> {result.artifact_dir}")
    echo_export(result.artifact_dir)
    if result.run_id:
        click.echo(f"run {result.run_id}  (geoclf runs show {result.name})")
