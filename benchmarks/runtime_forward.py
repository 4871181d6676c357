"""Benchmark: bare forward passes of one network on each inference runtime, side by side, as ratios to torch fp32.

For each backbone (default: ResNet-18 with random weights, EfficientNet-Lite0 with its offline ImageNet
weights), the feature network geoclf featurizes and scores with (:meth:`geoclf.backbones.Backbone.feature_extractor`)
is run on one fixed ``(32, 3, 224, 224)`` channels_last batch of normalized chips by:

* **torch fp32**: the eager forward pass under ``torch.inference_mode`` (what geoclf runs today; the reference);
* **torch bf16**: the same under CPU autocast to bfloat16;
* **OpenVINO fp32** and **OpenVINO bf16**: the network exported to ONNX by :func:`geoclf.runtime.export_onnx`
  and compiled by :class:`geoclf.runtime.OpenVINORunner` with that inference precision hint;
* **ONNX Runtime fp32** (``--onnxruntime``, when the package can be imported): the same file on its CPU
  execution provider, for the record (geoclf does not use it).

Every runtime gets the same thread budget (``--threads``, default 2 = a 1-worker LocalCluster here) and
the process runs with the glibc tunables the library gives its Dask workers (the script re-executes itself
with them when they are not set). Each round measures every runtime once, ``--batches`` batches after a
warm-up batch, in alternating order (ABBA: the order of a round is reversed in the next), with a short
pause between measurements so that one runtime's spinning threads do not eat into the next one's clock.
Per round, each runtime's rate is divided by torch fp32's of the same round; the median over rounds is
reported, beside the median rates, the chips per CPU-second and the load.

Accuracy, on the same batch: relative error of each runtime's feature vectors against torch fp32
(``||x - ref|| / ||ref||``) and the agreement of the argmax of the full ImageNet classifier's logits.

Targets (issue 17): the runtime's bare forward >= 1.8x torch fp32 in bf16 on a CPU with BF16, >= 1.3x in fp32.

Run: ``.venv/bin/python benchmarks/runtime_forward.py [--backbones resnet18:none efficientnet_lite0:default]
[--threads 2] [--batches 6] [--repeats 4] [--onnxruntime]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    command_line,
    default_work_dir,
    describe_load,
    log,
    machine_load,
    median,
)

from tiling.parallel import WORKER_GLIBC_TUNABLES

TARGET_BF16 = 1.8
TARGET_FP32 = 1.3
#: Runtimes in the order of a round (the next round reverses it).
RUNTIMES = ("torch fp32", "torch bf16", "openvino fp32", "openvino bf16")


def with_tunables() -> None:
    """Re-execute this script with the workers' glibc tunables when they are not set (glibc reads them at start)."""
    if os.environ.get("GLIBC_TUNABLES") != WORKER_GLIBC_TUNABLES:
        env = {**os.environ, "GLIBC_TUNABLES": WORKER_GLIBC_TUNABLES}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def exported(work: Path, backbone: Any, network: Any, name: str) -> Path:
    """The feature network exported to ONNX, once per backbone, weights and torch version (cached in ``work``)."""
    import torch

    from geoclf.runtime import export_onnx, verified_onnx

    weights = backbone.weights_ref.get("sha256") or backbone.weights_ref.get("weights")
    folder = work / "runtime" / f"{name}-{str(weights)[:12]}-torch{torch.__version__}"
    record_file = folder / "export.json"
    if record_file.exists():
        return verified_onnx(folder, json.loads(record_file.read_text()))
    log(f"exporting {name} to ONNX into {folder} (once)")
    started = time.perf_counter()
    record = export_onnx(network, folder / "network.onnx", input_shape=(3, backbone.input_size, backbone.input_size))
    log(f"  exported in {time.perf_counter() - started:.1f} s")
    record_file.write_text(json.dumps(record, indent=2))
    return verified_onnx(folder, record)


def onnxruntime_runner(path: Path, threads: int) -> Callable[[Any], Any] | None:
    """ONNX Runtime's CPU execution provider on the same file (``None`` when it cannot be imported)."""
    try:
        import onnxruntime as ort
    except ImportError:
        log("onnxruntime cannot be imported: its column is left out")
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batch: Any) -> Any:
        import numpy as np

        return session.run(None, {"input": np.ascontiguousarray(batch.numpy())})[0]

    return run


def measure(run: Callable[[Any], Any], batch: Any, batches: int) -> dict[str, float]:
    """Wall-clock and CPU time of ``batches`` forward passes after one warm-up pass."""
    run(batch)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        run(batch)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    chips = batches * len(batch)
    return {"chips_per_s": chips / wall, "chips_per_cpu_s": chips / max(cpu, 1e-9)}


def bench_backbone(name: str, weights: str, args: argparse.Namespace) -> dict[str, Any]:
    """All runtimes on one backbone: accuracy against torch fp32, then ``--repeats`` ABBA rounds."""
    import numpy as np
    import torch

    from geoclf.backbones import load_backbone
    from geoclf.runtime import open_runner, relative_error

    backbone = load_backbone(name, weights)
    network = backbone.feature_extractor()
    path = exported(args.work, backbone, network, name)
    rng = np.random.default_rng(0)
    chips = rng.integers(0, 256, size=(args.batch_size, 3, 224, 224), dtype=np.uint8)
    batch = backbone.preprocess(chips)  # channels_last float32, as the featurizer feeds the network
    runners: dict[str, Callable[[Any], Any]] = {
        "torch fp32": open_runner("torch", network=network, precision="fp32", threads=args.threads),
        "torch bf16": open_runner("torch", network=network, precision="bf16", threads=args.threads),
        "openvino fp32": open_runner("openvino", onnx=path, precision="fp32", threads=args.threads),
        "openvino bf16": open_runner("openvino", onnx=path, precision="bf16", threads=args.threads),
    }
    if args.onnxruntime:
        ort_run = onnxruntime_runner(path, args.threads)
        if ort_run is not None:
            runners["onnxruntime fp32"] = ort_run
    names = list(runners)
    reference = runners["torch fp32"](batch)
    accuracy = {n: relative_error(np.asarray(runners[n](batch)), reference) for n in names}
    # argmax agreement of the ImageNet classifier: the features through the backbone's own head
    head = backbone.head.eval()
    with torch.inference_mode():
        labels = {n: head(torch.from_numpy(np.asarray(runners[n](batch), dtype=np.float32))).argmax(1).numpy()
                  for n in names}
    agreement = {n: float((labels[n] == labels["torch fp32"]).mean()) for n in names}
    rounds: list[dict[str, dict[str, float]]] = []
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        result = {}
        for n in order:
            time.sleep(args.pause)
            result[n] = measure(runners[n], batch, args.batches)
        rounds.append(result)
        log(f"  {name} round {r + 1}: " + ", ".join(f"{n} {result[n]['chips_per_s']:.1f}/s" for n in names))
    rows = {}
    for n in names:
        rows[n] = {
            "chips_per_s": median([rd[n]["chips_per_s"] for rd in rounds]),
            "chips_per_cpu_s": median([rd[n]["chips_per_cpu_s"] for rd in rounds]),
            "ratio": median([rd[n]["chips_per_s"] / rd["torch fp32"]["chips_per_s"] for rd in rounds]),
            "ratio_range": [min(rd[n]["chips_per_s"] / rd["torch fp32"]["chips_per_s"] for rd in rounds),
                            max(rd[n]["chips_per_s"] / rd["torch fp32"]["chips_per_s"] for rd in rounds)],
            "relative_error": accuracy[n],
            "argmax_agreement": agreement[n],
        }
    return {"backbone": name, "weights": weights, "rows": rows, "rounds": rounds}


def verdict(name: str, ratio: float) -> str:
    target = TARGET_BF16 if name == "openvino bf16" else TARGET_FP32 if name == "openvino fp32" else None
    if target is None:
        return ""
    return f"{'met' if ratio >= target else 'missed'} (>= {target}x)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18:none", "efficientnet_lite0:default"],
                        help="NAME:WEIGHTS pairs")
    parser.add_argument("--threads", type=int, default=2, help="threads of every runtime")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=6, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=4, help="rounds (ABBA order)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between measurements")
    parser.add_argument("--onnxruntime", action="store_true", help="also ONNX Runtime, when importable")
    parser.add_argument("--work", type=Path, default=None, help="work directory (ONNX exports are cached there)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    with_tunables()
    args.work = (args.work or default_work_dir()).expanduser()
    start = machine_load()
    log(f"load at start: {start}")
    results = []
    for item in args.backbones:
        name, _, weights = item.partition(":")
        results.append(bench_backbone(name, weights or "default", args))
    end = machine_load()
    import openvino
    import torch

    print(f"\n{command_line()}")
    print(f"{describe_load(start, end)}; torch {torch.__version__}, OpenVINO {openvino.__version__}, "
          f"{args.threads} threads, batch {args.batch_size}, {args.repeats} rounds x {args.batches} batches, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES')}\n")
    print("| backbone | runtime | chips/s | chips/CPU-s | vs torch fp32 (median, range) | target | rel. error "
          "| argmax agree |")
    print("|---|---|---|---|---|---|---|---|")
    for result in results:
        for n, row in result["rows"].items():
            lo, hi = row["ratio_range"]
            print(f"| {result['backbone']} | {n} | {row['chips_per_s']:.1f} | {row['chips_per_cpu_s']:.1f} | "
                  f"**{row['ratio']:.2f}x** ({lo:.2f}-{hi:.2f}) | {verdict(n, row['ratio'])} | "
                  f"{row['relative_error']:.1e} | {100 * row['argmax_agreement']:.0f}% |")
    if args.json:
        args.json.write_text(json.dumps({"load": [start, end], "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
