"""Complexity gating, memory pages and kinetics in the neural memory layer: exactness, causality, streaming,
isolation, counters and argument errors."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import ttmem.layers.neural_memory as nm
from ttmem.layers import NeuralMemory
from ttmem.layers.complexity import ComplexityRecord, noise_level
from ttmem.layers.paging import SymplecticPaging, angle_bucket, route_pages
from ttmem.memory import get_rule, initial_state, run_memory

ALL_ON = dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=0.05, kinetics_coupling=True,
              kinetics_mix=0.5, page_switch_budget=1, page_switch_window=2, page_routing="hierarchical",
              coarse_pages=1, fine_pages=2, hierarchy_mix=0.5,
              complexity=dict(phase_mix=0.5, phase_pairs=2, quorum_mix=0.5, quorum_window=3,
                              quorum_threshold=0.05, budget_topk_ratio=0.5, budget_window=4))

DMD_ON = dict(use_symplectic_gating=True, use_dmd_gating=True, combine_symplectic_and_dmd=True, num_pages=2,
              symplectic_page_threshold=0.1, complexity=dict(dmd_window=6, codebook_mix=0.3, codebook_size=4))


class ScriptedSignal(nn.Module):
    """A complexity signal read off the input's first channel (c_t = x[:, t, 0]), for scripted decisions."""

    context, has_manifold_state = 1, False

    def forward(self, x, past=None):
        return ComplexityRecord(signal=x[..., 0])


def _layer(options, dim=8, heads=1, chunk=4, rule="titans", seed=0, **kw):
    torch.manual_seed(seed)
    return NeuralMemory(dim, heads=heads, chunk_size=chunk, rule=rule, symplectic=options, **kw).double()


def _memory_fields(state):
    m = state.memory
    return {"weights": m.weights, "momentum": m.momentum, "active_page": m.active_page,
            "chunk_complexity": m.chunk_complexity, "chunk_lr_sum": m.chunk_lr_sum, "chunk_phase": m.chunk_phase,
            "signal_inputs": m.signal_inputs, "signal_offset": m.signal_offset, "switch_history": m.switch_history}


def _assert_close(a, b, atol=1e-10):
    if isinstance(a, tuple):
        for x, y in zip(a, b):
            _assert_close(x, y, atol)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype
        assert torch.allclose(a, b, atol=atol, rtol=0) if a.is_floating_point() else torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("options", [None, {}, {"num_pages": 1}, {"kinetics_coupling": False, "kinetics_mix": 0.3}])
def test_options_off_is_the_plain_layer_bit_for_bit(options):
    plain, off = _layer(None), _layer(options)
    assert off.symplectic is None
    assert list(plain.state_dict()) == list(off.state_dict())
    for (name, p), q in zip(plain.state_dict().items(), off.state_dict().values()):
        assert torch.equal(p, q), name
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    (ya, sa), (yb, sb) = plain(x), off(x)
    assert torch.equal(ya, yb)
    for f in ("weights", "momentum"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(sa.memory, f), getattr(sb.memory, f)))
    assert sb.memory.active_page is None and sb.memory.signal_inputs is None


def test_kinetics_with_mix_zero_is_an_exact_no_op():
    plain, kin = _layer(None), _layer({"kinetics_coupling": True, "kinetics_mix": 0.0})
    assert kin.symplectic is not None
    kin.load_state_dict(plain.state_dict())
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    (ya, sa), (yb, sb) = plain(x), kin(x)
    assert torch.equal(ya, yb)
    assert all(torch.equal(a, b) for a, b in zip(sa.memory.weights, sb.memory.weights))


def _reference_gates(c, lr, forget, eta, scale, pages, heads, threshold, chunk, mix, eps):
    """Token by token: running chunk max, forget modulation, sequential pages decided at boundaries, kinetics."""
    b, h, t = lr.shape
    out = {"lr": lr.clone(), "forget": forget.clone(), "momentum": eta.clone()}
    pages_seen = []
    for i in range(b):
        page, run_max, lr_sum, offset = 0, 0.0, [0.0] * h, 0
        for s in range(t):
            run_max = max(run_max, float(c[i, s]))
            for j in range(h):
                active = pages == 1 or j // heads == page
                alpha = float(forget[i, j, s]) * (1 - scale * run_max) * active
                theta = float(lr[i, j, s]) * active
                out["momentum"][i, j, s] = eta[i, j, s] * active
                if mix is not None:
                    lr_sum[j] += theta
                    progress = (lr_sum[j] / (offset + 1)) / (lr_sum[j] / (offset + 1) + alpha + eps)
                    alpha = min(max(alpha * (1 - mix * progress), 0.0), 1.0)
                    theta = theta + mix * (1 - theta) * progress
                out["lr"][i, j, s], out["forget"][i, j, s] = theta, alpha
            pages_seen.append(page)
            offset += 1
            if offset == chunk:
                if pages > 1 and run_max > threshold:
                    page = (page + 1) % pages
                page, run_max, lr_sum, offset = page, 0.0, [0.0] * h, 0
    return out


@pytest.mark.parametrize("pages, mix", [(1, None), (2, None), (3, 0.7), (1, 0.4)])
def test_gates_match_a_token_by_token_reference(pages, mix):
    rule = get_rule("titans")
    opts = dict(use_symplectic_gating=True, num_pages=pages, symplectic_page_threshold=0.5)
    if mix is not None:
        opts.update(kinetics_coupling=True, kinetics_mix=mix)
    paging = SymplecticPaging(4, 2, 3, rule, **opts).double()
    paging.signal = ScriptedSignal()
    torch.manual_seed(5)
    b, h, t = 2, 2 * pages, 11
    x = torch.rand(b, t, 4, dtype=torch.float64)
    gates = {"lr": torch.rand(b, h, t, dtype=torch.float64), "forget": torch.rand(b, h, t, dtype=torch.float64),
             "momentum": torch.rand(b, h, t, dtype=torch.float64)}
    state = initial_state(rule, b, h, 2, 2, dtype=torch.float64)
    new, carry = paging(x, gates, state)
    ref = _reference_gates(x[..., 0], gates["lr"], gates["forget"], gates["momentum"], 0.5, pages, 2, 0.5, 3,
                           mix, 1e-6)
    for name in ("lr", "forget", "momentum"):
        assert torch.allclose(new[name], ref[name], atol=1e-12, rtol=0), name
    assert carry["signal_offset"] == t % 3


def test_forget_stays_bounded_for_any_scale_and_signal():
    rule = get_rule("titans")
    paging = SymplecticPaging(4, 1, 4, rule, use_symplectic_gating=True).double()
    paging.signal = ScriptedSignal()
    for logit in (-30.0, 0.0, 30.0):
        with torch.no_grad():
            paging.symplectic_scale_logit.fill_(logit)
        x = torch.rand(3, 9, 4, dtype=torch.float64) * 0.999
        forget = torch.rand(3, 1, 9, dtype=torch.float64)
        new, _ = paging(x, {"lr": torch.rand(3, 1, 9, dtype=torch.float64), "forget": forget},
                        initial_state(rule, 3, 1, 2, 2, dtype=torch.float64))
        assert (new["forget"] >= 0).all() and (new["forget"] <= forget).all()


def test_scripted_switches_and_counters():
    """Chunk maxima [.9, 0, .9, .9, 0] with P = 3, threshold .5 from page 0 leave pages 1, 1, 2, 0, 0."""
    layer = _layer(dict(use_symplectic_gating=True, num_pages=3, symplectic_page_threshold=0.5), chunk=2)
    layer.symplectic.signal = ScriptedSignal()
    x = torch.zeros(1, 10, 8, dtype=torch.float64)
    x[0, :, 0] = torch.tensor([0.9, 0.1, 0, 0, 0.2, 0.9, 0.9, 0.3, 0, 0], dtype=torch.float64)
    state, pages = None, []
    for s in range(0, 10, 2):
        _, state = layer(x[:, s:s + 2], state)
        pages.append(int(state.memory.active_page))
    assert pages == [1, 1, 2, 0, 0]
    assert int(layer.symplectic.page_switch_events) == 3 and int(layer.symplectic.page_threshold_crossings) == 3


def test_crossings_that_keep_the_page_are_not_switches():
    paging = SymplecticPaging(4, 1, 2, get_rule("titans"), use_symplectic_gating=True, num_pages=2,
                              page_routing="hierarchical", coarse_pages=2, fine_pages=1,
                              symplectic_page_threshold=0.1)
    paging.signal = ScriptedSignal()
    # cmax 0.3 -> coarse group 0 = the current page: a crossing without a switch; 0.8 -> group 1: a switch
    x = torch.zeros(1, 6, 4)
    x[0, :, 0] = torch.tensor([0.3, 0.0, 0.8, 0.0, 0.8, 0.0])
    _, carry = paging(x, {"lr": torch.rand(1, 2, 6), "forget": torch.rand(1, 2, 6)},
                      initial_state("titans", 1, 2, 2, 2))
    assert int(carry["active_page"]) == 1
    assert int(paging.page_threshold_crossings) == 3 and int(paging.page_switch_events) == 1


def _budget_reference(cmax, pages, threshold, budget, window):
    """Sample by sample: the sequential page at each boundary under at most `budget` changes in any `window`
    consecutive boundaries; returns the pages after each boundary and the number of refused changes."""
    out, blocked = [], 0
    for row in cmax.tolist():
        page, changed_at, pages_after = 0, [], []
        for i, m in enumerate(row):
            recent = sum(1 for j in changed_at if i - j < window)
            if m > threshold:
                if recent < budget:
                    page = (page + 1) % pages
                    changed_at.append(i)
                else:
                    blocked += 1
            pages_after.append(page)
        out.append(pages_after)
    return out, blocked


@pytest.mark.parametrize("budget, window", [(0, 3), (1, 1), (1, 3), (2, 4), (3, 2)])
def test_switch_budget_caps_changes_per_window_like_a_reference_loop(budget, window):
    torch.manual_seed(budget * 10 + window)
    chunk, boundaries = 2, 11
    x = torch.zeros(3, chunk * boundaries, 4, dtype=torch.float64)
    x[..., 0] = torch.rand(3, chunk * boundaries, dtype=torch.float64)
    cmax = x[..., 0].reshape(3, boundaries, chunk).max(-1).values
    expected, blocked = _budget_reference(cmax, 3, 0.3, budget, window)
    paging = SymplecticPaging(4, 1, chunk, get_rule("titans"), use_symplectic_gating=True, num_pages=3,
                              symplectic_page_threshold=0.3, page_switch_budget=budget,
                              page_switch_window=window).double()
    paging.signal = ScriptedSignal()
    state, pages = initial_state("titans", 3, 3, 2, 2, dtype=torch.float64), []
    for b in range(boundaries):  # one chunk per call: the history must travel in the state
        seg = slice(b * chunk, (b + 1) * chunk)
        _, carry = paging(x[:, seg], {"lr": torch.rand(3, 3, chunk, dtype=torch.float64),
                                      "forget": torch.rand(3, 3, chunk, dtype=torch.float64)}, state)
        state = replace(state, **carry)
        pages.append(carry["active_page"].tolist())
        assert carry["switch_history"].shape == (3, window - 1)
    assert [list(p) for p in zip(*pages)] == expected
    assert int(paging.page_switches_blocked) == blocked
    unbounded = sum(int(m > 0.3) for m in cmax.flatten())
    assert int(paging.page_switch_events) == unbounded - blocked
    if budget == 0:
        assert all(p == 0 for row in expected for p in row)


def test_routing_formulas():
    pi = math.pi
    angles = torch.tensor([-0.9 * pi, 0.0, 0.9 * pi])
    assert angle_bucket(angles, 3).tolist() == [0, 1, 2]
    active = torch.zeros(2, dtype=torch.long)
    target = route_pages(active, torch.tensor([0.2, 0.8]), torch.tensor([0.75 * pi, -0.75 * pi]), 4,
                         "hierarchical", 2, 2, 1.0)
    assert target.tolist() == [1, 2]
    seq = route_pages(active, torch.tensor([0.2, 0.8]), None, 4, "hierarchical", 2, 2, 0.0)
    assert seq.tolist() == [1, 1]
    # λ = 0.5 rounds the midpoint of the sequential (1) and hierarchical (2) targets half to even: 2
    half = route_pages(active, torch.tensor([0.8, 0.8]), torch.tensor([-0.75 * pi, -0.75 * pi]), 4,
                       "hierarchical", 2, 2, 0.5)
    assert half.tolist() == [2, 2]


def test_inactive_page_is_exactly_unchanged_with_momentum_on():
    layer = _layer(dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=-1.0), heads=2,
                   chunk=3, gate_init={"momentum": 0.9, "lr": 0.5, "forget": 0.2})
    x = torch.randn(2, 15, 8, dtype=torch.float64)
    state = layer.initial_state(2)
    changed = 0
    for s in range(0, 15, 3):  # one chunk per call: every boundary switches (threshold below any signal)
        page = torch.zeros(2, dtype=torch.long) if state.memory.active_page is None else state.memory.active_page
        before = [w.clone() for w in state.memory.weights]
        _, state = layer(x[:, s:s + 3], state)
        for i in range(2):
            inactive = [h for h in range(4) if h // 2 != int(page[i])]
            active = [h for h in range(4) if h // 2 == int(page[i])]
            for w0, w1 in zip(before, state.memory.weights):
                assert torch.equal(w0[i, inactive], w1[i, inactive])
                changed += int(not torch.equal(w0[i, active], w1[i, active]))
            for mom in state.memory.momentum:
                assert mom[i, inactive].abs().max() == 0
        assert not torch.equal(state.memory.active_page, page)
    assert changed > 0


@pytest.mark.parametrize("rule", ["titans", "gated_delta", "atlas", "dmd"])
def test_whole_equals_pieces_equals_token_by_token(rule):
    options = dict(DMD_ON if rule == "dmd" else ALL_ON)
    rule = "titans" if rule == "dmd" else rule
    if rule == "gated_delta":
        options["complexity"] = dict(options["complexity"], gated=True, gate_mode="soft", top_k=3)
    layer = _layer(options, heads=2, chunk=4, rule=rule)
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    y_whole, s_whole = layer(x)
    events = int(layer.symplectic.page_switch_events)
    assert events > 0
    for sizes in ((5, 1, 7), (1,) * 13):
        state, outs = None, []
        start = 0
        for n in sizes:
            y, state = layer(x[:, start:start + n], state)
            outs.append(y)
            start += n
        assert torch.allclose(torch.cat(outs, 1), y_whole, atol=1e-10, rtol=0)
        for name, value in _memory_fields(s_whole).items():
            _assert_close(value, _memory_fields(state)[name])
    assert int(layer.symplectic.page_switch_events) == 3 * events


@pytest.mark.parametrize("options", [ALL_ON, DMD_ON])
def test_outputs_are_causal_with_every_option_on(options):
    layer = _layer(options, heads=2, chunk=4)
    x = torch.randn(2, 14, 8, dtype=torch.float64)
    y, _ = layer(x)
    for t0 in (3, 4, 9):
        z = x.clone()
        z[:, t0:] = torch.randn_like(z[:, t0:]) * 3
        assert torch.equal(layer(z)[0][:, :t0], y[:, :t0])


@pytest.mark.parametrize("options", [ALL_ON, DMD_ON])
def test_chunked_engine_equals_the_reference_with_options_on(monkeypatch, options):
    layer = _layer(options, heads=2, chunk=4)
    x = torch.randn(2, 10, 8, dtype=torch.float64)

    def run(forced):
        if forced:
            monkeypatch.setattr(nm, "run_memory", lambda *a, **k: run_memory(*a, **{**k, "impl": "reference"}))
        else:
            monkeypatch.setattr(nm, "run_memory", run_memory)
        layer.zero_grad()
        start = layer(x[:, :3])[1]  # an incoming state inside a chunk, with its own graph
        y, state = layer(x[:, 3:], start)
        (y.pow(2).sum() + sum(w.sum() for w in state.memory.weights)).backward()
        return y, state, {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}

    (ya, sa, ga), (yb, sb, gb) = run(False), run(True)
    assert torch.allclose(ya, yb, atol=1e-10, rtol=0)
    for name, value in _memory_fields(sa).items():
        _assert_close(value, _memory_fields(sb)[name])
    assert set(ga) == set(gb) and "symplectic.symplectic_scale_logit" in ga
    assert ga["symplectic.symplectic_scale_logit"].abs() > 0
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-9, rtol=0), name


def test_width_normalised_threshold_transfers_across_widths():
    """On white noise a raw threshold of 0.2 always fires at width 16 and never at 256; the same threshold in
    noise units (1.6 · sqrt(2 / dim)) behaves alike at both widths."""
    rates = {}
    for dim in (16, 256):
        for units, thr in (("raw", 0.2), ("noise", 1.6)):
            torch.manual_seed(0)
            layer = NeuralMemory(dim, heads=1, chunk_size=16, symplectic=dict(
                use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=thr, page_threshold_units=units))
            assert layer.symplectic.raw_threshold == pytest.approx(thr * (noise_level(dim) if units == "noise" else 1))
            with torch.no_grad():
                layer(torch.randn(8, 128, dim))
            rates[dim, units] = int(layer.symplectic.page_threshold_crossings) / (8 * 8)
    assert rates[16, "raw"] == 1.0 and rates[256, "raw"] == 0.0
    assert abs(rates[16, "noise"] - rates[256, "noise"]) < 0.25


def test_single_token_decode_runs_with_paging():
    layer = _layer(dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=0.0), chunk=2)
    state = None
    for _ in range(5):
        _, state = layer(torch.randn(1, 1, 8, dtype=torch.float64), state)
    assert state.memory.signal_inputs.shape == (1, 1, 8)
    assert state.detach().memory.active_page.dtype == torch.long
    assert state.memory.to(torch.float32).active_page.dtype == torch.long


@pytest.mark.parametrize("options, match", [
    (dict(use_symplectic_gating=True, num_pages=2, page_routing="random"), "page_routing"),
    (dict(use_symplectic_gating=True, num_pages=0), "num_pages"),
    (dict(use_symplectic_gating=True, num_pages=2, page_switch_budget=-1), "page_switch_budget"),
    (dict(use_symplectic_gating=True, page_switch_budget=1), "needs num_pages > 1"),
    (dict(use_symplectic_gating=True, num_pages=2, page_switch_budget=1, page_switch_window=0),
     "page_switch_window"),
    (dict(use_symplectic_gating=True, num_pages=4, page_routing="hierarchical", coarse_pages=3, fine_pages=2),
     "coarse_pages × fine_pages"),
    (dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=float("nan")), "threshold"),
    (dict(use_symplectic_gating=True, hierarchy_mix=1.5), "hierarchy_mix"),
    (dict(kinetics_coupling=True, kinetics_mix=-0.1), "kinetics_mix"),
    (dict(use_symplectic_gating=True, complexity=dict(phase_mix=2.0)), "phase_mix"),
    (dict(num_pages=2), "needs use_symplectic_gating"),
    (dict(use_symplectic_gating=True, use_dmd_gating=True), "combine_symplectic_and_dmd"),
    (dict(use_symplectic_gating=True, num_pages=2, page_routing="manifold"), "phase stage"),
    (dict(use_dmd_gating=True, page_threshold_units="noise"), "noise"),
    (dict(use_symplectic_gating=True, page_threshold_units="metres"), "page_threshold_units"),
    (dict(complexity=dict(phase_mix=0.5)), "complexity options"),
    (dict(use_symplectic_gating=True, surprise=True), "surprise"),
])
def test_bad_arguments_name_the_argument(options, match):
    with pytest.raises((ValueError, TypeError), match=match):
        NeuralMemory(8, chunk_size=4, symplectic=options)


def test_gating_needs_a_forget_gate():
    with pytest.raises(ValueError, match="forget gate"):
        NeuralMemory(8, chunk_size=4, rule="delta", symplectic=dict(use_symplectic_gating=True))
