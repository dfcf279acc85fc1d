"""What each method costs on a ResNet-50-sized model, for the README's "Which method?" table.

Model: benchmarks/resnet50.py (bottleneck stages [3, 4, 6, 3], BatchNormalization after every Conv,
about 25.6M parameters, random weights, built with onnx.helper: no download). Calibration: the same
random normal images [N, 3, 224, 224] (seed 0) for every method; the timing does not depend much on
the values. Every method runs at `--ratio` (default 0.5; relief has no ratio, its defaults alpha-fc
0.95 / alpha-conv 0.9 decide) as

    prune(MODEL, METHOD, PruneOptions(ratio, extra=...), calibration=images, run_validation=False)

in a fresh process on the CPU provider (imports, load, analysis, statistics, decision, shrink,
checker), so `seconds` is the wall time of the whole `onnxprune prune ... --no-validate` minus
the write. A run longer than `--timeout` seconds is stopped and reported as `> TIMEOUT`.
Kept shares: parameters (stored entries), nonzero parameters, MACs (from static shapes), and the file
size of the dense model and of the same model with `--sparse-storage` (COO sparse initializers).

    python benchmarks/method_cost.py [--images 64] [--ratio 0.5] [--timeout 1200] [--only obs,wanda]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from resnet50 import build_resnet50  # noqa: E402

#: (label, method, method-specific options, ratio or None for --ratio): the runs of the table, in order.
#: The unstructured methods also run at 0.8: COO storage only pays below 1/3 density (passes/sparse.py).
RUNS = (
    ("magnitude", "magnitude", {}, None),
    ("random", "random", {}, None),
    ("merge", "merge", {}, None),
    ("wanda --structured", "wanda", {"structured": True}, None),
    ("obs", "obs", {}, None),
    ("obs --sequential", "obs", {"sequential": True}, None),
    ("wanda", "wanda", {}, None),
    ("wanda --ratio 0.8", "wanda", {}, 0.8),
    ("relief", "relief", {}, None),
    ("lobs --lobs-allocation layer", "lobs", {"lobs_allocation": "layer"}, None),
    ("lobs --lobs-allocation layer --ratio 0.8", "lobs", {"lobs_allocation": "layer"}, 0.8),
    ("lobs (default: global allocation)", "lobs", {}, None),
)

_CHILD = r"""
import json, sys, time
start = time.perf_counter()
from onnxprune import PruneOptions, prune
from onnxprune.passes import PASSES, PassManager
path, images, batch, ratio, method, extra = sys.argv[1:7]
extra = json.loads(extra)
options = PruneOptions(ratio=float(ratio), extra=extra)
result = prune(path, method, options, calibration=images, calib_samples=10**9, providers="cpu",
               batch_size=int(batch), run_validation=False)
seconds = time.perf_counter() - start
report = result.report
sparse = PassManager([PASSES["sparse-storage"]]).run(result.model).ByteSize()
print(json.dumps({
    "seconds": seconds,
    "params": [report["params_before"], report["params_after"], report["nonzero_params_after"]],
    "macs": [report["macs_before"], report["macs_after"]],
    "bytes": [report["file_bytes_before"], report["file_bytes_after"], sparse],
}))
"""


def run(model: Path, images: Path, batch: int, ratio: float, method: str, extra: dict, timeout: float) -> dict | None:
    """The child's measurements, or None when it ran past `timeout` seconds."""
    args = [sys.executable, "-c", _CHILD, str(model), str(images), str(batch), str(ratio), method, json.dumps(extra)]
    try:
        done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        raise RuntimeError(f"{method} {extra}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(label: str, result: dict | None, timeout: float) -> str:
    if result is None:
        return f"| {label} | > {timeout:.0f} | | | | | |"
    params_before, params_after, nonzero = result["params"]
    macs_before, macs_after = result["macs"]
    bytes_before, dense, sparse = result["bytes"]
    return (
        f"| {label} | {result['seconds']:.1f} | {params_after / params_before:.3f} | {nonzero / params_before:.3f} | "
        f"{macs_after / macs_before:.3f} | {dense / bytes_before:.3f} | {sparse / bytes_before:.3f} |"
    )


def _size(path: Path) -> tuple[int, int]:
    """Parameters and MACs of the model as onnxprune counts them."""
    from onnxprune import inspect_model

    totals = inspect_model(path)[1]
    return totals["params"], totals["macs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per run before it is stopped")
    parser.add_argument("--only", default=None, help="comma-separated labels' first words (e.g. obs,wanda)")
    args = parser.parse_args()
    chosen = [r for r in RUNS if args.only is None or r[0].split()[0] in args.only.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model, images = folder / "resnet50.onnx", folder / "images.npz"
        from onnxprune.io import save_model

        save_model(build_resnet50(), model)
        x = np.random.default_rng(0).standard_normal((args.images, 3, 224, 224)).astype(np.float32)
        np.savez(images, image=x)
        del x
        wall = time.perf_counter()
        params, macs = _size(model)
        print(f"ResNet-50-sized model ({params:,} params, {macs:,} MACs), {args.images} random images 3x224x224")
        print(f"(batch {args.batch_size}), CPU provider,")
        print(f"--ratio {args.ratio} unless the row says otherwise (relief: its alpha defaults), no validation;")
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"kept = share of the original; load average at the start: {load}\n")
        print("| method | seconds | params kept | nonzero kept | MACs kept | file kept | file kept, --sparse-storage |")
        print("|---|---|---|---|---|---|---|")
        for label, method, extra, ratio in chosen:
            result = run(model, images, args.batch_size, ratio or args.ratio, method, extra, args.timeout)
            print(row(label, result, args.timeout), flush=True)
        print(f"\n(benchmark wall time {time.perf_counter() - wall:.0f} s)")


if __name__ == "__main__":
    main()
