"""Featurization: every chip through a pretrained CNN's penultimate layer, in parallel on Dask.

Output (see docs/architecture.md): ``part-NNNNN.parquet`` partitions with ``chip_id``, ``label``, ``split``,
``features`` (fixed-size float32 list) and NIR statistics, plus ``features.json``. The model is loaded once
per worker process and kept between tasks; a rerun resumes from the partitions already written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from geoclf.partitions import print_dashboard, read_partitions, run_partitions
from tiling.errors import InputError
from tiling.locks import locks_output
from tiling.parallel import Scheduler, check_counts, default_workers

META_FILE = "features.json"

#: Extra per-chip columns computed from NAIP's NIR band (not seen by RGB backbones).
NIR_COLUMNS = ("ndvi_mean", "ndvi_std", "nir_mean")

# One model per worker process, keyed by (backbone, weights): tasks reuse it instead of reloading.
_MODEL_CACHE: dict[tuple[str, str], Any] = {}


def load_chip_table(chips: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The chips to featurize: a chip index (``chips.parquet`` or its directory) or a PNG folder.

    Returns the table (rows with a window, or with a ``path`` for PNGs) and a description of the input.
    """
    from tiling.index import index_hash, read_index
    from tiling.materialize import read_png_folder

    path = Path(chips)
    if path.is_dir() and not (path / "chips.parquet").exists():
        table = read_png_folder(path)
        return table, {"kind": "png", "path": str(path.resolve())}
    index = read_index(path, check_rasters=True)
    table = pd.DataFrame(index.drop(columns="geometry"))
    index_file = path / "chips.parquet" if path.is_dir() else path
    attrs = index.attrs.get("geoclf", {})
    return table, {"kind": "index", "path": str(index_file.resolve()), "sha256": index_hash(index_file),
                   "chip_size_m": attrs.get("chip_size_m")}


@dataclass
class FeaturizeTask:
    """Featurize one partition of chips (runs on a worker)."""

    backbone: str
    weights: str
    chip_size: int = 224
    batch_size: int = 32
    torch_threads: int | None = None
    nir: bool = True

    def __call__(self, part: pd.DataFrame) -> pa.Table:
        import torch

        from geoclf.backbones import to_tensor
        from geoclf.chips import iter_batches
        from tiling.io import ChipReader

        backbone, extractor = self._model()
        # NIR statistics for chips of 4-band rasters; older NAIP is RGB only, and its chips get NaN there
        with_nir = np.zeros(len(part), dtype=bool)
        if self.nir and "source" in part.columns:
            with_nir = part["source"].map(_band_count).to_numpy() >= 4
        order = np.concatenate([np.flatnonzero(with_nir), np.flatnonzero(~with_nir)])
        features, extras = [], []
        with torch.inference_mode():
            for bands, rows in (((1, 2, 3, 4), part[with_nir]), ((1, 2, 3), part[~with_nir])):
                with ChipReader(bands=bands, size=self.chip_size) as reader:
                    for _, chips in iter_batches(rows, reader, self.batch_size):
                        batch = to_tensor(chips[:, :3], backbone.mean, backbone.std, size=backbone.input_size)
                        features.append(extractor(batch).float().numpy())
                        extras.append(_nir_stats(chips) if len(bands) == 4 else np.full((len(chips), 3), np.nan))
        matrix = np.empty((len(part), 0), dtype=np.float32)
        stats = np.empty((len(part), 3), dtype=np.float32)
        if features:
            matrix = np.empty((len(part), features[0].shape[1]), dtype=np.float32)
            matrix[order] = np.concatenate(features)
            stats[order] = np.concatenate(extras)
        columns = {
            "chip_id": pa.array(part["chip_id"].astype(str)),
            "label": pa.array(part["label"] if "label" in part.columns else [None] * len(part), pa.string()),
            "split": pa.array(part["split"] if "split" in part.columns else [None] * len(part), pa.string()),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1]),
        }
        for i, name in enumerate(NIR_COLUMNS):
            columns[name] = pa.array(stats[:, i])
        return pa.table(columns)

    def _model(self):
        import torch

        from geoclf.backbones import load_backbone

        threads = self.torch_threads or _worker_threads()
        if threads and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        key = (self.backbone, self.weights)
        if key not in _MODEL_CACHE:
            backbone = load_backbone(self.backbone, self.weights)
            extractor = backbone.feature_extractor().eval().to(memory_format=torch.channels_last)
            _MODEL_CACHE.clear()  # keep one model per process: memory stays bounded
            _MODEL_CACHE[key] = (backbone, extractor)
        return _MODEL_CACHE[key]


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except (ImportError, ValueError):
        return None


def _band_count(source: str) -> int:
    """Number of bands of a raster (read from its header once per worker process)."""
    if source not in _BAND_COUNTS:
        from tiling.io import open_raster

        with open_raster(source) as dataset:
            _BAND_COUNTS[source] = dataset.count
    return _BAND_COUNTS[source]


_BAND_COUNTS: dict[str, int] = {}


def _nir_stats(chips: np.ndarray) -> np.ndarray:
    """Per-chip NDVI mean and standard deviation and mean NIR (0-1), over pixels with data."""
    red = chips[:, 0].astype(np.float32)
    nir = chips[:, 3].astype(np.float32)
    ndvi = (nir - red) / np.maximum(nir + red, 1.0)
    valid = chips.any(axis=1)
    count = np.maximum(valid.sum(axis=(1, 2)), 1)
    mean = (ndvi * valid).sum(axis=(1, 2)) / count
    std = np.sqrt(np.maximum((ndvi**2 * valid).sum(axis=(1, 2)) / count - mean**2, 0))
    nir_mean = (nir * valid).sum(axis=(1, 2)) / count / 255.0
    return np.stack([mean, std, nir_mean], axis=1)


@locks_output("out")
def featurize(chips: str | os.PathLike[str], out: str | os.PathLike[str], *, backbone: str = "efficientnet_lite0",
              weights: str = "default", batch_size: int = 32, chips_per_partition: int = 512,
              scheduler: Scheduler = None, n_workers: int | None = None, nir: bool = True,
              progress: bool = True, record_run: bool = True, run_name: str | None = None,
              runs_dir: str | os.PathLike[str] | None = None) -> Path:
    """Featurize every chip of an index (or PNG folder) with a pretrained CNN; write partitions to ``out``.

    Args:
        chips: chip index (``chips.parquet`` or its directory) or a PNG folder (``split/Class/*.png``).
        out: output directory (partitions + ``features.json``); a rerun resumes.
        backbone: a name from :data:`geoclf.backbones.BACKBONES` or any torchvision classification model.
        weights: ``"default"``, ``"imagenet"``, a local weights file or ``"none"``.
        batch_size: chips per forward pass.
        chips_per_partition: chips per task/partition.
        scheduler: ``None``/``"local"`` (LocalCluster), ``"sync"``, an address or a client.
        n_workers: worker processes of a new LocalCluster (default: one per core).
        nir: also compute NDVI/NIR statistics (needs 4-band chips).
        record_run: record the run in the run history (see :mod:`geoclf.runs`).
        run_name: its name (default ``featurize-<backbone>``).
        runs_dir: runs directory or tracking URI.

    Returns:
        The output directory.
    """
    from geoclf.backbones import load_backbone

    check_counts(batch_size=batch_size, chips_per_partition=chips_per_partition, n_workers=n_workers)
    table, source = load_chip_table(chips)
    if table.empty:
        raise InputError("holds no chips", chips)
    spec = load_backbone(backbone, weights)  # fail fast here (unknown name, weights offline), not on workers
    workers = n_workers or default_workers()
    if scheduler == "sync":
        threads: int | None = default_workers()
    elif scheduler in (None, "local"):
        threads = max(1, default_workers() // workers)  # workers x torch threads = cores
    else:
        threads = None  # an existing cluster: each worker's own thread count
    task = FeaturizeTask(backbone=backbone, weights=weights, chip_size=224, batch_size=batch_size,
                         torch_threads=threads, nir=nir)
    settings = {"backbone": backbone, "weights": spec.weights_ref, "nir": nir, "source": source}
    out_dir = Path(out)
    started = time.perf_counter()
    run_partitions(table, out_dir, task, settings=settings, chips_per_partition=chips_per_partition,
                   scheduler=scheduler, n_workers=n_workers, desc="featurizing", progress=progress,
                   on_client=print_dashboard)
    seconds = time.perf_counter() - started
    meta = {
        "backbone": backbone,
        "weights": weights,
        "weights_ref": spec.weights_ref,
        "feature_layer": getattr(spec, "feature_layer", "penultimate"),
        "feature_dim": int(spec.feature_dim),
        "bands": [1, 2, 3],
        "nir_columns": list(NIR_COLUMNS) if nir else [],
        "mean": list(map(float, spec.mean)),
        "std": list(map(float, spec.std)),
        "input_size": int(spec.input_size),
        "chip_size": 224,
        "chip_size_m": source.get("chip_size_m"),
        "chips": len(table),
        "source": source,
        "task": asdict(task),
    }
    tmp = out_dir / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, out_dir / META_FILE)
    if record_run:
        from geoclf.runs import start_run

        params = {"backbone": backbone, "weights": weights, "chips": len(table), "batch_size": batch_size,
                  "nir": nir, "features_dir": str(out_dir.resolve()), "chip_source": source["path"]}
        with start_run(run_name or f"featurize-{backbone}", "featurize", params=params, runs_dir=runs_dir) as run:
            run.log_metrics({"seconds": seconds, "chips_per_second": len(table) / max(seconds, 1e-9)})
            run.log_artifact(out_dir / META_FILE)
    return out_dir


def read_features(path: str | os.PathLike[str]) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metadata and the concatenated partitions of a features directory."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.exists():
        raise InputError(f"is not a features directory (no {META_FILE}); run geoclf featurize first", path)
    return json.loads(meta_path.read_text()), read_partitions(path)
