"""NeuralMemory's ``forget_gate="mamba2"``: Gated DeltaNet's decay a_t = exp(−softplus(W_a x_t + b) · A_h) with a
learned per-head A_h, as Mamba-2 initialises it, and the ``gated_deltanet`` model using it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ttmem.layers import NeuralMemory
from ttmem.models import build_model


def layer_with_input_dependent_gates(gate_mode: str = "token") -> NeuralMemory:
    torch.manual_seed(0)
    layer = NeuralMemory(16, heads=2, chunk_size=4, rule="gated_delta", gate_mode=gate_mode,
                         forget_gate="mamba2").double()
    if gate_mode != "fixed":
        with torch.no_grad():
            layer.to_gates.weight.normal_(0, 0.3)
    return layer


def test_decay_is_exp_of_minus_softplus_times_a():
    layer = layer_with_input_dependent_gates()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    gates, _ = layer._gates(x, None)
    # gated_delta's gates are [lr, forget] per head; written out from the weights, not through the layer.
    # Gates come in the engine's layout [batch, heads, time].
    w = layer.to_gates.weight.view(2, 2, 16)[:, 1]
    b = layer.to_gates.bias.view(2, 2)[:, 1, None]
    a = torch.exp(layer.forget_log_rate)[:, None]
    decay = torch.exp(-F.softplus(torch.einsum("btd,hd->bht", x, w) + b) * a)
    torch.testing.assert_close(1 - gates["forget"], decay, rtol=1e-12, atol=1e-14)
    beta = torch.sigmoid(torch.einsum("btd,hd->bht", x, layer.to_gates.weight.view(2, 2, 16)[:, 0])
                         + layer.to_gates.bias.view(2, 2)[:, 0, None])
    torch.testing.assert_close(gates["lr"], beta, rtol=1e-12, atol=1e-14)


def test_mamba2_initialisation_ranges():
    torch.manual_seed(1)
    layer = NeuralMemory(64, heads=64, rule="gated_delta", forget_gate="mamba2")
    a = layer.forget_log_rate.detach().exp()
    assert a.shape == (64,) and bool((a >= 1).all()) and bool((a <= 16).all())
    step = F.softplus(layer.to_gates.bias.detach().view(64, 2)[:, 1])
    assert bool((step >= 1e-3 * (1 - 1e-5)).all()) and bool((step <= 0.1 * (1 + 1e-5)).all())
    assert float(step.log().std()) > 0.5  # drawn log-uniformly, not one value
    fixed = NeuralMemory(32, heads=4, rule="gated_delta", gate_mode="fixed", forget_gate="mamba2")
    step = F.softplus(fixed.gate_logits.detach()[:, 1])
    assert bool((step >= 1e-3 * (1 - 1e-5)).all()) and bool((step <= 0.1 * (1 + 1e-5)).all())


@pytest.mark.parametrize("gate_mode", ["token", "fixed"])
def test_whole_and_token_by_token_agree(gate_mode):
    layer = layer_with_input_dependent_gates(gate_mode)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    whole, whole_state = layer(x)
    outs, state = [], None
    for t in range(9):
        y, state = layer(x[:, t:t + 1], state)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.memory.weights[0], whole_state.memory.weights[0], rtol=1e-10, atol=1e-12)


def test_a_is_learned():
    layer = layer_with_input_dependent_gates()
    y, _ = layer(torch.randn(2, 9, 16, dtype=torch.float64))
    y.square().mean().backward()
    assert layer.forget_log_rate.grad is not None and float(layer.forget_log_rate.grad.abs().sum()) > 0


def test_gated_deltanet_model_uses_the_mamba2_decay():
    model = build_model("gated_deltanet-tiny")
    layers = [m for m in model.modules() if isinstance(m, NeuralMemory)]
    assert layers and all(m.forget_gate == "mamba2" and m.rule.forget_first for m in layers)
    others = [m for m in build_model("deltanet-tiny").modules() if isinstance(m, NeuralMemory)]
    assert all(m.forget_gate == "sigmoid" for m in others)


def test_forget_gate_errors():
    with pytest.raises(ValueError, match="forget_gate must be one of"):
        NeuralMemory(8, rule="gated_delta", forget_gate="exp")
    with pytest.raises(ValueError, match="needs a rule with forgetting"):
        NeuralMemory(8, rule="delta", forget_gate="mamba2")


def test_decay_gate_stays_a_probability_for_extreme_logits():
    layer = NeuralMemory(8, heads=1, rule="gated_delta", forget_gate="mamba2").double()
    with torch.no_grad():
        forget = layer._mamba2_forget(torch.tensor([[-1e3, 0.0, 1e3]], dtype=torch.float64))[0]
    assert bool((forget >= 0).all()) and bool((forget <= 1).all())
    assert float(forget[2]) == 1.0 and math.isclose(float(forget[0]), 0.0, abs_tol=1e-300)
