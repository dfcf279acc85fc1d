"""Honest validation (onnxprune.datasplit): without --validate-data the last part of --calib is held
out and never calibrates; every validation sample given is used; the report and the summary say
which data each figure comes from and how many samples it had."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_refused, invoke

from onnxprune import PruneOptions, prune
from onnxprune.datasplit import MIN_HELD, plan_data
from onnxprune.feeds import Dataset

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "models" / "lenet5.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"  # 500 labeled digits
TEST = ROOT / "models" / "digits_test.npz"  # 797 labeled digits


def _dataset(count: int, batch: int | None = None) -> Dataset:
    return Dataset({"x": np.arange(count, dtype=np.float32)[:, None]}, np.arange(count) % 10, batch)


def test_the_last_fifth_is_held_out_and_every_held_sample_validates():
    data = plan_data(_dataset(500), None, holdout=0.2)
    assert len(data.calibration) == 400 and len(data.validation) == 100
    assert data.validation.feeds["x"][:, 0].tolist() == list(range(400, 500))  # the last samples
    assert data.validation.labels.tolist() == (np.arange(400, 500) % 10).tolist()  # labels stay with them
    assert data.notes == {
        "calibration": {"given": 500, "held_out": 100, "used": 400, "cap": None},
        "validation": {"kind": "holdout", "given": 100, "samples": 100, "cap": None, "labeled": True},
    }
    assert data.source == "held-out calibration data (the last 20% of --calib, not used to prune)"


def test_the_calibration_cap_applies_after_the_holdout_and_is_reported():
    data = plan_data(_dataset(500), None, holdout=0.2, calib_samples=256)
    assert len(data.calibration) == 256 and len(data.validation) == 100
    assert data.calibration.feeds["x"][-1, 0] == 255  # the first samples calibrate
    assert data.summary() == [
        "calibrate  256 samples of --calib (500 given, last 100 held out for validation, --calib-samples 256 caps)",
        "validate   100 samples held out of --calib, not used to prune",
    ]


def test_holdout_keeps_whole_batches_of_a_fixed_batch_model():
    for count, batch in ((40, 4), (30, 3), (64, 1)):
        data = plan_data(_dataset(count, batch), None, holdout=0.2)
        assert len(data.calibration) % batch == 0 and len(data.validation) % batch == 0
        assert len(data.calibration) + len(data.validation) == count and len(data.validation) >= MIN_HELD


def test_without_a_holdout_the_figure_is_labelled_as_calibration_data():
    data = plan_data(_dataset(500), None, holdout=0.0)
    assert len(data.calibration) == len(data.validation) == 500
    assert data.source.startswith("calibration data, also used to prune: optimistic (--holdout 0)")
    small = plan_data(_dataset(15), None, holdout=0.2)  # 8 held out would leave 7 to calibrate on
    assert len(small.calibration) == 15 and small.notes["validation"]["kind"] == "calibration"
    assert "15 samples are too few to hold out 20% (at least 8 each side)" in small.source
    assert len(plan_data(_dataset(20), None, holdout=0.2).validation) == MIN_HELD  # 20% of 20 is less


def test_validation_data_is_used_whole_and_the_calibration_data_is_not_split():
    data = plan_data(_dataset(500), _dataset(797), holdout=0.2)
    assert len(data.calibration) == 500 and len(data.validation) == 797 and data.source == "--validate-data"
    capped = plan_data(_dataset(500), _dataset(797), validate_samples=50)
    assert len(capped.validation) == 50
    assert capped.summary()[-1] == "validate   50 samples of --validate-data (first of 797, --validate-samples 50)"


def test_held_out_samples_never_reach_the_statistics():
    """Oracle: pruning with the default holdout gives the model that calibrating on the first 400
    samples alone gives."""
    with np.load(CALIB) as data:
        first = {"image": data["image"][:400], "labels": data["labels"][:400]}
    options = PruneOptions(ratio=0.5)
    held = prune(str(LENET), "obs", options, str(CALIB), calib_samples=None, providers="cpu")
    alone = prune(str(LENET), "obs", options, first, calib_samples=None, holdout=0.0, providers="cpu")
    assert held.report["statistics"][0]["samples"] == 400 == alone.report["statistics"][0]["samples"]
    for a, b in zip(held.model.graph.initializer, alone.model.graph.initializer, strict=True):
        assert a.name == b.name and a.raw_data == b.raw_data
    assert held.report["validation"]["samples"] == 100 and alone.report["validation"]["samples"] == 400


def test_report_and_summary_name_the_held_out_data_and_its_size(tmp_path, capsys):
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    args = ["prune", LENET, "-o", out, "--method", "obs", "--calib", CALIB, "--report", report_path]
    code, stdout, err = invoke(capsys, *args, "--providers", "cpu")
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["validation_source"] == "held-out calibration data (the last 20% of --calib, not used to prune)"
    assert report["data"]["calibration"] == {"given": 500, "held_out": 100, "used": 256, "cap": 256}
    assert report["data"]["validation"]["kind"] == "holdout" and report["validation"]["samples"] == 100
    assert report["options"]["holdout"] == 0.2
    assert "validate   100 samples held out of --calib, not used to prune" in stdout
    assert "on 100 labeled samples, held-out calibration data (the last 20% of --calib" in stdout


def test_prune_validates_on_every_sample_given_and_on_n_random_inputs(tmp_path, capsys):
    out, report_path = tmp_path / "out.onnx", tmp_path / "report.json"
    args = ["prune", LENET, "-o", out, "--report", report_path, "--providers", "cpu", "-q"]
    assert invoke(capsys, *args, "--validate-data", TEST)[0] == 0
    assert json.loads(report_path.read_text())["validation"]["samples"] == 797  # was silently 256
    assert invoke(capsys, *args, "--validate-samples", "24")[0] == 0  # no data: random inputs
    report = json.loads(report_path.read_text())
    assert report["validation"]["samples"] == 24 and report["validation_source"].startswith("random inputs")


def test_validate_uses_all_data_or_n_random_samples(tmp_path, capsys):
    code, stdout, err = invoke(capsys, "validate", LENET, LENET, "--data", TEST, "--providers", "cpu", "--json")
    assert code == 0, err
    assert json.loads(stdout)["samples"] == 797
    code, stdout, err = invoke(capsys, "validate", LENET, LENET, "--samples", "20", "--providers", "cpu", "--json")
    result = json.loads(stdout)
    assert code == 0 and result["samples"] == 20 and result["data"] == "random inputs (seed 0): drift only"
    code, stdout, err = invoke(capsys, "validate", LENET, LENET, "--samples", "20", "--providers", "cpu")
    assert "data       20 samples, random inputs (seed 0): drift only" in stdout.splitlines()


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_holdout_outside_its_range_is_refused(value, tmp_path, capsys):
    line = assert_refused(capsys, tmp_path, ["prune", LENET, "-o", tmp_path / "o.onnx", "--holdout", value], code=2)
    assert "--holdout" in line and "[0, 1)" in line
