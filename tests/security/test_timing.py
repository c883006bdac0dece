"""Timing harness and backends: properties checked with wide margins."""

import time

import numpy as np
import pytest
import torch

from ttmem.security import stats, timing
from ttmem.security.backends import ModelBackend, TinyLM, TinyLMBackend, check_tokens


def _busy(us: float) -> None:
    end = time.perf_counter_ns() + int(us * 1000)
    while time.perf_counter_ns() < end:
        pass


def test_harness_measures_known_durations_and_detects_difference():
    run = timing.run_trials({"short": lambda: _busy(100), "long": lambda: _busy(400)}, trials=60, warmup=2)
    short, long_ = np.median(run.samples["short"]), np.median(run.samples["long"])
    assert 100_000 <= short < 300_000
    assert 400_000 <= long_ < 600_000
    # Robust to scheduler spikes: dudect crops the tail, the MI test works on ranks (quantile bins).
    assert stats.dudect_test(run.samples["short"], run.samples["long"]).leak
    assert stats.mutual_information(run.samples, permutations=200).p_value < 0.01


def test_schedule_is_interleaved_and_cancels_drift():
    calls = [0]

    def drifting():
        calls[0] += 1
        _busy(20 + 0.5 * calls[0])  # grows by 0.5 us per call whichever class runs

    run = timing.run_trials({"a": drifting, "b": drifting}, trials=150, warmup=0, seed=1)
    pos_a, pos_b = run.positions["a"], run.positions["b"]
    assert len(pos_a) == len(pos_b) == 150
    assert abs(pos_a.mean() - pos_b.mean()) < 30  # both classes spread over the whole schedule
    drift_range_ns = 0.5 * 300 * 1000
    assert abs(np.median(run.samples["a"]) - np.median(run.samples["b"])) < 0.15 * drift_range_ns


def test_setup_is_not_timed():
    trial = timing.Trial(run=lambda arg: arg + 1, setup=lambda: (_busy(2000), 1)[1])
    run = timing.run_trials({"x": trial}, trials=5, warmup=0)
    assert run.samples["x"].max() < 1_000_000


def test_time_budget_stops_early():
    run = timing.run_trials({"x": lambda: _busy(1000)}, trials=10_000, warmup=0, time_budget_s=0.05)
    assert 10 < run.samples["x"].size < 200


def test_bad_arguments():
    with pytest.raises(TypeError):
        timing.run_trials({})
    with pytest.raises(ValueError, match="trials"):
        timing.run_trials({"a": lambda: None}, trials=1)
    with pytest.raises(ValueError, match="device"):
        timing.clock_for("mps")


@pytest.mark.parametrize("mixer", ["attention", "theta"])
def test_tiny_lm_streaming_matches_whole_sequence(mixer):
    backend = TinyLMBackend(TinyLM(vocab_size=17, dim=32, depth=2, heads=4, mixer=mixer))
    tokens = torch.randint(0, 17, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    whole_state, whole_logits = backend.extend(backend.initial_state(), tokens)
    state, _ = backend.extend(backend.initial_state(), tokens[:5])
    state, _ = backend.extend(state, tokens[5:9])
    for t in tokens[9:]:
        state, logits = backend.extend(state, [t])
    torch.testing.assert_close(logits, whole_logits, rtol=1e-4, atol=1e-5)
    if mixer == "attention":
        assert whole_state[0][0].shape[1] == 12  # the cache grows with the context
        cut = backend.slice_state(whole_state, 7)
        _, from_cut = backend.extend(cut, tokens[7:])
        torch.testing.assert_close(from_cut, whole_logits, rtol=1e-4, atol=1e-5)
    else:
        assert whole_state[0].shape == (4, 8, 8)  # fixed size whatever the context
        with pytest.raises(ValueError):
            backend.slice_state(whole_state, 3)


def test_extend_does_not_mutate_its_input_state():
    backend = TinyLMBackend(TinyLM(vocab_size=11, dim=16, depth=1, heads=2, mixer="theta"))
    state, _ = backend.extend(None, [1, 2, 3])
    before = [w.clone() for w in state]
    backend.extend(state, [4, 5])
    for a, b in zip(before, state, strict=True):
        assert torch.equal(a, b)


def test_decode_input_classes_run():
    backend = TinyLMBackend(TinyLM(vocab_size=11, dim=16, depth=1, heads=2))
    classes = timing.content_classes(backend, length=8)
    assert set(classes) == {"constant", "periodic", "random_a", "random_b"}
    lengths = timing.length_classes(backend, lengths=(4, 16))
    run = timing.run_trials({**classes, **lengths}, trials=3, warmup=1)
    assert all(v.size == 3 and (v > 0).all() for v in run.samples.values())


def test_token_validation():
    with pytest.raises(ValueError, match="tokens"):
        check_tokens([1, 99], 10)
    with pytest.raises(TypeError, match="tokens"):
        check_tokens("abc", 10)
    with pytest.raises(ValueError, match="non-empty"):
        check_tokens([], 10)
    with pytest.raises(TypeError, match="model"):
        ModelBackend(torch.nn.Linear(2, 2))
