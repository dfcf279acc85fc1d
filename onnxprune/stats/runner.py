"""Run a statistics session batch after batch, writing the exposed tensors into reused arrays.

Two costs dominate a statistics pass besides the arithmetic, and both are page faults: fresh output
arrays per batch (the ~1 GB of activations a ResNet-50 batch of 32 exposes costs half a forward pass
in faults), and onnxruntime's own buffers for those tensors, which its arena takes from the system on
the first runs and which are never backed by huge pages (measured on ResNet-50, batch 32: the first
two runs 3-6 s against 1.7 s each after, 600k faults). BatchRunner therefore

- writes a batch's outputs into the arrays of the last batch of the same input shapes (onnxruntime
  I/O binding), and
- runs a batch whose exposed tensors exceed CHUNK_BYTES in chunks of samples, each chunk's outputs
  bound to its slice of the batch's arrays: onnxruntime's buffers stay one chunk large, the arrays
  the accumulators read are still whole batches (so the statistics do not change).

Chunking needs batch-major outputs: a probe of the first two samples must give every output a first
axis of 2 (a tensor that does not follow the batch keeps whole-batch runs), and onnxruntime refuses a
bound array of the wrong shape, which turns reuse off for good. Samples are assumed independent of
each other, as everywhere in onnxprune (a model that mixes samples across the batch axis would see
chunk-sized batches).
"""

from __future__ import annotations

import numpy as np

#: a batch whose exposed tensors take more bytes than this runs in chunks of samples
CHUNK_BYTES = 256 * 2**20


class BatchRunner:
    """Runs a session, writing its outputs into the arrays returned for the last batch of the same input
    shapes (in chunks of samples when they are large). Falls back to plain runs for good when an
    output's shape depends on the data (onnxruntime then refuses the bound array). An accumulator must
    not keep an array beyond its call: the next batch is written into it."""

    def __init__(self, sess, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.sess = sess
        self.chunk_bytes = chunk_bytes
        self.inputs = [i.name for i in sess.get_inputs()]
        self.outputs = [o.name for o in sess.get_outputs()]
        self.plans: dict[tuple, _Plan] = {}
        # an output that is a graph input is handed back as the input itself, not written into a buffer
        self.enabled = not set(self.inputs) & set(self.outputs)

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {name: np.ascontiguousarray(feeds[name]) for name in self.inputs}
        if not self.enabled:
            return self.sess.run(None, feeds)
        key = tuple((name, array.shape, array.dtype.str) for name, array in feeds.items())
        try:
            if key in self.plans:
                return self.plans[key].run(feeds)
            values, plan = self._plan(feeds)
        except Exception:  # an output shape changed with the data: no reuse from here on
            self.enabled = False
            self.plans.clear()
            return self.sess.run(None, feeds)
        if plan is None:  # outputs that cannot be written in place (strings, sequences): plain runs from here
            self.enabled = False
        else:
            self.plans[key] = plan
        return values

    def _plan(self, feeds: dict[str, np.ndarray]) -> tuple[list, _Plan | None]:
        """Run the first batch of these shapes: its outputs, and the plan that keeps their arrays (None:
        they cannot be reused)."""
        samples = _samples(feeds)
        if samples is not None and samples > 2:
            plan = self._chunked(feeds, samples)
            if plan is not None:
                return plan.arrays, plan
        values = self.sess.run(None, feeds)
        return values, _Plan(self.sess, self.outputs, values, None) if _reusable(values) else None

    def _chunked(self, feeds: dict[str, np.ndarray], samples: int) -> _Plan | None:
        """Run the batch in chunks when its outputs are large and follow the batch: a probe of samples
        [0, 2) and a first chunk of a different length must both give every output that many rows
        (a tensor of fixed shape, such as Shape's, cannot match two lengths). None: run it whole."""
        probe = self._rows(feeds, 0, 2)
        if probe is None:
            return None
        size = max(2, int(self.chunk_bytes // max(sum(a.nbytes for a in probe) / 2, 1)))
        first = min(max(size, 3), samples - 2)
        if size >= samples or first == 2:
            return None
        chunk = self._rows(feeds, 2, 2 + first)
        if chunk is None or any(a.shape[1:] != b.shape[1:] for a, b in zip(probe, chunk, strict=True)):
            return None
        arrays = [np.empty((samples, *a.shape[1:]), a.dtype) for a in probe]
        for array, head, rest in zip(arrays, probe, chunk, strict=True):
            array[:2], array[2 : 2 + first] = head, rest
        plan = _Plan(self.sess, self.outputs, arrays, size)
        plan.run(feeds, start=2 + first)
        return plan

    def _rows(self, feeds: dict[str, np.ndarray], begin: int, end: int) -> list[np.ndarray] | None:
        """The outputs of samples [begin, end), or None when one of them does not have end - begin rows
        (or the model takes only whole batches: a fixed batch size)."""
        try:
            values = self.sess.run(None, {name: array[begin:end] for name, array in feeds.items()})
        except Exception:  # onnxruntime's errors have no common class
            return None
        if _reusable(values) and all(a.ndim and a.shape[0] == end - begin for a in values):
            return values
        return None


class _Plan:
    """The arrays of one input shape and the I/O bindings that write chunks of `size` samples into
    their slices (size None: one binding over the whole arrays)."""

    def __init__(self, sess, outputs: list[str], arrays: list[np.ndarray], size: int | None) -> None:
        self.sess, self.outputs, self.arrays, self.size = sess, outputs, arrays, size
        self.bindings: dict[tuple[int, int], object] = {}

    def run(self, feeds: dict[str, np.ndarray], start: int = 0) -> list[np.ndarray]:
        if self.size is None:
            self.sess.run_with_iobinding(self._binding(feeds, None))
            return self.arrays
        samples = len(self.arrays[0])
        for begin in range(start, samples, self.size):
            self.sess.run_with_iobinding(self._binding(feeds, (begin, min(begin + self.size, samples))))
        return self.arrays

    def _binding(self, feeds: dict[str, np.ndarray], chunk: tuple[int, int] | None):
        binding = self.bindings.get(chunk)
        if binding is None:
            binding = self.sess.io_binding()
            for name, array in zip(self.outputs, self.arrays, strict=True):
                part = array if chunk is None else array[chunk[0] : chunk[1]]
                binding.bind_output(name, "cpu", 0, part.dtype, list(part.shape), part.ctypes.data)
            self.bindings[chunk] = binding
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array if chunk is None else array[chunk[0] : chunk[1]])
        return binding


def _samples(feeds: dict[str, np.ndarray]) -> int | None:
    """The common length of the feeds' first axes (None when they differ or a feed is a scalar)."""
    lengths = {array.shape[0] if array.ndim else None for array in feeds.values()}
    return lengths.pop() if len(lengths) == 1 else None


def _reusable(values: list) -> bool:
    return all(isinstance(v, np.ndarray) and v.dtype.kind in "fiub" for v in values)
