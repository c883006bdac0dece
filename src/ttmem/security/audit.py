"""Timing audit of a model: does decode time depend on content, on context length, on cache reuse?

``run_timing_audit(model)`` measures three families of input classes with the interleaved harness
(``timing.run_trials``) and applies every estimator of ``stats`` to each:

- content: one decode step after prefixes of equal length and different content;
- length: one decode step after prefixes of different lengths (plus a linear trend and the FLOPs
  FlopCounterMode records for that step, which is deterministic);
- prefix reuse: a prefill through a prefix cache shared across users, for a prompt whose prefix is
  cached ("repeated") and for a fresh prompt of the same length ("novel"). This is what a shared
  cache leaks whatever the model; a server without cross-user sharing never runs this path.

``format_report`` prints it as tables and ``AuditReport.write_json`` saves it; ``ttmem audit timing MODEL``
does both from the command line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ttmem.security import stats
from ttmem.security.backends import Backend, ModelBackend, build_backend
from ttmem.security.flops import measure_flops
from ttmem.security.prefix_cache import PrefixCache
from ttmem.security.timing import Trial, content_classes, length_classes, run_trials


@dataclass
class ClassFamily:
    """Estimators applied to one family of input classes (timings in ns)."""

    summaries: list[stats.ClassSummary]
    anova_f: float
    anova_p: float
    mi: stats.MutualInformation
    dudect_max_t: float  # largest dudect |t| over all class pairs
    capacity: stats.Capacity
    trend: stats.Trend | None = None
    flops: dict[int, int] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # raw timings, not serialised


@dataclass
class AuditReport:
    model: str
    device: str
    trials: int
    content: ClassFamily
    length: ClassFamily
    prefix_reuse: ClassFamily

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for family in ("content", "length", "prefix_reuse"):
            out[family].pop("samples")
        return out

    def write_json(self, path: str | Path) -> None:
        """``to_dict()`` as JSON; values JSON has no type for (numpy integers) as text."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str))


def _analyse(samples: dict, permutations: int, seed: int) -> ClassFamily:
    names = list(samples)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    max_t = max(stats.dudect_test(samples[a], samples[b]).max_abs_t for a, b in pairs)
    f, p = stats.anova(samples)
    return ClassFamily(
        stats.summarize(samples),
        f,
        p,
        stats.mutual_information(samples, permutations=permutations, seed=seed),
        max_t,
        stats.timing_capacity(samples, permutations=min(permutations, 50), seed=seed),
        samples={str(k): np.asarray(v) for k, v in samples.items()},
    )


def prefix_reuse_classes(backend: Backend, length: int = 64, seed: int = 0) -> dict[str, Trial]:
    """Prefill through a shared prefix cache: a prompt whose first ``length - 1`` tokens are cached vs a novel one."""
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    rng = np.random.default_rng(seed)
    cache = PrefixCache(backend)
    repeated = rng.integers(0, backend.vocab_size, length).tolist()
    cache.insert(repeated[:-1], backend.extend(backend.initial_state(), repeated[:-1])[0])

    def prefill(prompt: list[int]) -> None:
        start, state = cache.lookup(prompt, len(prompt) - 1)
        backend.extend(backend.initial_state() if state is None else state, prompt[start:])

    return {
        "repeated": Trial(run=lambda _arg: prefill(repeated)),
        "novel": Trial(run=prefill, setup=lambda: rng.integers(0, backend.vocab_size, length).tolist()),
    }


def _as_backend(model: str | nn.Module | Backend) -> tuple[Backend, str]:
    if isinstance(model, str):
        return build_backend(model), model
    if isinstance(model, Backend):
        return model, type(model).__name__
    if isinstance(model, nn.Module):
        return ModelBackend(model), type(model).__name__
    raise TypeError(f"model must be a preset name, a LanguageModel or a Backend, got {type(model).__name__}")


def run_timing_audit(
    model: str | nn.Module | Backend,
    trials: int = 200,
    warmup: int = 10,
    length: int = 64,
    lengths: Sequence[int] = (16, 64, 256, 1024),
    permutations: int = 1000,
    seed: int = 0,
    device: str = "cpu",
) -> AuditReport:
    """Measure decode timing of ``model`` over content, length and prefix-reuse classes (see module docstring)."""
    backend, name = _as_backend(model)
    content = run_trials(content_classes(backend, length, seed), trials, warmup, seed, device).samples
    by_length = length_classes(backend, lengths, seed)
    timed = run_trials(by_length, trials, warmup, seed + 1, device).samples
    reuse = run_trials(prefix_reuse_classes(backend, length, seed), trials, warmup, seed + 2, device).samples
    length_family = _analyse({str(n): t for n, t in timed.items()}, permutations, seed)
    length_family.trend = stats.trend(timed)
    length_family.flops = {n: measure_flops(lambda t=t: t.run(t.setup())) for n, t in by_length.items()}
    return AuditReport(
        name,
        device,
        trials,
        _analyse(content, permutations, seed),
        length_family,
        _analyse(reuse, permutations, seed),
    )


def format_report(report: AuditReport) -> str:
    """Plain-text tables of an AuditReport (times in microseconds)."""
    lines = [f"timing audit: {report.model} on {report.device}, {report.trials} trials per class"]
    for title, fam in (
        ("content (equal length)", report.content),
        ("context length", report.length),
        ("prefix reuse (shared cache)", report.prefix_reuse),
    ):
        lines.append(f"\n{title}")
        lines.append(
            f"  {'class':>10} {'n':>5} {'mean us':>10} {'median us':>10} {'std us':>9} {'cv':>7}"
            + (f" {'FLOPs':>12}" if fam.flops else "")
        )
        for s in fam.summaries:
            flops = f" {fam.flops.get(int(s.name), 0):>12,}" if fam.flops else ""
            lines.append(
                f"  {s.name:>10} {s.n:>5} {s.mean / 1e3:>10.1f} {s.median / 1e3:>10.1f} "
                f"{s.std / 1e3:>9.1f} {s.cv:>7.3f}{flops}"
            )
        lines.append(
            f"  ANOVA F={fam.anova_f:.2f} p={fam.anova_p:.3g} | MI={fam.mi.bits:.4f} bit "
            f"(corrected {fam.mi.bits_corrected:.4f}, permutation p={fam.mi.p_value:.3g}) | "
            f"dudect max|t|={fam.dudect_max_t:.1f} | capacity={fam.capacity.bits_per_request:.3f} "
            f"bit/request (null {fam.capacity.null_bits:.3f})"
        )
        if fam.trend is not None:
            growth = fam.trend.relative_growth
            lines.append(
                f"  trend: {fam.trend.slope:.2f} ns per context token, p={fam.trend.p_value:.3g}, "
                f"time at longest / shortest = {1 + growth:.2f}x"
            )
    return "\n".join(lines)
