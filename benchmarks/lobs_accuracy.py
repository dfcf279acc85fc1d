"""Unstructured pruning of the digits models: test accuracy vs density for L-OBS and magnitude.

Calibration: models/digits_train.npz (1000 samples); accuracy: models/digits_test.npz (797 samples),
both models run in onnxruntime (CPU). Density = share of Gemm/Conv weights kept (biases not counted).

Columns:
- exact/layer: `--method lobs --lobs-allocation layer` (OBC greedy), every layer keeps the same density;
- exact/global: `--lobs-allocation global` (same overall density, spread so that every layer has the
  same relative error);
- exact/global/seq: the same with `--sequential` (statistics of layer l+1 on the model pruned up to l,
  target = the original output);
- output, output/seq: `--lobs-allocation output` (same overall density, spread by each layer's measured
  effect on the model outputs), without and with `--sequential` (with it, the curves of each wave are
  measured again on the model pruned so far); output/seq/bn-ignore: the same with `--lobs-batchnorm
  ignore` (every other variant absorbs a BatchNorm that follows a layer: the error is measured after
  the BN and a bias-free conv gets its bias through the BN mean; the models without BN do not change);
- faithful/layer: `--lobs-mode faithful` (one L-OBS ranking, no downdates), same density per layer
  (its predicted errors are too optimistic to drive a global allocation);
- magnitude/layer, magnitude/global: zero the smallest |w| of each layer / of all layers at once,
  no compensation (the classic baseline, computed here on the same weights).

The density-per-layer table: what the global and the output allocations (both sequential) give each
layer at 10% overall density.

The N:M table (`--pattern N:M`, 50% density in every layer whose input size is a multiple of M; the
others stay dense): lobs (compensated, the SparseGPT sweep with N:M masks), lobs/seq (the same with
`--sequential`), wanda (mask only) and magnitude (the N largest |w| of every group of M, no update), and
how many layers conform / were pruned.

The storage table: file bytes at 10% density, dense initializers vs `--sparse-storage` (COO sparse
initializers, which onnxruntime densifies at load), with the test accuracy of both files.

    python benchmarks/lobs_accuracy.py [--models mlp lenet5 resnet_digits] [--densities 0.5 0.1]
        [--tables density patterns storage layers]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from onnxprune import PruneOptions, prune
from onnxprune.feeds import load_dataset
from onnxprune.graph import GraphIndex
from onnxprune.io import load_model
from onnxprune.layers import masking_layers, obs_layers, with_updates
from onnxprune.methods.nm_pattern import parse_pattern, pattern_keep
from onnxprune.validate import validate

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
DENSITIES = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02)
LOBS_VARIANTS = {
    "exact/layer": {"lobs_mode": "exact", "lobs_allocation": "layer"},
    "exact/global": {"lobs_mode": "exact", "lobs_allocation": "global"},
    "exact/global/seq": {"lobs_mode": "exact", "lobs_allocation": "global", "sequential": True},
    "output": {"lobs_mode": "exact", "lobs_allocation": "output"},
    "output/seq": {"lobs_mode": "exact", "lobs_allocation": "output", "sequential": True},
    "output/seq/bn-ignore": {"lobs_allocation": "output", "sequential": True, "lobs_batchnorm": "ignore"},
    "faithful/layer": {"lobs_mode": "faithful", "lobs_allocation": "layer"},
}


def lobs_accuracy(name: str, density: float, extra: dict) -> float:
    return lobs_result(name, density, extra).report["validation"]["accuracy_after"]


def lobs_result(name: str, density: float, extra: dict, method: str = "lobs"):
    options = PruneOptions(ratio=1.0 - density, extra=extra)
    return prune(
        MODELS / f"{name}.onnx",
        method,
        options,
        batch_size=64,
        calibration=MODELS / "digits_train.npz",
        calib_samples=1000,
        validation_data=MODELS / "digits_test.npz",
        validate_samples=797,
        providers="cpu",
    )


def layer_rows(name: str, density: float, variants: tuple[str, ...]) -> list[str]:
    """Per layer: its weights and the density each variant gave it (same overall density)."""
    index = GraphIndex.build(load_model(MODELS / f"{name}.onnx"))
    sizes = {layer.node: layer.outputs * layer.inputs for layer in obs_layers(index)[0].values()}
    notes = [lobs_result(name, density, LOBS_VARIANTS[v]).report["steps"][0]["layers"] for v in variants]
    by_layer = [{n["layer"]: n["density"] for n in layers} for layers in notes]
    return [
        f"| {name} | {node} | {size:,} | " + " | ".join(f"{d[node]:.3f}" for d in by_layer) + " |"
        for node, size in sizes.items()
    ]


def magnitude_accuracy(model, test, density: float, scope: str) -> float:
    """Zero the smallest |w| (per layer or over all layers) of every Gemm/MatMul/Conv weight."""
    index = GraphIndex.build(model)
    weights = {layer.weight: np.asarray(index.constant(layer.weight)) for layer in obs_layers(index)[0].values()}
    if scope == "global":
        everything = np.concatenate([np.abs(w).reshape(-1) for w in weights.values()])
        thresholds = dict.fromkeys(weights, _threshold(everything, density))
    else:
        thresholds = {name: _threshold(np.abs(w).reshape(-1), density) for name, w in weights.items()}
    updates = {name: np.where(np.abs(w) >= thresholds[name], w, 0).astype(w.dtype) for name, w in weights.items()}
    pruned = with_updates(model, updates)
    return validate(model, pruned, test.feeds, test.labels, ["CPUExecutionProvider"])["accuracy_after"]


def _threshold(magnitudes: np.ndarray, density: float) -> float:
    keep = max(1, int(round(density * magnitudes.size)))
    return float(np.sort(magnitudes)[::-1][keep - 1])


PATTERNS = ("2:4", "4:8")
PATTERN_VARIANTS = {"lobs": ("lobs", {}), "lobs/seq": ("lobs", {"sequential": True}), "wanda": ("wanda", {})}


def pattern_cells(name: str, model, test, pattern: str) -> tuple[list[float], str]:
    """Accuracies of the PATTERN_VARIANTS and magnitude with `pattern`, and 'conforming/layers' (lobs)."""
    cells, conforming = [], ""
    for method, extra in PATTERN_VARIANTS.values():
        result = lobs_result(name, 0.5, {"pattern": pattern, **extra}, method)
        cells.append(result.report["validation"]["accuracy_after"])
        report = result.report["steps"][0]["pattern"]
        conforming = conforming or f"{report['conforming_layers']}/{report['layers']}"
    return cells + [magnitude_pattern_accuracy(model, test, pattern)], conforming


def magnitude_pattern_accuracy(model, test, pattern: str) -> float:
    """Keep the N largest |w| of every group of M inputs (per output and kernel tap), no update."""
    index = GraphIndex.build(model)
    updates = {}
    for layer in masking_layers(index).values():
        weight = np.asarray(index.constant(layer.weight))
        matrix = layer.oik(weight)
        updates[layer.weight] = layer.from_oik(matrix * pattern_keep(np.abs(matrix), parse_pattern(pattern)))
    pruned = with_updates(model, updates)
    return validate(model, pruned, test.feeds, test.labels, ["CPUExecutionProvider"])["accuracy_after"]


def storage_row(name: str, density: float) -> str:
    """File bytes of the model pruned by lobs (exact, global) without and with --sparse-storage."""
    sizes = []
    for sparse in (False, True):
        extra = {"lobs_allocation": "global"}
        result = prune(
            MODELS / f"{name}.onnx",
            "lobs",
            PruneOptions(ratio=1.0 - density, extra=extra),
            batch_size=64,
            sparse_storage=sparse,
            calibration=MODELS / "digits_train.npz",
            calib_samples=1000,
            validation_data=MODELS / "digits_test.npz",
            validate_samples=797,
            providers="cpu",
        )
        sizes.append((result.report["file_bytes_after"], result.report["validation"]["accuracy_after"]))
    original = (MODELS / f"{name}.onnx").stat().st_size
    (dense, acc), (sparse, acc_sparse) = sizes
    return f"| {name} | {density:.0%} | {original:,} | {dense:,} | {sparse:,} | {acc:.4f} | {acc_sparse:.4f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet5", "resnet_digits"])
    parser.add_argument("--densities", nargs="+", type=float, default=list(DENSITIES))
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    args = parser.parse_args()
    for table in args.tables:
        TABLES[table](args)


def density_tables(args) -> None:
    for name in args.models:
        model = load_model(MODELS / f"{name}.onnx")
        test = load_dataset(MODELS / "digits_test.npz", model, 797)
        dense = validate(model, model, test.feeds, test.labels, ["CPUExecutionProvider"])["accuracy_before"]
        columns = list(LOBS_VARIANTS) + ["magnitude/layer", "magnitude/global"]
        print(f"\n### {name}.onnx (dense test accuracy {dense:.4f})\n")
        print("| density | " + " | ".join(columns) + " | seconds |")
        print("|---" * (len(columns) + 2) + "|")
        for density in args.densities:
            start = time.perf_counter()
            cells = [lobs_accuracy(name, density, extra) for extra in LOBS_VARIANTS.values()]
            cells += [magnitude_accuracy(model, test, density, scope) for scope in ("layer", "global")]
            seconds = time.perf_counter() - start
            row = " | ".join(f"{c:.4f}" for c in cells)
            print(f"| {density:.0%} | {row} | {seconds:.0f} |", flush=True)


def pattern_table(args) -> None:
    columns = [f"{p} {v}" for p in PATTERNS for v in (*PATTERN_VARIANTS, "magnitude")]
    print("\n### N:M patterns (--pattern, 50% of the weights of every conforming layer)\n")
    print("| model | dense | " + " | ".join(columns) + " | conforming layers (2:4, 4:8) |")
    print("|---" * (len(columns) + 3) + "|")
    for name in args.models:
        model = load_model(MODELS / f"{name}.onnx")
        test = load_dataset(MODELS / "digits_test.npz", model, 797)
        dense = validate(model, model, test.feeds, test.labels, ["CPUExecutionProvider"])["accuracy_before"]
        cells, counts = [], []
        for pattern in PATTERNS:
            accuracies, conforming = pattern_cells(name, model, test, pattern)
            cells += accuracies
            counts.append(conforming)
        row = " | ".join(f"{c:.4f}" for c in cells)
        print(f"| {name} | {dense:.4f} | {row} | {', '.join(counts)} |", flush=True)


def storage_table(args) -> None:
    print("\n### file size with --sparse-storage (lobs exact, global allocation)\n")
    print("| model | density | original bytes | pruned bytes | with --sparse-storage | accuracy | accuracy (sparse) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        print(storage_row(name, 0.1), flush=True)


def layer_table(args) -> None:
    variants = ("exact/global/seq", "output/seq")
    print("\n### density per layer at 10% overall\n")
    print("| model | layer | weights | " + " | ".join(variants) + " |")
    print("|---|---|---|" + "---|" * len(variants))
    for name in args.models:
        print("\n".join(layer_rows(name, 0.1, variants)), flush=True)


TABLES = {"density": density_tables, "patterns": pattern_table, "storage": storage_table, "layers": layer_table}

if __name__ == "__main__":
    main()
