"""Statistics for timing side channels.

Design choices:
- Timings arrive as ``dict[class_name, 1-D array]`` (any unit); every estimator takes that form
  (or a values/labels pair) so the harness, the audit and the attack share one vocabulary.
- Mutual information between timing T and input class X is the plug-in estimate over
  equal-frequency (pooled-quantile) bins of T. The plug-in is biased upwards by roughly
  ``(bins - 1)(classes - 1) / (2 N ln 2)`` bits; we report it raw, with the Miller-Madow corrected
  value, and judge significance with a label-permutation test (the bias is the same under the null,
  so the test stays valid).
- Welch's t-test follows dudect (Reparaz et al., 2017): one test on all measurements, one test per
  cropping threshold (measurements above the pooled percentile ``1 - 0.5^(10 (i+1) / P)`` dropped) and
  a second-order test on squared centred values; the statistic is the largest |t|.
- Covert-channel capacity (bits per request) is the Shannon capacity of the empirical channel
  ``P(bin | class)`` computed by Blahut-Arimoto. Like the plug-in MI it is biased upwards for
  finite samples, so a permutation null (mean capacity with shuffled labels) is reported next to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

Samples = Mapping[str, "np.ndarray | list[float]"]


def _as_arrays(samples: Samples, min_per_class: int = 2) -> dict[str, np.ndarray]:
    if not isinstance(samples, Mapping) or len(samples) == 0:
        raise TypeError("samples must be a non-empty mapping from class name to a 1-D array of timings")
    out = {}
    for name, vals in samples.items():
        arr = np.asarray(vals, dtype=np.float64).ravel()
        if arr.size < min_per_class:
            raise ValueError(f"samples[{name!r}] needs at least {min_per_class} values, got {arr.size}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"samples[{name!r}] contains non-finite values")
        out[str(name)] = arr
    return out


def _values_labels(samples: Samples) -> tuple[np.ndarray, np.ndarray]:
    arrays = _as_arrays(samples)
    values = np.concatenate(list(arrays.values()))
    labels = np.concatenate([np.full(a.size, i) for i, a in enumerate(arrays.values())])
    return values, labels


@dataclass(frozen=True)
class ClassSummary:
    """Per-class timing summary: count, mean, standard deviation, coefficient of variation."""

    name: str
    n: int
    mean: float
    std: float
    cv: float
    median: float


def summarize(samples: Samples) -> list[ClassSummary]:
    """Mean / std (ddof=1) / CV = std / mean / median per class."""
    rows = []
    for name, a in _as_arrays(samples).items():
        mean, std = float(a.mean()), float(a.std(ddof=1))
        cv = std / mean if mean != 0 else math.inf
        rows.append(ClassSummary(name, int(a.size), mean, std, cv, float(np.median(a))))
    return rows


def anova(samples: Samples) -> tuple[float, float]:
    """One-way ANOVA across classes: returns (F, p)."""
    arrays = _as_arrays(samples)
    if len(arrays) < 2:
        raise ValueError("anova needs at least two classes")
    res = sps.f_oneway(*arrays.values())
    return float(res.statistic), float(res.pvalue)


def default_bins(n: int, classes: int) -> int:
    """Enough samples per cell (about 10 per class per bin) while keeping 2 <= bins <= 32."""
    return int(min(32, max(2, n // (10 * max(classes, 1)))))


def _quantile_bin(values: np.ndarray, bins: int) -> tuple[np.ndarray, int]:
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    codes = np.searchsorted(edges, values, side="right")
    return codes, int(edges.size + 1)


def _mi_from_codes(labels: np.ndarray, codes: np.ndarray, nx: int, ny: int) -> float:
    joint = np.bincount(labels * ny + codes, minlength=nx * ny).reshape(nx, ny) / labels.size
    px, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / (px @ py)[nz])).sum())


@dataclass(frozen=True)
class MutualInformation:
    """Plug-in MI (bits), its Miller-Madow correction, permutation p-value and null mean."""

    bits: float
    bits_corrected: float
    p_value: float
    null_mean: float
    bins: int
    permutations: int


def mutual_information(
    samples: Samples, bins: int | None = None, permutations: int = 1000, seed: int = 0
) -> MutualInformation:
    """MI(T; X) between timing and class with a label-permutation test.

    p = (1 + #{permuted MI >= observed}) / (1 + permutations).
    """
    if permutations < 0:
        raise ValueError(f"permutations must be >= 0, got {permutations}")
    values, labels = _values_labels(samples)
    nx = int(labels.max()) + 1
    bins = default_bins(values.size, nx) if bins is None else bins
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    codes, ny = _quantile_bin(values, bins)
    observed = _mi_from_codes(labels, codes, nx, ny)
    cells = np.count_nonzero(np.bincount(labels * ny + codes, minlength=nx * ny))
    rows, cols = nx, np.count_nonzero(np.bincount(codes, minlength=ny))
    # Miller-Madow: H_MM = H + (K - 1) / (2N) per entropy, combined for H(X) + H(T) - H(X, T).
    correction = ((rows - 1) + (cols - 1) - (cells - 1)) / (2 * values.size * math.log(2))
    rng = np.random.default_rng(seed)
    null = np.array([_mi_from_codes(rng.permutation(labels), codes, nx, ny) for _ in range(permutations)])
    p = (1 + int((null >= observed - 1e-12).sum())) / (1 + permutations)
    return MutualInformation(
        observed, observed + correction, p, float(null.mean()) if permutations else math.nan, ny, permutations
    )


def welch_t(a: np.ndarray, b: np.ndarray) -> float:
    """Welch's t statistic (mean(a) - mean(b)) / sqrt(var_a / n_a + var_b / n_b)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or b.size < 2:
        return 0.0
    den = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    return 0.0 if den == 0 else float((a.mean() - b.mean()) / den)


@dataclass(frozen=True)
class DudectResult:
    """Largest |t| over dudect's tests, which test gave it, and the leak verdict at ``threshold``."""

    max_abs_t: float
    test: str
    t_uncropped: float
    p_uncropped: float
    leak: bool
    threshold: float


def dudect_test(
    a: np.ndarray, b: np.ndarray, percentiles: int = 100, threshold: float = 4.5, min_samples: int = 10
) -> DudectResult:
    """dudect-style fixed-vs-random distinguishability test between two timing samples.

    ``threshold`` 4.5 is the TVLA convention; dudect itself prints "probably not constant time" above 10.
    """
    a = _as_arrays({"a": a})["a"]
    b = _as_arrays({"b": b})["b"]
    pooled = np.concatenate([a, b])
    results = {"uncropped": welch_t(a, b)}
    for i in range(percentiles):
        cut = np.quantile(pooled, 1 - 0.5 ** (10 * (i + 1) / percentiles))
        ca, cb = a[a < cut], b[b < cut]
        if ca.size >= min_samples and cb.size >= min_samples:
            results[f"crop_p{i}"] = welch_t(ca, cb)
    results["second_order"] = welch_t((a - a.mean()) ** 2, (b - b.mean()) ** 2)
    name = max(results, key=lambda k: abs(results[k]))
    p = float(sps.ttest_ind(a, b, equal_var=False).pvalue) if a.std() + b.std() > 0 else 1.0
    max_t = abs(results[name])
    return DudectResult(max_t, name, results["uncropped"], p, max_t > threshold, threshold)


def blahut_arimoto(channel: np.ndarray, tol: float = 1e-10, max_iter: int = 10000) -> tuple[float, np.ndarray]:
    """Capacity (bits) and optimal input distribution of a discrete memoryless channel.

    channel: [inputs, outputs], rows are P(y | x) and must sum to 1.
    """
    w = np.asarray(channel, np.float64)
    if w.ndim != 2 or np.any(w < 0) or not np.allclose(w.sum(1), 1.0, atol=1e-9):
        raise ValueError("channel must be a 2-D non-negative matrix whose rows sum to 1")
    p = np.full(w.shape[0], 1.0 / w.shape[0])
    log_w = np.where(w > 0, np.log(np.where(w > 0, w, 1.0)), 0.0)
    for _ in range(max_iter):
        q = p @ w
        log_q = np.where(q > 0, np.log(np.where(q > 0, q, 1.0)), 0.0)
        d = (w * (log_w - log_q)).sum(1)  # KL(W(.|x) || q) in nats
        lower, upper = float(p @ d), float(d.max())
        if upper - lower < tol:
            break
        p = p * np.exp(d)
        p /= p.sum()
    return lower / math.log(2), p


@dataclass(frozen=True)
class Capacity:
    """Empirical covert-channel capacity in bits per request and its permutation null."""

    bits_per_request: float
    null_bits: float
    bins: int


def timing_capacity(samples: Samples, bins: int | None = None, permutations: int = 50, seed: int = 0) -> Capacity:
    """Capacity of the channel class -> quantile bin of the timing, estimated by Blahut-Arimoto."""
    values, labels = _values_labels(samples)
    nx = int(labels.max()) + 1
    bins = default_bins(values.size, nx) if bins is None else bins
    codes, ny = _quantile_bin(values, bins)

    def cap(lbl: np.ndarray) -> float:
        counts = np.bincount(lbl * ny + codes, minlength=nx * ny).reshape(nx, ny).astype(np.float64)
        return blahut_arimoto(counts / counts.sum(1, keepdims=True))[0]

    rng = np.random.default_rng(seed)
    null = [cap(rng.permutation(labels)) for _ in range(permutations)]
    return Capacity(cap(labels), float(np.mean(null)) if null else math.nan, ny)


@dataclass(frozen=True)
class Trend:
    """Linear fit of timing against a numeric class value (e.g. context length)."""

    slope: float
    p_value: float
    relative_growth: float  # mean at the largest x / mean at the smallest x - 1


def trend(samples_by_x: Mapping[float, np.ndarray | list[float]]) -> Trend:
    """Slope of time vs x (least squares over all trials), its p-value, and the relative growth."""
    if len(samples_by_x) < 2:
        raise ValueError("trend needs at least two x values")
    xs = sorted(samples_by_x)
    arrays = [np.asarray(samples_by_x[x], np.float64).ravel() for x in xs]
    x = np.concatenate([np.full(a.size, float(v)) for v, a in zip(xs, arrays, strict=True)])
    fit = sps.linregress(x, np.concatenate(arrays))
    return Trend(float(fit.slope), float(fit.pvalue), float(arrays[-1].mean() / arrays[0].mean() - 1.0))


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    z = float(sps.norm.ppf(0.5 + confidence / 2))
    phat = successes / trials
    den = 1 + z * z / trials
    centre = (phat + z * z / (2 * trials)) / den
    half = z * math.sqrt(phat * (1 - phat) / trials + z * z / (4 * trials * trials)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(
    values: np.ndarray | list[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic``."""
    arr = np.asarray(values, np.float64).ravel()
    if arr.size == 0:
        raise ValueError("values must be non-empty")
    rng = np.random.default_rng(seed)
    stats_ = np.array([statistic(arr[rng.integers(0, arr.size, arr.size)]) for _ in range(resamples)])
    lo, hi = np.quantile(stats_, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)
