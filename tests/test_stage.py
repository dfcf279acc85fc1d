"""The statistics stage and typed method settings: a method reads only the statistics it declared, the
stage records every onnxruntime pass and answers a repeated request on the same model without one, and
each method's settings come from its option table (defaults written once, values checked)."""

from __future__ import annotations

import pytest
from test_cli import invoke

from onnxprune import PruneOptions, prune
from onnxprune.analysis import analyze
from onnxprune.errors import OptionError
from onnxprune.feeds import load_dataset
from onnxprune.graph import GraphIndex
from onnxprune.io import load_model
from onnxprune.layers import masking_layers
from onnxprune.methods.base import MethodContext
from onnxprune.methods.registry import METHODS
from onnxprune.stats import CollectSettings, Statistics

CALIB = "models/digits_calib.npz"


def _stats(model, samples: int = 32) -> Statistics:
    return Statistics(load_dataset(CALIB, model, samples), CollectSettings(batch_size=16))


def test_merge_then_obs_collects_once():
    options = PruneOptions(ratio=0.3, extra={"sequential": False})  # one-shot (lenet5 is deep enough for auto)
    result = prune("models/lenet5.onnx", "merge,obs", options, CALIB, calib_samples=64)
    passes = result.report["statistics"]
    assert [p["kind"] for p in passes] == ["hessian"]  # merge is data-free; obs needs one pass
    assert passes[0]["samples"] == 64


def test_sequential_obs_collects_once_per_wave():
    result = prune(
        "models/lenet5.onnx", "obs", PruneOptions(ratio=0.3, extra={"sequential": True}), CALIB, calib_samples=32
    )
    passes = result.report["statistics"]
    assert len(passes) == result.report["steps"][0]["statistics_passes"] > 1


def test_a_repeated_request_on_the_same_model_is_answered_without_a_pass():
    model = load_model("models/lenet5.onnx")
    stats = _stats(model).for_method("wanda", ("activity",))
    layers = list(masking_layers(GraphIndex.build(model)).values())
    first = stats.activity(model, layers)
    again = stats.activity(model, layers)
    assert len(stats.passes) == 1
    assert first.keys() == again.keys() and all(first[k] is again[k] for k in first)
    other = load_model("models/lenet5.onnx")  # another model object: another pass
    stats.activity(other, layers)
    assert len(stats.passes) == 2


def test_a_method_cannot_read_statistics_it_did_not_declare():
    model = load_model("models/lenet5.onnx")
    stats = _stats(model).for_method("wanda", ("activity",))
    layers = list(masking_layers(GraphIndex.build(model)).values())
    with pytest.raises(RuntimeError, match="declared only"):
        stats.hessians(model, layers)


def test_every_data_method_declares_known_statistics_and_data_free_ones_none():
    for method in METHODS.values():
        assert method.needs_data == bool(method.statistics)
        assert set(method.statistics) <= {"hessian", "activity", "ranges", "outputs"}
    assert not METHODS["magnitude"].needs_data and not METHODS["merge"].needs_data
    assert METHODS["obs"].statistics == ("hessian",)


def test_settings_take_defaults_from_the_table_and_check_values():
    settings = METHODS["lobs"].settings({"damping": "0.5"})
    assert settings.damping == 0.5 and settings.lobs_mode == "auto" and settings.max_positions == 4096
    with pytest.raises(OptionError, match="--lobs-mode turbo: unknown"):
        METHODS["lobs"].settings({"lobs_mode": "turbo"})
    with pytest.raises(OptionError, match="--damping -1.0: must be >= 0"):
        METHODS["obs"].settings({"damping": -1.0})
    with pytest.raises(OptionError, match="--norm 3"):
        METHODS["magnitude"].settings({"norm": 3})
    with pytest.raises(AttributeError):  # frozen
        settings.damping = 1.0


def test_context_gets_the_settings_and_the_view_of_its_method():
    model = load_model("models/lenet5.onnx")
    index = GraphIndex.build(model)
    ctx = MethodContext.build(METHODS["relief"], model, index, analyze(index), PruneOptions(), _stats(model))
    assert ctx.settings.relief_compensate is False and ctx.stats.kinds == {"activity", "ranges"}
    free = MethodContext.build(METHODS["magnitude"], model, index, analyze(index), PruneOptions(), _stats(model))
    assert free.stats is None and free.settings.norm == 2


@pytest.mark.parametrize(
    ("method", "extra", "message"),
    [
        ("obs", {"alpha": 0.9}, "--alpha does not apply to --method obs; it is an option of relief"),
        ("magnitude", {"sequential": True}, "--sequential does not apply to --method magnitude"),
        ("relief", {"iterations": 2}, "--iterations is a pipeline option"),
        ("obs", {"no_such_thing": 1}, "--no-such-thing: no method has this option"),
    ],
)
def test_options_that_no_chosen_method_takes_are_refused(method, extra, message):
    with pytest.raises(OptionError, match=message):
        prune("models/lenet5.onnx", method, PruneOptions(ratio=0.3, extra=extra), CALIB, calib_samples=16)


def test_an_option_of_one_method_in_a_chain_is_accepted():
    result = prune(
        "models/lenet5.onnx", "merge,obs", PruneOptions(ratio=0.3, extra={"damping": 0.1}), CALIB, calib_samples=32
    )
    assert result.report["options"]["damping"] == 0.1


def test_cli_refuses_an_option_of_another_method_and_passes_defaults_silently(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code, _, err = invoke(
        capsys, "prune", "models/lenet5.onnx", "-o", out, "--method", "magnitude", "--sequential", "--no-validate"
    )
    assert code == 2 and "--sequential does not apply to --method magnitude" in err and not out.exists()
    code, _, err = invoke(capsys, "prune", "models/lenet5.onnx", "-o", out, "--method", "magnitude", "-q")
    assert code == 0 and out.exists()


def test_iterations_never_reuse_statistics_of_an_earlier_step():
    """The pipeline shrinks the model in place between iterations, so the same model object holds other
    weights at every step: each iteration must measure again. Oracle: the same iterations run as
    separate prunes, each on the model the previous one wrote."""
    options = PruneOptions(extra={"alpha": 0.95})
    together = prune("models/mlp.onnx", "relief", options, CALIB, calib_samples=100, iterations=4, run_validation=False)
    model = load_model("models/mlp.onnx")
    for _ in range(4):
        model = prune(model, "relief", options, CALIB, calib_samples=100, run_validation=False).model
    assert [t.name for t in together.model.graph.initializer] == [t.name for t in model.graph.initializer]
    for mine, theirs in zip(together.model.graph.initializer, model.graph.initializer, strict=True):
        assert mine.SerializeToString() == theirs.SerializeToString(), mine.name
    assert len(together.report["statistics"]) == 2 * 4  # activity and ranges at every iteration


def test_each_step_view_has_its_own_cache():
    """A model object rewritten in place between steps must be measured again by the next step's view."""
    model = load_model("models/lenet5.onnx")
    stats = _stats(model)
    layers = list(masking_layers(GraphIndex.build(model)).values())
    stats.for_method("wanda", ("activity",)).activity(model, layers)
    model.graph.initializer[0].CopyFrom(model.graph.initializer[0])  # the same object, as after a shrink
    stats.for_method("wanda", ("activity",)).activity(model, layers)
    assert len(stats.passes) == 2
