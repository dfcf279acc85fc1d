"""Compare a pruned model with the original on the same inputs.

Per output: max |a - b|, relative L2 error ||a - b|| / ||a||, cosine similarity of the flattened outputs,
and, for classifier-shaped outputs ([N, classes] with classes > 1), the share of samples whose argmax
agrees. With labels, the accuracy of both models.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from . import progress, runtime
from .errors import ValidationError
from .feeds import Dataset, fixed_batch, input_shapes, input_specs, sample_count, slice_samples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputComparison:
    name: str
    max_abs: float
    rel_l2: float
    cosine: float
    top1_agreement: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def random_feeds(
    model: onnx.ModelProto, batch: int = 8, seed: int = 0, shapes: dict | None = None, source=None
) -> dict[str, np.ndarray]:
    """Random inputs from the model's input signature: fixed dims as they are, a symbolic first dim
    `batch`, other symbolic dims from `shapes` (--input-shape) or a size the model runs with
    (feeds.input_shapes; `source`, default `model`, is what onnxruntime runs to find it)."""
    rng = np.random.default_rng(seed)
    source = source if source is not None else (model if len(model.graph.node) else None)
    feeds = {}
    for info, (name, dims) in zip(model.graph.input, input_shapes(model, batch, shapes, source).items(), strict=True):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[name] = rng.integers(0, 2, dims).astype(bool)
        else:
            feeds[name] = rng.integers(0, 4, dims).astype(dtype)
    return feeds


def random_dataset(
    model: onnx.ModelProto, count: int, seed: int = 0, shapes: dict | None = None, source=None
) -> Dataset:
    """`count` random samples (random_feeds); a model that fixes its batch size b gets ceil(count / b)
    batches of b, each drawn with the next seed."""
    fixed = fixed_batch(input_specs(model))
    if fixed is None:
        return Dataset(random_feeds(model, count, seed, shapes, source))
    draws = [random_feeds(model, fixed, seed + k, shapes, source) for k in range(-(-count // fixed))]
    return Dataset({name: np.concatenate([d[name] for d in draws]) for name in draws[0]}, batch=fixed)


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


def run_batches(sess, feeds: dict[str, np.ndarray], batch_size: int = 64, desc: str = "validate") -> list[np.ndarray]:
    """Run `feeds` (first axis = samples) through `sess` in batches and concatenate the outputs."""
    count = sample_count(feeds)
    batch_size = runtime.fixed_batch(sess) or batch_size  # a model exported with batch 1 runs at batch 1
    chunks = []
    for start in progress.bar(range(0, count, batch_size), desc=desc, unit="batch"):
        chunks.append(runtime.run(sess, slice_samples(feeds, start, start + batch_size)))
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def validate(
    original: onnx.ModelProto | str,
    pruned: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    labels: np.ndarray | None = None,
    providers: list[str] | None = None,
    signature: onnx.ModelProto | None = None,
    kept: dict[str, tuple[int, list[int]]] | None = None,
) -> dict:
    """Run both models on `feeds` and compare; the pruned model must keep the input/output signature.

    `original` is a model or the path of its file; `signature` (default: `original`) gives the graph
    inputs and outputs the pruned model must keep. `kept[name] = (axis, positions)`: a graph input or
    output the pruning resized (a KV cache losing heads): the pruned model is fed, and compared at,
    those positions only.
    """
    if signature is None:
        signature = onnx.load(original, load_external_data=False) if isinstance(original, str) else original
    _check_signature(signature, pruned)
    kept = kept or {}
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in signature.graph.input}}
    ref_sess, new_sess = runtime.session(original, providers), runtime.session(pruned, providers)
    names = [o.name for o in ref_sess.get_outputs()]
    with progress.stage(log, "validation runs", samples=sample_count(feeds), outputs=len(names)):
        reference = run_batches(ref_sess, feeds, desc="validate original")
        candidate = run_batches(new_sess, kept_feeds(feeds, kept), desc="validate pruned")
    reference = [_at(r, kept.get(name)) for name, r in zip(names, reference, strict=True)]
    report = {
        "samples": sample_count(feeds),
        "outputs": {c.name: c.as_dict() for c in compare_outputs(names, reference, candidate)},
    }
    if labels is not None:
        report["accuracy_before"] = accuracy(reference[0], labels)
        report["accuracy_after"] = accuracy(candidate[0], labels)
    return report


def _at(value: np.ndarray, where: tuple[int, list[int]] | None) -> np.ndarray:
    return value if where is None else np.take(value, where[1], axis=where[0])


def kept_feeds(feeds: dict[str, np.ndarray], kept: dict[str, tuple[int, list[int]]] | None) -> dict[str, np.ndarray]:
    """The original model's feeds as the pruned model takes them: each input named in `kept` (a KV
    cache whose heads went: name -> (axis, positions kept)) sliced to its kept positions."""
    kept = kept or {}
    return {name: _at(value, kept.get(name)) for name, value in feeds.items()}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose largest logit is at the label (labels: one class index per sample)."""
    labels = np.asarray(labels).reshape(-1)
    return float((np.asarray(logits).reshape(len(labels), -1).argmax(1) == labels).mean())


def _check_signature(original: onnx.ModelProto, pruned: onnx.ModelProto) -> None:
    """The pruned model keeps the original's input and output names, element types and ranks."""
    for kind in ("input", "output"):
        before, after = _describe(getattr(original.graph, kind)), _describe(getattr(pruned.graph, kind))
        if before != after:
            raise ValidationError(
                f"the models differ in their {kind}s: the original has {', '.join(before) or 'none'}, the other "
                f"has {', '.join(after) or 'none'}; compare a model with its own pruned version"
            )


def _describe(values) -> list[str]:
    """'image (float32, rank 4)' per value."""
    words = []
    for v in values:
        tensor = v.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "untyped"
        words.append(f"'{v.name}' ({dtype}, rank {len(tensor.shape.dim)})")
    return words
