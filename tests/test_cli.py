"""The command line: inspect/prune/validate outputs, and bad input answered with one line on stderr,
exit code 1 (2 for a bad option), no traceback, and nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import small_cnn

from onnxprune.cli import main

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "models" / "lenet5.onnx"
DIGITS = ROOT / "models" / "digits_test.npz"


def invoke(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process; returns (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def assert_refused(capsys, folder: Path, args, code: int = 1) -> str:
    """The command fails with `code`, one line on stderr, no traceback, and the folder unchanged."""
    before = _snapshot(folder)
    got, _, err = invoke(capsys, *args)
    assert got == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:"), err
    assert "Traceback" not in err
    assert _snapshot(folder) == before
    return lines[0]


# ---- bad input ----------------------------------------------------------------------------------
def _bad_model(kind: str, folder: Path) -> Path:
    path = folder / "model.onnx"
    if kind == "not-onnx":
        path.write_text("name,value\na,1\n")
    elif kind == "truncated":
        data = LENET.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "missing-external-data":
        onnx.save_model(small_cnn(), str(path), save_as_external_data=True, location="w.data", size_threshold=0)
        os.remove(folder / "w.data")
    elif kind == "fails-checker":
        model = small_cnn()
        model.graph.node[1].input[0] = "nowhere"
        onnx.save_model(model, str(path))
    elif kind == "missing":
        pass
    return path


BAD = ["not-onnx", "truncated", "missing-external-data", "fails-checker", "missing"]


@pytest.mark.parametrize("kind", BAD)
def test_prune_refuses_bad_models(kind, tmp_path, capsys):
    model = _bad_model(kind, tmp_path)
    line = assert_refused(capsys, tmp_path, ["prune", model, "-o", tmp_path / "out.onnx", "--providers", "cpu"])
    assert str(model) in line
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("kind", BAD)
def test_inspect_refuses_bad_models(kind, tmp_path, capsys):
    assert_refused(capsys, tmp_path, ["inspect", _bad_model(kind, tmp_path)])


def test_output_equal_to_input(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(LENET.read_bytes())
    line = assert_refused(capsys, tmp_path, ["prune", model, "-o", model])
    assert "equals the input" in line
    line = assert_refused(capsys, tmp_path, ["prune", model, "-o", tmp_path / "m.onnx", "--report", model])
    assert "equals the input" in line


@pytest.mark.parametrize("ratio", ["1", "1.5", "-0.1", "half"])
def test_ratio_outside_range_exits_2(ratio, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(LENET.read_bytes())
    line = assert_refused(capsys, tmp_path, ["prune", model, "-o", tmp_path / "out.onnx", "--ratio", ratio], code=2)
    assert "--ratio" in line


def test_unknown_method_and_missing_calibration(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(LENET.read_bytes())
    out = tmp_path / "out.onnx"
    code, _, err = invoke(capsys, "prune", model, "-o", out, "--method", "nonsense")
    assert code in (1, 2) and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("problem", ["missing-folder", "missing-calib", "calib-wrong-key", "calib-not-npz"])
def test_prune_refuses_bad_paths_and_data(problem, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(LENET.read_bytes())
    out = tmp_path / "out.onnx"
    extra = []
    if problem == "missing-folder":
        out = tmp_path / "no" / "such" / "out.onnx"
    elif problem == "missing-calib":
        extra = ["--calib", tmp_path / "absent.npz"]
    elif problem == "calib-wrong-key":
        np.savez(tmp_path / "wrong.npz", pixels=np.zeros((4, 64), np.float32))
        extra = ["--calib", tmp_path / "wrong.npz"]
    else:
        (tmp_path / "calib.npz").write_text("not numpy")
        extra = ["--calib", tmp_path / "calib.npz"]
    assert_refused(capsys, tmp_path, ["prune", model, "-o", out, "--providers", "cpu", *extra])
    assert not out.exists()


def test_validate_refuses_models_with_other_outputs(tmp_path, capsys):
    line = assert_refused(capsys, tmp_path, ["validate", LENET, ROOT / "models" / "mlp.onnx", "--providers", "cpu"])
    assert "validate" in line or "input" in line or "output" in line


# ---- outputs --------------------------------------------------------------------------------------
def test_inspect_json(capsys):
    code, out, err = invoke(capsys, "inspect", LENET, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) >= {"groups", "totals"}
    assert data["totals"]["groups"] == len(data["groups"]) >= 5
    assert data["totals"]["prunable_groups"] >= 4
    for row in data["groups"]:
        assert {"id", "size", "producers", "consumers", "params", "macs", "frozen"} <= set(row)
    assert any(row["frozen"] and "graph output" in row["frozen"] for row in data["groups"])


def test_inspect_table(capsys):
    code, out, _ = invoke(capsys, "inspect", LENET)
    assert code == 0 and "producers" in out and "prunable share" in out


REPORT_KEYS = {
    "params_before",
    "params_after",
    "macs_before",
    "macs_after",
    "file_bytes_before",
    "file_bytes_after",
    "method",
    "groups",
    "validation",
    "seconds",
}


def test_prune_writes_model_and_report(tmp_path, capsys):
    out, report_path = tmp_path / "small.onnx", tmp_path / "report.json"
    args = ["prune", LENET, "-o", out, "--ratio", "0.5", "--report", report_path, "--providers", "cpu"]
    code, stdout, err = invoke(capsys, *args, "--calib", DIGITS, "--calib-samples", "64")
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert REPORT_KEYS <= set(report)
    assert report["method"] == "magnitude"
    assert report["params_after"] < report["params_before"] and report["macs_after"] < report["macs_before"]
    assert report["file_bytes_after"] == out.stat().st_size
    assert report["file_bytes_before"] == LENET.stat().st_size
    for group in report["groups"]:
        assert {"id", "size", "kept", "frozen"} <= set(group) and 1 <= group["kept"] <= group["size"]
    outputs = report["validation"]["outputs"]
    assert set(outputs) == {"logits"}
    assert {"max_abs", "rel_l2", "cosine", "top1_agreement"} <= set(outputs["logits"])
    assert isinstance(report["seconds"], dict) and report["seconds"]
    assert "wrote" in stdout
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_validate_command(tmp_path, capsys):
    out = tmp_path / "small.onnx"
    assert invoke(capsys, "prune", LENET, "-o", out, "--ratio", "0.3", "-q", "--no-validate")[0] == 0
    code, stdout, err = invoke(
        capsys, "validate", LENET, out, "--data", DIGITS, "--samples", "50", "--providers", "cpu", "--json"
    )
    assert code == 0, err
    result = json.loads(stdout)
    assert result["samples"] == 50 and "accuracy_after" in result and "logits" in result["outputs"]


def test_python_dash_m_entry_point(tmp_path):
    """The real entry point: success writes the model; a bad file gives one line and exit code 1."""
    out = tmp_path / "mlp_small.onnx"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = [sys.executable, "-m", "onnxprune"]
    ok = subprocess.run(
        [*run, "prune", str(ROOT / "models" / "mlp.onnx"), "-o", str(out), "-q", "--providers", "cpu"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr
    assert out.exists()
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    refused = subprocess.run([*run, "inspect", str(bad)], capture_output=True, text=True, env=env)
    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr


def test_bench_command(tmp_path, capsys):
    out = tmp_path / "small.onnx"
    assert invoke(capsys, "prune", LENET, "-o", out, "--ratio", "0.5", "-q", "--no-validate")[0] == 0
    code, stdout, err = invoke(
        capsys, "bench", LENET, out, "--batch-sizes", "1,4", "--repeats", "3", "--providers", "cpu"
    )
    assert code == 0, err
    rows = [line.split() for line in stdout.strip().splitlines()[1:-1]]
    assert [(r[0], int(r[1])) for r in rows] == [
        ("lenet5.onnx", 1),
        ("lenet5.onnx", 4),
        ("small.onnx", 1),
        ("small.onnx", 4),
    ]
    assert all(float(r[2]) > 0 and float(r[4]) > 0 for r in rows)


def test_bench_refuses_bad_batch_sizes(tmp_path, capsys):
    assert_refused(capsys, tmp_path, ["bench", LENET, "--batch-sizes", "one"], code=2)
