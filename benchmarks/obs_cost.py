"""Cost of `prune --method obs` on a ResNet-50-sized model, against one plain onnxruntime pass.

Model: benchmarks/resnet50.py (bottleneck stages [3, 4, 6, 3], BatchNormalization after every Conv,
about 25.6M parameters, random weights, built with onnx.helper: no download). Data: random normal
images [N, 3, 224, 224] (seed 0) stand in for calibration images; the timing does not depend on the
values. Each measurement runs in a fresh subprocess on the CPU provider:

- `ort`: one onnxruntime pass over the N images in batches (median of `--repeat` runs; session as
  onnxprune creates it, graph optimizations off; and, for reference, with all optimizations on),
  session creation excluded;
- `prune`: the whole `onnxprune prune MODEL -o OUT --method obs --ratio 0.5 --no-sequential --calib
  images.npz` in-process (load, analysis, statistics pass, Hessians, greedy OBS, shrink, checker,
  save), with `--no-validate` (median of `--repeat` runs), with the default validation (both models
  run once more over the images), and with `--max-positions 1024` (fewer sampled positions per batch
  for the Conv Hessians); and once with obs's default (on this deep model: --sequential, at most 4
  statistics passes).

Peak memory is the process's own RSS high-water mark (VmHWM; ru_maxrss would survive the exec and
report the benchmark's own peak). The bound it is compared with is the
model in memory (x3: the loaded proto, the working copy and onnxruntime's copy), the float64 Hessians
of every consumer layer (x2: the statistics and the inverse), and one batch of the exposed
activations, on top of the RSS of the plain onnxruntime pass.

    python benchmarks/obs_cost.py [--images 128] [--batch-size 32] [--repeat 3] [--no-default]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from resnet50 import build_resnet50  # noqa: E402

_ORT = r"""
import json, re, sys, time
import numpy as np
from onnxprune import runtime
path, images, batch, optimize = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
x = np.load(images)["image"]
session = runtime.session(path, ["CPUExecutionProvider"], optimize=optimize)
start = time.perf_counter()
for i in range(0, len(x), batch):
    runtime.run(session, {"image": x[i : i + batch]})
seconds = time.perf_counter() - start
peak = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
print(json.dumps({"seconds": seconds, "maxrss_mb": peak}))
"""

_PRUNE = r"""
import json, re, sys, time
start = time.perf_counter()
from onnxprune import PruneOptions, prune, save_model
path, images, batch, count, validate, out, positions, sequential = sys.argv[1:9]
extra = {"max_positions": int(positions)}
if sequential != "auto":
    extra["sequential"] = sequential == "1"
options = PruneOptions(ratio=0.5, extra=extra)
result = prune(path, "obs", options, calibration=images, calib_samples=int(count), providers="cpu",
               batch_size=int(batch), run_validation=validate == "1", holdout=0.0, validate_samples=256)
save_model(result.model, out)
seconds = time.perf_counter() - start
report = result.report
print(json.dumps({
    "seconds": seconds,
    "stages": report["seconds"],
    "params": [report["params_before"], report["params_after"]],
    "macs": [report["macs_before"], report["macs_after"]],
    "statistics_passes": report["steps"][0].get("statistics_passes"),
    "statistics": [p["seconds"] for p in report["statistics"]],
    "maxrss_mb": int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024,
}))
"""


def child(code: str, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(runs: list[dict]) -> dict:
    """The run with the median time."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def memory_bound(model_path: Path, batch: int) -> dict:
    """MB of the model, of the consumer Hessians, and of one batch of exposed activations."""
    from onnxprune.graph import GraphIndex
    from onnxprune.io import load_model
    from onnxprune.layers import obs_layers

    model = load_model(model_path)
    index = GraphIndex.build(model)
    layers = [layer for layer in obs_layers(index)[0].values() if layer.input not in index.input_names]
    hessians = sum(layer.groups * layer.width**2 * 8 for layer in layers)
    activations = 0
    for name in {layer.input for layer in layers}:
        shape = index.shape(name)
        activations += batch * int(np.prod([d for d in shape[1:]])) * 4
    mb = 2**20
    return {"model": model_path.stat().st_size / mb, "hessians": hessians / mb, "activations": activations / mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the ORT pass and of the bare prune (median)")
    parser.add_argument(
        "--no-default", dest="default", action="store_false", help="skip the run with obs's default --sequential"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model_path, images, out = folder / "resnet50.onnx", folder / "images.npz", folder / "pruned.onnx"
        from onnxprune.io import save_model

        save_model(build_resnet50(), model_path)
        x = np.random.default_rng(0).standard_normal((args.images, 3, 224, 224)).astype(np.float32)
        np.savez(images, image=x)
        del x
        wall = time.perf_counter()
        ort_runs = [child(_ORT, model_path, images, args.batch_size, 0) for _ in range(args.repeat)]
        ort_opt = child(_ORT, model_path, images, args.batch_size, 1)
        common = (model_path, images, args.batch_size, args.images)
        bare_runs = [child(_PRUNE, *common, 0, out, 4096, 0) for _ in range(args.repeat)]
        full = child(_PRUNE, *common, 1, out, 4096, 0)
        fewer = child(_PRUNE, *common, 0, out, 1024, 0)
        default = child(_PRUNE, *common, 0, out, 4096, "auto") if args.default else None
        bound = memory_bound(model_path, args.batch_size)
        wall = time.perf_counter() - wall
    ort, bare = median(ort_runs), median(bare_runs)
    print(f"ResNet-50-sized model, {args.images} random images 3x224x224, batch {args.batch_size}, CPU")
    ort_times = ", ".join(f"{r['seconds']:.1f}" for r in ort_runs)
    prune_times = ", ".join(f"{r['seconds']:.1f}" for r in bare_runs)
    print(f"(median of {args.repeat} runs where marked; all runs: ORT pass {ort_times} s, prune {prune_times} s)\n")
    print("| run | seconds | x plain ORT pass (opt. off) | x ORT pass (opt. on) | peak RSS MB |")
    print("|---|---|---|---|---|")
    print(
        f"| onnxruntime pass, optimizations off (median) | {ort['seconds']:.1f} | 1.00 | - | {ort['maxrss_mb']:.0f} |"
    )
    print(f"| onnxruntime pass, optimizations on | {ort_opt['seconds']:.1f} | - | 1.00 | {ort_opt['maxrss_mb']:.0f} |")
    runs = [
        ("prune --method obs --no-sequential --no-validate (median)", bare),
        ("prune --method obs --no-sequential (with validation)", full),
        ("prune --method obs --no-sequential --no-validate --max-positions 1024", fewer),
    ]
    if default is not None:
        runs.append((f"prune --method obs --no-validate (default: {default['statistics_passes']} passes)", default))
    for name, run in runs:
        print(
            f"| {name} | {run['seconds']:.1f} | {run['seconds'] / ort['seconds']:.2f} | "
            f"{run['seconds'] / ort_opt['seconds']:.2f} | {run['maxrss_mb']:.0f} |"
        )
    stages = ", ".join(f"{k} {v:.1f}" for k, v in bare["stages"].items())
    print(f"\nstages of the median one-shot --no-validate run (s): {stages}")
    statistics = sum(bare["statistics"])
    rest = bare["seconds"] - sum(bare["stages"].values())
    print(
        f"profile of that run: statistics pass {statistics:.1f} s ({statistics / ort_opt['seconds']:.2f}x the "
        f"optimized ORT pass), Hessian inverses + greedy OBS {bare['stages']['decide'] - statistics:.1f} s, "
        f"load + analysis + shrink (incl. checker) {bare['seconds'] - bare['stages']['decide'] - rest:.1f} s, "
        f"imports + save {rest:.1f} s"
    )
    print(
        f"targets (issue 16): <= 3x the plain pass: {bare['seconds'] / ort['seconds']:.2f}x; "
        f"<= 5x the optimized pass: {bare['seconds'] / ort_opt['seconds']:.2f}x"
    )
    print(f"params {bare['params'][0]:,} -> {bare['params'][1]:,}; MACs {bare['macs'][0]:,} -> {bare['macs'][1]:,}")
    limit = ort["maxrss_mb"] + 3 * bound["model"] + 2 * bound["hessians"] + bound["activations"]
    print(
        f"memory bound: ORT pass RSS {ort['maxrss_mb']:.0f} + 3 x model {bound['model']:.0f} + 2 x Hessians "
        f"{bound['hessians']:.0f} + one batch of activations {bound['activations']:.0f} = {limit:.0f} MB; "
        f"peak RSS of prune {bare['maxrss_mb']:.0f} MB"
    )
    print(f"(benchmark wall time {wall:.0f} s)")


if __name__ == "__main__":
    main()
