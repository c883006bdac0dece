"""Timing harness: many trials per input class, interleaved in random order, on a monotonic clock.

Design choices:
- A trial is ``setup() -> arg`` (untimed, e.g. copying a cached state) then ``run(arg)`` (timed), so
  bookkeeping never pollutes the measurement.
- Every class gets ``warmup`` untimed calls first; then all ``classes x trials`` calls are shuffled
  into one schedule, so slow drift (frequency scaling, cache warmth, other load) spreads evenly over
  classes instead of biasing whichever class ran last. The schedule position of each trial is kept so
  drift can be checked afterwards.
- CPU: ``time.perf_counter_ns``. CUDA: a pair of CUDA events around the call, read after
  synchronisation (reported in ns).
- Input classes for language-model decode timing (over any ``backends.Backend``): different content
  at equal length, different context lengths; repeated vs novel prefixes live with the prefix cache
  (``audit.prefix_reuse_classes``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ttmem.security.backends import Backend


@dataclass(frozen=True)
class Trial:
    """``run(setup())`` is one measurement; only ``run`` is timed."""

    run: Callable[[Any], object]
    setup: Callable[[], Any] = field(default=lambda: None)


def _cpu_clock(trial: Trial) -> int:
    arg = trial.setup()
    start = time.perf_counter_ns()
    trial.run(arg)
    return time.perf_counter_ns() - start


def _cuda_clock(trial: Trial) -> int:
    arg = trial.setup()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    trial.run(arg)
    end.record()
    end.synchronize()
    return int(start.elapsed_time(end) * 1e6)


def clock_for(device: str | torch.device = "cpu") -> Callable[[Trial], int]:
    """Perf-counter clock on CPU, CUDA-event clock on a CUDA device; returns nanoseconds."""
    kind = torch.device(device).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device is cuda but CUDA is not available")
        return _cuda_clock
    if kind != "cpu":
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    return _cpu_clock


@dataclass
class TimingRun:
    """samples[class] = timings in ns, in schedule order; positions[class] = their schedule indices."""

    samples: dict[Any, np.ndarray]
    positions: dict[Any, np.ndarray]


def run_trials(
    classes: Mapping[Any, Trial | Callable[[], object]],
    trials: int = 200,
    warmup: int = 10,
    seed: int = 0,
    device: str | torch.device = "cpu",
    time_budget_s: float | None = None,
) -> TimingRun:
    """Time every class ``trials`` times in a shuffled, interleaved order after ``warmup`` calls each.

    time_budget_s: stop early (keeping what was measured) once this much wall time has passed.
    """
    if not isinstance(classes, Mapping) or not classes:
        raise TypeError("classes must be a non-empty mapping from name to Trial or callable")
    if trials < 2 or warmup < 0:
        raise ValueError(f"need trials >= 2 and warmup >= 0, got trials={trials}, warmup={warmup}")
    named = {}
    for name, c in classes.items():
        if isinstance(c, Trial):
            named[name] = c
        elif callable(c):
            named[name] = Trial(run=lambda _arg, fn=c: fn())
        else:
            raise TypeError(f"classes[{name!r}] must be a Trial or a callable")
    clock = clock_for(device)
    for trial in named.values():
        for _ in range(warmup):
            trial.run(trial.setup())
    schedule = np.repeat(np.arange(len(named)), trials)
    np.random.default_rng(seed).shuffle(schedule)
    names = list(named)
    times: dict[Any, list[int]] = {n: [] for n in names}
    positions: dict[Any, list[int]] = {n: [] for n in names}
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    for pos, idx in enumerate(schedule):
        if deadline is not None and time.monotonic() > deadline:
            break
        name = names[idx]
        times[name].append(clock(named[name]))
        positions[name].append(pos)
    return TimingRun(
        {n: np.asarray(t, np.float64) for n, t in times.items()},
        {n: np.asarray(p, np.int64) for n, p in positions.items()},
    )


def _decode_trial(backend: Backend, state: Any, token: int) -> Trial:
    # The backend contract forbids in-place changes, so the same prefilled state is reused every trial.
    return Trial(run=lambda _arg: backend.extend(state, [token]))


def content_classes(backend: Backend, length: int = 64, seed: int = 0, next_token: int = 1) -> dict[str, Trial]:
    """Decode one token after prefixes of equal length but different content.

    Classes: a constant prefix, a periodic prefix and two independent random prefixes.
    """
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    vocab = backend.vocab_size
    rng = np.random.default_rng(seed)
    prefixes = {
        "constant": [0] * length,
        "periodic": [i % min(vocab, 4) for i in range(length)],
        "random_a": rng.integers(0, vocab, length).tolist(),
        "random_b": rng.integers(0, vocab, length).tolist(),
    }
    out = {}
    for name, prefix in prefixes.items():
        state, _ = backend.extend(backend.initial_state(), prefix)
        out[name] = _decode_trial(backend, state, next_token % vocab)
    return out


def length_classes(
    backend: Backend, lengths: Sequence[int] = (16, 64, 256, 1024), seed: int = 0, next_token: int = 1
) -> dict[int, Trial]:
    """Decode one token after random prefixes of each length (keys are the lengths)."""
    if not lengths or any(int(n) < 1 for n in lengths):
        raise ValueError(f"lengths must be positive, got {lengths}")
    rng = np.random.default_rng(seed)
    out = {}
    for n in lengths:
        state, _ = backend.extend(backend.initial_state(), rng.integers(0, backend.vocab_size, int(n)).tolist())
        out[int(n)] = _decode_trial(backend, state, next_token % backend.vocab_size)
    return out
