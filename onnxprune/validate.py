"""Compare a pruned model with the original on the same inputs.

Per output: max |a - b|, relative L2 error ||a - b|| / ||a||, cosine similarity of the flattened outputs,
and, for classifier-shaped outputs ([N, classes] with classes > 1), the share of samples whose argmax
agrees. With labels, the accuracy of both models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from . import runtime
from .errors import ValidationError


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs: float
    rel_l2: float
    cosine: float
    top1_agreement: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def random_feeds(model: onnx.ModelProto, batch: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs from the model's input signature (symbolic dims: `batch` for the first, 1 otherwise)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in model.graph.input:
        tensor_type = info.type.tensor_type
        dims = []
        for position, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(int(dim.dim_value))
            else:
                dims.append(batch if position == 0 else 1)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[info.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[info.name] = rng.integers(0, 2, dims).astype(bool)
        else:
            feeds[info.name] = rng.integers(0, 4, dims).astype(dtype)
    return feeds


def compare_outputs(names: list[str], reference: list[np.ndarray], candidate: list[np.ndarray]):
    """Metrics of `candidate` against `reference`, output by output."""
    results = []
    for name, a, b in zip(names, reference, candidate, strict=True):
        a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a64.shape != b64.shape:
            raise ValidationError(f"output '{name}': shape {b64.shape} differs from the original's {a64.shape}")
        if not np.isfinite(b64).all():
            raise ValidationError(f"output '{name}': the pruned model produces NaN or Inf; it is not written")
        diff = a64 - b64
        norm = np.linalg.norm(a64)
        rel = float(np.linalg.norm(diff) / norm) if norm > 0 else float(np.linalg.norm(diff))
        denominator = np.linalg.norm(a64) * np.linalg.norm(b64)
        cosine = float(a64.reshape(-1) @ b64.reshape(-1) / denominator) if denominator > 0 else 1.0
        top1 = None
        if a64.ndim == 2 and a64.shape[1] > 1:
            top1 = float((a64.argmax(1) == b64.argmax(1)).mean())
        max_abs = float(np.abs(diff).max()) if diff.size else 0.0
        results.append(OutputComparison(name, max_abs, rel, cosine, top1))
    return results


def run_batches(sess, feeds: dict[str, np.ndarray], batch_size: int = 64) -> list[np.ndarray]:
    """Run `feeds` (first axis = samples) through `sess` in batches and concatenate the outputs."""
    count = len(next(iter(feeds.values())))
    chunks = []
    for start in range(0, count, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in feeds.items()}
        chunks.append(runtime.run(sess, batch))
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def validate(
    original: onnx.ModelProto | str,
    pruned: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    labels: np.ndarray | None = None,
    providers: list[str] | None = None,
    signature: onnx.ModelProto | None = None,
) -> dict:
    """Run both models on `feeds` and compare; the pruned model must keep the input/output signature.

    `original` is a model or the path of its file; `signature` (default: `original`) gives the graph
    inputs and outputs the pruned model must keep.
    """
    if signature is None:
        signature = onnx.load(original, load_external_data=False) if isinstance(original, str) else original
    _check_signature(signature, pruned)
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in signature.graph.input}}
    ref_sess, new_sess = runtime.session(original, providers), runtime.session(pruned, providers)
    names = [o.name for o in ref_sess.get_outputs()]
    reference = run_batches(ref_sess, feeds)
    candidate = run_batches(new_sess, feeds)
    report = {
        "samples": int(len(next(iter(feeds.values())))),
        "outputs": {c.name: c.as_dict() for c in compare_outputs(names, reference, candidate)},
    }
    if labels is not None:
        report["accuracy_before"] = accuracy(reference[0], labels)
        report["accuracy_after"] = accuracy(candidate[0], labels)
    return report


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).reshape(len(labels), -1).argmax(1) == labels).mean())


def _check_signature(original: onnx.ModelProto, pruned: onnx.ModelProto) -> None:
    for kind in ("input", "output"):
        before = [
            (v.name, v.type.tensor_type.elem_type, len(v.type.tensor_type.shape.dim))
            for v in getattr(original.graph, kind)
        ]
        after = [
            (v.name, v.type.tensor_type.elem_type, len(v.type.tensor_type.shape.dim))
            for v in getattr(pruned.graph, kind)
        ]
        if before != after:
            raise ValidationError(f"pruned model: graph {kind}s changed from {before} to {after}; this is a bug")
