"""Inference runtimes: a network exported once to ONNX and run with OpenVINO on the CPU, or run by torch itself.

Training needs torch; inference on CPU workers does not need to be torch's. On a CPU with BF16 instructions
(AVX-512 BF16, AMX) OpenVINO runs an exported CNN about twice as fast as torch's fp32 eager forward pass
(``benchmarks/runtime_forward.py``). So a model artifact (or a features directory) may hold its network
exported to ONNX, written once when it is made, from the network geoclf itself built and trained; scoring and
featurization then run that file with OpenVINO. torch stays the reference and the fallback.

Three pieces:

- :func:`export_onnx` writes a network to ``network.onnx`` (dynamic batch, opset :data:`ONNX_OPSET`, which
  OpenVINO and ONNX Runtime both read) and returns its record (file name, SHA-256, shapes), to be stored in
  ``model.json``/``features.json``. It never exports from untrusted input: the network is one geoclf built
  from checked weights, in this process.
- :func:`verified_onnx` finds the exported file beside its record and refuses it if its SHA-256 differs from
  the recorded one (a worker must not run a network other than the one the model describes).
- :func:`open_runner` gives a :class:`Runner` - ``runner(batch) -> (N, D) float32`` - for a runtime
  (``"torch"`` or ``"openvino"``, :data:`RUNTIMES`) and a precision (``"auto"``, ``"fp32"``, ``"bf16"``,
  :data:`PRECISIONS`), within a thread budget (a Dask worker's 1-2 threads).

Why not ONNX Runtime: on this machine its CPU execution provider ran ResNet-18 at 1.0x torch fp32, where
OpenVINO reached 1.4x in fp32 and 2.0-2.8x in bf16 (issue 17's measurements, redone by the benchmark). It
would add a dependency and a code path and buy no speed; the exported file stays readable by it.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from geoclf.artifact import check_file, file_checksum
from tiling.errors import InputError
from tiling.io import PathLike, atomic_path

if TYPE_CHECKING:
    from torch import nn

#: Inference runtimes, the first being the default: torch (the reference, and what training uses) and
#: OpenVINO (the exported ONNX network on the CPU).
RUNTIMES: tuple[str, ...] = ("torch", "openvino")
RuntimeName = Literal["torch", "openvino"]

#: Inference precisions. ``auto`` is bf16 where the runtime can compute in it and the CPU has BF16 instructions
#: (OpenVINO), else fp32; torch's ``auto`` is fp32, since its bf16 (autocast) is both slower than OpenVINO's
#: and less exact.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
Precision = Literal["auto", "fp32", "bf16"]

#: ONNX opset of exported networks: read by OpenVINO (2023.0 and later) and ONNX Runtime (1.14 and later).
ONNX_OPSET = 18

#: File name of an exported network inside a model artifact or features directory.
ONNX_FILE = "network.onnx"

#: Input and output names of an exported network.
INPUT_NAME, OUTPUT_NAME = "input", "output"

#: CPU flags (Linux ``/proc/cpuinfo``) meaning the CPU computes in bfloat16 natively.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


# -- export --------------------------------------------------------------------------------------------------


def export_onnx(network: nn.Module, path: PathLike, *, input_shape: Sequence[int], opset: int = ONNX_OPSET,
                check: bool = True) -> dict[str, Any]:
    """Export a network to one ONNX file with a dynamic batch dimension; returns its record.

    The network must be one geoclf built itself (a backbone with checked weights, or a network it trained):
    exporting traces it in this process. The file is written atomically; a rerun replaces it.

    Args:
        network: the torch network, taking ``(N, *input_shape)`` float32 and returning ``(N, D)``.
        path: the ``.onnx`` file to write.
        input_shape: ``(channels, height, width)`` of one input.
        opset: ONNX opset to write.
        check: after writing, run the file on a small batch (OpenVINO in fp32 when installed) and compare with
            torch: an exporter bug then fails here, at training time, and not as a wrong map later.

    Returns:
        The record to store beside the file (``model.json``/``features.json``): ``format``, ``file`` (the file
        name), ``sha256``, ``opset``, ``input``/``output`` names, ``input_shape`` (``None`` for the batch),
        ``output_dim`` and ``exporter`` (the torch version).

    Raises:
        InputError: the network cannot be exported, or the exported file computes something else.
    """
    import torch

    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"an exported network takes (channels, height, width) inputs, not {shape}")
    target = Path(path)
    network = network.eval()
    device = next(iter(network.parameters()), torch.empty(0)).device
    if device.type != "cpu":  # the exported file must not depend on where the network happened to be
        network = network.to("cpu")
    # batch 2, not 1: torch.export specializes a dimension of size 1 to a constant
    sample = torch.rand(2, *shape, dtype=torch.float32)
    with torch.inference_mode():
        expected = network(sample).float().reshape(2, -1).numpy()
    batch = torch.export.Dim("batch", min=1)
    with atomic_path(target) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        # the exporter reports progress on stdout and warns about internals: neither is the user's business
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(network, (sample,), str(tmp), dynamo=True, external_data=False, verbose=False,
                              opset_version=int(opset), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},))
        except Exception as exc:  # the exporter raises many types; the user needs one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"the network cannot be exported to ONNX ({type(exc).__name__}: {first})",
                             target) from exc
        if not tmp.is_file():
            raise InputError("the ONNX exporter wrote no file", target)
        if check:
            _check_export(tmp, sample.numpy(), expected)
    return {"format": "onnx", "file": target.name, "sha256": file_checksum(target), "opset": int(opset),
            "input": INPUT_NAME, "output": OUTPUT_NAME, "input_shape": [None, *shape],
            "output_dim": int(expected.shape[1]), "exporter": f"torch=={torch.__version__}"}


#: Largest relative error (L2 norm of the difference over the norm of torch's output) an fp32 export may
#: show against torch on the export check. fp32 kernels of different libraries agree to ~1e-6; 1e-3 leaves
#: room for summation order, not for a wrong graph.
EXPORT_CHECK_RTOL = 1e-3


def _check_export(path: Path, sample: np.ndarray, expected: np.ndarray) -> None:
    try:
        runner = OpenVINORunner(path, precision="fp32", threads=1)
    except InputError:  # OpenVINO not installed here: the file is checked where it is first run instead
        return
    got = runner(sample)
    error = relative_error(got, expected)
    if got.shape != expected.shape or not error <= EXPORT_CHECK_RTOL:
        raise InputError(f"the exported network computes other outputs than torch (shape {got.shape} vs "
                         f"{expected.shape}, relative error {error:.2g} > {EXPORT_CHECK_RTOL:g})", path)


def verified_onnx(directory: PathLike, record: Mapping[str, Any] | None) -> Path:
    """The exported network a record describes, in ``directory``, after checking its SHA-256.

    Args:
        directory: the model artifact or features directory holding the file.
        record: what :func:`export_onnx` returned, as stored in ``model.json``/``features.json``.

    Raises:
        InputError: no export recorded (or recorded without its hash), the file is missing, or it is not the
            recorded file: a network other than the one the model describes is never run.
    """
    folder = Path(directory)
    if not record or not record.get("file") or not record.get("sha256"):
        raise InputError("has no exported network (ONNX) recorded with its sha256; export it first or use "
                         "the torch runtime", folder)
    name = str(record["file"])
    if Path(name).name != name:  # a record names a file in the directory, never a path elsewhere
        raise InputError(f"records an exported network outside its directory ({name!r})", folder)
    return check_file(folder, record, ONNX_FILE, "exported network")


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    """``||got - expected|| / ||expected||`` (L2 over the whole array): how far a runtime is from the reference."""
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        return float("inf")
    return float(np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-30))


# -- precision -----------------------------------------------------------------------------------------------


@cache
def openvino_core() -> Any:
    """The process's one OpenVINO ``Core``, made on first use and never destroyed.

    OpenVINO's CPU plugin gives the thread that loads it an alternate signal stack of its own, and when its
    ``Core`` goes, it puts back the stack it found there. With one Core per runner, two runners whose lives
    overlap and that end in the order they began (an export check's and a scoring run's, or two models'
    cached runners) leave the thread's alternate stack pointing at the freed stack of the first; the next
    signal that has a Python handler (Ctrl-C) then cannot be delivered and the kernel kills the process with
    SIGSEGV, silently, since faulthandler's handler runs on that stack too. One Core for the process keeps its
    stack alive, and loads the plugin once.

    Raises:
        ImportError: OpenVINO is not installed.
    """
    import openvino as ov

    return ov.Core()


@cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX), as OpenVINO or Linux reports it."""
    with contextlib.suppress(ImportError, RuntimeError):
        return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in text.split() for flag in BF16_CPU_FLAGS)


def resolve_precision(runtime: str, precision: str = "auto") -> str:
    """The precision a runtime computes in here: ``"fp32"`` or ``"bf16"``.

    Args:
        runtime: a name from :data:`RUNTIMES`.
        precision: ``"auto"`` (OpenVINO: bf16 where the CPU has it, else fp32; torch: fp32), ``"fp32"`` or
            ``"bf16"``.

    Raises:
        InputError: an unknown runtime or precision, or bf16 asked for on a CPU without it.
    """
    check_runtime(runtime)
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if runtime == "openvino" and cpu_has_bf16() else "fp32"
    if precision == "bf16" and not cpu_has_bf16():
        # emulated bf16 is slower than fp32 and less exact: asking for it here is a mistake worth a message
        raise InputError("precision bf16 needs a CPU with BF16 instructions (AVX-512 BF16 or AMX), which this "
                         "one lacks; use --precision fp32 or auto")
    return precision


def check_model_runtime(runtime: str, precision: str = "auto") -> bool:
    """Check a model's runtime choice; ``True`` when it is not plain torch (a runner is needed).

    Models run torch in fp32 (the reference) or OpenVINO in any precision: torch's bf16 autocast is slower than
    OpenVINO's bf16 and less exact, so it is a benchmark figure, not a choice.

    Raises:
        InputError: an unknown runtime or precision, or torch with bf16.
    """
    check_runtime(runtime)
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if runtime == "torch" and precision == "bf16":
        raise InputError("the torch runtime computes in fp32 here; bf16 needs --runtime openvino")
    return runtime != "torch"


def check_export(directory: PathLike, record: Mapping[str, Any] | None, runtime: str = "openvino",
                 precision: str = "auto") -> Path:
    """On the client, before any work: the export is there and intact, the runtime installed, the precision
    possible on this CPU. Workers check the export again when they load it.

    Raises:
        InputError: naming what is missing.
    """
    path = verified_onnx(directory, record)
    if runtime == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise InputError("the openvino runtime needs the openvino package (pip install openvino), which is "
                             "not installed here; use --runtime torch") from None
    resolve_precision(runtime, precision)
    return path


#: What scoring runs by default: OpenVINO where it pays off and is possible (:func:`choose_runtime`), else torch.
AUTO = "auto"


def cuda_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process (its device nodes), found without importing torch."""
    import os

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


def openvino_preferred() -> bool:
    """Whether :data:`AUTO` runs an exported network on OpenVINO here: the openvino package is installed and no
    CUDA GPU is visible (torch runs there)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None and not cuda_visible()


def choose_runtime(runtime: str, export: Mapping[str, Any] | None) -> str:
    """The runtime a model runs on: ``runtime`` itself, or for :data:`AUTO` OpenVINO where the model holds an
    exported network (``export``, its record) and :func:`openvino_preferred`, else torch.

    Raises:
        InputError: an unknown runtime.
    """
    if runtime != AUTO:
        return check_runtime(runtime)
    return "openvino" if export and openvino_preferred() else "torch"


def onnx_exporter_installed() -> bool:
    """Whether torch's ONNX exporter can run here: torch, onnx and onnxscript (what ``dynamo=True`` needs) are
    installed. A slim install (``geoclf[score]``) has none of them; geoclf's full install has all three."""
    import importlib.util

    try:
        return all(importlib.util.find_spec(name) is not None for name in ("torch", "onnx", "onnxscript"))
    except (ImportError, ValueError):  # an import hook that refuses the name, or a half-imported module
        return False


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of :data:`RUNTIMES`, else an InputError listing them."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown inference runtime {runtime!r}: use {' or '.join(RUNTIMES)}")
    return runtime


def thread_budget(threads: int | None = None) -> int | None:
    """The threads a runtime may use here: ``threads`` if given, else this Dask worker's thread count, else
    ``None`` (the runtime's default: every core).

    A LocalCluster worker gets ``cores / workers`` from the task (as torch does); on an existing cluster each
    worker's own ``--nthreads`` is the budget, so workers sharing a machine do not oversubscribe it.
    """
    if threads:
        return int(threads)
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError):  # not in a Dask worker
        return None


# -- running -------------------------------------------------------------------------------------------------


class Runner(ABC):
    """A network ready to run: ``runner(batch)`` maps ``(N, C, H, W)`` float32 input to ``(N, D)`` float32.

    ``batch`` is a torch tensor (any memory format; channels_last is fastest) or a numpy array. Runners are
    built inside the process that runs them (a Dask worker) and never pickled. A runner given the network's
    ``normalization`` also takes the chips themselves (:meth:`chips`).

    One batch runs at a time: threads sharing a runner (a process scoring two blocks at once, so that one's
    raster reads overlap the other's forward pass) take turns for the forward pass itself.

    Attributes:
        precision: what it computes in, ``"fp32"`` or ``"bf16"``.
        threads: the threads it may use (``None``: the runtime's default, every core).
        normalization: ``(mean, std)`` per channel of ``[0, 1]`` values, as :func:`normalize` applies them
            (``None``: the runner takes normalized input only).
    """

    #: The runtime's name, one of :data:`RUNTIMES`.
    runtime: ClassVar[str]

    def __init__(self, precision: str, threads: int | None,
                 normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        if threads is not None and int(threads) < 1:
            raise InputError(f"an inference runtime needs at least one thread, not {threads}")
        self.precision = resolve_precision(self.runtime, precision)
        self.threads = None if threads is None else int(threads)
        if normalization is not None:
            mean, std = (tuple(float(v) for v in values) for values in normalization)
            if len(mean) != len(std) or not mean or min(std) <= 0:
                raise InputError(f"a normalization needs as many means as positive stds, not {mean} and {std}")
            normalization = (mean, std)
        self.normalization = normalization
        # the forward pass already uses every thread the runner was given: two at once would share them
        self._turn = threading.Lock()

    @abstractmethod
    def __call__(self, batch: Any) -> np.ndarray:
        """Outputs of one batch, ``(N, D)`` float32."""

    def chips(self, chips: np.ndarray) -> np.ndarray:
        """Outputs of a batch of ``(N, C, H, W)`` uint8 chips of the network's input size, normalized by the
        runner's :attr:`normalization` (the same values :func:`normalize` gives, up to float rounding).

        Raises:
            InputError: the runner was built without a normalization.
        """
        if self.normalization is None:
            raise InputError(f"this {self.runtime} runner was built without the network's normalization: "
                             "give it normalized input")
        return self(normalize(chips, *self.normalization))

    def describe(self) -> dict[str, Any]:
        """What ran, for run records and benchmark tables."""
        return {"runtime": self.runtime, "precision": self.precision, "threads": self.threads}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r}, threads={self.threads})"

    def __reduce__(self) -> Any:
        raise TypeError(f"a {type(self).__name__} holds a compiled network and is not pickled: build it where it "
                        "runs (geoclf.runtime.open_runner)")


class TorchRunner(Runner):
    """torch's eager forward pass (fp32, or bf16 under CPU autocast), in inference mode, channels_last.

    Args:
        network: the torch network (eval mode is set here).
        precision: see :func:`resolve_precision`; ``auto`` is fp32.
        threads: sets ``torch.set_num_threads`` (process-wide, as torch threads are).
        device: torch device (``None``: the network's).
        normalization: ``(mean, std)`` of the network's input (see :class:`Runner`).
    """

    runtime = "torch"

    def __init__(self, network: nn.Module, precision: str = "auto", threads: int | None = None,
                 device: Any = None, normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        import torch

        super().__init__(precision, threads, normalization)
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        self.network = network.eval()
        if device is not None:
            self.network.to(device)
        self.device = next(iter(self.network.parameters()), torch.empty(0)).device

    def __call__(self, batch: Any) -> np.ndarray:
        import torch

        x = torch.as_tensor(batch, dtype=torch.float32)
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        with self._turn, torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                                enabled=self.precision == "bf16"):
            out = self.network(x)
        return out.float().reshape(len(x), -1).cpu().numpy()


class OpenVINORunner(Runner):
    """An exported ONNX network compiled by OpenVINO for the CPU.

    The input is declared NHWC to OpenVINO, so a channels_last torch tensor (what
    :func:`geoclf.backbones.to_tensor` returns) is handed over without a copy; OpenVINO's CPU plugin works in
    its own blocked layout anyway. One stream, latency mode, ``threads`` inference threads and no CPU pinning:
    a Dask worker shares the machine with other workers, and pinned threads of two processes could land on
    the same core.

    With a ``normalization``, :meth:`chips` hands the uint8 chips over as they are read (``NCHW``) to a
    second compiled model whose graph begins with the conversion to float and the normalization (OpenVINO's
    preprocessing, fused into its first layers): no float copy of the batch is made in Python. That model is
    the one compiled here; the float one is compiled on the first :meth:`__call__`, and the other way round
    without a normalization.

    Args:
        path: the ``.onnx`` file (checked by the caller, see :func:`verified_onnx`).
        precision: see :func:`resolve_precision`; ``auto`` is bf16 where the CPU has it.
        threads: inference threads (``None``: OpenVINO's default, every core).
        normalization: ``(mean, std)`` of the network's input (see :class:`Runner`).

    Raises:
        InputError: OpenVINO is not installed, or the file cannot be read or compiled.
    """

    runtime = "openvino"

    def __init__(self, path: PathLike, precision: str = "auto", threads: int | None = None,
                 normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise InputError("the openvino runtime needs the openvino package (pip install openvino), which is "
                             "not installed here; use --runtime torch") from None
        super().__init__(precision, threads, normalization)
        self.path = Path(path)
        self._compiled: dict[bool, Any] = {}
        self._requests: dict[bool, Any] = {}
        self._request(chips=self.normalization is not None)  # compiled now: a bad file is refused here

    @property
    def compiled(self) -> Any:
        """The OpenVINO compiled model built on construction (the uint8 one where there is a normalization)."""
        return self._compiled[self.normalization is not None]

    def _request(self, *, chips: bool) -> Any:
        """The infer request of the float-input model, or (``chips``) of the uint8 one, compiled on first use."""
        request = self._requests.get(chips)
        if request is not None:
            return request
        with self._turn:  # compiled once, whichever thread asks first
            request = self._requests.get(chips)
            if request is None:
                import openvino as ov
                from openvino.preprocess import PrePostProcessor

                try:
                    model = openvino_core().read_model(str(self.path))
                    ppp = PrePostProcessor(model)
                    if chips:
                        assert self.normalization is not None
                        mean, std = self.normalization
                        ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NCHW"))
                        ppp.input().preprocess().convert_element_type(ov.Type.f32) \
                            .mean([255.0 * m for m in mean]).scale([255.0 * s for s in std])
                    else:
                        ppp.input().tensor().set_layout(ov.Layout("NHWC"))
                    ppp.input().model().set_layout(ov.Layout("NCHW"))
                    config: dict[str, Any] = {
                        "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                        "PERFORMANCE_HINT": "LATENCY",
                        "NUM_STREAMS": 1,
                        "ENABLE_CPU_PINNING": False,
                    }
                    if self.threads is not None:
                        config["INFERENCE_NUM_THREADS"] = self.threads
                    compiled = openvino_core().compile_model(ppp.build(), "CPU", config)
                except RuntimeError as exc:  # OpenVINO raises RuntimeError for unreadable and uncompilable models
                    first = (str(exc).strip().splitlines() or ["?"])[0]
                    raise InputError(f"OpenVINO cannot load the exported network ({first})", self.path) from None
                self._compiled[chips] = compiled
                request = self._requests[chips] = compiled.create_infer_request()
        return request

    def __call__(self, batch: Any) -> np.ndarray:
        if hasattr(batch, "permute"):  # a torch tensor: NHWC view, free for channels_last memory
            nhwc = batch.detach().float().cpu().permute(0, 2, 3, 1).numpy()
        else:
            nhwc = np.asarray(batch, dtype=np.float32).transpose(0, 2, 3, 1)
        return self._infer(self._request(chips=False), np.ascontiguousarray(nhwc, dtype=np.float32))

    def chips(self, chips: np.ndarray) -> np.ndarray:
        if self.normalization is None:
            return super().chips(chips)  # the refusal
        if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1] != len(self.normalization[0]):
            raise InputError(f"chips must be (N, {len(self.normalization[0])}, H, W) uint8, not "
                             f"{chips.shape} {chips.dtype}")
        return self._infer(self._request(chips=True), np.ascontiguousarray(chips))

    def _infer(self, request: Any, batch: np.ndarray) -> np.ndarray:
        # share_inputs: OpenVINO reads the array in place (it stays alive for this synchronous call); the
        # outputs are copies (share_outputs is off), so the next turn cannot overwrite them
        with self._turn:
            out = next(iter(request.infer({0: batch}, share_inputs=True).values()))
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)


def normalize(chips: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(N, C, H, W)`` uint8 -> float32 ``(x / 255 - mean) / std``, computed as
    :func:`geoclf.backbones.to_tensor` computes it (one multiply and one subtraction in float32), without torch."""
    scale = np.asarray([1.0 / (255.0 * s) for s in std], dtype=np.float32).reshape(1, -1, 1, 1)
    shift = np.asarray([m / s for m, s in zip(mean, std, strict=True)], dtype=np.float32).reshape(1, -1, 1, 1)
    return chips.astype(np.float32) * scale - shift


def open_runner(runtime: str, *, network: nn.Module | None = None, onnx: PathLike | None = None,
                precision: str = "auto", threads: int | None = None, device: Any = None,
                normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> Runner:
    """A :class:`Runner` for ``runtime``: torch runs ``network``, OpenVINO the exported file ``onnx``.

    Args:
        runtime: ``"torch"`` or ``"openvino"``.
        network: the torch network (torch runtime).
        onnx: the exported network, already checked with :func:`verified_onnx` (OpenVINO runtime).
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (see :func:`resolve_precision`).
        threads: the thread budget (a Dask worker's: 1-2), ``None`` for the runtime's default.
        device: torch device (torch runtime only; OpenVINO runs on the CPU).
        normalization: ``(mean, std)`` of the network's input, for :meth:`Runner.chips`.

    Raises:
        InputError: unknown runtime or precision, a missing network or file, OpenVINO not installed.
    """
    check_runtime(runtime)
    if runtime == "torch":
        if network is None:
            raise InputError("the torch runtime needs the torch network")
        return TorchRunner(network, precision=precision, threads=threads, device=device,
                           normalization=normalization)
    if onnx is None:
        raise InputError("the openvino runtime needs the exported network (ONNX file)")
    if device is not None and str(device) != "cpu":
        raise InputError(f"the openvino runtime runs on the CPU, not {device}; use --runtime torch for it")
    return OpenVINORunner(onnx, precision=precision, threads=threads, normalization=normalization)


__all__ = [
    "AUTO",
    "ONNX_FILE",
    "ONNX_OPSET",
    "PRECISIONS",
    "RUNTIMES",
    "OpenVINORunner",
    "Runner",
    "TorchRunner",
    "check_export",
    "check_model_runtime",
    "check_runtime",
    "choose_runtime",
    "cpu_has_bf16",
    "cuda_visible",
    "export_onnx",
    "normalize",
    "onnx_exporter_installed",
    "open_runner",
    "openvino_preferred",
    "relative_error",
    "resolve_precision",
    "thread_budget",
    "verified_onnx",
]
