"""Relief without retraining on the digits-trained models, beside baselines at the same remaining
parameters.

For each model and alpha (both --alpha-fc and --alpha-conv), relief runs --iterations times in one
pipeline call (statistics recollected on the pruned model in between, no retraining). After each
iteration we read the remaining nonzero parameters N (every float initializer entry that is not zero:
weights, biases, BatchNorm parameters, after the physical removal of neurons) and the test accuracy.
Beside it: relief with --relief-compensate (the removed connections' mean contribution folded into the
bias; not in the paper) at the same alpha and iteration. Then, at relief's N, weight-level baselines
prune the model in one shot, each removing the same fraction r of every Conv/Gemm/MatMul weight, r found
by bisection so that N is met within 0.2% of the model's parameters where the method allows (biases
kept):

- magnitude: zero the floor(r n) smallest |w| of each layer (implemented here; the library's magnitude
  method removes whole channels);
- dead-free magnitude: the same, applied after `relief --alpha 1` (which only removes the neurons that
  never fire on the calibration data and connections that carry nothing on it): it separates what relief
  gains from dead neurons from what its connection selection gains;
- wanda: `--method wanda --ratio r` (|w| ||x||, per output row, no update);
- lobs: `--method lobs --ratio r` (layer-wise OBS with its weight update).

Calibration: digits_train.npz (1000 samples, as the paper's pruning set); accuracy: digits_test.npz.

    python benchmarks/relief_accuracy.py [--models mlp lenet5 resnet_digits] [--alphas 0.9 0.95 0.99]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from onnxprune import PruneOptions, io, prune, runtime
from onnxprune.feeds import load_dataset
from onnxprune.graph import GraphIndex
from onnxprune.layers import masking_layers
from onnxprune.validate import accuracy

MODELS = Path(__file__).resolve().parent.parent / "models"
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def nonzero(model: onnx.ModelProto) -> int:
    """Nonzero float initializer entries (sparse initializers: their stored values)."""
    total = sum(int(np.count_nonzero(io.tensor_array(t))) for t in model.graph.initializer if t.data_type in FLOATS)
    return total + sum(int(np.prod(s.values.dims)) for s in model.graph.sparse_initializer)


def test_score(model: onnx.ModelProto, test) -> float:
    sess = runtime.session(model, ["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return accuracy(runtime.run(sess, {name: test.feeds[name]})[0], test.labels)


def weight_names(model: onnx.ModelProto) -> list[str]:
    return list(dict.fromkeys(layer.weight for layer in masking_layers(GraphIndex.build(model)).values()))


def magnitude(model: onnx.ModelProto, ratio: float) -> onnx.ModelProto:
    """Zero the floor(ratio n) smallest |w| of every Conv/Gemm/MatMul weight (ties: first in memory order)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    targets = set(weight_names(model))
    for position, tensor in enumerate(result.graph.initializer):
        if tensor.name not in targets:
            continue
        value = np.array(io.tensor_array(tensor))
        flat = value.reshape(-1)
        flat[np.argsort(np.abs(flat), kind="stable")[: math.floor(ratio * flat.size)]] = 0
        result.graph.initializer[position].CopyFrom(io.make_tensor(value, tensor.name))
    return result


def matching_ratio(model: onnx.ModelProto, target: int) -> float:
    """The share r of every layer weight to remove so that the model keeps `target` nonzero entries."""
    index = GraphIndex.build(model)
    weights = sum(int(np.count_nonzero(index.constant(n))) for n in weight_names(model))
    return min(max((nonzero(model) - target) / weights, 0.0), 0.99)


def matched(make, target: int, total: int, start: float):
    """The model of `make(r)` whose nonzero count is closest to `target`: bisection on r from `start`
    (counts fall as r grows) until within 0.2% of `total` or 8 tries."""
    low, high, ratio, best = 0.0, 0.99, start, None
    for _ in range(8):
        model = make(ratio)
        count = nonzero(model)
        if best is None or abs(count - target) < abs(best[1] - target):
            best = (model, count)
        if abs(count - target) <= 0.002 * total:
            break
        low, high = (ratio, high) if count > target else (low, ratio)
        ratio = (low + high) / 2
    return best[0]


def baselines(model, dead_free, target: int, calib, test) -> dict[str, tuple[int, float] | None]:
    """(nonzero params, test accuracy) of each baseline pruned to about `target` nonzeros."""
    total = nonzero(model)
    makers = {
        "magnitude": (model, lambda r: magnitude(model, r)),
        "dead-free magnitude": (dead_free, lambda r: magnitude(dead_free, r)),
    }
    for method in ("wanda", "lobs"):
        makers[method] = (
            model,
            lambda r, method=method: (
                prune(
                    model, method, PruneOptions(ratio=r), calibration=calib, calib_samples=None, run_validation=False
                ).model
            ),
        )
    result = {}
    for name, (start_model, make) in makers.items():
        try:
            pruned = matched(make, target, total, matching_ratio(start_model, target))
        except Exception as exc:  # a method still being written must not stop the table
            print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            result[name] = None
            continue
        result[name] = (nonzero(pruned), test_score(pruned, test))
    return result


def relief_rows(name: str, alpha: float, iterations: int, calib, test, compensate: bool = False):
    """(iteration, nonzero params, test accuracy, dense params) after each relief iteration."""
    extra = {"alpha": alpha, "relief_compensate": compensate}
    result = prune(MODELS / f"{name}.onnx", "relief", PruneOptions(extra=extra), calibration=calib,
                   calib_samples=None, validation_data=test, validate_samples=len(test),
                   iterations=iterations)  # fmt: skip
    final = result.report["validation"]  # a single iteration has no per-step validation
    return [
        (s["iteration"], s["nonzero_params_after"], s.get("validation", final)["accuracy_after"], s["params_after"])
        for s in result.report["steps"]
    ]


def cell(value: tuple[int, float] | None, total: int) -> str:
    return "n/a | n/a" if value is None else f"{100 * value[0] / total:.1f} | {value[1]:.4f}"


def table(name: str, alphas: list[float], iterations: int, calib_path: Path, test_path: Path) -> list[str]:
    model = io.load_model(MODELS / f"{name}.onnx")
    calib = load_dataset(calib_path, model)
    test = load_dataset(test_path, model)
    total = nonzero(model)
    dead_free = prune(model, "relief", PruneOptions(extra={"alpha": 1.0}), calibration=calib, calib_samples=None,
                      run_validation=False).model  # fmt: skip
    lines = [
        f"### {name}: {total:,} parameters, test accuracy {test_score(model, test):.4f}; without its dead neurons "
        f"{100 * nonzero(dead_free) / total:.1f}%, accuracy {test_score(dead_free, test):.4f}",
        "",
        "| alpha | iter | relief params % | relief acc | relief dense % | relief+comp % | acc | magnitude % | acc "
        "| dead-free magnitude % | acc | wanda % | acc | lobs % | acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for alpha in alphas:
        plain = relief_rows(name, alpha, iterations, calib, test)
        compensated = relief_rows(name, alpha, iterations, calib, test, compensate=True)
        for (iteration, kept, acc, dense), (_, kept_c, acc_c, _) in zip(plain, compensated, strict=True):
            others = baselines(model, dead_free, kept, calib, test)
            lines.append(
                f"| {alpha} | {iteration} | {100 * kept / total:.1f} | {acc:.4f} | {100 * dense / total:.1f} | "
                + " | ".join(
                    [cell((kept_c, acc_c), total)]
                    + [cell(others[m], total) for m in ("magnitude", "dead-free magnitude", "wanda", "lobs")]
                )
                + " |"
            )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet5", "resnet_digits"])
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.9, 0.95, 0.99])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--calib", type=Path, default=MODELS / "digits_train.npz")
    parser.add_argument("--test", type=Path, default=MODELS / "digits_test.npz")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    for name in args.models:
        print("\n".join(table(name, args.alphas, args.iterations, args.calib, args.test)) + "\n", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
