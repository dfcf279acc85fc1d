"""Chaining methods in one run (pipeline.prune with "a,b"): every step analyzes the model the previous
one left, and the report lists each step with its own counts."""

from __future__ import annotations

import json

import numpy as np

from onnxprune import PruneOptions, io, prune, runtime
from onnxprune.cli import main
from onnxprune.feeds import load_dataset

CALIB = "models/digits_calib.npz"


def _outputs(model, data) -> np.ndarray:
    return runtime.run(runtime.session(model), {"image": data.feeds["image"]})[0]


def test_magnitude_then_relief_reports_both_steps():
    result = prune(
        "models/lenet5.onnx",
        "magnitude,relief",
        PruneOptions(ratio=0.25, extra={"alpha": 0.95}),
        CALIB,
        calib_samples=100,
    )
    steps = result.report["steps"]
    assert [s["method"] for s in steps] == ["magnitude", "relief"]
    assert steps[0]["removed_channels"] > 0 and "nonzero_params_after" in steps[1]
    assert steps[1]["params_after"] <= steps[0]["params_after"] < result.report["params_before"]
    assert result.report["params_after"] == steps[1]["params_after"] == io.count_params(result.model)
    assert steps[1]["nonzero_params_after"] == sum(
        int(np.count_nonzero(io.tensor_array(t))) for t in result.model.graph.initializer
    )
    assert len(result.plans) == 2


def test_relief_then_wanda_prunes_the_relieved_model_further():
    data = load_dataset(CALIB, io.load_model("models/lenet5.onnx"), 100)
    relief = prune(
        "models/lenet5.onnx", "relief", PruneOptions(ratio=0.3, extra={"alpha": 0.95}), data, calib_samples=None
    )
    chained = prune(
        "models/lenet5.onnx", "relief,wanda", PruneOptions(ratio=0.3, extra={"alpha": 0.95}), data, calib_samples=None
    )
    steps = chained.report["steps"]
    assert [s["method"] for s in steps] == ["relief", "wanda"]
    # the first step is the relief run alone; the second starts from its model and changes it
    assert steps[0]["nonzero_params_after"] == relief.report["steps"][0]["nonzero_params_after"]
    assert steps[0]["params_after"] == relief.report["params_after"]
    assert not np.array_equal(_outputs(chained.model, data), _outputs(relief.model, data))
    assert steps[1]["nonzero_params_after"] < steps[0]["nonzero_params_after"]
    assert steps[1]["params_after"] == steps[0]["params_after"]  # unstructured wanda keeps the shapes


def test_iterations_repeat_each_data_driven_step(tmp_path):
    report = tmp_path / "r.json"
    out = tmp_path / "o.onnx"
    main_args = ["prune", "models/mlp.onnx", "-o", str(out), "--method", "relief,wanda", "--ratio", "0.2"]
    main_args += ["--iterations", "2", "--calib", CALIB, "--calib-samples", "100", "--report", str(report), "-q"]
    try:
        main(main_args)
    except SystemExit as exc:  # click may exit 0 explicitly
        assert exc.code in (0, None)
    steps = json.loads(report.read_text())["steps"]
    assert [(s["method"], s["iteration"]) for s in steps] == [("relief", 1), ("relief", 2), ("wanda", 1), ("wanda", 2)]
    assert all("validation" in s for s in steps)
    counts = [s["nonzero_params_after"] for s in steps]
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
    assert io.count_params(io.load_model(out)) == steps[-1]["params_after"]


def test_merge_lobs_relief_chain_reports_each_step():
    """The three families in one run: data-free merge, layer-wise OBS, relief."""
    result = prune(
        "models/lenet5.onnx",
        "merge,lobs,relief",
        PruneOptions(ratio=0.3, extra={"alpha": 0.95}),
        CALIB,
        calib_samples=100,
    )
    steps = result.report["steps"]
    assert [s["method"] for s in steps] == ["merge", "lobs", "relief"]
    sizes = [result.report["params_before"]] + [s["params_after"] for s in steps]
    assert sizes == sorted(sizes, reverse=True) and sizes[1] < sizes[0]
    assert steps[2]["nonzero_params_after"] <= steps[2]["params_after"]
    assert set(result.report["validation"]["outputs"]) == {"logits"}


def test_merge_then_obs_removes_more_channels_and_each_step_is_reported():
    """`--method merge,obs`: merge removes near-duplicate neurons without data, then structured OBS removes
    and compensates a share of what is left; both steps are in the report and the model shrinks twice."""
    result = prune("models/mlp.onnx", "merge,obs", PruneOptions(ratio=0.3), CALIB, calib_samples=200)
    steps = result.report["steps"]
    assert [s["method"] for s in steps] == ["merge", "obs"]
    assert result.report["params_before"] > steps[0]["params_after"] > steps[1]["params_after"]
    kept = [sum(g["kept"] for g in s["groups"] if not g["frozen"]) for s in steps]
    assert kept[1] < kept[0]
    assert result.report["validation"]["accuracy_after"] > 0.9


def test_summary_counts_the_groups_of_each_step_of_a_chain():
    from onnxprune.report import summary_lines

    result = prune("models/lenet5.onnx", "merge,obs", PruneOptions(ratio=0.3), CALIB, calib_samples=32)
    lines = [line for line in summary_lines(result.report) if line.startswith("groups")]
    assert lines == [
        "groups     5 total, 4 pruned, 1 frozen (merge, step 1)",
        "groups     5 total, 4 pruned, 1 frozen (obs, step 2)",
    ]
