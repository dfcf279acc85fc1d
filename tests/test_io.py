"""Loading what exporters write, and refusing what cannot be read, with one clear line.

Every accepted variant is checked the same way: keeping every channel gives outputs bitwise equal to
the original file's in onnxruntime, and magnitude pruning at 0.5 gives a smaller model that passes the
full checker, runs, and keeps the input/output names, dtypes and ranks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import signature, small_cnn
from onnx import helper, numpy_helper

from onnxprune import PruneOptions, prune, runtime
from onnxprune.errors import ModelLoadError
from onnxprune.io import count_params, load_model, make_tensor, save_model, source_bytes
from onnxprune.validate import random_feeds

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "models" / "lenet5.onnx"


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def _feeds(model: onnx.ModelProto, sizes: dict | None = None) -> dict:
    feeds = random_feeds(model, batch=2, seed=5)
    for name, shape in (sizes or {}).items():
        feeds[name] = np.random.default_rng(1).standard_normal(shape).astype(feeds[name].dtype)
    return feeds


def assert_prunes(path: Path, feeds: dict | None = None) -> None:
    """Ratio 0: bitwise identity with the file; ratio 0.5: smaller, checked, runnable, same signature."""
    original = load_model(path)
    feeds = feeds if feeds is not None else _feeds(original)
    reference = runtime.run(runtime.session(str(path)), feeds)
    same = prune(path, "magnitude", PruneOptions(ratio=0.0), providers="cpu", run_validation=False).model
    for a, b in zip(reference, runtime.run(runtime.session(same), feeds), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    result = prune(path, "magnitude", PruneOptions(ratio=0.5), providers="cpu", run_validation=False)
    onnx.checker.check_model(result.model, full_check=True)
    assert count_params(result.model) < count_params(original)
    assert signature(result.model, "input") == signature(original, "input")
    assert signature(result.model, "output") == signature(original, "output")
    outputs = runtime.run(runtime.session(result.model), feeds)
    for a, b in zip(reference, outputs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and np.isfinite(b.astype(np.float64)).all()


# ---- accepted variants -----------------------------------------------------------------------------
def test_plain_initializers(tmp_path):
    assert_prunes(_save(small_cnn(), tmp_path / "m.onnx"))


def test_weights_as_constant_nodes(tmp_path):
    model = small_cnn()
    constants = [
        helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t) for t in model.graph.initializer
    ]
    del model.graph.initializer[:]
    nodes = constants + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    path = _save(model, tmp_path / "m.onnx")
    loaded = load_model(path)
    assert not [n for n in loaded.graph.node if n.op_type == "Constant"]
    assert {t.name for t in loaded.graph.initializer} >= {"c1.w", "g2.w"}
    assert_prunes(path)


def test_initializers_duplicated_in_graph_inputs(tmp_path):
    model = small_cnn()
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer
    )
    onnx.checker.check_model(model, full_check=True)
    path = _save(model, tmp_path / "m.onnx")
    loaded = load_model(path)
    assert [i.name for i in loaded.graph.input] == ["x"]
    result = prune(path, "magnitude", PruneOptions(ratio=0.5), providers="cpu")
    onnx.checker.check_model(result.model, full_check=True)
    assert [i.name for i in result.model.graph.input] == ["x"]
    assert count_params(result.model) < count_params(loaded)
    assert np.isfinite(result.report["validation"]["outputs"]["g2_out"]["max_abs"])


def test_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(small_cnn(), str(path), save_as_external_data=True, location="m.weights", size_threshold=0)
    assert (tmp_path / "m.weights").exists()
    loaded = load_model(path)
    assert source_bytes(loaded) == path.stat().st_size + (tmp_path / "m.weights").stat().st_size
    assert_prunes(path)
    result = prune(path, "magnitude", PruneOptions(ratio=0.5), providers="cpu", run_validation=False)
    written = save_model(result.model, tmp_path / "out.onnx")
    assert written == (tmp_path / "out.onnx").stat().st_size
    load_model(tmp_path / "out.onnx")


def test_symbolic_dims(tmp_path):
    path = _save(small_cnn(spatial=("H", "W"), batch="batch"), tmp_path / "m.onnx")
    assert_prunes(path, _feeds(load_model(path), {"x": (2, 3, 7, 5)}))


@pytest.mark.parametrize("opset", [11, 21])
def test_old_and_new_opsets(opset, tmp_path):
    path = _save(small_cnn(opset=opset), tmp_path / "m.onnx")
    assert_prunes(path)
    assert load_model(path).opset_import[0].version == opset


def test_float16_weights_and_inputs(tmp_path):
    path = _save(small_cnn(dtype=np.float16), tmp_path / "m.onnx")
    assert_prunes(path)
    result = prune(path, "magnitude", PruneOptions(ratio=0.5), providers="cpu")
    assert {t.data_type for t in result.model.graph.initializer if t.name.endswith(".w")} == {onnx.TensorProto.FLOAT16}
    assert result.report["params_after"] < result.report["params_before"]


def test_unnamed_nodes_get_unique_names(tmp_path):
    model = small_cnn()
    for node in model.graph.node:
        node.name = ""
    path = _save(model, tmp_path / "m.onnx")
    names = [n.name for n in load_model(path).graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert_prunes(path)


# ---- refused input: one line "where: what; how to fix" ---------------------------------------------
def _refused(path: Path) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and ";" in message
    return message


def test_missing_file(tmp_path):
    assert "no such file" in _refused(tmp_path / "absent.onnx")


def test_directory(tmp_path):
    assert "directory" in _refused(tmp_path)


@pytest.mark.parametrize("content", [b"this is not an onnx model\n", bytes(range(256)) * 4], ids=["text", "binary"])
def test_not_onnx(content, tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    _refused(path)


def test_truncated_file(tmp_path):
    data = LENET.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) * 2 // 3])
    _refused(path)


def test_missing_external_data(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(small_cnn(), str(path), save_as_external_data=True, location="m.weights", size_threshold=0)
    os.remove(tmp_path / "m.weights")
    assert "m.weights" in _refused(path)


def test_graph_failing_the_checker(tmp_path):
    model = small_cnn()
    model.graph.node[0].input[0] = "undefined_tensor"
    assert "checker" in _refused(_save(model, tmp_path / "m.onnx"))


def test_make_tensor_keeps_scalars_and_layout():
    assert list(make_tensor(np.array(0.5, np.float32), "s").dims) == []
    transposed = np.arange(6, dtype=np.float32).reshape(2, 3).T
    tensor = make_tensor(transposed, "t")
    assert list(tensor.dims) == [3, 2] and np.array_equal(numpy_helper.to_array(tensor), transposed)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    model = load_model(LENET)
    target = tmp_path / "copy.onnx"
    written = save_model(model, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.onnx"]
    assert written == target.stat().st_size
    reloaded = load_model(target)
    assert [numpy_helper.to_array(t).tobytes() for t in reloaded.graph.initializer] == [
        numpy_helper.to_array(t).tobytes() for t in model.graph.initializer
    ]


def test_models_above_the_protobuf_limit_go_to_external_data(tmp_path, monkeypatch):
    """Above 2 GB a model is written with its weights in '<name>.data' beside it (the limit is lowered
    here so a small model takes that path); the pair loads and runs like the original."""
    import onnxprune.io as io

    monkeypatch.setattr(io, "TWO_GB", 1000)
    model = load_model(LENET)
    target = tmp_path / "big.onnx"
    written = save_model(model, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert written == target.stat().st_size + (tmp_path / "big.onnx.data").stat().st_size
    feeds = _feeds(model)
    reference = runtime.run(runtime.session(str(LENET)), feeds)
    for a, b in zip(reference, runtime.run(runtime.session(str(target)), feeds), strict=True):
        assert np.array_equal(a, b)
    reloaded = load_model(target)
    assert source_bytes(reloaded) == written


def test_nodes_out_of_topological_order_are_sorted(tmp_path):
    """Some exporters write nodes out of order; the checker refuses that, so loading sorts them."""
    model = load_model(LENET)
    nodes = list(model.graph.node)
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(model)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes[::-1])
    path = _save(shuffled, tmp_path / "unsorted.onnx")
    loaded = load_model(path)
    assert [n.name for n in loaded.graph.node] != [n.name for n in shuffled.graph.node]
    assert_prunes(path, _feeds(model))


def test_integer_weights_dequantized_by_plain_ops_count_as_parameters(tmp_path):
    """Weights stored as int8 and dequantized by Cast and Mul (a weight-only quantized export) fold into
    float weights; params_before counts them as `inspect` does (8*6 + 6 + 6*4 + 4 = 82), not as the 6 + 4
    + 2 float biases and scales of the file, so pruning reports fewer parameters after, never more."""
    from onnxprune.pipeline import inspect_model

    rng = np.random.default_rng(3)
    weights = [
        make_tensor(rng.integers(-127, 128, shape).astype(np.int8), f"w{k}") for k, shape in enumerate([(8, 6), (6, 4)])
    ]
    scales = [make_tensor(np.array(0.02, np.float32), f"s{k}") for k in range(2)]
    biases = [make_tensor(rng.standard_normal(n).astype(np.float32), f"b{k}") for k, n in enumerate([6, 4])]
    nodes, x = [], "x"
    for k in range(2):
        nodes += [
            helper.make_node("Cast", [f"w{k}"], [f"wf{k}"], to=onnx.TensorProto.FLOAT, name=f"cast{k}"),
            helper.make_node("Mul", [f"wf{k}", f"s{k}"], [f"wd{k}"], name=f"dequant{k}"),
            helper.make_node("MatMul", [x, f"wd{k}"], [f"m{k}"], name=f"mm{k}"),
            helper.make_node("Add", [f"m{k}", f"b{k}"], [f"a{k}"], name=f"add{k}"),
        ]
        if k == 0:
            nodes.append(helper.make_node("Relu", ["a0"], ["r0"], name="relu0"))
            x = "r0"
    graph = helper.make_graph(
        nodes, "int8", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("a1", onnx.TensorProto.FLOAT, ["N", 4])], [*weights, *scales, *biases],
    )  # fmt: skip
    path = _save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "q.onnx"
    )
    assert count_params(load_model(path)) == 6 + 4 + 2
    result = prune(path, "magnitude", PruneOptions(ratio=0.5), providers="cpu")
    assert result.report["params_before"] == inspect_model(path)[1]["params"] == 8 * 6 + 6 + 6 * 4 + 4
    assert result.report["params_after"] == 8 * 3 + 3 + 3 * 4 + 4
    assert result.report["macs_before"] > result.report["macs_after"] > 0
