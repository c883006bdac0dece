"""benchmarks/models.py's decode measurement: the paired ratio alternates model and peer and continues each
model's own decoding (its state advances across rounds)."""

from __future__ import annotations

import argparse
import statistics

import torch

from tests.helpers.benchmark_scripts import load_benchmark


def test_interleaved_ratio_is_the_median_of_per_round_ratios(monkeypatch):
    bench = load_benchmark("models")
    calls = []
    real = bench._decode_times

    def fake_times(model, state, token, steps, device):
        _, state, token = real(model, state, token, steps, device)
        calls.append((model.config.arch, steps, state.position))
        per_step = 1.0 if model.config.arch == "swa_transformer" else [2.0, 3.0, 5.0][len(calls) // 2 % 3]
        return [per_step] * steps, state, token

    monkeypatch.setattr(bench, "_decode_times", fake_times)
    torch.set_num_threads(1)
    result = bench.interleaved_decode_ratio("lmm-tiny", "swa_transformer-tiny", context=6, tokens=2, rounds=3,
                                            piece=4, max_real_attention=64, device="cpu")
    rounds = [c for c in calls if c[1] == 2][2:]  # after the two warm-up calls
    assert [c[0] for c in rounds] == ["swa_transformer", "lmm"] * 3
    assert [c[2] for c in rounds if c[0] == "lmm"] == [10, 12, 14]  # 6 prefilled + 2 warm-up + 2 per round
    per_round = [2.0, 3.0, 5.0]
    assert result["ratio"] == statistics.median(per_round)
    assert result["rounds"] == 3 and result["peer_ms_per_token"] == 1e3


def _decode_args(compile_decode: bool) -> argparse.Namespace:
    return argparse.Namespace(archs=["lmm", "deltanet"], size="tiny", contexts=[6], decode_tokens=2, decode_rounds=1,
                              decode_peer="swa_transformer", prefill_piece=4, max_real_attention_prefill=64,
                              device="cpu", compile_decode=compile_decode)


def test_a_model_that_fails_to_compile_is_a_row_of_the_table_not_a_crash(monkeypatch, capsys):
    bench = load_benchmark("models")

    def failing_for_lmm(name, *args):  # what a compiler failure looks like; the other model measures
        if name.startswith("lmm"):
            raise RuntimeError("backend failed\nlong trace")
        return {"ratio": 1.5, "rounds": 1, "ms_per_token": 1.5, "peer_ms_per_token": 1.0}

    monkeypatch.setattr(bench, "interleaved_decode_ratio", failing_for_lmm)
    monkeypatch.setattr(bench, "decode_latency", lambda *args: {"ms_per_token": 1.5, "prefill": "real"})
    out = bench.decode_table(_decode_args(compile_decode=True))
    assert out["lmm-tiny"] == {"error": "RuntimeError: backend failed"}
    assert out["deltanet-tiny"]["ratio_to_peer"] == 1.5
    assert "| lmm-tiny | compile failed: RuntimeError: backend failed |" in capsys.readouterr().out
    try:  # without compiling, an error is a bug of the benchmark or the model: it propagates
        bench.decode_table(_decode_args(compile_decode=False))
    except RuntimeError as err:
        assert "backend failed" in str(err)
    else:
        raise AssertionError("an eager decoding error was swallowed")
