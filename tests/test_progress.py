"""What a run shows while it works (onnxprune.progress): bars on a terminal only, stage logs with
timings under -v, nothing under -q."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from test_cli import invoke

from onnxprune import progress

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "models" / "lenet5.onnx"
CALIB = ROOT / "models" / "digits_calib.npz"


def _prune_args(out: Path, *extra: str) -> list[str]:
    return ["prune", str(LENET), "-o", str(out), "--method", "obs", "--calib", str(CALIB), "--batch-size", "16",
            "--providers", "cpu", *extra]  # fmt: skip


def _on_terminal(args: list[str]) -> tuple[int, str, str]:
    """Run `python -m onnxprune ARGS` with stderr on a pseudo-terminal of 100 columns; returns (exit
    code, stdout, what the terminal received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "onnxprune", *args], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    received = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        received += chunk
    os.close(master)
    stdout = proc.stdout.read().decode()
    return proc.wait(), stdout, received.decode(errors="replace")


def test_progress_bars_on_a_terminal(tmp_path):
    code, stdout, terminal = _on_terminal(_prune_args(tmp_path / "out.onnx"))
    assert code == 0, terminal
    # statistics and validation (obs is sequential on LeNet-5's 4 waves by default: one group a wave, no groups bar)
    for bar in ("obs statistics 1/4", "obs statistics 4/4", "validate pruned"):
        assert bar in terminal and "%|" in terminal, terminal
    code, _, terminal = _on_terminal(_prune_args(tmp_path / "one_shot.onnx", "--no-sequential"))
    assert code == 0 and "obs groups 1/1" in terminal, terminal  # the greedy solves of 4 groups in one wave
    assert "method     obs" in stdout and "%|" not in stdout  # bars stay on stderr
    code, stdout, terminal = _on_terminal(_prune_args(tmp_path / "quiet.onnx", "-q"))
    assert code == 0 and terminal == "" and stdout == ""


def test_nothing_on_a_pipe_and_nothing_at_all_with_q(tmp_path, capsys):
    code, stdout, err = invoke(capsys, *_prune_args(tmp_path / "out.onnx"))
    assert code == 0 and err == "" and "accuracy" in stdout  # stderr is not a terminal: no bars
    code, stdout, err = invoke(capsys, *_prune_args(tmp_path / "q.onnx", "-q"))
    assert code == 0 and stdout == "" and err == ""
    code, stdout, err = invoke(capsys, "-q", *_prune_args(tmp_path / "q2.onnx"))  # before the command too
    assert code == 0 and stdout == "" and err == ""


def test_verbose_logs_every_stage_with_its_time_and_sizes(tmp_path, capsys):
    code, stdout, err = invoke(capsys, *_prune_args(tmp_path / "out.onnx", "-v"))
    assert code == 0, err
    lines = err.splitlines()
    assert "%|" not in err  # a pipe: logs, no bars
    stages = ("load", "load data", "analyze", "decide", "shrink", "validate")
    for stage in (*stages, *(f"statistics: obs statistics {wave}/4" for wave in range(1, 5))):
        done = [line for line in lines if f" {stage} done in " in line]
        assert len(done) == 1, (stage, err)
        assert done[0].split(" done in ")[1].split(" s")[0].replace(".", "").isdigit()
    assert any("statistics: obs statistics 1/4 done in" in line and "samples=256" in line for line in lines)
    assert any("load data done in" in line and "calibration=256, validation=100" in line for line in lines)
    code, _, err = invoke(capsys, "-v", "validate", LENET, LENET, "--providers", "cpu")  # -v before the command
    assert code == 0 and "validation runs done in" in err


def test_verbose_logs_bench_runs(capsys):
    args = ("bench", LENET, "--batch-sizes", "2", "--repeats", "2", "-v", "--providers", "cpu")
    code, stdout, err = invoke(capsys, *args)
    assert code == 0 and "bench lenet5.onnx done in" in err and "median_ms=" in err


def test_stage_logs_start_and_end_with_sizes(caplog):
    log = logging.getLogger("onnxprune.test")
    with caplog.at_level(logging.INFO, logger="onnxprune"):
        with progress.stage(log, "solve", layers=3, samples=12_345) as stage:
            stage.sizes["error"] = 0.125
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "solve ... (layers=3, samples=12,345)"
    assert messages[1].startswith("solve done in ")
    assert messages[1].endswith(" s (layers=3, samples=12,345, error=0.125)")
    assert stage.seconds >= 0


def test_bar_is_the_iterable_itself_unless_bars_are_shown():
    items = [1, 2, 3]
    assert progress.bar(items, desc="x") is items
    with progress.showing(True):
        shown = progress.bar(items, desc="x")
        assert shown is not items and list(shown) == items
        assert progress.bar([1], desc="one item") == [1]  # nothing to show for a single step
        assert progress.bar(items, enabled=False) is items
    assert not progress.shown()


def test_a_command_leaves_no_logging_setting_behind(tmp_path):
    """-q or -v configure the `onnxprune` logger for one command only (a test after it still sees warnings)."""
    from click.testing import CliRunner

    from onnxprune.cli import cli

    logger = logging.getLogger("onnxprune")
    before = (logger.level, list(logger.handlers))
    for flag in ("-q", "-v"):
        result = CliRunner().invoke(cli, [flag, "prune", str(LENET), "-o", str(tmp_path / "o.onnx"), "--ratio", "0.3"])
        assert result.exit_code == 0 and (logger.level, list(logger.handlers)) == before
