"""The CNN featurizer run from its exported network by an inference runtime (OpenVINO) instead of torch.

Same description as :class:`geoclf.featurizers.cnn.CNNFeaturizer` (its kind stays ``cnn``: the features are the
same features, up to the runtime's precision), same preprocessing; only the forward pass differs. The network is
the ONNX file :func:`geoclf.runtime.export_onnx` wrote from the torch network, checked against its recorded
SHA-256 in the process that runs it (a Dask worker refuses a file that is not the recorded one).

Only the network is exported. A combined featurizer (:mod:`geoclf.featurizers.combined`, geoclf's default) runs
its CNN block from the export and keeps its spectral block, numpy code with no network, as it is: the same
object computes the spectral statistics at training and at scoring time, on either runtime
(:func:`network_block`, :func:`on_runtime`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from geoclf.featurizers import Featurizer
from geoclf.featurizers.cnn import CNNFeaturizer
from geoclf.featurizers.combined import CombinedFeaturizer
from geoclf.runtime import ONNX_FILE, Runner, check_export, export_onnx, open_runner, thread_budget, verified_onnx
from tiling.errors import InputError
from tiling.io import atomic_path


@dataclass(eq=False)
class ExportedCNNFeaturizer(CNNFeaturizer):
    """A CNN featurizer whose network runs from its ONNX export on ``runtime``.

    Attributes:
        export_dir: the directory holding the export (a features directory or model artifact).
        export: the export's record (:func:`geoclf.runtime.export_onnx`), checked before the file is run.
        runtime: the inference runtime (``"openvino"``).
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (see :func:`geoclf.runtime.resolve_precision`).
        threads: the thread budget (``None``: the Dask worker's thread count, else the runtime's default).
    """

    export_dir: str = ""
    export: dict[str, Any] = field(default_factory=dict)
    runtime: str = "openvino"
    precision: str = "auto"
    threads: int | None = None
    _runner: Any = field(default=None, init=False, repr=False)

    @classmethod
    def from_featurizer(cls, featurizer: CNNFeaturizer, export_dir: str | Path, export: Mapping[str, Any], *,
                        runtime: str = "openvino", precision: str = "auto",
                        threads: int | None = None) -> ExportedCNNFeaturizer:
        """The same featurizer (description and device), run from the export in ``export_dir``."""
        described = {f.name: getattr(featurizer, f.name) for f in fields(CNNFeaturizer) if f.init}
        return cls(**described, export_dir=str(export_dir), export=dict(export), runtime=runtime,
                   precision=precision, threads=threads)

    @property
    def key(self) -> str:
        """The description's key plus the runtime, precision and export: a worker caches one of each."""
        return f"{super().key}|{self.runtime}|{self.precision}|{self.export.get('sha256')}"

    def load(self) -> ExportedCNNFeaturizer:
        """Check the export's hash and compile it now (see :meth:`runner`); returns itself."""
        self.runner()
        return self

    def runner(self) -> Runner:
        """The compiled export, built on first use after its SHA-256 is checked against the record.

        Raises:
            InputError: no export recorded, the file missing or changed, the runtime not installed.
        """
        if self._runner is None:
            path = verified_onnx(self.export_dir, self.export)
            self._runner = open_runner(self.runtime, onnx=path, precision=self.precision,
                                       threads=thread_budget(self.threads), normalization=(self.mean, self.std))
        return self._runner

    def featurize(self, chips: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S)`` uint8 RGB chips -> ``(N, feature_dim)`` float32, through the exported network.

        Chips already of the network's input size go to the runtime as they are, normalized in its graph
        (:meth:`geoclf.runtime.Runner.chips`), so a worker without torch (the ``geoclf[score]`` install)
        featurizes and scores them; chips to resize go through torch's :func:`geoclf.backbones.to_tensor`, as
        training resized them.
        """
        chips = self.check_chips(chips)
        if self.input_size is None or chips.shape[-2:] == (self.input_size, self.input_size):
            return self.runner().chips(chips)
        from geoclf.backbones import to_tensor  # here: resizing as torch did at training time needs torch

        batch = to_tensor(chips, self.mean, self.std, rgb=range(len(self.bands)), size=self.input_size)
        return self.runner()(batch)

    def __getstate__(self) -> dict[str, Any]:
        # the description and the export's place travel (to Dask workers); the compiled network does not
        return {**super().__getstate__(), "_runner": None}


#: The record of a features directory's export, beside it (``features.json`` is written only at the end).
EXPORT_RECORD = "network.json"


def network_block(featurizer: Featurizer, runtime: str = "openvino") -> CNNFeaturizer:
    """The part of a featurizer that holds its network: a CNN featurizer itself, a combined featurizer's CNN block.

    Raises:
        InputError: the featurizer has no network (spectral statistics), so there is nothing to run on ``runtime``.
    """
    if isinstance(featurizer, CombinedFeaturizer):
        return featurizer.cnn
    if isinstance(featurizer, CNNFeaturizer):
        return featurizer
    raise InputError(f"the {featurizer.kind} featurizer has no network to run on {runtime}")


def on_runtime(featurizer: Featurizer, export_dir: str | Path, export: Mapping[str, Any], *,
               runtime: str = "openvino", precision: str = "auto", threads: int | None = None) -> Featurizer:
    """The same featurizer (description, device, features up to the runtime's precision) with its network run
    from the export in ``export_dir``: a CNN featurizer becomes an :class:`ExportedCNNFeaturizer`; a combined
    one keeps its spectral block and runs its CNN block so.

    Raises:
        InputError: the featurizer has no network.
    """
    block = network_block(featurizer, runtime)
    exported = ExportedCNNFeaturizer.from_featurizer(block, export_dir, export, runtime=runtime,
                                                     precision=precision, threads=threads)
    if isinstance(featurizer, CombinedFeaturizer):
        return featurizer.with_cnn(exported)
    return exported


def export_featurizer(featurizer: Featurizer, directory: str | Path, *, runtime: str = "openvino",
                      precision: str = "auto", threads: int | None = None) -> Featurizer:
    """Export a loaded featurizer's network (:func:`network_block`) into ``directory`` (once: a rerun reuses a
    valid export) and return the featurizer that runs it there (:func:`on_runtime`).

    Raises:
        InputError: the featurizer has no network, the export fails its check, or the runtime is missing.
    """
    block = network_block(featurizer, runtime)
    folder = Path(directory)
    record_path = folder / EXPORT_RECORD
    record: dict[str, Any] | None = None
    if record_path.is_file():
        with suppress(InputError, ValueError):
            record = json.loads(record_path.read_text())
            verified_onnx(folder, record)
    if record is None or not (folder / str(record.get("file", ""))).is_file():
        size = block.input_size or 224
        record = export_onnx(block.network(), folder / ONNX_FILE, input_shape=(len(block.bands), size, size))
        with atomic_path(record_path) as tmp:
            tmp.write_text(json.dumps(record, indent=2))
    check_export(folder, record, runtime, precision)
    return on_runtime(featurizer, folder.resolve(), record, runtime=runtime, precision=precision, threads=threads)


def exported_record(featurizer: Featurizer) -> dict[str, Any]:
    """The export record a featurizer returned by :func:`on_runtime` runs (``{}`` for one on torch)."""
    block = featurizer.cnn if isinstance(featurizer, CombinedFeaturizer) else featurizer
    return dict(block.export) if isinstance(block, ExportedCNNFeaturizer) else {}


__all__ = ["EXPORT_RECORD", "ExportedCNNFeaturizer", "export_featurizer", "exported_record", "network_block",
           "on_runtime"]
