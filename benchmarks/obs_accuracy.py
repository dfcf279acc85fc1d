"""Structured pruning of the digits models: test accuracy vs share of channels/neurons removed.

`--ratio r` removes r of every prunable group's channels (hidden neurons, conv channels; the output
layer is frozen), no retraining. Calibration: models/digits_train.npz (1000 samples); accuracy:
models/digits_test.npz (797 samples) in onnxruntime (CPU).

Columns: obs (structured OBS, `--no-sequential`: one statistics pass), obs/seq (`--sequential
--sequential-passes 0`: one pass per wave; obs's default is sequential with at most 4 passes on models
with >= 3 waves of groups, see benchmarks/obs_sequential.py), magnitude (L2 norm of
each channel's producer weights), merge (data-free neuron merging; shown only when the method is
registered). `params` is the share of parameters left by obs at that ratio.

    python benchmarks/obs_accuracy.py [--models mlp lenet5 resnet_digits] [--ratios 0.25 0.5 0.75]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from onnxprune import PruneOptions, prune
from onnxprune.methods.registry import METHODS

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
RATIOS = (0.25, 0.5, 0.75)
VARIANTS = {
    "obs": ("obs", {"sequential": False}),
    "obs/seq": ("obs", {"sequential": True, "sequential_passes": 0}),
    "magnitude": ("magnitude", {}),
    "merge": ("merge", {}),
}


def run(name: str, method: str, ratio: float, extra: dict) -> dict:
    result = prune(
        MODELS / f"{name}.onnx",
        method,
        PruneOptions(ratio=ratio, extra=extra),
        batch_size=64,
        calibration=MODELS / "digits_train.npz",
        calib_samples=1000,
        validation_data=MODELS / "digits_test.npz",
        validate_samples=797,
        providers="cpu",
    )
    return result.report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet5", "resnet_digits"])
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    args = parser.parse_args()
    variants = {k: v for k, v in VARIANTS.items() if v[0] in METHODS}
    missing = sorted(set(VARIANTS) - set(variants))
    if missing:
        print(f"(not registered, left out: {', '.join(missing)})")
    for name in args.models:
        dense = run(name, "magnitude", 0.0, {})["validation"]["accuracy_before"]
        print(f"\n### {name}.onnx (dense test accuracy {dense:.4f})\n")
        print("| removed | params | " + " | ".join(variants) + " | seconds |")
        print("|---" * (len(variants) + 3) + "|")
        for ratio in args.ratios:
            start = time.perf_counter()
            reports = {k: run(name, method, ratio, extra) for k, (method, extra) in variants.items()}
            seconds = time.perf_counter() - start
            share = reports["obs"]["params_after"] / reports["obs"]["params_before"]
            cells = " | ".join(f"{r['validation']['accuracy_after']:.4f}" for r in reports.values())
            print(f"| {ratio:.0%} | {share:.0%} | {cells} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
