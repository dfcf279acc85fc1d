"""`bench` and `validate` print tables that tell the models apart, with a speed-up column measured in
the same run, JSON with --json, and refuse batch sizes a model cannot take."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
from test_cli import assert_refused, invoke

from onnxprune.bench import Latency, distinct_labels, speedups, table

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "models" / "lenet5.onnx"
TEST = ROOT / "models" / "digits_test.npz"


def test_labels_tell_same_named_files_apart():
    paths = ["runs/a/model.onnx", "runs/b/model.onnx", "other.onnx", "other.onnx", "x/deep/model.onnx"]
    assert distinct_labels(paths) == ["a/model.onnx", "b/model.onnx", "other.onnx", "other.onnx#2", "deep/model.onnx"]
    assert distinct_labels(["one/m.onnx", "two/n.onnx"]) == ["m.onnx", "n.onnx"]


def test_speed_up_is_the_first_models_latency_over_the_rows_at_the_same_batch():
    rows = [Latency("orig", 1, 2.0, 2.0, 500), Latency("orig", 8, 8.0, 8, 1000), Latency("small", 1, 1.0, 1, 1000),
            Latency("small", 8, 2.0, 2, 4000), Latency("small", 4, 1.0, 1, 4000)]  # fmt: skip
    assert speedups(rows) == [1.0, 1.0, 2.0, 4.0, None]
    lines = table(rows)
    assert lines[0].split()[-1] == "speed-up" and lines[3].split()[-1] == "2.00x" and lines[5].split()[-1] == "-"


def test_bench_table_distinguishes_same_named_models_and_has_a_speed_up(tmp_path, capsys):
    original, pruned = tmp_path / "original" / "lenet5.onnx", tmp_path / "pruned" / "lenet5.onnx"
    original.parent.mkdir()
    pruned.parent.mkdir()
    shutil.copy(LENET, original)
    assert invoke(capsys, "prune", original, "-o", pruned, "--ratio", "0.5", "-q", "--no-validate")[0] == 0
    args = ("bench", original, pruned, "--batch-sizes", "1,4", "--repeats", "3", "--providers", "cpu")
    code, stdout, err = invoke(capsys, *args)
    assert code == 0, err
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["model", "batch", "median", "ms", "p90", "ms", "samples/s", "speed-up"]
    rows = [line.split() for line in lines[1:-1]]
    assert [(r[0], int(r[1])) for r in rows] == [
        ("original/lenet5.onnx", 1),
        ("original/lenet5.onnx", 4),
        ("pruned/lenet5.onnx", 1),
        ("pruned/lenet5.onnx", 4),
    ]
    assert [r[-1] for r in rows[:2]] == ["1.00x", "1.00x"] and all(float(r[-1][:-1]) > 0 for r in rows)
    assert lines[-1].startswith("speed-up: median latency of original/lenet5.onnx")
    code, stdout, err = invoke(capsys, *args, "--json")
    result = json.loads(stdout)
    assert code == 0 and [r["model"] for r in result] == ["original/lenet5.onnx"] * 2 + ["pruned/lenet5.onnx"] * 2
    assert result[0]["speedup"] == 1.0 and result[2]["speedup"] == result[2 - 2]["median_ms"] / result[2]["median_ms"]


def test_bench_refuses_a_batch_size_a_fixed_batch_model_cannot_take(tmp_path, capsys):
    model = onnx.load(str(LENET))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # an export with batch 1
    fixed = tmp_path / "batch1.onnx"
    onnx.save(model, str(fixed))
    line = assert_refused(capsys, tmp_path, ["bench", LENET, fixed, "--batch-sizes", "1,8", "--providers", "cpu"], 2)
    assert line == (
        "onnxprune: error: --batch-sizes 8: batch1.onnx takes batches of exactly 1 (its inputs fix the first axis); "
        "time it with --batch-sizes 1"
    )
    code, stdout, err = invoke(capsys, "bench", fixed, "--batch-sizes", "1", "--repeats", "2", "--providers", "cpu")
    assert code == 0 and stdout.splitlines()[1].split()[:2] == ["batch1.onnx", "1"]


def test_validate_prints_a_table_naming_both_models_and_the_data(tmp_path, capsys):
    pruned = tmp_path / "lenet5.onnx"
    assert invoke(capsys, "prune", LENET, "-o", pruned, "--ratio", "0.3", "-q", "--no-validate")[0] == 0
    code, stdout, err = invoke(capsys, "validate", LENET, pruned, "--data", TEST, "--providers", "cpu")
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == f"original   {LENET}" and lines[1] == f"pruned     {pruned}"
    assert lines[2] == f"data       797 samples, --data {TEST}"
    assert lines[3].split() == ["output", "rel", "L2", "cosine", "top-1", "agree", "max", "|diff|"]
    assert lines[4].split()[0] == "logits" and len(lines[4].split()) == 5
    assert lines[5].startswith("accuracy   0.9774 -> ") and "points) on 797 labeled samples" in lines[5]
    assert not stdout.lstrip().startswith("{")
