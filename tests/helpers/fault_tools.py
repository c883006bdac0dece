"""Tools for the fault-injection tests: simulated read-only folders and full disks, a tiny training
command, and a subprocess launcher whose checkpoint writes can be slowed down to be killed mid-write.

Tests may run as root, where permission bits do not stop writes, so a read-only folder is simulated by
patching the functions that write (open for writing, os.open with write flags, mkdir, rename, unlink)
to fail with EROFS for paths under it, exactly as the kernel would.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = str(ROOT / "tests" / "helpers" / "train_models.py")
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}

# Runs `ttmem.cli.main(ARGS)`; with TTMEM_TEST_SLOW_SAVE="SECONDS,SKIP" every checkpoint write after the
# first SKIP sleeps SECONDS after its bytes are written and before it is renamed into place.
LAUNCHER = """
import os, sys, time
import torch
from ttmem.cli import main
seconds, skip = (float(x) for x in os.environ.get("TTMEM_TEST_SLOW_SAVE", "0,0").split(","))
real_save, calls = torch.save, []
def slow_save(obj, handle, *args, **kwargs):
    real_save(obj, handle, *args, **kwargs)
    handle.flush()
    calls.append(1)
    if len(calls) > skip:
        time.sleep(seconds)
torch.save = slow_save
sys.exit(main(sys.argv[1:]))
"""


def tiny_train(out: Path, corpus: Path, *extra: str) -> list[str]:
    """`ttmem train` arguments of a run of a few seconds with a tiny model and no report."""
    return [
        "train",
        "--no-progress",
        f"model={MODELS}:tiny_lm",
        f"data={corpus}",
        f"out_dir={out}",
        "baseline=none",
        "report=false",
        "seq_len=32",
        "batch_size=4",
        "steps=6",
        "warmup_steps=2",
        "eval_every=1000",
        "eval_tokens=256",
        "ckpt_every=2",
        "keep_checkpoints=10",
        "log_every=1",
        "aux_task=",
        *extra,
    ]


def launch(tmp_path: Path, argv: list[str], slow_save: str = "0,0") -> subprocess.Popen:
    """Start the launcher in a subprocess (stdout / stderr piped, text)."""
    script = tmp_path / "launcher.py"
    if not script.exists():
        script.write_text(LAUNCHER)
    env = {**ENV, "TTMEM_TEST_SLOW_SAVE": slow_save}
    return subprocess.Popen(
        [sys.executable, str(script), *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def assert_one_line(stderr: str, *expected: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    for text in expected:
        assert text in stderr, stderr


class FileSystemFault:
    """Make writes under `root` fail with `code` (EROFS: read-only, ENOSPC: full) while active."""

    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path, code: int = errno.EROFS) -> None:
        self.root, self.code, self.active = root.resolve(), code, True
        real_open, real_os_open = io.open, os.open

        def under(path) -> bool:
            if not self.active or isinstance(path, int):
                return False
            return Path(os.path.abspath(os.fspath(path))).is_relative_to(self.root)

        def fail(path) -> None:
            raise OSError(self.code, os.strerror(self.code), os.fspath(path))

        def guarded_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and under(file):
                fail(file)
            return real_open(file, mode, *args, **kwargs)

        def guarded_os_open(path, flags, *args, **kwargs):
            if flags & self._WRITE_FLAGS and under(path):
                fail(path)
            return real_os_open(path, flags, *args, **kwargs)

        def guarded(real):
            def call(path, *args, **kwargs):
                if under(path):
                    fail(path)
                return real(path, *args, **kwargs)

            return call

        monkeypatch.setattr(io, "open", guarded_open)
        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(os, "open", guarded_os_open)
        for name in ("mkdir", "replace", "rename", "unlink", "remove", "rmdir"):
            monkeypatch.setattr(os, name, guarded(getattr(os, name)))
