"""The GPU benchmark and smoke script, run in their CPU mode on tiny shapes: every section gives its rows, the
JSON and the Markdown table agree, peers that are missing are rows with a reason, errors and the time budget are
rows too, and the measurements themselves read known quantities."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu  # noqa: E402
import gpu_profile_layer  # noqa: E402
import gpu_smoke  # noqa: E402

TINY = dataclasses.replace(
    gpu.quick_plan(), layer_dim=32, layer_chunk=8, layer_shapes=((1, 16),), layer_heads=(1, 2),
    mac_batch=1, mac_seq=16, delta_shape=(1, 24, 1, 8), delta_chunk=8,
    train_models=(("transformer-tiny", (), 1, 16),
                  ("transformer-340m", (("depth", 1), ("dim", 32), ("heads", 2), ("vocab_size", 64)), 1, 8)),
    decode_models=("transformer-tiny", "mac-tiny"), decode_contexts=(4, 12), decode_tokens=1, decode_piece=8,
    decode_max_real_attention=8, warmup=1, repeats=1)
PEERS = {"titans-pytorch": "titans_pytorch", "flash-linear-attention": "fla.ops"}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    result = gpu.run_benchmark(TINY, "cpu", out, log=lambda line: None)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result, out.with_suffix(".md").read_text()


def test_report_has_every_section_and_case(report):
    result, _ = report
    fields = {"machine", "plan", "sections", "budget_s", "complete", "elapsed_s", "rows", "errors", "peer_errors"}
    assert fields <= set(result)
    assert result["complete"] and result["errors"] == 0 and result["sections"] == list(gpu.SECTIONS)
    assert result["machine"]["device"] == "cpu" and result["plan"]["layer_dim"] == 32
    keys = [(row["section"], row["implementation"]) for row in result["rows"]]
    # shapes x heads per layer comparison, one MAC case, two rules (fla in two dtypes), two models, models x contexts
    assert keys.count(("layer", "ttmem")) == keys.count(("layer", "titans-pytorch")) == 2
    assert keys.count(("mac", "ttmem")) == keys.count(("mac", "titans-pytorch")) == 1
    assert keys.count(("delta", "ttmem")) == 2 and keys.count(("delta", "flash-linear-attention")) == 4
    assert keys.count(("train", "ttmem (SDPA)")) == 2
    assert keys.count(("decode", "ttmem")) == 4
    assert len(keys) == 2 * 2 + 2 + 2 * 3 + 2 + 4


def test_ttmem_rows_are_measured(report):
    result, _ = report
    for row in result["rows"]:
        if row["implementation"].startswith("ttmem"):
            assert row["status"] == "ok", row
            assert row["median_ms"] > 0
            if row["section"] != "decode":
                assert row["peak_mib"] > 0 and len(row["times_ms"]) == TINY.repeats
                assert row["tokens_per_s"] == pytest.approx(1e3 * _tokens(row["case"]) / row["median_ms"])
    decode = {row["case"]: row for row in result["rows"] if row["section"] == "decode"}
    # full attention past decode_max_real_attention reads a synthetic cache; every other row a real context
    assert decode["transformer-tiny after 12 tokens, per token"]["prefill"] == "synthetic"
    assert decode["transformer-tiny after 4 tokens, per token"]["prefill"] == "real"
    assert decode["mac-tiny after 12 tokens, per token"]["prefill"] == "real"


def _tokens(case: str) -> int:
    """Tokens per step from a case name: '(batch, seq, dim) ...', '... batch B x T' or '(B, T, H, D) ...'."""
    if "batch" in case:
        batch, seq = case.split("batch ")[1].split(" x ")
        return int(batch) * int(seq)
    numbers = case[case.index("(") + 1 : case.index(")")].split(", ")
    return int(numbers[0]) * int(numbers[1])


def test_peer_rows_are_measured_or_say_why(report):
    result, _ = report
    for row in result["rows"]:
        module = PEERS.get(row["implementation"])
        if module is None:
            continue
        if row["implementation"] == "flash-linear-attention":  # its kernels are Triton: never on a CPU
            assert row["status"] == "skipped" and row["reason"], row
        elif gpu.import_peer(module, row["implementation"])[0] is None:
            assert row["status"] == "skipped" and "not importable" in row["reason"], row
        else:
            assert row["status"] == "ok" and row["peer_over_ttmem"] > 0, row
        assert "\n" not in row.get("reason", "")


def test_markdown_table_holds_every_row(report):
    result, table = report
    lines = table.splitlines()
    assert "torch " + torch.__version__ in lines[0]
    assert lines[2] == "| " + " | ".join(gpu.COLUMNS) + " |"
    body = [line for line in lines[4:] if line]
    assert len(body) == len(result["rows"])
    for line, row in zip(body, result["rows"], strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[:3] == [row["section"], row["case"], row["implementation"]]
        if row["status"] == "ok":
            assert float(cells[3]) == pytest.approx(row["median_ms"], abs=0.006)
        else:
            assert cells[3] == "" and row["reason"].replace("|", "/") in cells[6]


def test_errors_and_spent_budget_become_rows(tmp_path):
    runner = gpu.Runner("cpu", TINY, gpu.Budget(60.0), log=lambda line: None)

    def broken() -> dict:
        raise RuntimeError("out of memory\nsecond line")

    assert runner.row("s", "c", "ttmem", broken) == {"section": "s", "case": "c", "implementation": "ttmem",
                                                     "status": "error", "reason": "RuntimeError: out of memory"}
    result = gpu.run_benchmark(TINY, "cpu", tmp_path / "spent.json", budget_s=1e-9, log=lambda line: None)
    assert result["rows"] and all(
        row["status"] == "skipped" and ("time budget" in row["reason"] or "not importable" in row["reason"]
                                        or "CUDA" in row["reason"]) for row in result["rows"])


CLI_ERRORS = [(["--sections", "layer,nope"], "--sections"), (["--budget-s", "0"], "--budget-s")] + (
    [] if torch.cuda.is_available() else [(["--device", "cuda"], "--device cuda")])


@pytest.mark.parametrize("argv, named", CLI_ERRORS)
def test_cli_errors_are_one_line(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in last and named in last


def test_time_and_peak_memory_read_known_quantities():
    timed = gpu.time_step(lambda: time.sleep(0.02), "cpu", warmup=1, repeats=3)
    assert timed["min_ms"] >= 20.0 and len(timed["times_ms"]) == 3
    eight_mib = gpu.peak_step_mib(lambda: torch.empty(2 * 2**20).fill_(1.0), "cpu")  # 2M float32 = 8 MiB
    assert eight_mib == pytest.approx(8.0, abs=0.25)


def test_smoke_checks_pass_on_cpu_and_catch_a_wrong_engine(monkeypatch):
    checks = gpu_smoke.run_smoke("cpu", rules=("titans", "gated_delta"), archs=("mac",), log=lambda line: None)
    assert [c["ok"] for c in checks] == [True, True, True]
    real = gpu_smoke.memorize

    def off_by_a_little(*args, impl="chunked", **kwargs):
        out, state = real(*args, impl=impl, **kwargs)
        return (out * (1 + 1e-6) if impl == "chunked" else out), state

    monkeypatch.setattr(gpu_smoke, "memorize", off_by_a_little)
    assert gpu_smoke.check_memorize("titans", "cpu") > gpu_smoke.MEMORY_TOL


def test_layer_profile_counts_chunks_and_operator_time_on_cpu():
    result = gpu_profile_layer.profile_layer("cpu", batch=1, seq=40, dim=16, heads=1, chunk=16, warmup=1)
    assert result["chunks"] == 3 and result["kernel_launches"] == 0  # no CUDA on the CPU path
    assert 0 < result["operator_ms"] and 0 < result["wall_ms_under_profiler"]
    names = [row["name"] for row in result["top"]]
    assert any("bmm" in name or "matmul" in name or "mm" in name for name in names)
