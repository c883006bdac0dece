"""Complexity signals: closed forms, ranges, invariances, causality and streaming."""

import math

import pytest
import torch

from ttmem.layers.complexity import (
    ComplexitySignal,
    dmd_score,
    noise_level,
    phase_score,
    total_variation_score,
    trailing_budget,
    trailing_mean,
    twist_score,
)

FULL = dict(gated=True, diag=False, gate_mode="soft", adaptive_topk_ratio=0.6, phase_mix=0.5, phase_pairs=3,
            codebook_mix=0.4, codebook_size=8, codebook_topk=3, quorum_mix=0.55, quorum_window=5,
            quorum_threshold=0.25, budget_topk_ratio=0.3, budget_window=6, dmd=True, dmd_window=5)


def _signal(dim=8, **kw):
    torch.manual_seed(0)
    return ComplexitySignal(dim, **kw).double()


def test_twist_matches_the_per_coordinate_areas_written_out():
    sig = _signal(6).requires_grad_(False)
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    rec = sig(x)
    q = sig.to_q(x) / sig.to_q(x).norm(dim=-1, keepdim=True)
    k = sig.to_k(x) / sig.to_k(x).norm(dim=-1, keepdim=True)
    for b in range(2):
        assert rec.signal[b, 0] == 0
        for t in range(1, 7):
            area = [q[b, t, i] * k[b, t - 1, i] - q[b, t - 1, i] * k[b, t, i] for i in range(6)]
            expected = math.tanh(math.sqrt(sum(float(a) ** 2 for a in area)))
            assert rec.signal[b, t].item() == pytest.approx(expected, abs=1e-12)


def test_twist_is_zero_on_constant_and_collinear_inputs_and_equal_projections():
    sig = _signal(8)
    v = torch.randn(1, 1, 8, dtype=torch.float64)
    assert sig(v.expand(1, 5, 8)).signal.abs().max() == 0
    collinear = torch.cat([v, -v, 2 * v, -0.5 * v], dim=1)
    assert sig(collinear).signal.abs().max() < 1e-12
    with torch.no_grad():
        sig.to_k.weight.copy_(sig.to_q.weight)
    assert sig(torch.randn(3, 9, 8, dtype=torch.float64)).signal.abs().max() < 1e-12


def test_twist_range_and_noise_scale():
    for dim in (32, 128):
        sig = ComplexitySignal(dim)
        c = sig(torch.randn(4, 128, dim)).signal
        assert c.min() >= 0 and c.max() <= math.tanh(2.0)
        assert c[:, 1:].mean().item() == pytest.approx(noise_level(dim), rel=0.2)
    q = torch.nn.functional.normalize(torch.randn(2, 50, 4), dim=-1)
    c, _ = twist_score(q, -q.roll(1, dims=1))
    assert c.max() <= math.tanh(2.0) + 1e-6


def test_phase_score_of_a_steady_rotation_is_its_step_over_pi():
    omega = 0.3
    t = torch.arange(10, dtype=torch.float64)
    pairs = torch.stack([torch.cos(omega * t), torch.sin(omega * t)], -1).view(1, 10, 1, 2)
    ph, radius, angle = phase_score(pairs)
    assert ph[0, 0] == 0
    assert torch.allclose(ph[0, 1:], torch.full((9,), omega / math.pi, dtype=torch.float64))
    assert torch.allclose(radius, torch.ones_like(radius))
    line = torch.stack([t + 1, 2 * t + 2], -1).view(1, 10, 1, 2)
    assert phase_score(line)[0].abs().max() < 1e-12  # a line does not turn
    zero = torch.zeros(1, 3, 1, 2, dtype=torch.float64)
    assert phase_score(zero)[0].abs().max() == 0


def test_total_variation_of_alternating_codes_beats_a_stable_code():
    a, b = torch.tensor([0.9, 0.1, 0.0]), torch.tensor([0.2, 0.3, 0.5])
    seq = torch.stack([a, b, a, a]).unsqueeze(0)
    tv = total_variation_score(seq)
    expected = [0.0, 0.5 * (a - b).abs().sum().item(), 0.5 * (a - b).abs().sum().item(), 0.0]
    assert torch.allclose(tv[0], torch.tensor(expected))


def test_trailing_mean_and_budget_match_loops():
    torch.manual_seed(1)
    c = torch.rand(2, 11, dtype=torch.float64)
    w = 4
    mean = trailing_mean(c, w)
    for t in range(11):
        assert mean[0, t].item() == pytest.approx(c[0, max(0, t - w + 1):t + 1].sum().item() / w)
    keep = trailing_budget(c, 0.4, 5)
    k = math.ceil(0.4 * 5)
    for t in range(11):
        window = c[1, max(0, t - 4):t + 1]
        assert keep[1, t].item() == float((window > c[1, t]).sum().item() < k)


def test_quorum_prefers_a_sustained_block_to_an_isolated_spike():
    sig = _signal(4, quorum_mix=1.0, quorum_window=3, quorum_threshold=0.3)
    c = torch.zeros(1, 12, dtype=torch.float64)
    c[0, 2] = 0.6                                   # isolated spike
    c[0, 7:10] = 0.6                                # sustained block
    local = trailing_mean(c, 3)
    q = torch.sigmoid((local - 0.3) / 0.1)
    assert q[0, 9] > q[0, 2]
    assert sig.context == 3


def test_gated_projection_soft_leaks_where_hard_is_zero_and_topk_keeps_k():
    torch.manual_seed(2)
    x = torch.randn(2, 6, 10, dtype=torch.float64)
    hard = _signal(10, gated=True, diag=True, gate_mode="hard")
    soft = _signal(10, gated=True, diag=True, gate_mode="soft")
    gh, _ = hard.gate(x)
    gs, _ = soft.gate(x)
    # diag init: a = z = x, so the hard gate is open where x > 0 and the magnitude is relu(x)
    closed = x > 0
    assert torch.equal(gh, torch.where(closed, x, torch.zeros_like(x)))
    assert torch.allclose(gs, torch.sigmoid(x) * x.clamp(min=0))
    top = _signal(10, gated=True, diag=True, gate_mode="soft", top_k=3)
    gt, kept = top.gate(x)
    assert torch.equal(kept, torch.full((2, 6), 3.0, dtype=torch.float64))
    assert ((gt != 0).sum(-1) <= 3).all()
    adaptive = _signal(10, gated=True, diag=True, gate_mode="soft", adaptive_topk_ratio=0.5, adaptive_topk_min_k=2)
    _, kept = adaptive.gate(x)
    expected = torch.ceil(torch.tanh(x.abs().mean(-1)) * 0.5 * 10).clamp(2, 10)
    assert torch.equal(kept, expected)


def test_dmd_score_is_small_on_a_linear_system_and_large_on_noise():
    torch.manual_seed(3)
    d, t, window = 4, 40, 12
    a = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0] * 0.98
    xs = [torch.randn(d, dtype=torch.float64)]
    for _ in range(t - 1):
        xs.append(a @ xs[-1])
    linear = torch.stack(xs).unsqueeze(0)
    assert dmd_score(linear, window)[0, window:].max() < 1e-5
    noise = torch.randn(1, t, d, dtype=torch.float64)
    assert dmd_score(noise, window)[0, window:].min() > 1e-2
    assert dmd_score(noise, window)[0, 0] == 0


def test_dmd_score_matches_a_least_squares_residual():
    torch.manual_seed(4)
    x = torch.randn(1, 20, 3, dtype=torch.float64)
    window, t = 9, 15
    snap_x, snap_y = x[0, t - window + 1:t].T, x[0, t - window + 2:t + 1].T   # [D, window − 1]
    # full-rank DMD with window − 1 > D: the least-squares one-step predictor A = Y X⁺
    residual = snap_y - snap_y @ torch.linalg.pinv(snap_x) @ snap_x
    expected = math.tanh(residual.pow(2).mean().item())
    assert dmd_score(x, window)[0, t].item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("options", [{}, FULL, dict(twist=False, dmd=True, dmd_window=4)])
def test_causal_and_streaming(options):
    sig = _signal(6, **options)
    x = torch.randn(2, 23, 6, dtype=torch.float64)
    whole = sig(x).signal
    for t0 in (0, 9, 22):
        y = x.clone()
        y[:, t0:] += torch.randn_like(y[:, t0:])
        assert torch.equal(sig(y).signal[:, :t0], whole[:, :t0])
    pieces, start = [], 0
    for size in (1, 4, 1, 7, 10):
        past = x[:, max(0, start - sig.context):start]
        pieces.append(sig(x[:, start:start + size], past).signal)
        start += size
    assert torch.allclose(torch.cat(pieces, 1), whole, atol=1e-12, rtol=0)


def test_full_record_fields_and_gradients():
    sig = _signal(6, **FULL)
    x = torch.randn(2, 10, 6, dtype=torch.float64, requires_grad=True)
    rec = sig(x)
    for name in ("twist", "moment_map", "phase", "phase_radius", "phase_angle", "codebook", "quorum", "sparse_k",
                 "dmd"):
        assert getattr(rec, name) is not None, name
    assert rec.moment_map.shape == (2, 10, 6) and rec.phase_angle.shape == (2, 10, 3)
    assert rec.signal.min() >= 0 and rec.signal.max() < 1
    rec.signal.sum().backward()
    assert sig.to_q.weight.grad is not None and sig.to_phase.weight.grad is not None


@pytest.mark.parametrize("kwargs, match", [
    (dict(gate_mode="medium"), "gate_mode"),
    (dict(top_k=3), "gated=True"),
    (dict(gated=True, top_k=2, adaptive_topk_ratio=0.5), "not both"),
    (dict(gated=True, adaptive_topk_ratio=1.5), "adaptive_topk_ratio"),
    (dict(phase_mix=1.2), "phase_mix"),
    (dict(codebook_mix=float("nan")), "codebook_mix"),
    (dict(codebook_mix=0.5, codebook_size=4, codebook_topk=5), "codebook_topk"),
    (dict(budget_topk_ratio=0.2), "quorum_mix > 0"),
    (dict(quorum_mix=0.5, quorum_window=0), "quorum_window"),
    (dict(twist=False, dmd=False), "twist=True, dmd=True"),
    (dict(dmd=True, dmd_window=1), "dmd_window"),
    (dict(codebook_temperature=0.0), "codebook_temperature"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ComplexitySignal(8, **kwargs)
