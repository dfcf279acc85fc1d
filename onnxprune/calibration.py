"""Stream calibration data through onnxruntime and hand intermediate tensors to accumulators.

The collector exposes exactly the requested tensors as extra graph outputs, runs onnxruntime with graph
optimizations off (so intermediate names survive), batch by batch, and calls each tensor's
accumulators with that batch's array. Nothing is kept between batches: memory is one batch of
activations plus whatever the accumulators hold (Hessians, sums).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import onnx

from . import runtime
from .errors import CalibrationError
from .feeds import Dataset

log = logging.getLogger(__name__)

Accumulator = Callable[[np.ndarray], None]


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `names` (types left for onnxruntime to infer)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in present:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return exposed


def collect(
    model: onnx.ModelProto,
    data: Dataset,
    accumulators: dict[str, list[Accumulator]],
    batch_size: int = 32,
    providers: Iterable[str] = ("CPUExecutionProvider",),
    progress: bool = False,
    description: str = "calibration",
) -> int:
    """Run `data` through `model`; after each batch call accumulators[name](activation) for every name.

    Returns the number of samples seen. Raises CalibrationError when an activation is not finite.
    """
    if len(data) == 0:
        raise CalibrationError("calibration: no samples; give at least one")
    batch_size = max(1, int(batch_size))
    names = list(accumulators)
    sess = runtime.session(with_outputs(model, names), list(providers))
    output_names = [o.name for o in sess.get_outputs()]
    wanted = [output_names.index(n) for n in names]
    batches = data.batches(max(1, batch_size))
    total = (len(data) + batch_size - 1) // batch_size
    for batch in _progress(batches, total, progress, description):
        values = runtime.run(sess, batch)
        for name, position in zip(names, wanted, strict=True):
            value = values[position]
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise CalibrationError(
                    f"calibration: tensor '{name}' becomes NaN/Inf on the calibration data; check the input scaling"
                )
            for accumulate in accumulators[name]:
                accumulate(value)
    return len(data)


def _progress(iterable, total: int, enabled: bool, description: str):
    if not enabled or total <= 1:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=description, unit="batch", leave=False)
