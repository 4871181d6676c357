"""Featurization: every chip through a featurizer (a pretrained CNN's penultimate layer), in parallel on Dask.

Output (see docs/architecture.md): ``part-NNNNN.parquet`` partitions with ``chip_id``, ``label``, ``split``,
``features`` (fixed-size float32 list), ``baseline`` (the spectral statistics every trained model is compared
with) and NIR statistics, plus ``features.json``, which describes the
featurizer (:mod:`geoclf.featurizers`) so that a model trained on the features computes the same vectors
from chips when it scores. The featurizer is built once per worker process and kept between tasks; a rerun
resumes from the partitions already written. The client never holds a chip index whole: workers read their own
slices of it (:mod:`tiling.slices`) and send back only row counts.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa

from geoclf.chips import iter_batches
from geoclf.featurizers import Featurizer, make_featurizer
from geoclf.featurizers.spectral import SpectralFeaturizer
from geoclf.partitions import (
    check_plan_resumable,
    check_resumable,
    print_dashboard,
    read_partitions,
    run_partitions,
    run_plan,
    task_threads,
    worker_model,
)
from geoclf.runs import start_run
from geoclf.runtime import check_model_runtime
from tiling.errors import InputError
from tiling.index import index_file, index_hash, read_index
from tiling.io import ChipReader, atomic_path, nodata_mask, open_raster
from tiling.locks import locks_output
from tiling.materialize import read_png_folder
from tiling.parallel import Scheduler, check_counts
from tiling.slices import IndexSlice, check_index_file, index_attrs, plan_index_slices

META_FILE = "features.json"

#: Extra per-chip columns computed from NAIP's NIR band (not seen by RGB backbones).
NIR_COLUMNS = ("ndvi_mean", "ndvi_std", "nir_mean")

#: Column of the spectral baseline's vectors (:class:`geoclf.featurizers.spectral.SpectralFeaturizer`), which
#: ``geoclf train`` fits beside every model on the same split; ``features.json`` describes it under ``baseline``.
BASELINE_COLUMN = "baseline"

#: 1-based NAIP bands the NIR statistics read.
RED_BAND, NIR_BAND = 1, 4


def load_chip_table(chips: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The chips to featurize: a chip index (``chips.parquet`` or its directory) or a PNG folder.

    Returns the table (rows with a window, or with a ``path`` for PNGs) and a description of the input.
    """
    path = Path(chips)
    if path.is_dir() and not (path / "chips.parquet").exists():
        table = read_png_folder(path)
        return table, {"kind": "png", "path": str(path.resolve())}
    index = read_index(path, check_rasters=True)
    table = pd.DataFrame(index.drop(columns="geometry"))
    file = index_file(path)
    attrs = index.attrs.get("geoclf", {})
    return table, {"kind": "index", "path": str(file.resolve()), "sha256": index_hash(file),
                   "chip_size_m": attrs.get("chip_size_m")}


@dataclass
class FeaturizeTask:
    """Featurize one partition of chips (runs on a worker): the featurizer's vectors, the spectral baseline's
    and NIR statistics.

    Attributes:
        featurizer: what computes the feature vectors (a :class:`geoclf.featurizers.Featurizer`); it travels
            as its description, and each worker process builds it once (:func:`geoclf.partitions.worker_model`).
        chip_size: chip side in pixels chips are read at.
        batch_size: chips per :meth:`~geoclf.featurizers.Featurizer.featurize` call.
        torch_threads: threads the featurizer may use (``None``: the Dask worker's thread count).
        nir: also compute :data:`NIR_COLUMNS` from band 4 (NaN for chips without it: PNGs, RGB rasters).
        baseline: also store this featurizer's vectors in the :data:`BASELINE_COLUMN` (the spectral
            statistics every ``geoclf train`` compares its model with); ``None`` for none. Its bands must be
            on every chip (see :meth:`~geoclf.featurizers.Featurizer.for_band_count`).
    """

    featurizer: Featurizer
    chip_size: int = 224
    batch_size: int = 32
    torch_threads: int | None = None
    nir: bool = True
    baseline: Featurizer | None = None

    #: Two partitions may run at once in one process (:func:`geoclf.partitions.run_partitions`): one's chip
    #: reads and statistics while the other's network runs.
    side_by_side: ClassVar[bool] = True

    def __call__(self, part: pd.DataFrame) -> pa.Table:
        featurizer = worker_model(self.featurizer.key, self.featurizer.load, self.torch_threads)
        baseline = self.baseline
        # NIR statistics for chips of 4-band rasters; older NAIP is RGB only, and its chips get NaN there
        with_nir = np.zeros(len(part), dtype=bool)
        if self.nir and "source" in part.columns:
            with_nir = part["source"].map(_band_count).to_numpy() >= 4
        order = np.concatenate([np.flatnonzero(with_nir), np.flatnonzero(~with_nir)])
        own = tuple(featurizer.bands)
        also = () if baseline is None else tuple(baseline.bands)
        features, extras, base = [], [], []
        for rows, stats_here in ((part[with_nir], True), (part[~with_nir], False)):
            # every band anything here reads, read once: the featurizer's first, in its order
            bands = tuple(dict.fromkeys((*own, *also, *((RED_BAND, NIR_BAND) if stats_here else ()))))
            picked = [bands.index(b) for b in own]
            with ChipReader(bands=bands, size=self.chip_size) as reader:
                for _, chips in iter_batches(rows, reader, self.batch_size):
                    features.append(featurizer.featurize(chips[:, picked]))
                    if baseline is not None:
                        base.append(baseline.featurize(chips[:, [bands.index(b) for b in also]]))
                    extras.append(_nir_stats(chips, bands.index(RED_BAND), bands.index(NIR_BAND)) if stats_here
                                  else np.full((len(chips), len(NIR_COLUMNS)), np.nan))
        matrix = np.empty((len(part), featurizer.feature_dim), dtype=np.float32)
        stats = np.empty((len(part), len(NIR_COLUMNS)), dtype=np.float32)
        if features:
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
        if baseline is not None:
            vectors = np.empty((len(part), baseline.feature_dim), dtype=np.float32)
            if base:
                vectors[order] = np.concatenate(base)
            columns[BASELINE_COLUMN] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()),
                                                                         baseline.feature_dim)
        return pa.table(columns)


def _band_count(source: str) -> int:
    """Number of image bands of a raster, an alpha mask not counted (read once per process)."""
    if source not in _BAND_COUNTS:
        with open_raster(source) as dataset:
            _BAND_COUNTS[source] = dataset.count - (nodata_mask(dataset)[1] is not None)
    return _BAND_COUNTS[source]


def chip_band_count(table: pd.DataFrame) -> int:
    """The fewest image bands any chip of a chip table has (3 for PNG chips, which hold RGB)."""
    if "source" not in table.columns:
        return 3
    return min(_band_count(str(source)) for source in table["source"].unique())


_BAND_COUNTS: dict[str, int] = {}


def _nir_stats(chips: np.ndarray, red: int = 0, nir: int = 3) -> np.ndarray:
    """Per-chip NDVI mean and standard deviation and mean NIR (0-1), over pixels with data.

    Args:
        chips: ``(N, bands, S, S)`` uint8; a pixel has data unless every band is 0 (NAIP nodata).
        red, nir: positions of the red and NIR bands on the band axis.
    """
    red_band = chips[:, red].astype(np.float32)
    nir_band = chips[:, nir].astype(np.float32)
    ndvi = (nir_band - red_band) / np.maximum(nir_band + red_band, 1.0)
    valid = chips.any(axis=1)
    count = np.maximum(valid.sum(axis=(1, 2)), 1)
    mean = (ndvi * valid).sum(axis=(1, 2)) / count
    std = np.sqrt(np.maximum((ndvi**2 * valid).sum(axis=(1, 2)) / count - mean**2, 0))
    nir_mean = (nir_band * valid).sum(axis=(1, 2)) / count / 255.0
    return np.stack([mean, std, nir_mean], axis=1)


@dataclass
class FeaturizeSliceTask:
    """Featurize one slice of a chip index file (runs on a worker): it reads its own rows
    (:meth:`tiling.slices.IndexSlice.read`) and returns :class:`FeaturizeTask`'s table and a small summary."""

    featurize: FeaturizeTask

    #: as :attr:`FeaturizeTask.side_by_side` (:func:`geoclf.partitions.run_plan`)
    side_by_side: ClassVar[bool] = True

    def __call__(self, spec: IndexSlice) -> tuple[pa.Table, dict[str, Any]]:
        # by chip id within the slice, as a chip table's partitions are: an index of one partition gives the
        # very batches, hence the very vectors, it always gave
        table = self.featurize(spec.read().sort_values("chip_id", kind="stable").reset_index(drop=True))
        return table, {"chips": table.num_rows}


@locks_output("out")
def featurize(chips: str | os.PathLike[str], out: str | os.PathLike[str], *, backbone: str = "efficientnet_lite0",
              weights: str = "default", batch_size: int = 32, chips_per_partition: int = 512,
              scheduler: Scheduler = None, n_workers: int | None = None, nir: bool = True,
              spectral: bool = True, progress: bool = True, record_run: bool = True, run_name: str | None = None,
              runs_dir: str | os.PathLike[str] | None = None, runtime: str = "torch",
              precision: str = "auto") -> Path:
    """Featurize every chip of an index (or PNG folder) with a pretrained CNN; write partitions to ``out``.

    A chip index is never read whole on the client: it is checked one row group at a time and cut into slices
    of its row groups (:mod:`tiling.slices`), and each worker reads its own slice's rows; partitions follow
    the index's row order (rows by chip id within each). A PNG folder is listed on the client and cut into
    partitions by chip id.

    Args:
        chips: chip index (``chips.parquet`` or its directory) or a PNG folder (``split/Class/*.png``).
        out: output directory (partitions + ``features.json``); a rerun resumes.
        backbone: a name from :data:`geoclf.backbones.BACKBONES` or any torchvision classification model
            (or a featurizer kind of :data:`geoclf.featurizers.FEATURIZERS` that needs no backbone).
        weights: ``"default"``, ``"imagenet"``, a local weights file or ``"none"``.
        batch_size: chips per forward pass.
        chips_per_partition: chips per task/partition.
        scheduler: ``None``/``"local"`` (LocalCluster), ``"sync"``, an address or a client.
        n_workers: worker processes of a new LocalCluster (default: one per core).
        nir: also compute NDVI/NIR statistics (needs 4-band chips).
        spectral: a backbone's features beside the spectral statistics of every band, NIR included where
            every chip has it (a ``combined`` featurizer, :mod:`geoclf.featurizers.combined`); ``False``: the
            CNN's features alone. Ignored for ``backbone="spectral"``.
        record_run: record the run in the run history (see :mod:`geoclf.runs`).
        run_name: its name (default ``featurize-<backbone>``).
        runs_dir: runs directory or tracking URI.
        runtime: inference runtime of the network: ``"torch"``, or ``"openvino"`` (the network exported once to
            ``out/network.onnx``, its hash recorded in ``features.json``; see :mod:`geoclf.runtime`).
        precision: ``"auto"`` (OpenVINO: bf16 where the CPU has it, else fp32), ``"fp32"`` or ``"bf16"``.

    Returns:
        The output directory.
    """
    check_counts(batch_size=batch_size, chips_per_partition=chips_per_partition, n_workers=n_workers)
    path = Path(chips)
    table: pd.DataFrame | None = None
    plan: list[IndexSlice] = []
    if path.is_dir() and not (path / "chips.parquet").exists():
        table, source = load_chip_table(path)
        if table.empty:
            raise InputError("holds no chips", chips)
        count, bands = len(table), chip_band_count(table)
    else:
        facts = check_index_file(path, check_rasters=True)
        source = {"kind": "index", "path": str(facts.path.resolve()), "sha256": index_hash(facts.path),
                  "chip_size_m": index_attrs(facts.path).get("chip_size_m")}
        count, bands = facts.rows, min(_band_count(s) for s in facts.sources)
        plan = plan_index_slices(facts.path, chips_per_partition)
    # loaded here, on the client: a bad name or weights offline fail now in one line, not on every worker
    # on the CPU even where there is a GPU, as geoclf always featurized
    featurizer = make_featurizer(backbone, weights, device="cpu", spectral=spectral)
    featurizer = featurizer.for_band_count(bands)  # NIR where every chip has it
    baseline = SpectralFeaturizer().for_band_count(bands)
    threads = task_threads(scheduler, n_workers)
    described = featurizer.describe()
    settings = {"backbone": backbone, "weights": described.get("weights_ref"), "nir": nir, "source": source,
                "featurizer": featurizer.kind,
                "baseline": baseline.describe()}
    out_dir = Path(out)
    exported: dict[str, Any] = {}
    if check_model_runtime(runtime, precision):
        from geoclf.featurizers.exported import export_featurizer, exported_record

        settings["runtime"] = {"runtime": runtime, "precision": precision}  # never mixed with torch's vectors
        # before the export writes into out_dir: a refused rerun must leave that directory as it was
        if table is not None:
            check_resumable(table, out_dir, chips_per_partition, settings)
        else:
            check_plan_resumable(plan, out_dir, settings)
        featurizer = export_featurizer(featurizer, out_dir, runtime=runtime, precision=precision, threads=threads)
        exported = {"export": exported_record(featurizer), "runtime": settings["runtime"]}
    task = FeaturizeTask(featurizer, chip_size=224, batch_size=batch_size, torch_threads=threads, nir=nir,
                         baseline=baseline)
    started = time.perf_counter()
    run = {"scheduler": scheduler, "n_workers": n_workers, "desc": "featurizing", "progress": progress,
           "on_client": print_dashboard}
    if table is not None:
        run_partitions(table, out_dir, task, settings=settings, chips_per_partition=chips_per_partition, **run)
    else:
        run_plan(plan, out_dir, FeaturizeSliceTask(task), settings=settings, **run)
    seconds = time.perf_counter() - started
    normalization = {k: described.pop(k) for k in ("mean", "std", "input_size") if k in described}
    meta = {
        **described,
        "weights": weights if "weights_ref" in described else None,  # as given; weights_ref says which file
        "nir_columns": list(NIR_COLUMNS) if nir else [],
        **normalization,  # after nir_columns, where features.json always had it
        "baseline": baseline.describe(),
        "chip_size": 224,
        "chip_size_m": source.get("chip_size_m"),
        "chips": count,
        "source": source,
        "task": {"backbone": backbone, "weights": weights, "chip_size": task.chip_size, "batch_size": batch_size,
                 "torch_threads": threads, "nir": nir, "spectral": spectral},
        **exported,
    }
    with atomic_path(out_dir / META_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=str))
    if record_run:
        params = {"backbone": backbone, "weights": weights, "chips": count, "batch_size": batch_size,
                  "nir": nir, "spectral": spectral, "featurizer": featurizer.kind,
                  "features_dir": str(out_dir.resolve()), "chip_source": source["path"]}
        with start_run(run_name or f"featurize-{backbone}", "featurize", params=params, runs_dir=runs_dir) as run:
            run.log_metrics({"seconds": seconds, "chips_per_second": count / max(seconds, 1e-9)})
            run.log_artifact(out_dir / META_FILE)
    return out_dir


def read_features(path: str | os.PathLike[str]) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metadata and the concatenated partitions of a features directory."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.exists():
        raise InputError(f"is not a features directory (no {META_FILE}); run geoclf featurize first", path)
    # by chip id, whatever the partitions' order (a PNG folder's are by chip id, an index's follow its rows):
    # what a model is trained on never depends on how the work was cut
    frame = read_partitions(path).sort_values("chip_id", kind="stable").reset_index(drop=True)
    return json.loads(meta_path.read_text()), frame
