"""torchgeo's side of ``torchgeo_compare.py``: a land-use class for every chip of a NAIP raster, as a user does.

Runs in torchgeo's own virtual environment (created by ``torchgeo_compare.py``), never with geoclf importable:
it uses only torch, torchvision, torchgeo and their dependencies. What a torchgeo user writes to classify a
raster chip by chip: the ``NAIP`` dataset over the raster's folder, a ``GridGeoSampler`` of non-overlapping
224 px chips, a ``DataLoader`` (``stack_samples``, batch 32), a torchvision ResNet-18 (random init, seeded,
``num_classes`` outputs) on the RGB bands scaled to [0, 1] and normalized with ImageNet's mean and std,
channels_last under ``torch.inference_mode``, and the predictions written out: one row per chip (bounds, class,
probability) as CSV, and a class raster of one pixel per chip (GeoTIFF).

Prints one JSON line: chips, seconds (from the first import to the files written), the torchgeo version.

Run: ``<venv>/bin/python benchmarks/torchgeo_predict.py --naip-dir DIR --out DIR [--classes 6] [--workers 1]``.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402
import torchgeo  # noqa: E402
import torchvision  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchgeo.datasets import NAIP, stack_samples  # noqa: E402
from torchgeo.samplers import GridGeoSampler  # noqa: E402

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def chip_bounds(batch: dict) -> list[tuple[float, float, float, float]]:
    """(minx, miny, maxx, maxy) of each chip of a batch, whichever way this torchgeo version reports them."""
    if "bounds" in batch:  # torchgeo >= 0.8: each sample's query, (x slice, y slice, t slice)
        return [(b[0].start, b[1].start, b[0].stop, b[1].stop) for b in batch["bounds"]]
    return [(b.minx, b.miny, b.maxx, b.maxy) for b in batch["bbox"]]  # torchgeo <= 0.7: BoundingBox


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--naip-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=args.classes).eval()
    network = network.to(memory_format=torch.channels_last)

    dataset = NAIP(paths=str(args.naip_dir))
    sampler = GridGeoSampler(dataset, size=224, stride=224)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, collate_fn=stack_samples,
                        num_workers=args.workers)
    rows = []
    with torch.inference_mode():
        for batch in loader:
            image = batch["image"][:, :3].float() / 255.0
            x = ((image - MEAN) / STD).contiguous(memory_format=torch.channels_last)
            probs = torch.softmax(network(x), dim=1)
            p, cls = probs.max(dim=1)
            for bounds, c, q in zip(chip_bounds(batch), cls.tolist(), p.tolist(), strict=True):
                rows.append((*bounds, c, q))

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "predictions.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["minx", "miny", "maxx", "maxy", "class", "probability"])
        writer.writerows(rows)
    table = np.array([r[:5] for r in rows], dtype=np.float64)
    size = float(table[0, 2] - table[0, 0])
    left, top = table[:, 0].min(), table[:, 3].max()
    cols = np.rint((table[:, 0] - left) / size).astype(int)
    lines = np.rint((top - table[:, 3]) / size).astype(int)
    grid = np.zeros((lines.max() + 1, cols.max() + 1), dtype=np.uint8)
    grid[lines, cols] = table[:, 4].astype(np.uint8) + 1
    with rasterio.open(args.out / "classes.tif", "w", driver="GTiff", width=grid.shape[1], height=grid.shape[0],
                       count=1, dtype="uint8", nodata=0, crs=dataset.crs,
                       transform=from_origin(left, top, size, size)) as dst:
        dst.write(grid, 1)
    print(json.dumps({"chips": len(rows), "seconds": time.perf_counter() - STARTED,
                      "torchgeo": torchgeo.__version__, "torch": torch.__version__,
                      "grid": list(grid.shape)}))


if __name__ == "__main__":
    main()
