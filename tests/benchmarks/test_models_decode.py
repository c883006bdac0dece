"""benchmarks/models.py's decode measurement: the paired ratio alternates model and peer and continues each
model's own decoding (its state advances across rounds)."""

from __future__ import annotations

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
