"""The fault corpus, in process (click's CliRunner isolation): bad models, data, options and paths.

Each case asserts its outcome class (faults_cases.classify): a clean error (exit code, one line on
stderr, no traceback, nothing written) or a correct success (every written file verified: full checker,
onnxruntime run, finite weights, ordinary file mode), and that every input file is byte-identical.
"""

from __future__ import annotations

import pytest
from faults_cases import MODELS, all_cases, run_case

CASES = [pytest.param(c, id=c.id) for c in all_cases() if not c.process]


@pytest.mark.parametrize("case", CASES)
def test_fault(case, tmp_path):
    got, detail = run_case(case, tmp_path / "work")
    assert got == case.expect, detail


def test_corpus_size():
    assert len(all_cases()) >= 120


def test_a_bug_keeps_its_traceback_and_asks_for_a_report(tmp_path, monkeypatch, capsys):
    """Only a real bug prints a traceback: the whole trace, after a line that says to report it."""
    import onnxprune.cli as cli

    def broken(*args, **kwargs):
        raise ZeroDivisionError("deliberate")

    monkeypatch.setattr(cli, "inspect_model", broken)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["inspect", str(MODELS / "lenet5.onnx")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 70
    assert err.startswith("onnxprune: internal error (ZeroDivisionError: deliberate): this is a bug; please report")
    assert "Traceback (most recent call last)" in err and "in broken" in err


def test_onnxruntime_reasons_are_cut_to_what_matters():
    """The IR-version refusal without the C++ signature, a failing node named with its reason."""
    from onnxprune.runtime import explain

    load = RuntimeError(
        "[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/onnxruntime/core/graph/"
        "model.cc:256 onnxruntime::Model::Model(onnx::ModelProto&&, const onnxruntime::PathString&, const "
        "onnxruntime::ModelOptions&) Unsupported model IR version: 14, max supported IR version: 13"
    )
    assert explain(load) == "Unsupported model IR version: 14, max supported IR version: 13"
    run = RuntimeError(
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running Conv node. "
        "Name:'c1' Status Message: Invalid input shape: {1,1}"
    )
    assert explain(run) == "node 'c1' (Conv): Invalid input shape: {1,1}"
