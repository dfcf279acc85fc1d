"""Calibration data the way onnxruntime's quantization tools take it, and the streaming collector."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime
import pytest
from graphs import conv_gemm as _model
from graphs import conv_gemm_images as _images
from onnxruntime.quantization import CalibrationDataReader

from onnxprune import PruneOptions, prune, runtime
from onnxprune.errors import CalibrationError
from onnxprune.feeds import Dataset, load_dataset
from onnxprune.stats.collect import collect


class DigitsReader(CalibrationDataReader):
    """Written like the CalibrationDataReader of onnxruntime's quantization examples: the input name
    comes from an InferenceSession, get_next() hands out one single-image batch per call."""

    def __init__(self, model_bytes: bytes, images: np.ndarray) -> None:
        self.enum_data = None
        session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        self.input_name = session.get_inputs()[0].name
        self.nchw_data_list = [image[None] for image in images]
        self.datasize = len(self.nchw_data_list)

    def get_next(self):
        if self.enum_data is None:
            self.enum_data = iter([{self.input_name: data} for data in self.nchw_data_list])
        return next(self.enum_data, None)

    def rewind(self):
        self.enum_data = None


def test_every_source_gives_the_same_dataset(tmp_path):
    model = _model()
    images, labels = _images(6), np.arange(6) % 4  # class indices of the 4-wide output
    np.savez(tmp_path / "calib.npz", image=images, labels=labels)
    (tmp_path / "npy").mkdir()
    (tmp_path / "npz").mkdir()
    for k, image in enumerate(images):
        np.save(tmp_path / "npy" / f"{k:02d}.npy", image[None])
        np.savez(tmp_path / "npz" / f"{k:02d}.npz", image=image)  # one sample without the batch axis
    sources = {
        "npz": str(tmp_path / "calib.npz"),
        "npy folder": tmp_path / "npy",
        "npz folder": tmp_path / "npz",
        "dict": {"image": images},
        "feed dicts": [{"image": images[k : k + 2]} for k in range(0, 6, 2)],
        "reader": DigitsReader(model.SerializeToString(), images),
    }
    for name, source in sources.items():
        data = load_dataset(source, model)
        np.testing.assert_array_equal(data.feeds["image"], images, err_msg=name)
    assert load_dataset(sources["npz"], model).labels.tolist() == labels.tolist()
    assert len(load_dataset(sources["npz"], model, limit=4)) == 4


def test_lobs_and_obs_run_from_a_calibration_data_reader():
    model = _model()
    for method in ("lobs", "obs"):
        reader = DigitsReader(model.SerializeToString(), _images(12))
        result = prune(model, method, PruneOptions(ratio=0.5), calibration=reader, providers="cpu")
        assert result.report["validation_source"].startswith("calibration data, also used to prune")
        assert result.report["params_after"] <= result.report["params_before"]


@pytest.mark.parametrize(
    "feeds, message",
    [
        ({"pixels": _images(3)}, "no data for model input 'image' (found: pixels)"),
        ({"image": _images(3)[:, :, :4]}, "input 'image' has shape (3, 2, 4, 5), the model expects [N, 2, 5, 5]"),
        ({"image": _images(3)[:, 0]}, "input 'image' has rank 3, the model expects rank 4"),
        ({"image": _images(3).astype(bool)}, "input 'image' has dtype bool, the model expects float32"),
        ({"image": np.where(_images(3) > 2, np.inf, _images(3))}, "input 'image' contains NaN or Inf"),
        ({"image": _images(0)}, "input 'image' holds no samples"),
        ([], "the data source is empty"),
    ],
    ids=["name", "shape", "rank", "dtype", "inf", "no samples", "empty"],
)
def test_bad_calibration_data_is_one_clear_error(feeds, message):
    with pytest.raises(CalibrationError) as error:
        load_dataset(feeds, _model())
    assert message in str(error.value)
    assert str(error.value).startswith("--calib")


def test_a_float64_array_is_accepted_for_a_float32_input():
    data = load_dataset({"image": _images(2).astype(np.float64)}, _model())
    assert data.feeds["image"].dtype == np.float32


def test_collect_streams_batches_of_the_requested_tensors():
    model = _model()
    images = _images(10)
    names = ["conv_out", model.graph.output[0].name]
    seen: dict[str, list[np.ndarray]] = {n: [] for n in names}
    # an accumulator may not keep its array: the next batch of the same shape is written into it
    # optimize=False: compared bit for bit with the plain graph (optimized kernels round differently;
    # tests/test_obs_speed.py checks the optimized collector within float32 rounding)
    accumulators = {n: [lambda a, n=n: seen[n].append(a.copy())] for n in names}
    count = collect(model, Dataset({"image": images}), accumulators, batch_size=4, optimize=False)
    assert count == 10
    assert [len(a) for a in seen["conv_out"]] == [4, 4, 2]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.ValueInfoProto(name="conv_out"))
    full = runtime.run(runtime.session(exposed), {"image": images})
    np.testing.assert_allclose(np.concatenate(seen["conv_out"]), full[1], rtol=1e-6)
    np.testing.assert_allclose(np.concatenate(seen[names[1]]), full[0], rtol=1e-6)


def test_collect_reuses_output_arrays_and_falls_back_when_shapes_follow_the_data():
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.INT64, [2, "k"])
    graph = oh.make_graph([oh.make_node("NonZero", ["x"], ["y"], name="nz")], "g", [x], [y])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)], ir_version=8)
    data = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=np.float32)
    counts = []
    collect(model, Dataset({"x": data}), {"y": [lambda a: counts.append(a.shape[1])]}, batch_size=1)
    assert counts == [1, 0, 3, 1]


def test_collect_shows_a_progress_bar_per_batch_only_when_asked(capfd):
    model = _model()
    data = Dataset({"image": _images(9)})
    collect(model, data, {"conv_out": [lambda a: None]}, batch_size=3, progress=True, description="stats")
    assert "stats" in capfd.readouterr().err
    collect(model, data, {"conv_out": [lambda a: None]}, batch_size=3, progress=False)
    assert capfd.readouterr().err == ""


def test_provider_auto_is_quiet_and_works(capfd):
    providers = runtime.resolve_providers("auto")
    assert providers[-1] == "CPUExecutionProvider"
    session = runtime.session(_model(), providers)
    assert session.run(None, {"image": _images(1)})[0].shape == (1, 4)
    assert capfd.readouterr().err == ""
    if "CUDAExecutionProvider" not in providers:
        with pytest.raises(Exception, match="--providers cuda"):
            runtime.resolve_providers("cuda")
