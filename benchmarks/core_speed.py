"""Core speed and memory on a ResNet-50-sized model: `inspect` and `prune --method magnitude`.

Each measurement runs in a fresh subprocess. Peak memory is the process's RSS high-water mark (VmHWM)
minus its RSS right after imports (Python, numpy, onnx, onnxruntime), compared with the model file
size. Validation (both models in onnxruntime on 8 random images) is timed separately.

    python benchmarks/core_speed.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
from resnet50 import build_resnet50  # noqa: E402

_CHILD = r"""
import json, sys, time
import onnxprune
from onnxprune import io, pipeline
from onnxprune.methods.base import PruneOptions

def status_mb(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
def rss_mb():
    return status_mb('VmRSS')
base = rss_mb()
mode, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.perf_counter()
if mode == 'inspect':
    analysis, totals = pipeline.inspect_model(src)
    seconds = {'total': time.perf_counter() - t}
else:
    result = pipeline.prune(src, 'magnitude', PruneOptions(ratio=0.5), run_validation=(mode == 'validate'))
    t_save = time.perf_counter()
    io.save_model(result.model, dst)
    seconds = dict(result.report['seconds'])
    seconds['save'] = time.perf_counter() - t_save
    seconds['total'] = time.perf_counter() - t
peak = status_mb('VmHWM')  # this process's own high-water mark (ru_maxrss survives exec)
print(json.dumps({'seconds': seconds, 'base_mb': base, 'peak_mb': peak}))
"""


def run(mode: str, src: Path, dst: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(src), str(dst)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "resnet50.onnx", Path(tmp) / "pruned.onnx"
        model = build_resnet50()
        onnx.save_model(model, str(src))
        size_mb = src.stat().st_size / 2**20
        params = sum(int(__import__("numpy").prod(t.dims)) for t in model.graph.initializer)
        print(f"model: ResNet-50-sized, {params / 1e6:.2f}M params, file {size_mb:.1f} MiB")
        rows = []
        for mode in ("inspect", "prune", "validate"):
            result = run(mode, src, dst)
            extra = result["peak_mb"] - result["base_mb"]
            rows.append((mode, result["seconds"], extra))
        print()
        print("| run | stages (s) | total (s) | peak RSS above baseline | x model size |")
        print("|---|---|---|---|---|")
        for mode, seconds, extra in rows:
            stages = ", ".join(f"{k} {v:.2f}" for k, v in seconds.items() if k != "total")
            label = {
                "inspect": "inspect",
                "prune": "prune magnitude 0.5 (no validation)",
                "validate": "prune magnitude 0.5 + validation",
            }[mode]
            print(f"| {label} | {stages} | {seconds['total']:.2f} | {extra:.0f} MiB | {extra / size_mb:.2f} |")
        if dst.exists():
            print(f"\npruned file: {dst.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
