"""Input data for validation and calibration: loading arrays keyed by input name and checking them
against the model's input signature.

Sources: an .npz file (arrays keyed by input name, first axis = samples; a `labels` array is kept
apart), a folder of .npy/.npz files (one sample or one batch each, .npy named after the input for
single-input models), a dict of arrays, an iterable of feed dicts, or an
onnxruntime.quantization.CalibrationDataReader (anything with get_next()).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import CalibrationError

LABEL_KEYS = ("labels", "label", "targets", "y")


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple  # ints, or None for symbolic dims


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    specs = []
    for info in model.graph.input:
        tensor_type = info.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim
        )
        specs.append(InputSpec(info.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)), dims))
    return specs


@dataclass(frozen=True)
class Dataset:
    """Samples for every model input (first axis = samples), and labels when the source had them."""

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values())))

    def take(self, count: int | None) -> Dataset:
        if count is None or count >= len(self):
            return self
        labels = None if self.labels is None else self.labels[:count]
        return Dataset({k: v[:count] for k, v in self.feeds.items()}, labels)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.feeds.items()}


def load_dataset(source, model: onnx.ModelProto, limit: int | None = None, where: str = "--calib") -> Dataset:
    """Read `source` into a Dataset checked against `model`'s inputs (at most `limit` samples)."""
    specs = input_specs(model)
    if isinstance(source, Dataset):
        arrays, labels = dict(source.feeds), source.labels
    elif isinstance(source, (str, Path)):
        arrays, labels = _read_path(Path(source), specs, where)
    elif isinstance(source, dict):
        arrays, labels = _split_labels({k: np.asarray(v) for k, v in source.items()})
    elif hasattr(source, "get_next"):
        if callable(getattr(source, "rewind", None)):
            source.rewind()  # a reader may have been read before (a second prune() on the same reader)
        arrays, labels = _stack(_reader_items(source), where), None
    elif isinstance(source, Iterable):
        arrays, labels = _stack(iter(source), where), None
    else:
        raise CalibrationError(
            f"{where}: cannot read data from a {type(source).__name__}; pass an .npz path, a "
            "folder, a dict of arrays, an iterable of feed dicts or a CalibrationDataReader"
        )
    dataset = _check(arrays, labels, specs, where)
    return dataset.take(limit)


def _split_labels(arrays: dict[str, np.ndarray]):
    labels = next((arrays.pop(k) for k in LABEL_KEYS if k in arrays), None)
    return arrays, labels


def _read_path(path: Path, specs, where: str):
    if not path.exists():
        raise CalibrationError(f"{where} {path}: no such file or folder")
    if path.is_dir():
        files = sorted(list(path.glob("*.npz")) + list(path.glob("*.npy")))
        if not files:
            raise CalibrationError(f"{where} {path}: the folder holds no .npy or .npz files")
        return _stack((_read_file(f, specs, where) for f in files), where, add_batch=specs), None
    arrays = _read_file(path, specs, where)
    return _split_labels(arrays)


def _read_file(path: Path, specs, where: str) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise CalibrationError(f"{where} {path}: a .npy file fits single-input models only; use .npz")
            return {specs[0].name: np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except CalibrationError:
        raise
    except Exception as exc:
        raise CalibrationError(f"{where} {path}: not a readable .npz/.npy file ({type(exc).__name__})") from None


def _reader_items(reader) -> Iterator[dict]:
    while True:
        item = reader.get_next()
        if item is None:
            return
        yield item


def _stack(items: Iterator[dict], where: str, add_batch=None) -> dict[str, np.ndarray]:
    collected: dict[str, list[np.ndarray]] = {}
    for item in items:
        if not isinstance(item, dict):
            raise CalibrationError(f"{where}: expected feed dicts (input name -> array), got {type(item).__name__}")
        for key, value in item.items():
            value = np.asarray(value)
            if add_batch is not None:
                spec = next((s for s in add_batch if s.name == key), None)
                if spec is not None and value.ndim == len(spec.shape) - 1:
                    value = value[None]
            collected.setdefault(key, []).append(value)
    if not collected:
        raise CalibrationError(f"{where}: the data source is empty; give at least one sample")
    try:
        return {k: np.concatenate(v) for k, v in collected.items()}
    except ValueError as exc:
        raise CalibrationError(f"{where}: samples have inconsistent shapes ({exc})") from None


def _check(arrays: dict[str, np.ndarray], labels, specs, where: str) -> Dataset:
    feeds = {}
    for spec in specs:
        if spec.name not in arrays:
            have = ", ".join(sorted(arrays)) or "nothing"
            raise CalibrationError(
                f"{where}: no data for model input '{spec.name}' (found: {have}); "
                f"name the arrays after the model's inputs"
            )
        value = arrays[spec.name]
        if value.ndim != len(spec.shape):
            raise CalibrationError(
                f"{where}: input '{spec.name}' has rank {value.ndim}, the model expects rank "
                f"{len(spec.shape)} with shape {_shape_text(spec.shape)} (first axis = samples)"
            )
        for axis, (got, want) in enumerate(zip(value.shape, spec.shape, strict=True)):
            if axis > 0 and want is not None and got != want:
                raise CalibrationError(
                    f"{where}: input '{spec.name}' has shape {value.shape}, the model expects {_shape_text(spec.shape)}"
                )
        if value.dtype != spec.dtype:
            if value.dtype.kind == spec.dtype.kind == "f" or (value.dtype.kind in "iu" and spec.dtype.kind in "iu"):
                value = value.astype(spec.dtype)
            else:
                raise CalibrationError(
                    f"{where}: input '{spec.name}' has dtype {value.dtype}, the model expects {spec.dtype}"
                )
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise CalibrationError(f"{where}: input '{spec.name}' contains NaN or Inf; clean the data first")
        if len(value) == 0:
            raise CalibrationError(f"{where}: input '{spec.name}' holds no samples")
        feeds[spec.name] = value
    counts = {len(v) for v in feeds.values()}
    if len(counts) > 1:
        raise CalibrationError(f"{where}: inputs have different sample counts {sorted(counts)}")
    if labels is not None and len(labels) != counts.pop():
        labels = None
    return Dataset(feeds, labels)


def _shape_text(shape) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
