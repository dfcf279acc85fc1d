"""The fault corpus, in subprocesses: file-size limits (RLIMIT_FSIZE), signals during the work and the
write, a run killed outright, and (as root) a read-only and a full file system.

Every case asserts the outcome class, that no partial or temporary file is left, and that the inputs
are unchanged (faults_cases.classify). The units of atomic.Transaction are checked directly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults_cases import MODELS, all_cases, digest, run_case, run_subprocess

from onnxprune.atomic import Transaction, remove_stale
from onnxprune.errors import OutputPathError

CASES = [pytest.param(c, id=c.id) for c in all_cases() if c.process]


@pytest.mark.parametrize("case", CASES)
def test_fault_in_subprocess(case, tmp_path):
    got, detail = run_case(case, tmp_path / "work")
    assert got == case.expect, detail


# ---- a run killed outright leaves a temporary file; the next run removes it ---------------------
def test_sigkill_during_write_then_rerun(tmp_path):
    shutil.copy(MODELS / "lenet5.onnx", tmp_path / "model.onnx")
    child = (
        "import os, signal, sys\n"
        "import onnxprune.atomic as a\n"
        "real = a._fsync\n"
        "def stop(path):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "a._fsync = stop\n"
        "from onnxprune.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["prune", "model.onnx", "-o", "out.onnx", "-q"]
    done = subprocess.run([sys.executable, "-c", child, *args], cwd=tmp_path, env=_env(), capture_output=True)
    assert done.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.onnx.")]
    assert left and not (tmp_path / "out.onnx").exists()  # the temporary file of the killed run
    before = digest(tmp_path)
    again = subprocess.run([sys.executable, "-m", "onnxprune", *args], cwd=tmp_path, env=_env(), capture_output=True)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.onnx"]
    assert digest(tmp_path)["model.onnx"] == before["model.onnx"]


def _env() -> dict:
    root = Path(__file__).resolve().parent.parent
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}


# ---- read-only and full file systems (small tmpfs mounts need root) ----------------------------
def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    target.mkdir()
    return (
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True).returncode
        == 0
    )


@pytest.fixture
def mounts(tmp_path):
    made = []

    def mount(name: str, options: str) -> Path:
        target = tmp_path / name
        if not _mount(target, options):
            pytest.skip(
                "needs root and mount(8) for a tmpfs: root ignores permission bits, so a chmod'ed folder proves nothing"
            )
        made.append(target)
        return target

    yield mount
    for target in made:
        subprocess.run(["umount", str(target)], capture_output=True)


@pytest.mark.parametrize("kind", ["read-only", "full"])
def test_output_on_a_bad_file_system(kind, tmp_path, mounts):
    target = mounts("fs", "ro,size=1m" if kind == "read-only" else "size=12k")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(MODELS / "lenet5.onnx", work / "model.onnx")
    before = digest(work)
    args = ["prune", "model.onnx", "-o", str(target / "out.onnx"), "-q", "--report", str(target / "r.json")]
    outcome = run_subprocess(args, work, {"rlimit": 0})
    line = outcome.stderr.strip()
    assert outcome.code == 1 and "\n" not in line and line.startswith("onnxprune: error:"), line
    assert ("not writable" in line) if kind == "read-only" else ("disk is full" in line), line
    assert list(target.iterdir()) == []  # no model, no report, no temporary file
    assert digest(work) == before


# ---- atomic.Transaction --------------------------------------------------------------------------
def test_transaction_is_all_or_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(RuntimeError), Transaction() as tx:
        tx.write_text(tmp_path / "a.txt", "new a")
        tx.write_text(tmp_path / "b.txt", "new b")
        raise RuntimeError("fails after both writes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old a"
    with Transaction() as tx:
        tx.write_text(tmp_path / "a.txt", "new a")
        tx.write_text(tmp_path / "b.txt", "new b")
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["new a", "new b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_transaction_gives_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        with Transaction() as tx:
            tx.write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temporary_files(tmp_path):
    dead = tmp_path / ".out.onnx.onnxprune-999999999-abcd.tmp"
    mine = tmp_path / f".out.onnx.onnxprune-{os.getpid()}-abcd.tmp"
    other = tmp_path / ".notes.tmp"
    for path in (dead, mine, other):
        path.write_text("x")
    assert remove_stale(tmp_path) == [dead]
    assert mine.exists() and other.exists()


def test_transaction_write_error_is_one_line(tmp_path):
    with pytest.raises(OutputPathError, match="cannot write"), Transaction() as tx:
        tx.path(tmp_path / "missing" / "f.txt")
    assert list(tmp_path.iterdir()) == []


def test_sigterm_unwinds_like_ctrl_c(tmp_path):
    with pytest.raises(KeyboardInterrupt), Transaction() as tx:
        tx.write_text(tmp_path / "f.txt", "x")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
