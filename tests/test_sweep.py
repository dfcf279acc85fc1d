"""`onnxprune sweep`: one model pruned at several ratios by one or more methods, each result validated
against the original, tabulated, plotted (PNG) and, on request, kept."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import onnx
import pytest
from test_cli import invoke

from onnxprune.sweep import parse_ratios, sweep, table

MODELS = Path(__file__).resolve().parent.parent / "models"
MLP, CALIB, TEST = MODELS / "mlp.onnx", MODELS / "digits_calib.npz", MODELS / "digits_test.npz"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _sweep_json(capsys, *args) -> dict:
    code, out, err = invoke(capsys, "sweep", MLP, "--json", "--repeats", 3, *args)
    assert code == 0, err
    return json.loads(out)


def _stored_entries(path: Path) -> int:
    """Parameters counted from the file itself: the sizes of its initializers."""
    return sum(int(np.prod(t.dims)) for t in onnx.load(path).graph.initializer)


def test_table_has_a_row_per_method_and_ratio_and_the_plot_is_a_png(tmp_path, capsys):
    plot = tmp_path / "curve.png"
    args = ("--method", "magnitude", "--method", "random", "--ratios", "0.5,0.2", "--validate-data", TEST)
    code, out, err = invoke(capsys, "sweep", MLP, *args, "--plot", plot, "--repeats", 3)
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["method", "point"])
    assert "accuracy" in lines[start].split()  # the test digits have labels
    rows = [line.split() for line in lines[start + 1 :]]
    assert [r[:2] for r in rows] == [
        ["original", "-"],
        ["magnitude", "0.2"],
        ["magnitude", "0.5"],
        ["random", "0.2"],
        ["random", "0.5"],
    ]
    assert "validated  on 797 samples of --validate-data" in lines
    data = plot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert matplotlib.image.imread(plot).shape[:2] == (450, 1500)  # decodes: three panels of 5 x 4.5 in
    assert list(tmp_path.iterdir()) == [plot]  # no model written without --keep-dir


def test_json_rows_shrink_monotonically_and_count_what_prune_writes(tmp_path, capsys):
    result = _sweep_json(capsys, "--ratios", "0.1,0.3,0.5,0.7")  # no data: random inputs, no labels
    rows = result["rows"]
    assert [r["point"] for r in rows] == ["0.1", "0.3", "0.5", "0.7"]
    params, macs = [r["params_kept"] for r in rows], [r["macs_kept"] for r in rows]
    assert params == sorted(params, reverse=True) and len(set(params)) == len(params)
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == len(macs)
    assert result["baseline"]["accuracy"] is None and all(r["accuracy"] is None for r in rows)
    assert result["baseline"]["validation_source"].startswith("random inputs")
    for r in rows:
        assert r["latency"] > 0 and np.isfinite(r["latency"]) and r["rel_l2"] > 0 and -1 <= r["cosine"] <= 1
    out = tmp_path / "p.onnx"
    assert invoke(capsys, "prune", MLP, "-o", out, "--ratio", "0.3", "-q")[0] == 0
    assert rows[1]["params_kept"] * result["baseline"]["params"] == pytest.approx(_stored_entries(out))


def test_methods_given_twice_are_compared_and_a_comma_stays_one_chain(capsys):
    result = _sweep_json(capsys, "--method", "magnitude", "--method", "merge,magnitude", "--ratios", "0.5")
    by_method = {r["method"]: r for r in result["rows"]}
    assert list(by_method) == ["magnitude", "merge,magnitude"]
    # the chain applies 0.5 at each of its two steps: about a quarter of the channels stay
    assert by_method["merge,magnitude"]["params_kept"] < 0.7 * by_method["magnitude"]["params_kept"]


def test_keep_dir_writes_every_model_checked(tmp_path, capsys):
    result = _sweep_json(capsys, "--ratios", "0.3,0.6", "--keep-dir", tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["mlp-magnitude-0.3.onnx", "mlp-magnitude-0.6.onnx"]
    for row in result["rows"]:
        path = Path(row["path"])
        onnx.checker.check_model(onnx.load(path), full_check=True)
        assert row["params_kept"] * result["baseline"]["params"] == pytest.approx(_stored_entries(path))


@pytest.mark.parametrize(
    "args, words",
    [
        (("--method", "nope"), "--method nope: unknown method"),
        (("--ratios", "0,0.5"), "--ratios 0: every ratio must be in (0, 1)"),
        (("--ratios", "0.5,1"), "--ratios 1: every ratio must be in (0, 1)"),
        (("--ratios", "0.5,x"), "'x' is not a number"),
        (("--plot", "{tmp}/missing/curve.png"), "folder {tmp}/missing does not exist"),
        (("--plot", "{tmp}/curve.jpg"), "give a file name ending in .png"),
        (("--keep-dir", "{tmp}/missing"), "does not exist"),
        (("--sequential",), "--sequential does not apply to any --method given (magnitude); it is an option of"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, words):
    args = tuple(a.replace("{tmp}", str(tmp_path)) for a in args)
    code, out, err = invoke(capsys, "sweep", MLP, "--repeats", 3, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and words.replace("{tmp}", str(tmp_path)) in err


def test_a_method_the_points_do_not_steer_is_noted():
    """relief's amount is set by --alpha: every ratio gives the same model, and the table says so."""
    result = sweep(MLP, ["relief"], parse_ratios("0.3,0.6"), calibration=CALIB, repeats=3)
    assert result.unchanged_methods() == ["relief"]
    assert any(line.startswith("note") and "relief" in line for line in table(result))


def test_method_options_go_to_the_methods_that_take_them(capsys):
    result = _sweep_json(
        capsys, "--method", "magnitude", "--method", "wanda", "--structured", "--ratios", "0.5", "--calib", CALIB
    )
    assert [r["label"] for r in result["rows"]] == ["magnitude", "wanda --structured"]
    assert result["rows"][1]["params_kept"] < 1  # whole channels went: --structured reached wanda


def test_targets_are_points_that_meet_their_budget(capsys):
    result = _sweep_json(capsys, "--targets", "macs=0.7,macs=0.4")
    rows = result["rows"]
    assert [r["point"] for r in rows] == ["macs=0.7", "macs=0.4"]
    assert 0.6 < rows[0]["macs_kept"] <= 0.7 and 0.3 < rows[1]["macs_kept"] <= 0.4
    both = _sweep_json(capsys, "--ratios", "0.5", "--targets", "params=0.5")
    assert [r["point"] for r in both["rows"]] == ["0.5", "params=0.5"]
    code, out, err = invoke(capsys, "sweep", MLP, "--targets", "flops=0.5")
    assert code == 2 and "unknown kind" in err and len(err.strip().splitlines()) == 1
