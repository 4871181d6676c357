"""Benchmark: fine-tuning throughput with the real data pipeline vs the bare model on random tensors.

For each configuration (default: resnet18 ``last_only`` and ``all``, alexnet ``fully_connected``) two loops
run side by side, alternating ``--repeats`` times:

* **pipeline**: the real training loop, a Lightning ``Trainer`` fitting :class:`geoclf.finetune.LandUseModule`
  on :class:`geoclf.finetune.ChipDataModule` over a synthetic chip index; chips are read from the GeoTIFF by
  DataLoader worker processes, augmented, moved to the device and normalized there.
* **bare**: the same module (same frozen part, same AdamW) on random tensors already on the device:
  forward, backward, optimizer step, nothing else.

Both count samples/s over ``--steps`` steps after ``--warmup`` steps (worker start-up, allocator warm-up
excluded). They alternate in ABBA order ``--repeats`` times; the table shows median samples/s and the median
of the pipeline / bare ratios of pairs run back to back (each ratio is printed too), so that other load on a
shared machine cancels out. The ratio shows whether the data pipeline limits training: at >= 85% it does not.

Run on this CPU (a few minutes with the small defaults)::

    .venv/bin/python benchmarks/finetune_throughput.py

Run on a GPU machine, to take the same numbers there (real chip size, bigger batches, mixed precision,
as many workers as the machine feeds)::

    .venv/bin/python benchmarks/finetune_throughput.py --chip-size 224 --batch-size 128 --steps 50 \\
        --warmup 10 --precision bf16-mixed --workers 8 --scene-m 6720

``--accelerator`` defaults to Lightning's ``auto`` (CUDA when present); the bare loop runs on the same device
with the same autocast and synchronizes before reading the clock. Multi-GPU (DDP) throughput is the
single-device figure times the devices as long as each process keeps its own pipeline fed, which is what
this ratio measures per device.

``--nir-comparison`` also fine-tunes MobileNetV2 (offline ImageNet weights, ``all``) with RGB and with
RGB + NIR input on the same index and seeds, and prints the validation accuracy of each.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L

import tiling
from geoclf.finetune import ChipDataModule, LandUseModule, default_num_workers, finetune

CONFIGS = ("resnet18:last_only", "resnet18:all", "alexnet:fully_connected")


class StepClock(L.Callback):
    """Time at the end of every training batch (after the optimizer step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        _sync(self.device)
        self.times.append(time.perf_counter())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_index(root: Path, scene_m: float, chip_size: int, overlap: bool, seed: int = 0) -> Path:
    """A synthetic 1 m scene and its chip index (``root/chips``), reused when it exists.

    With ``overlap`` chips are spaced half a chip apart: many chips from a small scene, which is all the
    throughput loops need. Accuracy comparisons use disjoint chips, so that no pixel is in both splits.
    """
    from tiling.synth import make_scene

    path = root / "chips" / "chips.parquet"
    if path.exists():
        return path
    scene = make_scene(root / "scene", size_m=scene_m, resolution=1.0, seed=seed)
    params = tiling.TileParams(chip_size=chip_size, stride_m=chip_size / 2 if overlap else None)
    index = tiling.tile([scene.naip], scene.nlcd, root / "chips", params=params, progress=False)
    print(f"index: {len(index)} chips of {chip_size} px from a {scene_m:.0f} m scene", file=sys.stderr)
    return path


def pipeline_rate(index: Path, backbone: str, retrain: str, args: argparse.Namespace) -> float:
    """Samples/s of the real training loop (Trainer + ChipDataModule + LandUseModule)."""
    data = ChipDataModule(index, batch_size=args.batch_size, num_workers=args.workers, min_chips_per_class=1,
                          bands=(1, 2, 3))
    module = LandUseModule(backbone, data.classes, retrain=retrain, weights="none", head_init="random")
    device = torch.device("cuda" if torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")
                          else "cpu")
    clock = StepClock(device)
    trainer = L.Trainer(max_steps=args.warmup + args.steps, accelerator=args.accelerator, devices=1,
                        precision=args.precision, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[clock])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=data)
    times = clock.times
    return args.steps * args.batch_size / (times[args.warmup + args.steps - 1] - times[args.warmup - 1])


def bare_rate(classes: list[str], backbone: str, retrain: str, args: argparse.Namespace) -> float:
    """Samples/s of forward + backward + AdamW step of the same module on random tensors on the device."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")
                          else "cpu")
    module = LandUseModule(backbone, classes, retrain=retrain, weights="none", head_init="random").to(device).train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(args.batch_size, 3, args.chip_size, args.chip_size, device=device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, len(classes), (args.batch_size,), device=device)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    times = []
    for _ in range(args.warmup + args.steps):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(module(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter())
    return args.steps * args.batch_size / (times[-1] - times[args.warmup - 1])


def throughput_table(index: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Median samples/s of both loops and median ratio of adjacent pairs, for every configuration.

    The loops alternate in ABBA order (bare, pipeline, pipeline, bare, ...) and each ratio is taken from
    a pair run back to back: load from other processes that rises or falls during the run cancels out
    of the ratio instead of favouring whichever loop ran later.
    """
    classes = ChipDataModule(index, num_workers=0, min_chips_per_class=1).classes
    rows = []
    for config in args.configs:
        backbone, retrain = config.split(":")
        pipeline, bare = [], []
        for repeat in range(args.repeats):
            first_bare = repeat % 2 == 0
            if first_bare:
                bare.append(bare_rate(classes, backbone, retrain, args))
            pipeline.append(pipeline_rate(index, backbone, retrain, args))
            if not first_bare:
                bare.append(bare_rate(classes, backbone, retrain, args))
            print(f"{config}: bare {bare[-1]:.1f}/s, pipeline {pipeline[-1]:.1f}/s", file=sys.stderr)
        ratios = [p / b for p, b in zip(pipeline, bare, strict=True)]
        rows.append({"config": config, "bare": statistics.median(bare), "pipeline": statistics.median(pipeline),
                     "ratio": statistics.median(ratios), "ratios": ratios})
    return rows


def nir_comparison(index: Path, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Validation accuracy of MobileNetV2 fine-tuned (all layers) on RGB vs RGB + NIR, per seed."""
    results = []
    for seed in range(args.nir_seeds):
        for bands in ((1, 2, 3), (1, 2, 3, 4)):
            result = finetune(index, backbone="mobilenet_v2", retrain="all", epochs=args.nir_epochs, bands=bands,
                              batch_size=args.batch_size, seed=seed, record_run=False, progress=False,
                              num_workers=args.workers, patience=None, min_chips_per_class=1,
                              out=work / f"nir-{seed}-{len(bands)}", accelerator=args.accelerator)
            results.append({"seed": seed, "bands": "RGB+NIR" if len(bands) == 4 else "RGB",
                            "accuracy": result.evaluation["accuracy"],
                            "balanced_accuracy": result.evaluation["balanced_accuracy"],
                            "best_epoch": result.best_epoch})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="backbone:retrain pairs")
    parser.add_argument("--chip-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=4, help="pairs of loops, in ABBA order")
    parser.add_argument("--workers", type=int, default=default_num_workers(), help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--scene-m", type=float, default=1792.0, help="side of the synthetic scene in metres")
    parser.add_argument("--skip-throughput", action="store_true", help="only the NIR comparison")
    parser.add_argument("--nir-comparison", action="store_true")
    parser.add_argument("--nir-epochs", type=int, default=6)
    parser.add_argument("--nir-seeds", type=int, default=2)
    parser.add_argument("--nir-chip-size", type=int, default=64)
    parser.add_argument("--nir-scene-m", type=float, default=1792.0)
    parser.add_argument("--keep", type=Path, default=None, help="keep the indexes here (default: a temp dir)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="geoclf-bench-") as tmp:
        work = args.keep or Path(tmp)
        device = "cuda" if torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda") else "cpu"
        if not args.skip_throughput:
            index = make_index(work / f"throughput-{args.chip_size}", args.scene_m, args.chip_size, overlap=True)
            print(f"\ndevice {device}, torch threads {torch.get_num_threads()}, DataLoader workers {args.workers}, "
                  f"batch {args.batch_size}, chips {args.chip_size} px, precision {args.precision}, "
                  f"{args.steps} timed steps after {args.warmup}, medians of {args.repeats} pairs")
            print(f"{'configuration':<26} {'bare samples/s':>15} {'pipeline samples/s':>19} {'ratio':>7}  pairs")
            for row in throughput_table(index, args):
                pairs = " ".join(f"{r:.0%}" for r in row["ratios"])
                print(f"{row['config']:<26} {row['bare']:>15.1f} {row['pipeline']:>19.1f} {row['ratio']:>7.0%}  "
                      f"{pairs}")
        if args.nir_comparison:
            index = make_index(work / f"nir-{args.nir_chip_size}", args.nir_scene_m, args.nir_chip_size, overlap=False)
            print(f"\nMobileNetV2 (ImageNet weights), retrain all, {args.nir_epochs} epochs, {args.nir_chip_size} px "
                  "chips, validation split:")
            print(f"{'seed':>4} {'bands':<8} {'accuracy':>9} {'balanced':>9} {'best epoch':>11}")
            for row in nir_comparison(index, args, work):
                print(f"{row['seed']:>4} {row['bands']:<8} {row['accuracy']:>9.3f} {row['balanced_accuracy']:>9.3f} "
                      f"{row['best_epoch']:>11}")


if __name__ == "__main__":
    main()
