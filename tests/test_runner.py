"""The statistics runner: reused output arrays, batches run in chunks of samples, and its fallbacks."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
from graphs import conv_gemm
from graphs import conv_gemm_images as _images

from onnxprune import runtime
from onnxprune.stats.collect import with_outputs
from onnxprune.stats.runner import BatchRunner


def _exposed() -> onnx.ModelProto:
    """conv_gemm with its Conv output exposed (a batch-major tensor of 75 values)."""
    return with_outputs(conv_gemm(), ["conv_out"])


class _Counting:
    """A session that counts its runs and the samples of each (plain and I/O-bound)."""

    def __init__(self, sess) -> None:
        self.sess, self.samples = sess, []

    def __getattr__(self, name):
        return getattr(self.sess, name)

    def run(self, names, feeds):
        self.samples.append(len(next(iter(feeds.values()))))
        return self.sess.run(names, feeds)

    def run_with_iobinding(self, binding):
        self.samples.append("bound")
        return self.sess.run_with_iobinding(binding)


def test_a_large_batch_runs_in_chunks_and_gives_the_whole_batch_bit_for_bit():
    model = _exposed()
    sess = runtime.session(model)
    # 79 floats per sample (4 outputs + 75 activations) = 316 bytes: chunks of 3 samples under 1000 bytes
    counting = _Counting(sess)
    runner = BatchRunner(counting, chunk_bytes=1000)
    for seed in (1, 2):
        x = _images(8, seed)
        got = [a.copy() for a in runner({"image": x})]
        whole = sess.run(None, {"image": x})
        for a, b in zip(got, whole, strict=True):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    # first batch: a probe of 2 samples, a checked chunk [2, 5) and the bound [5, 8); then [0, 3) [3, 6) [6, 8)
    assert counting.samples == [2, 3, "bound", "bound", "bound", "bound"]


def test_a_small_batch_is_one_run_whose_arrays_are_reused():
    model = _exposed()
    counting = _Counting(runtime.session(model))
    runner = BatchRunner(counting)
    first = runner({"image": _images(4, 1)})
    second = runner({"image": _images(4, 2)})
    assert all(a is b for a, b in zip(first, second, strict=True))
    np.testing.assert_array_equal(second[1], counting.sess.run(None, {"image": _images(4, 2)})[1])
    assert counting.samples == [2, 4, "bound"]  # the probe, the whole batch, the batch written in place


def test_an_output_that_does_not_follow_the_batch_keeps_whole_batch_runs():
    # s = Shape(x) has 2 rows for every batch: the probe of 2 samples cannot tell, the chunk of 3 can
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])
    graph = oh.make_graph(
        [oh.make_node("Shape", ["x"], ["s"]), oh.make_node("Relu", ["x"], ["r"])],
        "g",
        [x],
        [
            oh.make_tensor_value_info("s", onnx.TensorProto.INT64, [2]),
            oh.make_tensor_value_info("r", onnx.TensorProto.FLOAT, ["n", 3]),
        ],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)], ir_version=8)
    counting = _Counting(runtime.session(model))
    runner = BatchRunner(counting, chunk_bytes=1)
    data = np.arange(18, dtype=np.float32).reshape(6, 3) - 9
    shape, relu = runner({"x": data})
    np.testing.assert_array_equal(shape, [6, 3])
    np.testing.assert_array_equal(relu, np.maximum(data, 0))
    assert counting.samples == [2, 3, 6]


def test_a_model_of_fixed_batch_size_runs_whole_batches():
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 3])
    graph = oh.make_graph([oh.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)], ir_version=8)
    counting = _Counting(runtime.session(model))
    runner = BatchRunner(counting, chunk_bytes=1)
    for seed in (1, 2):
        data = np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32)
        np.testing.assert_array_equal(runner({"x": data})[0], np.maximum(data, 0))
    assert counting.samples == [2, 4, "bound"]  # the probe is refused: whole batches, still written in place


def test_outputs_that_cannot_be_written_in_place_run_once_per_batch():
    # a string output cannot be bound to a reused array: plain runs, and the first batch is not run twice
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.STRING, ["n", 3])
    graph = oh.make_graph([oh.make_node("Cast", ["x"], ["y"], to=onnx.TensorProto.STRING)], "g", [x], [y])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)], ir_version=8)
    counting = _Counting(runtime.session(model))
    runner = BatchRunner(counting)
    data = np.arange(18, dtype=np.float32).reshape(6, 3)
    for _ in range(2):
        (strings,) = runner({"x": data})
        assert strings.shape == (6, 3) and strings[1, 0] == "3"
    assert counting.samples == [2, 6, 6]  # the probe, then one run per batch
