"""The `ttmem` command end to end on tiny models, and its one-line answers to bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ttmem.cli import main
from ttmem.train import list_checkpoints, read_log

ROOT = Path(__file__).resolve().parents[1]
MODELS = str(ROOT / "tests" / "helpers" / "train_models.py")




@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "code.txt"
    path.write_text("".join(f"def f{i}(a, b):\n    return a + b * {i}\n\n" for i in range(300)))
    return path


def tiny(out: Path, corpus: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--no-progress",
        f"model={MODELS}:tiny_lm",
        f"data={corpus}",
        f"out_dir={out}",
        "seq_len=96",
        "batch_size=4",
        "steps=4",
        "warmup_steps=1",
        "eval_every=4",
        "eval_tokens=600",
        "eval_depths=2",
        "eval_samples=1",
        "log_every=1",
        *extra,
    ]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_report_eval_generate_bench_info(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = tiny(out, corpus, f"baseline={MODELS}:tiny_lm", "model_args.dim=16")
    code, stdout, stderr = run(args, capsys)
    assert code == 0, stderr
    assert "report:" in stdout and "val_bpb" in stdout
    report = (out / "report.md").read_text()
    assert "train_models.py:tiny_lm (baseline)" in report and "needle@384 (4x)" in report
    for png in ("comparison.png", "needle_train_models.py_tiny_lm.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"train_models.py:tiny_lm", "train_models.py:tiny_lm (baseline)"}
    assert all(0 < s["val_bpb"] < 9 for s in summary.values())
    resolved = (out / "config.yaml").read_text()
    assert "seq_len: 96" in resolved and "dim: 16" in resolved
    assert "steps: 4" in (out / "baseline" / "config.yaml").read_text()
    # Running again with --resume reuses both finished runs: no new training steps.
    baseline_steps = [r for r in read_log(out / "baseline" / "log.jsonl") if "loss" in r]
    code, again, stderr = run([*args, "--resume"], capsys)
    assert code == 0, stderr
    assert [r for r in read_log(out / "baseline" / "log.jsonl") if "loss" in r] == baseline_steps
    main_last = [r for r in read_log(out / "log.jsonl") if "loss" in r][-1]["loss"]
    assert f"4 steps, final loss {main_last:.4f}" in again  # the logged loss, not NaN
    # eval --compare on the same data: one table, one row per model.
    code, stdout, stderr = run(
        [
            "eval",
            str(out),
            str(out / "baseline"),
            "--data",
            str(corpus),
            "--needle",
            "96,192",
            "--depths",
            "2",
            "--samples",
            "1",
            "--json",
            str(tmp_path / "m.json"),
            "--heatmap",
            str(tmp_path / "h.png"),
        ],
        capsys,
    )
    assert code == 0, stderr
    lines = [line for line in stdout.splitlines() if "tiny_lm" in line]
    assert len(lines) == 2 and "val_bpb" in stdout and "needle@192" in stdout
    rows = json.loads((tmp_path / "m.json").read_text())
    assert rows[0]["val_bpb"] == pytest.approx(summary["train_models.py:tiny_lm"]["val_bpb"], rel=1e-6)
    assert (tmp_path / "h.png").exists()
    code, stdout, _ = run(
        ["generate", str(out), "--prompt", "def ", "--max-new-tokens", "8", "--temperature", "0"], capsys
    )
    assert code == 0 and stdout.startswith("def ")
    code, stdout, _ = run(
        ["bench", "--model", f"{MODELS}:tiny_lm", "--seq-len", "16", "--iters", "1"], capsys
    )
    assert code == 0 and "train_tokens_per_s" in stdout
    code, stdout, _ = run(["info"], capsys)
    assert code == 0 and f"torch {torch.__version__}" in stdout and "mqar" in stdout


@pytest.mark.parametrize(
    "extra,message",
    [
        (["model=no-such-preset"], "no-such-preset"),
        (["data=nosuchdataset"], "unknown dataset 'nosuchdataset'"),
        (["nosuchkey=1"], "unknown config key 'nosuchkey'; valid keys: model, model_args"),
        (["data=/nonexistent/corpus.txt"], "data path does not exist"),
        (["optimizer=lion"], "unknown optimizer 'lion'"),
        (["tokenizer=wordpiece"], "unknown tokenizer 'wordpiece'"),
        (["steps=0"], "'steps' must be >= 1"),
    ],
)
def test_bad_input_is_one_line(tmp_path, corpus, capsys, extra, message):
    code, _, stderr = run([*tiny(tmp_path / "bad", corpus, "baseline=none"), *extra], capsys)
    assert code == 2 and message in stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


def test_empty_data_folder_and_corrupt_or_mismatched_checkpoints(tmp_path, corpus, capsys):
    (tmp_path / "empty").mkdir()
    code, _, stderr = run(
        [*tiny(tmp_path / "e", corpus, "baseline=none"), f"data={tmp_path / 'empty'}"], capsys
    )
    assert code == 2 and "no non-empty text files" in stderr
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    code, _, stderr = run(["eval", str(tmp_path / "bad.pt"), "--data", ""], capsys)
    assert code == 2 and "corrupt or truncated" in stderr and stderr.count("\n") == 1
    run_dir = tmp_path / "r"
    assert run(tiny(run_dir, corpus, "baseline=none", "report=false"), capsys)[0] == 0
    kept = list_checkpoints(run_dir / "checkpoints")
    code, _, stderr = run(
        [*tiny(run_dir, corpus, "baseline=none", "report=false", "model_args.dim=16"), "--resume"], capsys
    )
    assert code == 2 and "was written for model" in stderr and stderr.count("\n") == 1
    code, _, stderr = run(tiny(run_dir, corpus, "baseline=none", "report=false"), capsys)
    assert code == 2 and "already holds checkpoints" in stderr
    assert list_checkpoints(run_dir / "checkpoints") == kept


def test_nan_loss_is_one_line_and_keeps_checkpoints(tmp_path, corpus, capsys):
    out = tmp_path / "nan"
    code, _, stderr = run(
        [
            *tiny(
                out,
                corpus,
                "baseline=none",
                "report=false",
                f"model={MODELS}:nan_lm",
                "model_args.nan_after=3",
                "ckpt_every=1",
                "steps=10",
            )
        ],
        capsys,
    )
    assert code == 2 and "training diverged at step 3" in stderr and stderr.count("\n") == 1
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [1, 2]


def test_console_entry_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ttmem", "train", "learning_rate=1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("ttmem train: error: unknown config key 'learning_rate'")
    assert proc.stderr.count("\n") == 1


def test_audit_serve_demo_arguments_parse():
    from ttmem.cli import _parser

    args = _parser().parse_args(["audit", "timing", "tiny-theta:8", "--lengths", "4", "8", "--json", "r.json"])
    assert (args.command, args.instrument, args.model, args.lengths, args.json_path) == (
        "audit", "timing", "tiny-theta:8", [4, 8], "r.json"
    )
    assert (args.trials, args.warmup, args.length, args.permutations, args.threads) == (200, 10, 64, 1000, 1)
    args = _parser().parse_args(["serve", "--backend", "tiny-theta:8", "--mode", "isolated", "--port", "0"])
    assert (args.command, args.backend, args.mode, args.port) == ("serve", "tiny-theta:8", "isolated", 0)
    assert (args.max_new_tokens, args.lifetime_s, args.threads) == (256, 3600.0, 1)
    assert _parser().parse_args(["demo"]).dim == 64
    assert _parser().parse_args(["demo", "--dim", "8"]).dim == 8


@pytest.mark.parametrize(
    "argv,prog,message",
    [
        (["audit"], "ttmem audit", "the following arguments are required: instrument"),
        (["audit", "sound", "x"], "ttmem audit", "invalid choice: 'sound'"),
        (["audit", "timing"], "ttmem audit timing", "the following arguments are required: model"),
        (["audit", "timing", "tiny-theta", "--trials", "many"], "ttmem audit timing", "--trials: invalid int"),
        (["audit", "timing", "tiny-theta", "--trials", "1"], "ttmem audit", "need trials >= 2"),
        (["audit", "timing", "tiny-theta", "--threads", "0"], "ttmem audit", "--threads must be >= 1, got 0"),
        (["audit", "timing", "no-such-model"], "ttmem audit", "no-such-model"),
        (["serve", "--mode", "public"], "ttmem serve", "mode must be one of ('shared', 'isolated')"),
        (["serve", "--port", "70000"], "ttmem serve", "port must be an int in [0, 65535]"),
        (["serve", "--port", "x"], "ttmem serve", "--port: invalid int value: 'x'"),
        (["serve", "--lifetime-s", "0"], "ttmem serve", "lifetime_s must be a finite number of seconds > 0"),
        (["serve", "--max-new-tokens", "0"], "ttmem serve", "max_new_tokens must be an int >= 1, got 0"),
        (["serve", "--threads", "0"], "ttmem serve", "--threads must be >= 1, got 0"),
        (["serve", "--backend", "tiny-theta:big"], "ttmem serve", "vocab size after ':' must be an int"),
        (["demo", "--dim", "0"], "ttmem demo", "dim must be an int >= 1, got 0"),
        (["demo", "--dim", "wide"], "ttmem demo", "--dim: invalid int value: 'wide'"),
        (["demo", "--rule", "delta"], "ttmem", "unrecognized arguments: --rule"),
        (["nosuchcommand"], "ttmem", "invalid choice: 'nosuchcommand'"),
    ],
)
def test_subcommand_argument_errors_are_one_line(capsys, argv, prog, message):
    code, stdout, stderr = run(argv, capsys)
    assert code == 2 and stdout == ""
    assert stderr.startswith(f"{prog}: error: ") and message in stderr, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr and "usage:" not in stderr


def test_demo_prints_the_recall_of_each_rule(capsys):
    from ttmem.demo import SETTINGS, SIZES, recall

    code, stdout, _ = run(["demo", "--dim", "8"], capsys)
    lines = stdout.splitlines()
    assert code == 0 and "width 8" in lines[0] and len(lines) == 2 + len(SETTINGS)
    for line, rule in zip(lines[2:], SETTINGS):
        name, *cells, _seconds = line.split()
        assert name == rule and [float(c) for c in cells] == [round(recall(rule, n, 8), 2) for n in SIZES]


def _serve(*extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ttmem", "serve", "--backend", "tiny-theta:8", "--max-new-tokens", "2", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_listens_on_loopback_and_stops_by_itself_after_its_lifetime():
    from ttmem.security.client import post_json

    with _serve("--lifetime-s", "3") as proc:
        try:
            port = int(proc.stdout.readline().split()[1])
            request = {"user": "a", "prompt": [1], "max_new_tokens": 2}
            status, body, _ = post_json("127.0.0.1", port, "/generate", request)
            assert status == 200 and len(body["tokens"]) == 2
            assert proc.wait(timeout=60) == 0 and proc.stderr.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()


def test_serve_ends_normally_on_ctrl_c_right_after_it_listens():
    with _serve("--lifetime-s", "60") as proc:
        try:
            assert proc.stdout.readline().startswith("PORT ")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0 and proc.stderr.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()


def test_audit_timing_subcommand_runs_the_security_audit(tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["audit", "timing", "tiny-theta:8", "--trials", "5", "--warmup", "1", "--lengths", "8", "16",
                 "--permutations", "20", "--json", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "context length" in stdout and "ANOVA" in stdout
    data = json.loads(out.read_text())
    assert data["model"] == "tiny-theta:8" and data["trials"] == 5 and set(data["length"]["flops"]) == {"8", "16"}
