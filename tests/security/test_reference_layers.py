"""The security package's memory decoders run the memory engine's rules; each equals its update written out
token by token here (float64), and no decoder name stands for other maths than the engine preset of that name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ttmem.memory import RULES
from ttmem.security.backends import TinyLM
from ttmem.security.reference_layers import (
    DECODERS,
    LowRankThetaDecoder,
    ThetaMemoryDecoder,
    TitansMLPDecoder,
)

TOL = 1e-12


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-30))


def projections(layer, x: torch.Tensor):
    """q, k (unit), v [B, H, dh] from the layer's own q/k/v projection."""
    q, k, v = layer.split(x)
    return q, F.normalize(k, dim=-1), v


def run(layer, xs: torch.Tensor, state):
    outs = []
    for x in xs:
        y, state = layer.step(x, state)
        outs.append(y)
    return torch.stack(outs), state


def double_state(state):
    return tuple(s.double() for s in state) if isinstance(state, tuple) else state.double()


def test_theta_decoder_is_one_l2_step_per_token():
    torch.manual_seed(0)
    layer = ThetaMemoryDecoder(12, heads=3, lr=0.7).double()
    xs = torch.randn(9, 2, 12, dtype=torch.float64)
    state = double_state(layer.init_state(2)) + 0.1 * torch.randn(2, 3, 4, 4, dtype=torch.float64)
    got, final = run(layer, xs, state)
    w, expected = state, []
    for x in xs:
        q, k, v = projections(layer, x)
        w = w - 0.7 * (torch.einsum("bhij,bhj->bhi", w, k) - v).unsqueeze(-1) * k.unsqueeze(-2)
        expected.append(layer.merge(torch.einsum("bhij,bhj->bhi", w, q)))
    assert rel_err(got, torch.stack(expected)) <= TOL
    assert rel_err(final, w) <= TOL


def test_lowrank_theta_decoder_steps_both_factors_from_the_same_point():
    torch.manual_seed(1)
    layer = LowRankThetaDecoder(12, heads=2, rank=3, lr=0.4).double()
    xs = torch.randn(9, 2, 12, dtype=torch.float64)
    state = double_state(layer.init_state(2))
    got, final = run(layer, xs, state)
    u, w, expected = *state, []
    for x in xs:
        q, k, v = projections(layer, x)
        code = torch.einsum("bhrj,bhj->bhr", w, k)
        err = torch.einsum("bhir,bhr->bhi", u, code) - v
        u, w = (u - 0.4 * err.unsqueeze(-1) * code.unsqueeze(-2),
                w - 0.4 * torch.einsum("bhir,bhi->bhr", u, err).unsqueeze(-1) * k.unsqueeze(-2))
        expected.append(layer.merge(torch.einsum("bhir,bhrj,bhj->bhi", u, w, q)))
    assert rel_err(got, torch.stack(expected)) <= TOL
    assert rel_err(final[0], u) <= TOL and rel_err(final[1], w) <= TOL


def test_titans_mlp_decoder_is_one_gradient_step_per_token():
    torch.manual_seed(2)
    layer = TitansMLPDecoder(12, heads=2, hidden=5, lr=0.3).double()
    xs = torch.randn(7, 2, 12, dtype=torch.float64)
    state = double_state(layer.init_state(2))
    got, final = run(layer, xs, state)

    def memory(w1, w2, x):
        return torch.einsum("bhoi,bhi->bho", w2, F.silu(torch.einsum("bhoi,bhi->bho", w1, x)))

    (w1, w2), expected = state, []
    for x in xs:
        q, k, v = projections(layer, x)
        a, b = w1.detach().requires_grad_(), w2.detach().requires_grad_()
        g1, g2 = torch.autograd.grad(0.5 * (memory(a, b, k) - v).square().sum(), (a, b))
        w1, w2 = w1 - 0.3 * g1, w2 - 0.3 * g2
        expected.append(layer.merge(memory(w1, w2, q)))
    assert rel_err(got, torch.stack(expected)) <= TOL
    assert rel_err(final[0], w1) <= TOL and rel_err(final[1], w2) <= TOL


@pytest.mark.parametrize("split", [(13,), (5, 1, 7), (1,) * 13], ids=["prompt", "pieces", "token-by-token"])
def test_tiny_lm_theta_mixer_is_the_gated_theta_recurrence(split):
    """θ-memory TinyLM mixer: W_t = W_{t−1} − θ_t (W_{t−1} k_t − v_t) k_tᵀ, y_t = W_t q_t, θ_t = sigmoid(gate)."""
    torch.manual_seed(3)
    mixer = TinyLM(vocab_size=8, dim=16, depth=1, heads=4, mixer="theta").mixers[0].double()
    x = torch.randn(13, 16, dtype=torch.float64)
    outs, weights, start = [], None, 0
    with torch.no_grad():
        for size in split:
            y, weights = mixer(x[start:start + size], weights)
            outs.append(y)
            start += size
        q, k, v = mixer.qkv(x).view(13, 3, 4, 4).unbind(1)
        k, lr = F.normalize(k, dim=-1), torch.sigmoid(mixer.lr_gate(x))
        w, expected = torch.zeros(4, 4, 4, dtype=torch.float64), []
        for t in range(13):
            error = torch.einsum("hij,hj->hi", w, k[t]) - v[t]
            w = w - lr[t, :, None, None] * error.unsqueeze(-1) * k[t].unsqueeze(-2)
            expected.append(torch.einsum("hij,hj->hi", w, q[t]).reshape(16))
        expected = mixer.out(torch.stack(expected))
    assert rel_err(torch.cat(outs), expected) <= 1e-10
    assert weights.shape == (4, 4, 4) and rel_err(weights, w) <= 1e-10


def test_decoder_names_are_engine_presets_only_where_they_run_that_preset():
    for name, cls in DECODERS.items():
        layer = cls(8, 2)
        rule = getattr(layer, "rule", None)
        if name in RULES:
            assert rule is not None and rule.name == name, name
            assert rule.replace(architecture=RULES[name].architecture) == RULES[name], name
        assert rule is None or rule.name == name or rule.name not in RULES, name
