"""The quality gate (--max-drop, --max-drift: exit 3, nothing written) and the alarms of a run that
succeeded but should not be trusted (nothing pruned, a collapse)."""

from __future__ import annotations

from test_cli import invoke

LENET = "models/lenet5.onnx"
TEST = "models/digits_test.npz"
CALIB = "models/digits_calib.npz"


def _prune(capsys, tmp_path, *args):
    out = tmp_path / "out.onnx"
    code, stdout, err = invoke(capsys, "prune", LENET, "-o", out, "-q", *args)
    return code, err, out


def test_missed_accuracy_gate_writes_nothing_and_exits_3(tmp_path, capsys):
    args = ("--method", "obs", "--no-sequential", "--ratio", "0.5", "--calib", CALIB, "--validate-data", TEST)
    args = (*args, "--validate-samples", 797)  # one-shot: lenet5 is deep enough for sequential by default
    code, err, out = _prune(capsys, tmp_path, *args, "--max-drop", "0.02", "--report", tmp_path / "r.json")
    assert code == 3 and not out.exists() and not (tmp_path / "r.json").exists()
    assert err.strip().splitlines() == [
        "onnxprune: quality gate: accuracy dropped 0.0314 (0.9774 -> 0.9460 on --validate-data), more than "
        "--max-drop 0.02; nothing written"
    ]
    code, err, out = _prune(capsys, tmp_path, *args, "--max-drop", "0.04")
    assert code == 0 and out.exists()


def test_missed_drift_gate(tmp_path, capsys):
    code, err, out = _prune(capsys, tmp_path, "--ratio", "0.5", "--max-drift", "0.05")
    assert code == 3 and not out.exists() and "more than --max-drift 0.05" in err
    code, err, out = _prune(capsys, tmp_path, "--ratio", "0.0", "--max-drift", "0")
    assert code == 0 and out.exists()  # nothing removed: the outputs are the original's


def test_gate_without_what_it_measures_is_a_usage_error(tmp_path, capsys):
    code, err, out = _prune(capsys, tmp_path, "--max-drop", "0.01")  # random inputs: no labels
    assert code == 2 and "has no labels" in err and not out.exists()
    code, err, out = _prune(capsys, tmp_path, "--max-drift", "0.1", "--no-validate")
    assert code == 2 and "needs validation" in err and not out.exists()
    code, err, out = _prune(capsys, tmp_path, "--max-drift", "-1")
    assert code == 2 and "must be >= 0" in err


def test_nothing_pruned_is_a_warning(tmp_path, capsys):
    code, err, out = _prune(capsys, tmp_path, "--ratio", "0.0")
    assert code == 0 and out.exists() and "warning: nothing was pruned" in err


def test_a_collapse_is_a_warning(tmp_path, capsys):
    code, err, out = _prune(capsys, tmp_path, "--ratio", "0.9", "--validate-data", TEST)
    assert code == 0 and out.exists() and "warning: accuracy collapsed" in err
    code, err, out = _prune(capsys, tmp_path, "--ratio", "0.25", "--validate-data", TEST)
    assert code == 0 and "warning" not in err


def test_no_collapse_alarm_from_random_inputs_and_alarms_come_after_the_write(tmp_path, capsys):
    code, err, out = _prune(capsys, tmp_path, "--ratio", "0.5")  # validated on random inputs: no top-1 to keep
    assert code == 0 and out.exists() and "collapsed" not in err
    folder = tmp_path / "missing"  # the write fails: one error line, no warning before it
    code, _, err = invoke(capsys, "prune", LENET, "-o", folder / "out.onnx", "--ratio", "0.9", "--validate-data", TEST)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "error" in err
