"""Plans as values: `prune --save-plan` then `apply` gives the same model; a plan refuses another model;
the pass manager enforces the in-place contract and reports our own checker failures as bugs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from test_cli import invoke

from onnxprune import PruneOptions, prune
from onnxprune.errors import PlanError
from onnxprune.passes import CHECK, Pass, PassError, PassManager, PassResult
from onnxprune.pipeline import apply
from onnxprune.plan import PlanFile

CALIB = "models/digits_calib.npz"


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _assert_same_model(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    left, right = _initializers(a), _initializers(b)
    assert left.keys() == right.keys()
    for name, value in left.items():
        assert value.dtype == right[name].dtype and np.array_equal(value, right[name]), name
    strip = [onnx.GraphProto(), onnx.GraphProto()]
    for copy, model in zip(strip, (a, b), strict=True):
        copy.CopyFrom(model.graph)
        del copy.initializer[:]
    assert strip[0].SerializeToString() == strip[1].SerializeToString()


@pytest.mark.parametrize(
    ("model", "method", "extra", "pipeline"),
    [
        ("models/lenet5.onnx", "magnitude", {}, {}),
        ("models/lenet5.onnx", "merge,obs", {}, {}),  # a chain: merge's BatchNorm-fold pre-pass, then OBS updates
        ("models/resnet_digits.onnx", "lobs", {}, {"sparse_storage": True}),
        ("models/mlp.onnx", "relief", {"alpha": 0.95}, {"iterations": 2}),
    ],
)
def test_saved_plan_replays_to_the_same_model(tmp_path, model, method, extra, pipeline):
    result = prune(
        model, method, PruneOptions(ratio=0.4, extra=extra), CALIB, calib_samples=64, run_validation=False, **pipeline
    )
    files = result.plan_file.save(tmp_path / "plan.json")
    assert files[0].exists() and all(f.exists() for f in files)
    loaded = PlanFile.load(tmp_path / "plan.json")
    assert len(loaded.steps) == len(result.plans)
    for step, plan in zip(loaded.steps, result.plans, strict=True):
        assert step.plan.removed == plan.removed
        assert step.plan.updates.keys() == plan.updates.keys()
        assert all(np.array_equal(step.plan.updates[k], plan.updates[k]) for k in plan.updates)
    _assert_same_model(apply(model, tmp_path / "plan.json"), result.model)


def test_plan_of_another_model_is_refused(tmp_path):
    result = prune("models/lenet5.onnx", "magnitude", PruneOptions(ratio=0.5), run_validation=False)
    result.plan_file.save(tmp_path / "plan.json")
    with pytest.raises(PlanError, match="fingerprint"):
        apply("models/mlp.onnx", tmp_path / "plan.json")
    # the pruned model is "another model" too: its groups are smaller
    with pytest.raises(PlanError, match="fingerprint"):
        apply(result.model, tmp_path / "plan.json")


def test_unreadable_plan_is_one_clear_error(tmp_path):
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(PlanError, match="not a readable pruning plan"):
        PlanFile.load(tmp_path / "plan.json")
    result = prune("models/lenet5.onnx", "obs", PruneOptions(ratio=0.5), CALIB, calib_samples=32, run_validation=False)
    result.plan_file.save(tmp_path / "obs.json")
    (tmp_path / "obs.npz").unlink()  # the arrays of the updates are gone
    with pytest.raises(PlanError, match="npz"):
        PlanFile.load(tmp_path / "obs.json")


def test_cli_save_plan_and_apply_write_identical_files(tmp_path, capsys):
    out, replay, plan = tmp_path / "pruned.onnx", tmp_path / "replayed.onnx", tmp_path / "plan.json"
    args = ["prune", "models/lenet5.onnx", "-o", out, "--method", "obs", "--ratio", "0.5", "--calib", CALIB]
    assert invoke(capsys, *args, "--calib-samples", "64", "--no-validate", "--save-plan", plan, "-q")[0] == 0
    assert json.loads(plan.read_text())["steps"][0]["method"] == "obs"
    assert invoke(capsys, "apply", "models/lenet5.onnx", plan, "-o", replay)[0] == 0
    assert replay.read_bytes() == out.read_bytes()
    code, _, err = invoke(capsys, "apply", "models/mlp.onnx", plan, "-o", tmp_path / "wrong.onnx")
    assert code == 1 and "fingerprint" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "wrong.onnx").exists()


def test_a_pass_returning_a_copy_is_caught():
    model = onnx.load("models/mlp.onnx")

    def copying(m: onnx.ModelProto) -> PassResult:
        other = onnx.ModelProto()
        other.CopyFrom(m)
        return PassResult(other, True)

    with pytest.raises(PassError, match="'copying' .* returned a different model object"):
        PassManager([Pass("copying", copying)]).run(model)


def test_pass_manager_keeps_what_each_pass_modified():
    model = onnx.load("models/mlp.onnx")
    manager = PassManager([Pass("touch", lambda m: PassResult(m, True)), Pass("look", lambda m: PassResult(m, False))])
    assert manager.run(model) is model
    assert manager.modified == {"touch": True, "look": False}


def test_checker_failure_on_our_output_is_a_bug_with_its_traceback():
    model = onnx.load("models/mlp.onnx")
    model.graph.node[0].input[0] = "nowhere"  # a rewrite that broke the graph
    with pytest.raises(PassError, match="please report") as caught:
        PassManager([CHECK]).run(model)
    assert caught.value.__cause__ is not None  # the checker's own exception is kept
