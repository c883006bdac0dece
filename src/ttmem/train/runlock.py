"""An advisory lock on a run directory, held for the whole run (training, checkpoints, pruning, report).

Design: `fcntl.flock` on `OUT/.lock`, taken without waiting; the holder writes its PID into the file so
a second run can say who holds it. The kernel drops the lock when the holder exits, however it exits
(kill -9 included), so a lock is never left stale; the file itself stays and is harmless. The lock is
re-entrant within a process (the main job holds its folder while the trainer inside it takes it again).
On platforms without `fcntl` no lock is taken.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
_held: dict[Path, tuple[int, int]] = {}  # folder -> (file descriptor, depth)


class RunLocked(RuntimeError):
    """Another process holds the run directory."""


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold the advisory lock of `folder` (created if needed) for the duration of the block."""
    folder = Path(folder).resolve()
    if fcntl is None:
        yield
        return
    if folder in _held:
        fd, depth = _held[folder]
        _held[folder] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[folder]
            _held[folder] = (fd, depth - 1)
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLocked(
            f"{folder} is in use by another ttmem run ({_holder(path)}); wait for it to finish or choose another "
            "out_dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[folder] = (fd, 1)
        yield
    finally:
        _held.pop(folder, None)
        os.close(fd)  # releases the lock
