"""Estimators on synthetic distributions with known answers."""

import math

import numpy as np
import pytest

from ttmem.security import stats


def _h2(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def test_summary_matches_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(100, 5, 500)
    (row,) = stats.summarize({"a": a})
    assert row.n == 500
    assert row.mean == pytest.approx(a.mean())
    assert row.std == pytest.approx(np.std(a, ddof=1))
    assert row.cv == pytest.approx(np.std(a, ddof=1) / a.mean())


def test_identical_distributions_show_no_leak():
    rng = np.random.default_rng(2)
    samples = {c: rng.gamma(4.0, 25.0, 3000) + 1000 for c in ("x", "y", "z")}
    mi = stats.mutual_information(samples, permutations=300, seed=3)
    assert mi.bits < 0.01
    assert abs(mi.bits_corrected) < 0.005
    assert mi.p_value > 0.01
    _, p = stats.anova(samples)
    assert p > 0.01
    assert not stats.dudect_test(samples["x"], samples["y"]).leak


def test_shifted_distribution_is_detected():
    rng = np.random.default_rng(4)
    samples = {"a": rng.normal(1000, 20, 2000), "b": rng.normal(1006, 20, 2000)}
    mi = stats.mutual_information(samples, permutations=300, seed=5)
    assert mi.p_value < 0.01
    f, p = stats.anova(samples)
    assert p < 1e-6
    res = stats.dudect_test(samples["a"], samples["b"])
    assert res.leak and res.max_abs_t > 4.5


def test_dudect_detects_variance_only_difference():
    rng = np.random.default_rng(6)
    a, b = rng.normal(1000, 5, 5000), rng.normal(1000, 40, 5000)
    res = stats.dudect_test(a, b)
    assert res.leak
    assert abs(res.t_uncropped) < 4.5  # the first-order test alone misses it


def test_mutual_information_of_overlapping_uniforms_has_closed_form():
    # X uniform on {0, 1}; T ~ U(0, 1) or U(0.5, 1.5): T is ambiguous on half the mass -> MI = 0.5 bit.
    rng = np.random.default_rng(7)
    n = 20000
    samples = {"0": rng.uniform(0, 1, n), "1": rng.uniform(0.5, 1.5, n)}
    mi = stats.mutual_information(samples, bins=16, permutations=0)
    assert mi.bits_corrected == pytest.approx(0.5, abs=0.02)


def test_blahut_arimoto_binary_symmetric_channel():
    for eps in (0.0001, 0.05, 0.11, 0.3, 0.5):
        cap, p = stats.blahut_arimoto(np.array([[1 - eps, eps], [eps, 1 - eps]]))
        assert cap == pytest.approx(1 - _h2(eps) if eps < 0.5 else 0.0, abs=1e-6)
        assert p == pytest.approx([0.5, 0.5], abs=1e-4)


def test_blahut_arimoto_z_channel_closed_form():
    # Z channel: 0 -> 0 always, 1 -> 0 with prob q. C = log2(1 + (1 - q) q^(q / (1 - q))).
    q = 0.3
    cap, p = stats.blahut_arimoto(np.array([[1.0, 0.0], [q, 1 - q]]))
    assert cap == pytest.approx(math.log2(1 + (1 - q) * q ** (q / (1 - q))), abs=1e-6)
    assert p[1] < 0.5  # the noisy input is used less


def test_timing_capacity_of_binary_timing_channel():
    # Two classes whose timings land on the right side of the median with prob 0.9: a BSC(0.1).
    rng = np.random.default_rng(8)
    n = 20000
    flip = rng.random((2, n)) < 0.1
    fast, slow = rng.uniform(0, 1, (2, n)), rng.uniform(2, 3, (2, n))
    samples = {"0": np.where(flip[0], slow[0], fast[0]), "1": np.where(flip[1], fast[1], slow[1])}
    cap = stats.timing_capacity(samples, bins=2, permutations=5)
    assert cap.bits_per_request == pytest.approx(1 - _h2(0.1), abs=0.02)
    assert cap.null_bits < 0.01


def test_trend_detects_growth_and_flatness():
    rng = np.random.default_rng(9)
    growing = {n: 100 + 0.5 * n + rng.normal(0, 2, 200) for n in (16, 64, 256)}
    flat = {n: 100 + rng.normal(0, 2, 200) for n in (16, 64, 256)}
    g, f = stats.trend(growing), stats.trend(flat)
    assert g.slope == pytest.approx(0.5, abs=0.02) and g.p_value < 1e-10
    assert f.p_value > 0.01 and abs(f.relative_growth) < 0.01


def test_wilson_interval_known_values():
    lo, hi = stats.wilson_interval(81, 100)
    assert lo == pytest.approx(0.7222, abs=1e-3) and hi == pytest.approx(0.8749, abs=1e-3)
    assert stats.wilson_interval(0, 10)[0] == 0.0


def test_bootstrap_ci_matches_normal_theory_for_the_mean():
    x = np.random.default_rng(10).normal(5, 1, 400)
    lo, hi = stats.bootstrap_ci(x, resamples=4000)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.02)
    assert hi == pytest.approx(x.mean() + half, abs=0.02)


def test_bad_input_raises():
    with pytest.raises(TypeError):
        stats.summarize([1, 2, 3])
    with pytest.raises(ValueError, match="samples"):
        stats.anova({"a": [1.0], "b": [2.0, 3.0]})
    with pytest.raises(ValueError, match="channel"):
        stats.blahut_arimoto(np.array([[0.5, 0.2]]))
    with pytest.raises(ValueError):
        stats.wilson_interval(3, 2)
