"""Input data for validation and calibration: loading arrays keyed by input name and checking them
against the model's input signature.

Sources: an .npz file (arrays keyed by input name, first axis = samples; a `labels` array is kept
apart), a folder of .npy/.npz files (one sample or one batch each, .npy named after the input for
single-input models), a dict of arrays, an iterable of feed dicts, or an
onnxruntime.quantization.CalibrationDataReader (anything with get_next()).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import CalibrationError, OptionError

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


def fixed_batch(specs: list[InputSpec]) -> int | None:
    """The batch size a model fixes on the first axis of its inputs (an export with batch 1), or None."""
    sizes = {s.shape[0] for s in specs if s.shape and s.shape[0] is not None}
    return sizes.pop() if len(sizes) == 1 else None


@dataclass(frozen=True)
class Dataset:
    """Samples for every model input (first axis = samples), and labels when the source had them.

    `batch` is the batch size the model fixes (None: free); every batch then has exactly that size,
    and the sample count is a multiple of it.
    """

    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    batch: int | None = None

    def __len__(self) -> int:
        return sample_count(self.feeds)

    def take(self, count: int | None) -> Dataset:
        if self.batch and count is not None:
            count = max(self.batch, count - count % self.batch)
        if count is None or count >= len(self):
            return self
        return self.part(0, count)

    def part(self, start: int, stop: int) -> Dataset:
        """Samples start..stop-1 (and their labels)."""
        labels = None if self.labels is None else self.labels[start:stop]
        return Dataset(slice_samples(self.feeds, start, stop), labels, self.batch)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        batch_size = self.batch or batch_size
        for start in range(0, len(self), batch_size):
            yield slice_samples(self.feeds, start, start + batch_size)


def sample_count(feeds: dict[str, np.ndarray]) -> int:
    """Samples in `feeds`: the first axis of the inputs that have one (a scalar input, such as an If's
    condition, has no sample axis and goes whole with every batch)."""
    counts = [len(v) for v in feeds.values() if np.ndim(v) > 0]
    return counts[0] if counts else 1


def slice_samples(feeds: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] if np.ndim(v) > 0 else v for k, v in feeds.items()}


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
    dataset = _check(arrays, labels, specs, where, _class_count(model))
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


def _check(arrays: dict[str, np.ndarray], labels, specs, where: str, classes: int | None = None) -> Dataset:
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
    count = counts.pop()
    labels = None if labels is None else _labels(np.asarray(labels), count, classes, where)
    batch = fixed_batch(specs)
    if batch and count % batch:
        if count < batch:
            raise CalibrationError(
                f"{where}: {count} samples, but the model takes batches of exactly {batch}; give at least {batch}"
            )
        count -= count % batch
        feeds = {k: v[:count] for k, v in feeds.items()}
        labels = None if labels is None else labels[:count]
    return Dataset(feeds, labels, batch)


def _labels(labels: np.ndarray, count: int, classes: int | None, where: str) -> np.ndarray:
    """Labels as one integer class per sample (one-hot rows become classes), each below `classes` (the
    width of the model's first output, when static)."""
    if labels.ndim == 2 and labels.shape[1] > 1 and np.isin(labels, (0, 1)).all() and (labels.sum(1) == 1).all():
        labels = labels.argmax(1)  # one-hot
    elif labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise CalibrationError(
            f"{where}: labels have shape {list(labels.shape)}; give one class index per sample (or one-hot rows)"
        )
    if labels.dtype.kind not in "iub":
        if labels.dtype.kind != "f" or not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise CalibrationError(f"{where}: labels must be integer class indices (found {labels.dtype} values)")
    if len(labels) != count:
        raise CalibrationError(f"{where}: {len(labels)} labels for {count} samples; give one label per sample")
    if len(labels) and (labels.min() < 0 or (classes and labels.max() >= classes)):
        raise CalibrationError(
            f"{where}: labels range over {int(labels.min())}..{int(labels.max())}, but the model's first output "
            f"has {classes or 'its'} classes (0..{(classes or 1) - 1}); check that the labels belong to this model"
        )
    return labels.astype(np.int64)


def _class_count(model: onnx.ModelProto) -> int | None:
    if not model.graph.output:
        return None
    dims = model.graph.output[0].type.tensor_type.shape.dim
    last = dims[-1] if len(dims) >= 2 else None
    return int(last.dim_value) if last is not None and last.HasField("dim_value") and last.dim_value > 1 else None


#: sizes tried for symbolic spatial or sequence dims when nothing else tells them (smallest first)
COMMON_SIZES = (1, 8, 16, 32, 64, 128, 224, 256, 320, 416, 512, 640)


def input_shapes(model: onnx.ModelProto, batch: int, given: dict | None = None, source=None) -> dict[str, tuple]:
    """A concrete shape per model input for random inputs.

    Fixed dims stay; a symbolic first dim is `batch`; other symbolic dims (height, width, sequence) come
    from `given` (--input-shape), else from sizes the model's metadata names, else from the smallest
    common size that onnxruntime runs the model with (`source`: the model or its file; without one,
    1). No size fits: an OptionError asking for --input-shape.
    """
    specs = {s.name: s for s in input_specs(model)}
    given = dict(given or {})
    unknown = sorted(set(given) - set(specs))
    if unknown:
        raise OptionError(f"--input-shape {unknown[0]}: the model has no such input (it has {', '.join(specs)})")
    shapes = {n: _given_shape(specs[n], given[n]) for n in given}
    open_dims = {}
    for name, spec in specs.items():
        if name not in given:
            open_dims[name] = tuple(d if d is not None or axis == 0 else None for axis, d in enumerate(spec.shape))
    if source is None or not any(None in dims[1:] for dims in open_dims.values()):
        size = 1
    else:
        size = _search_size(model, shapes, open_dims, source)
    for name, dims in open_dims.items():
        shapes[name] = tuple(
            (batch if d is None else d) if axis == 0 else (size if d is None else d) for axis, d in enumerate(dims)
        )
    return shapes


def _given_shape(spec: InputSpec, dims: tuple) -> tuple:
    if len(dims) != len(spec.shape) or any(w is not None and w != g for w, g in zip(spec.shape, dims, strict=False)):
        raise OptionError(
            f"--input-shape {spec.name}={','.join(map(str, dims))}: the model's input is {_shape_text(spec.shape)}; "
            "give one size per axis and keep the fixed ones"
        )
    return tuple(dims)


def _search_size(model: onnx.ModelProto, given: dict, open_dims: dict[str, tuple], source) -> int:
    """The first size (metadata hints, then COMMON_SIZES) that onnxruntime runs the model with when every
    open non-batch dim takes it, at batch 1."""
    from . import runtime
    from .errors import ValidationError

    specs = {s.name: s for s in input_specs(model)}
    sess = runtime.session(source)
    candidates = list(dict.fromkeys([*_metadata_sizes(model), *COMMON_SIZES]))
    reason = ""
    for size in candidates:
        feeds = {n: np.zeros(s, dtype=specs[n].dtype) for n, s in given.items()}
        for name, dims in open_dims.items():
            shape = tuple(
                (1 if d is None else d) if axis == 0 else (size if d is None else d) for axis, d in enumerate(dims)
            )
            feeds[name] = np.zeros(shape, dtype=specs[name].dtype)
        try:
            runtime.run(sess, feeds)
            return size
        except ValidationError as exc:
            reason = str(exc).rsplit(": ", 1)[-1]
    name = next(n for n, dims in open_dims.items() if None in dims[1:])
    info = next(i for i in model.graph.input if i.name == name)
    params = [d.dim_param or f"D{axis}" for axis, d in enumerate(info.type.tensor_type.shape.dim)]
    example = ",".join(
        "1" if d is None and axis == 0 else (params[axis] if d is None else str(d))
        for axis, d in enumerate(open_dims[name])
    )
    raise OptionError(
        f"input '{name}': no common size ({candidates[0]} to {candidates[-1]}) of its symbolic dims runs "
        f"({reason[:60].rstrip()}...); give the size with --input-shape {name}={example}"
    )


def _metadata_sizes(model: onnx.ModelProto) -> list[int]:
    """Image sizes named in the model's metadata (e.g. Ultralytics' imgsz: [640, 640])."""
    sizes = []
    for prop in model.metadata_props:
        if any(key in prop.key.lower() for key in ("imgsz", "img_size", "image_size", "input_size", "seq_len")):
            sizes += [int(v) for v in re.findall(r"\d+", prop.value) if 0 < int(v) <= 4096]
    return sizes


def _shape_text(shape) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
