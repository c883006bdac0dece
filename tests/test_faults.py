"""Fault injection: every case of "nothing lost, nothing silent" against the CLI and the library.

Each test is one numbered case: the command ends with one line on stderr (no traceback) and a non-zero
exit, and every checkpoint already written is still there and passes its integrity check. Losses of
resumed runs are compared with an uninterrupted run of the same config (exact resume is the reference).
"""

from __future__ import annotations

import errno
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.fault_tools import ENV, FileSystemFault, assert_one_line, launch, tiny_train
from ttmem.cli import main
from ttmem.fileio import read_manifest
from ttmem.train import checkpoint as ckpt
from ttmem.train import read_log
from ttmem.train.logs import RunLogger
from ttmem.train.optim import warmup_cosine


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "code.txt"
    path.write_text("".join(f"def g{i}(x):\n    return x * {i} - {i % 5}\n\n" for i in range(300)))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> list[tuple[int, float]]:
    """Losses of the uninterrupted run that every interrupted-and-resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(tiny_train(out, corpus)) == 0
    return losses(out)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_log(out / "log.jsonl") if "loss" in r]


def valid_steps(out: Path) -> list[int]:
    """Steps of the checkpoints in `out`, after checking every one of them loads and verifies."""
    found = ckpt.list_checkpoints(out / "checkpoints")
    for step, path in found:
        assert ckpt.load_checkpoint(path)["step"] == step
    return [step for step, _ in found]


def flip_bytes(path: Path, count: int) -> None:
    """Invert `count` bytes spread over the second half of the file (tensor data, not the zip header)."""
    data = bytearray(path.read_bytes())
    for i in range(count):
        at = len(data) // 2 + i * (len(data) // 2 // (count + 1))
        data[at] ^= 0xFF
    path.write_bytes(bytes(data))


# -- 1. OS errors: read-only folders, a folder turning read-only mid-run, a full disk -----------------
@pytest.mark.parametrize(
    "where,code,message",
    [
        ("out_dir", errno.EROFS, "read-only; choose a writable location"),
        ("parent", errno.EROFS, "read-only; choose a writable location"),
        ("out_dir", errno.EACCES, "permission denied; choose a location you may write to"),
    ],
)
def test_1_read_only_or_unwritable_output_directory_or_parent(tmp_path, corpus, capsys, monkeypatch, where, code,
                                                              message):
    readonly = tmp_path / "ro"
    readonly.mkdir()
    out = readonly / "run" if where == "out_dir" else readonly / "new" / "run"
    if where == "out_dir":
        out.mkdir()
    FileSystemFault(monkeypatch, readonly, code)
    status, _, stderr = run(tiny_train(out, corpus), capsys)
    assert status == 1
    assert_one_line(stderr, "ttmem train: error: ", message)


def test_1_checkpoint_folder_turns_read_only_mid_run(tmp_path, corpus, capsys, monkeypatch):
    out = tmp_path / "run"
    fault = FileSystemFault(monkeypatch, out / "checkpoints")
    fault.active = False
    real_prune = ckpt.prune_checkpoints

    def prune_then_lock_down(folder, keep):
        real_prune(folder, keep)
        fault.active = True  # after the first checkpoint (step 2) is in place

    monkeypatch.setattr(ckpt, "prune_checkpoints", prune_then_lock_down)
    code, _, stderr = run(tiny_train(out, corpus), capsys)
    assert code == 1
    assert_one_line(stderr, "read-only", "training stopped at step 4", "last checkpoint kept: ", "step-0000002")
    fault.active = False
    assert valid_steps(out) == [2]
    assert not list((out / "checkpoints").glob(".*tmp-*"))


def test_1_log_folder_turns_read_only_the_steps_since_the_checkpoint_are_saved(
    tmp_path, corpus, capsys, monkeypatch, reference
):
    """Only the log fails: the run checkpoints the current step before it stops, so resuming loses nothing."""
    out = tmp_path / "run"
    fault = FileSystemFault(monkeypatch, out / "log.jsonl")
    fault.active = False
    real_log = RunLogger.log

    def log_until_step_3(self, record):
        fault.active = fault.active or record.get("step") == 3
        return real_log(self, record)

    monkeypatch.setattr(RunLogger, "log", log_until_step_3)
    code, _, stderr = run(tiny_train(out, corpus), capsys)
    assert code == 1
    assert_one_line(stderr, "log.jsonl: the file system is read-only", "the current step 3 was saved")
    fault.active = False
    monkeypatch.setattr(RunLogger, "log", real_log)
    assert valid_steps(out) == [2, 3]
    code, _, stderr = run([*tiny_train(out, corpus), "--resume"], capsys)
    assert code == 0, stderr
    assert losses(out) == reference


def test_1_disk_full_while_writing_a_checkpoint(tmp_path, corpus, capsys, monkeypatch, reference):
    """torch.save reports a full disk as RuntimeError (enforce fail) chained to OSError ENOSPC."""
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def filling_save(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) < 2:
            return real_save(obj, handle, *args, **kwargs)
        handle.write(b"PK\x03\x04 the first part of a checkpoint")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")  # noqa: B904

    monkeypatch.setattr(torch, "save", filling_save)
    code, _, stderr = run(tiny_train(out, corpus), capsys)
    assert code == 1
    assert_one_line(stderr, "step-0000004/trainer.pt: no space left on the device", "last checkpoint kept: ")
    assert valid_steps(out) == [2]
    assert not list((out / "checkpoints").glob(".*tmp-*"))  # the partial file is gone
    monkeypatch.setattr(torch, "save", real_save)
    code, _, stderr = run([*tiny_train(out, corpus), "--resume"], capsys)
    assert code == 0, stderr
    assert losses(out) == reference


# -- 2. integrity: damaged checkpoints are found on every load, resume falls back to a valid one -----
@pytest.mark.parametrize("flipped", [1, 200])
def test_2_corrupt_newest_checkpoint_resume_falls_back_and_says_so(
    tmp_path, corpus, capsys, reference, flipped
):
    out = tmp_path / "run"
    assert run(tiny_train(out, corpus, "steps=4"), capsys)[0] == 0
    newest = ckpt.checkpoint_path(out / "checkpoints", 4)
    flip_bytes(newest / "model.safetensors", flipped)
    code, _, stderr = run([*tiny_train(out, corpus), "--resume"], capsys)
    assert code == 0 and "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 3, stderr
    assert "step-0000004/model.safetensors is corrupt or truncated" in lines[0]
    assert "set aside as step-0000004.corrupt" in lines[0]
    assert lines[1].startswith("ttmem train: warning: resuming from ") and lines[1].endswith(
        "step-0000002, the newest checkpoint that passes its integrity check"
    )
    assert lines[2].endswith("resumed at step 2 with changed settings: steps 4 -> 6")  # warm-up: same lr
    assert (out / "checkpoints" / "step-0000004.corrupt").is_dir()  # kept for inspection
    assert losses(out) == reference
    assert valid_steps(out) == [2, 4, 6]


def test_2_no_valid_checkpoint_left_is_an_error_not_a_fresh_start(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert run(tiny_train(out, corpus, "steps=2"), capsys)[0] == 0
    flip_bytes(ckpt.checkpoint_path(out / "checkpoints", 2) / "trainer.pt", 3)
    code, _, stderr = run([*tiny_train(out, corpus), "--resume"], capsys)
    assert code == 2
    assert "holds no valid checkpoint to resume from; to start over" in stderr.splitlines()[-1]
    assert "Traceback" not in stderr and (out / "checkpoints" / "step-0000002.corrupt").is_dir()


def test_2_eval_and_generate_refuse_a_corrupt_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert run(tiny_train(out, corpus, "steps=2"), capsys)[0] == 0
    flip_bytes(ckpt.checkpoint_path(out / "checkpoints", 2) / "model.safetensors", 1)
    code, stdout, stderr = run(["eval", str(out), "--data", str(corpus), "--eval-tokens", "64"], capsys)
    assert code == 2 and stdout == ""
    assert_one_line(stderr, "ttmem eval: error: checkpoint ", "is corrupt or truncated")
    code, stdout, stderr = run(["generate", str(out), "--max-new-tokens", "4"], capsys)
    assert code == 2 and stdout == ""
    assert_one_line(stderr, "ttmem generate: error: checkpoint ", "is corrupt or truncated")


def test_2_a_writer_killed_right_after_the_rename_leaves_a_verifiable_checkpoint(tmp_path, monkeypatch):
    """The digest is in the manifest before the rename, so no instant leaves a listed file without one."""
    from ttmem import fileio

    real_commit = fileio.commit_directory

    def commit_then_die(tmp, path):
        real_commit(tmp, path)
        raise KeyboardInterrupt  # stands for kill -9: nothing after the rename runs

    ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, 1), {"step": 1})
    monkeypatch.setattr(ckpt, "commit_directory", commit_then_die)
    for step in (2, 2):  # a new name, then a new version of an existing name
        with pytest.raises(KeyboardInterrupt):
            ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, step), {"step": step, "w": torch.rand(3)})
        assert ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, step))["step"] == step
    assert ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 1))["step"] == 1


def test_2_checkpoints_without_a_manifest_load_with_a_warning_but_an_unlisted_one_is_refused(tmp_path):
    from ttmem.fileio import MANIFEST, UnverifiedWarning

    copied = ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path / "old", 1), {"step": 1, "w": torch.ones(2)})
    (copied / MANIFEST).unlink()  # as copied without its manifest
    with pytest.warns(UnverifiedWarning, match="cannot be verified"):
        assert torch.equal(ckpt.load_checkpoint(copied)["w"], torch.ones(2))
    managed = ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path / "new", 1), {"step": 1})
    weights = ckpt.save_checkpoint(tmp_path / "w" / "step-0000001", {"step": 1, "model": {"w": torch.ones(2)}})
    shutil.copy(weights / "model.safetensors", managed)  # dropped in, never recorded
    with pytest.raises(ckpt.CorruptCheckpoint, match="has no recorded SHA-256"):
        ckpt.load_checkpoint(managed)
    legacy = ckpt.save_legacy_checkpoint(tmp_path / "legacy" / "step-0000001.pt", {"step": 1, "w": torch.ones(2)})
    (tmp_path / "legacy" / MANIFEST).unlink()  # an earlier version's file, written before digests were recorded
    with pytest.warns(UnverifiedWarning, match="cannot be verified"):
        assert torch.equal(ckpt.load_checkpoint(legacy)["w"], torch.ones(2))
    dropped_in = ckpt.save_legacy_checkpoint(tmp_path / "legacy2" / "step-0000001.pt", {"step": 1})
    dropped_in.with_name("step-0000002.pt").write_bytes(legacy.read_bytes())
    with pytest.raises(ckpt.CorruptCheckpoint, match="has no recorded SHA-256"):
        ckpt.load_checkpoint(dropped_in.with_name("step-0000002.pt"))


def test_2_load_model_refuses_a_damaged_weights_file(tmp_path):
    from ttmem.models import ModelConfig, build_model, load_model, save_model

    model = build_model(ModelConfig(arch="transformer", vocab_size=32, dim=16, depth=1, heads=2))
    save_model(model, tmp_path / "m")
    assert set(read_manifest(tmp_path / "m")) == {"model.safetensors", "config.json"}
    flip_bytes(tmp_path / "m" / "model.safetensors", 1)
    with pytest.raises(ValueError, match="model.safetensors is corrupt or truncated"):
        load_model(tmp_path / "m")


# -- 3. resume compares the configuration --------------------------------------------------------------
def test_3_resume_with_other_data_and_batch_size_is_refused_with_the_differences(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert run(tiny_train(out, corpus, "steps=2"), capsys)[0] == 0
    other = tmp_path / "other.txt"
    other.write_text("other text\n" * 500)
    before = (out / "config.yaml").read_text()
    code, _, stderr = run([*tiny_train(out, corpus, f"data={other}", "batch_size=8"), "--resume"], capsys)
    assert code == 2
    assert_one_line(stderr, "would change the run: ", f'data "{corpus}" -> "{other}"', "batch_size 4 -> 8")
    assert "--allow-change data,batch_size" in stderr
    assert (out / "config.yaml").read_text() == before  # config.yaml still states what the run used
    assert valid_steps(out) == [2]


def test_3_steps_below_the_checkpoint_are_refused(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert run(tiny_train(out, corpus, "steps=4"), capsys)[0] == 0
    code, _, stderr = run([*tiny_train(out, corpus, "steps=2"), "--resume"], capsys)
    assert code == 2
    assert_one_line(stderr, "steps=2 is below the step 4 of checkpoint ")
    assert "steps: 4" in (out / "config.yaml").read_text()


def test_3_an_allowed_lr_and_batch_change_is_used_and_recorded(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert run(tiny_train(out, corpus, "steps=2"), capsys)[0] == 0
    code, _, stderr = run([*tiny_train(out, corpus, "lr=0.0005", "batch_size=8"), "--resume"], capsys)
    assert code == 2 and "lr 0.002 -> 0.0005" in stderr
    argv = [*tiny_train(out, corpus, "lr=0.0005", "batch_size=8"), "--resume", "--allow-change", "lr,batch_size"]
    code, _, stderr = run(argv, capsys)
    assert code == 0 and "Traceback" not in stderr
    assert stderr.count("\n") == 1 and "changed settings: batch_size 4 -> 8, lr 0.002 -> 0.0005" in stderr
    # The optimizer really uses the new lr: the closed-form schedule with base 5e-4 from step 3 on.
    factor = warmup_cosine(2, 6, 0.1)
    records = {r["step"]: r for r in read_log(out / "log.jsonl") if "loss" in r}
    for step in range(3, 7):
        assert math.isclose(records[step]["lr"], 5e-4 * factor(step - 1), rel_tol=1e-12)
    assert math.isclose(records[2]["lr"], 2e-3 * factor(1), rel_tol=1e-12)
    # Tokens count each step with the batch it had.
    assert [records[s]["tokens"] for s in (2, 3, 6)] == [2 * 4 * 32, 2 * 4 * 32 + 8 * 32, 2 * 4 * 32 + 4 * 8 * 32]
    assert "lr: 0.0005" in (out / "config.yaml").read_text()
    history = [json.loads(line) for line in (out / "config_history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[1]["changes"] == {"batch_size": [4, 8], "lr": [0.002, 0.0005], "steps": [2, 6]}
    assert history[1]["allowed"] == ["batch_size", "lr"] and history[1]["step"] == 2
    stored = ckpt.load_checkpoint(ckpt.checkpoint_path(out / "checkpoints", 6))
    assert stored["train_config"]["lr"] == 5e-4 and stored["tokens"] == 2 * 4 * 32 + 4 * 8 * 32


# -- 4. the run directory is locked --------------------------------------------------------------------
def test_4_a_second_run_in_a_locked_directory_names_the_holder(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom ttmem.train.runlock import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)",
            str(out),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, stderr = run(tiny_train(out, corpus), capsys)
        assert code == 1
        assert_one_line(stderr, f"is in use by another ttmem run (PID {holder.pid})", "choose another out_dir")
        assert not (out / "checkpoints").exists() and not (out / "log.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run(tiny_train(out, corpus, "steps=2"), capsys)[0] == 0  # the kernel released the lock


# -- 5. sampling temperature ---------------------------------------------------------------------------
def test_5_nan_temperature_is_a_clear_error(tmp_path, corpus, capsys):
    from ttmem.eval.generation import sample
    from ttmem.models import ModelConfig, build_model

    model = build_model(ModelConfig(arch="transformer", vocab_size=32, dim=16, depth=1, heads=2))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
            model.generate(torch.tensor([[1, 2]]), 2, temperature=bad)
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
            sample(torch.nn.Identity(), torch.tensor([[1]]), 2, temperature=bad)
    out = tmp_path / "run"
    assert run(tiny_train(out, corpus, "steps=2"), capsys)[0] == 0
    code, stdout, stderr = run(["generate", str(out), "--temperature", "nan"], capsys)
    assert code == 2 and stdout == ""
    assert_one_line(stderr, "--temperature must be a finite number >= 0, got nan")


# -- 8. FLOP counting through the persistent-token projection -----------------------------------------
def test_8_flops_are_counted_through_persistent_tokens_under_no_grad():
    from ttmem.layers.attention import Attention
    from ttmem.security.flops import measure_flops

    dim, heads, tokens = 16, 2, 4
    layer = Attention(dim, heads, persistent_tokens=tokens)
    with torch.no_grad():  # how the timing audit runs its decode steps
        projection = measure_flops(lambda: layer._persistent_keys_values(1))
        whole = measure_flops(lambda: layer(torch.randn(1, 3, dim)))
    assert projection == 2 * tokens * dim * 2 * dim  # [P, dim] @ [dim, 2 dim]: keys and values only
    assert whole > projection


def test_8_timing_audit_of_the_default_model_completes(capsys):
    argv = ["audit", "timing", "mac-tiny", "--trials", "2", "--warmup", "0", "--length", "4", "--lengths", "4", "8"]
    code, stdout, stderr = run([*argv, "--permutations", "5"], capsys)
    assert code == 0, stderr
    assert "FLOPs" in stdout and "context length" in stdout


# -- 9. the small ones -----------------------------------------------------------------------------------
def test_9_binary_training_data_is_refused(tmp_path, corpus, capsys):
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)) * 40)
    code, _, stderr = run(tiny_train(tmp_path / "run", corpus, f"data={binary}"), capsys)
    assert code == 2
    assert_one_line(stderr, f"data file {binary} is binary")


def test_9_config_directory_and_binary_config_are_named(tmp_path, corpus, capsys):
    (tmp_path / "cfg.yaml").mkdir()
    code, _, stderr = run([*tiny_train(tmp_path / "run", corpus), "--config", str(tmp_path / "cfg.yaml")], capsys)
    assert code == 2
    assert_one_line(stderr, "is a directory")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00binary\x80")
    code, _, stderr = run([*tiny_train(tmp_path / "run", corpus), "--config", str(tmp_path / "bin.yaml")], capsys)
    assert code == 2
    assert_one_line(stderr, f"config file {tmp_path / 'bin.yaml'} is not UTF-8 text")


def test_9_resume_from_a_run_folder_uses_its_newest_checkpoint(tmp_path, corpus, capsys, reference):
    out = tmp_path / "run"
    assert run(tiny_train(out, corpus), capsys)[0] == 0
    for step in (4, 6):
        ckpt.remove_checkpoint(ckpt.checkpoint_path(out / "checkpoints", step))
    code, _, stderr = run([*tiny_train(out, corpus), "--resume-from", str(out)], capsys)
    assert code == 0, stderr
    assert losses(out) == reference


def test_9_bad_baseline_is_reported_before_training(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = [a for a in tiny_train(out, corpus) if a != "baseline=none"]
    code, _, stderr = run([*args, "baseline=no-such-preset"], capsys)
    assert code == 2
    assert_one_line(stderr, "baseline=no-such-preset: ")
    assert not (out / "log.jsonl").exists()


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--eval-tokens", "0", "--eval-tokens must be >= 1, got 0"),
        ("--samples", "0", "--samples must be >= 1, got 0"),
        ("--mqar-pairs", "-1", "--mqar-pairs must be >= 0, got -1"),
        ("--seq-len", "0", "--seq-len must be >= 1, got 0"),
    ],
)
def test_9_eval_options_out_of_range(tmp_path, capsys, option, value, message):
    code, _, stderr = run(["eval", str(tmp_path), option, value], capsys)
    assert code == 2
    assert_one_line(stderr, message)


def test_9_stale_temporary_files_are_removed_at_start(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    assert run(tiny_train(out, corpus, "steps=2"), capsys)[0] == 0
    stale = out / "checkpoints" / ".step-0000004.tmp-999999"
    stale.mkdir()
    (stale / "trainer.pt").write_bytes(b"half a checkpoint")
    assert run([*tiny_train(out, corpus, "steps=3"), "--resume"], capsys)[0] == 0
    assert not stale.exists() and valid_steps(out) == [2, 3]


def test_9_damaged_log_line_is_kept_aside_and_reported(tmp_path, corpus, capsys, reference):
    out = tmp_path / "run"
    assert run(tiny_train(out, corpus), capsys)[0] == 0
    ckpt.remove_checkpoint(ckpt.checkpoint_path(out / "checkpoints", 6))
    log = out / "log.jsonl"
    lines = log.read_text().splitlines()
    lines[3] = lines[3][:7] + "\x00garbage"
    log.write_text("\n".join(lines) + "\n")
    code, _, stderr = run([*tiny_train(out, corpus), "--resume"], capsys)
    assert code == 0 and "Traceback" not in stderr
    assert stderr.count("\n") == 1 and "1 damaged line(s)" in stderr and "log.jsonl.damaged" in stderr
    assert (out / "log.jsonl.damaged").read_text() == lines[3] + "\n"
    assert losses(out) == reference


def test_9_progress_without_a_terminal_writes_few_whole_lines(tmp_path, corpus, capsys):
    from ttmem.progress import LineProgress

    bar = LineProgress(total=1000, desc="train", unit="step", interval=3600)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert capsys.readouterr().err == "train: 1000/1000 step (100%)\n"
    args = [a for a in tiny_train(tmp_path / "run", corpus) if a != "--no-progress"]
    code, _, stderr = run(args, capsys)
    assert code == 0 and "\r" not in stderr and stderr.count("\n") <= 2


def test_9_ctrl_c_while_importing_is_one_line(tmp_path, corpus):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ttmem", *tiny_train(tmp_path / "run", corpus)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.4)  # inside the imports (torch alone takes longer)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (128 + signal.SIGINT, -signal.SIGINT), stderr
    if proc.returncode > 0:
        assert_one_line(stderr, "interrupted")
    else:  # the signal came before Python installed its handler: killed without any output
        assert stderr == ""


def test_9_second_ctrl_c_stops_at_once_and_keeps_the_checkpoints(tmp_path, corpus):
    """The first SIGINT asks for a final checkpoint; a second one during that (slow) write stops at once."""
    out = tmp_path / "run"
    proc = launch(tmp_path, tiny_train(out, corpus, "steps=1000"), slow_save="30,1")
    deadline = time.time() + 120
    while not list((out / "checkpoints").glob(".step-*.tmp-*")):  # the second checkpoint is being written
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    assert_one_line(stderr, "ttmem train: interrupted: SIGINT again: stopped at once", "last checkpoint kept: ")
    assert valid_steps(out) == [2]
    assert not list((out / "checkpoints").glob(".*tmp-*"))


@pytest.mark.slow
def test_9_ctrl_c_at_many_points_of_the_start_is_always_one_line(tmp_path, corpus):
    """SIGINT spread over the imports, the data loading and the first steps."""
    for delay in (0.05, 0.2, 0.35, 0.5, 0.7, 0.9, 1.2, 1.5, 1.9, 2.4, 3.0, 4.0):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ttmem", *tiny_train(tmp_path / f"run{delay}", corpus, "steps=100000")],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGINT, (delay, stderr)
        assert "Traceback" not in stderr and stderr.count("\n") == 1, (delay, stderr)
        assert "interrupted" in stderr or "stopped by SIGINT" in stderr, (delay, stderr)


@pytest.mark.slow
def test_4_two_runs_started_together_in_one_directory(tmp_path, corpus):
    out = tmp_path / "run"
    procs = [launch(tmp_path, tiny_train(out, corpus, "steps=20", "keep_checkpoints=2")) for _ in range(2)]
    results = [(p.pid, *p.communicate(timeout=300), p.returncode) for p in procs]
    winners = [r for r in results if r[3] == 0]
    losers = [r for r in results if r[3] != 0]
    assert len(winners) == 1 and len(losers) == 1, results
    (winner_pid, *_), (_, _, loser_err, loser_code) = winners[0], losers[0]
    assert loser_code in (1, 2), loser_err
    assert_one_line(loser_err)
    # Whoever lost said why: the lock named the winner, or (if the winner had already finished) its checkpoints.
    assert f"(PID {winner_pid})" in loser_err or "already holds checkpoints" in loser_err
    assert [s for s, _ in losses(out)] == list(range(1, 21))  # each step once, from one model
    assert valid_steps(out) == [18, 20]
