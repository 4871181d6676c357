"""Run every benchmark with small defaults, one process each, and say how long each took (``make bench``).

The small defaults check that each benchmark runs and give rough ratios in a few minutes each; the
README's figures come from the longer commands written beside them in benchmarks/README.md. The first run
renders the 10,000 x 10,000 px synthetic scene into the work directory (about 5 minutes on this machine)
and trains the scoring model (about 1 minute); later runs reuse both.

Run: ``.venv/bin/python benchmarks/run.py [--only tiling featurize score] [--skip finetune sweep]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> (script, small-default arguments), in run order (tiling first: it renders the cached scene).
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "tiling": ("tiling_throughput.py", ["--png-chips", "512"]),  # 2 tasks of 256: both workers write
    "featurize": ("featurize_throughput.py", ["--backbones", "efficientnet_lite0", "--seconds", "10",
                                              "--bare-batches", "2"]),
    "score": ("score_throughput.py", ["--chips", "512", "--ratio-chips", "128", "--chips-per-partition", "64",
                                      "--bare-batches", "2"]),
    "runtime": ("runtime_forward.py", ["--repeats", "2", "--batches", "2"]),
    "finetune": ("finetune_throughput.py", ["--configs", "resnet18:last_only", "--repeats", "1"]),
    "sweep": ("sweep_speedup.py", ["--chips", "3000"]),
    # creates torchgeo's own environment on its first run (minutes, ~6.5 GB), then reuses it
    "torchgeo": ("torchgeo_compare.py", ["--chips", "900", "--rounds", "1", "--bare-batches", "3"]),
    "accuracy": ("accuracy.py", ["--only", "wv", "--repeats", "2"]),  # the real patches: 363 chips
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=None, help="run only these")
    parser.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[], help="leave these out")
    parser.add_argument("--work", type=Path, default=None, help="work directory of the geoclf benchmarks "
                        "(default: $GEOCLF_BENCH_DIR or ~/.cache/geoclf-bench)")
    args = parser.parse_args()
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    times: dict[str, tuple[float, int]] = {}
    for name in names:
        script, extra = BENCHMARKS[name]
        command = [sys.executable, str(HERE / script), *extra]
        if args.work is not None and script in ("tiling_throughput.py", "featurize_throughput.py",
                                                "score_throughput.py", "runtime_forward.py",
                                                "torchgeo_compare.py", "accuracy.py"):
            command += ["--work", str(args.work)]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(command)
        times[name] = (time.perf_counter() - started, code)
    print("\n=== benchmark times")
    for name, (seconds, code) in times.items():
        print(f"{name:<10} {seconds / 60:6.1f} min{'' if code == 0 else f'  FAILED (exit {code})'}")
    print(f"{'total':<10} {sum(s for s, _ in times.values()) / 60:6.1f} min")
    return max((code for _, code in times.values()), default=0)


if __name__ == "__main__":
    sys.exit(main())
