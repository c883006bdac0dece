"""kill -9 at random points of a training run, then `--resume`, until the run is done.

After every kill each checkpoint on disk must load and pass its integrity check (so the next resume
starts from a valid one), the next start must remove the killed writer's temporary file, and in the end
the log's losses and the final weights must equal those of an uninterrupted run, bit for bit. Kill
points: during the imports, mid-checkpoint-write (the launcher holds the write open until the kill),
and a random delay after the run has made progress (inside a step, a log write or a checkpoint write).
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.fault_tools import launch, tiny_train
from ttmem.cli import main
from ttmem.train import checkpoint as ckpt
from ttmem.train import read_log

SETTINGS = ("steps=12", "ckpt_every=1", "keep_checkpoints=3", "model_args.dropout=0.1")


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_log(out / "log.jsonl") if "loss" in r]


def _done_steps(out: Path) -> int:
    log = out / "log.jsonl"
    if not log.exists():
        return 0
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in log.read_text().splitlines() if '"loss"' in line]
    return max(steps, default=0)


def _check_all_valid(out: Path) -> list[int]:
    steps = []
    for step, path in ckpt.list_checkpoints(out / "checkpoints"):
        assert ckpt.load_checkpoint(path)["step"] == step  # verifies the SHA-256 first
        steps.append(step)
    return steps


def _wait(proc, condition, timeout: float = 120.0) -> bool:
    """Poll until `condition()` holds (True) or the process ends (False)."""
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            return False
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.01)
    return True


def _kill_point(kind: str, out: Path, tmp_path: Path, argv: list[str], rng: random.Random) -> tuple[int, int]:
    """Start a resumed run, kill -9 it at a point of the given kind; returns (pid, exit status)."""
    if kind == "import":
        proc = launch(tmp_path, argv)
        time.sleep(rng.uniform(0.05, 0.5))
    elif kind == "mid-write":
        proc = launch(tmp_path, argv, slow_save="60,0")
        _wait(proc, lambda: bool(list((out / "checkpoints").glob(f".step-*.tmp-{proc.pid}"))))
    else:
        proc = launch(tmp_path, argv)
        start = _done_steps(out)
        if _wait(proc, lambda: _done_steps(out) > start):
            time.sleep(rng.uniform(0.0, 0.15))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return proc.pid, proc.returncode


def kill_resume_loop(tmp_path: Path, corpus: Path, kinds: list[str], seed: int) -> None:
    reference = tmp_path / "reference"
    assert main(tiny_train(reference, corpus, *SETTINGS)) == 0
    out = tmp_path / "killed"
    argv = [*tiny_train(out, corpus, *SETTINGS), "--resume"]
    rng = random.Random(seed)
    killed = []
    for kind in kinds:
        pid, status = _kill_point(kind, out, tmp_path, argv, rng)
        killed.append(pid)
        if status == 0:  # the run finished before the kill
            break
        _check_all_valid(out)
    proc = launch(tmp_path, argv)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert not [p for p in (out / "checkpoints").iterdir() if any(p.name.endswith(f".tmp-{pid}") for pid in killed)]
    assert _check_all_valid(out)[-1] == 12
    assert _losses(out) == _losses(reference)  # exactly, step for step
    final = ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))["model"]
    expected = ckpt.load_checkpoint(ckpt.latest_checkpoint(reference / "checkpoints"))["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "code.txt"
    path.write_text("".join(f"def h{i}(y):\n    return y + {i} * y\n\n" for i in range(300)))
    return path


def test_three_kills_resume_exactly(tmp_path, corpus):
    kill_resume_loop(tmp_path, corpus, ["import", "mid-write", "random"], seed=0)


@pytest.mark.slow
def test_twenty_kills_at_random_points_resume_exactly(tmp_path, corpus):
    kinds = ["import", "mid-write", "random", "random", "mid-write"] * 4
    kill_resume_loop(tmp_path, corpus, kinds, seed=1)
