"""All-or-nothing writes of several files (a model, its external data, its report).

`Transaction` hands out a temporary path beside every target (same folder, so the final rename never
crosses a file system). Nothing is visible under a target's name until `commit`: every temporary file
is flushed to disk (fsync), then each is renamed over its target and the folders are synced. An error,
Ctrl-C, SIGTERM or SIGHUP before the commit removes every temporary file; the targets keep their old
contents. A run killed outright (SIGKILL, power loss) can leave temporary files behind: they carry the
writer's process id, and the next transaction in that folder removes those whose process is gone.
Written files get the ordinary mode of a new file (0666 minus the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import signal
import threading
from pathlib import Path

from .errors import OutputPathError

TEMP_TAG = "onnxprune"
_TEMP = re.compile(rf"^\..+\.{TEMP_TAG}-(\d+)(?:-[0-9a-f]+)?\.tmp$")
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C so every cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.written: tuple[str, ...] = ()  # files complete on disk when the signal arrived (the commit)


def _raise(signum, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_interrupt():
    """Within the block, SIGTERM and SIGHUP raise `Interrupted` (as SIGINT raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(directory: Path) -> list[Path]:
    """Remove temporary files a killed onnxprune run left in `directory` (their process is gone)."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            match = _TEMP.match(entry.name)
            if match and entry.is_file() and not _alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def describe_os_error(exc: OSError, path: str | os.PathLike) -> str:
    """One line for a failed write: what happened and what to do about it."""
    hints = {
        errno.ENOSPC: "the disk is full; free space or write elsewhere",
        errno.EDQUOT: "the disk quota is exhausted; free space or write elsewhere",
        errno.EFBIG: "the file exceeds the file-size limit (ulimit -f); raise it or write elsewhere",
        errno.EACCES: "permission denied; write to a folder you can write to",
        errno.EPERM: "permission denied; write to a folder you can write to",
        errno.EROFS: "the file system is read-only; write elsewhere",
        errno.EISDIR: "it is a directory; give a file name",
        errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
        errno.ENOENT: "its folder does not exist; create it first",
    }
    hint = hints.get(exc.errno, f"{exc.strerror or type(exc).__name__}; check the path and the disk")
    return f"{path}: cannot write: {hint}; nothing was written"


class Transaction:
    """Write several files so that either all of them appear or none does.

    with Transaction() as tx:
        tx.path("out.onnx")        # a temporary path to write "out.onnx" into
        tx.write_text("r.json", text)
    # leaving the block without an exception commits; with one, the temporary files are removed
    """

    def __init__(self) -> None:
        self._pending: dict[Path, Path] = {}  # target -> temporary file
        self._signals = None

    def __enter__(self) -> Transaction:
        self._signals = signals_interrupt()
        self._signals.__enter__()
        return self

    def __exit__(self, kind, value, trace) -> None:
        try:
            if kind is None:
                self.commit()
                return
            targets = ", ".join(str(t) for t in self._pending) or "output"
            self.abort()
            if isinstance(value, OSError):  # a write into a temporary file failed (disk full, size limit)
                raise OutputPathError(describe_os_error(value, targets)) from None
        finally:
            signals, self._signals = self._signals, None
            signals.__exit__(None, None, None)

    def path(self, target: str | os.PathLike) -> Path:
        """A fresh temporary path beside `target`; it replaces `target` on commit."""
        target = Path(os.path.abspath(target))
        if target in self._pending:
            return self._pending[target]
        remove_stale(target.parent)
        name = f".{target.name}.{TEMP_TAG}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        temp = target.parent / name
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _mode())
        except OSError as exc:
            raise OutputPathError(describe_os_error(exc, target)) from None
        os.close(fd)
        self._pending[target] = temp
        return temp

    def write_bytes(self, target: str | os.PathLike, data: bytes) -> int:
        temp = self.path(target)
        try:
            temp.write_bytes(data)
        except OSError as exc:
            raise OutputPathError(describe_os_error(exc, target)) from None
        return len(data)

    def write_text(self, target: str | os.PathLike, text: str) -> int:
        return self.write_bytes(target, text.encode())

    def commit(self) -> None:
        try:
            for temp in self._pending.values():
                _fsync(temp)
                os.chmod(temp, _mode())
            try:
                with _signals_deferred():  # the renames are quick: let no signal split them
                    for target, temp in self._pending.items():
                        os.replace(temp, target)
            except Interrupted as exc:  # arrived during the renames, delivered after them
                exc.written = tuple(str(t) for t in self._pending)
                self._pending.clear()
                raise
            for directory in {t.parent for t in self._pending}:
                _fsync_dir(directory)
        except OSError as exc:
            self.abort()
            target = next(iter(self._pending), "output")
            raise OutputPathError(describe_os_error(exc, target)) from None
        except BaseException:
            self.abort()
            raise
        self._pending.clear()

    def abort(self) -> None:
        for temp in self._pending.values():
            with contextlib.suppress(OSError):
                temp.unlink()
        self._pending.clear()


@contextlib.contextmanager
def _signals_deferred():
    """Within the block, SIGINT/SIGTERM/SIGHUP are only recorded; the first one is raised after it.
    (Masking is not enough: onnxruntime's worker threads would take a process-directed signal.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in (signal.SIGINT, *_SIGNALS)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if arrived:
        raise Interrupted(arrived[0])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
