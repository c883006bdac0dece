"""The NeuralMemory layer: streaming equivalence, independent per-head parameters, errors."""

from __future__ import annotations

import math

import pytest
import torch

from ttmem.layers import NeuralMemory
from ttmem.layers.neural_memory import GATE_MODES
from ttmem.memory import RULES


def run_pieces(layer, x, cuts):
    outs, state = [], None
    for start, stop in zip(cuts[:-1], cuts[1:]):
        y, state = layer(x[:, start:stop], state)
        outs.append(y)
    return torch.cat(outs, 1), state


@pytest.mark.parametrize("gate_mode", ["token", "chunk", "fixed"])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_whole_pieces_and_token_by_token_agree(rule, gate_mode):
    torch.manual_seed(0)
    layer = NeuralMemory(16, heads=2, chunk_size=4, rule=rule, gate_mode=gate_mode).double()
    with torch.no_grad():  # make the gates depend on the input so that "chunk" mode is really tested
        if gate_mode != "fixed":
            layer.to_gates.weight.normal_(0, 0.3)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    whole, state_whole = layer(x)
    for cuts in ([0, 3, 4, 9, 11], list(range(12))):
        pieces, state = run_pieces(layer, x, cuts)
        torch.testing.assert_close(pieces, whole, rtol=1e-10, atol=1e-12)
        for a, b in zip(state.memory.weights, state_whole.memory.weights):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunk_gates_are_held_within_a_chunk():
    torch.manual_seed(0)
    layer = NeuralMemory(8, heads=1, chunk_size=4, rule="titans", gate_mode="chunk").double()
    with torch.no_grad():
        layer.to_gates.weight.normal_(0, 1.0)
    x = torch.randn(1, 10, 8, dtype=torch.float64)
    gates, _ = layer._gates(x, None)
    lr = gates["lr"][0, 0, :]  # engine layout [batch, heads, time]
    for start in (0, 4, 8):
        block = lr[start:start + 4]
        assert torch.all(block == block[0])
    assert lr[0] != lr[4]


def test_initial_weights_are_independent_parameters_per_layer():
    layer = NeuralMemory(16, heads=4, rule="titans")
    params = list(layer.initial_weights)
    assert len(params) == 2 and all(p.shape[0] == 4 for p in params)
    assert len({p.data_ptr() for p in params}) == 2
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    y, _ = layer(torch.randn(2, 9, 16))
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    before = [p.detach().clone() for p in params]
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, params))
    fresh = NeuralMemory(16, heads=4, rule="titans")
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(1, 5, 16)
    torch.testing.assert_close(fresh(x)[0], layer(x)[0])


def test_retrieve_reads_without_writing():
    torch.manual_seed(0)
    layer = NeuralMemory(8, heads=2, chunk_size=2, rule="delta", conv_kernel=0).double()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    _, state = layer(x)
    before = [w.clone() for w in state.memory.weights]
    y = layer.retrieve(x[:, :3], state)
    assert y.shape == (1, 3, 8)
    assert all(torch.equal(a, b) for a, b in zip(before, state.memory.weights))


def test_layer_errors():
    with pytest.raises(ValueError, match="gate_mode"):
        NeuralMemory(8, gate_mode="sometimes")
    with pytest.raises(ValueError, match="chunk_size"):
        NeuralMemory(8, chunk_size=0)
    with pytest.raises(ValueError, match="unknown memory rule"):
        NeuralMemory(8, rule="nope")
    layer = NeuralMemory(8)
    with pytest.raises(ValueError, match="x must have shape"):
        layer(torch.randn(2, 3, 7))


@pytest.mark.parametrize("gate_mode", GATE_MODES)
@pytest.mark.parametrize("rule", ["titans", "gated_delta", "delta"])
def test_gates_start_at_their_documented_values(rule, gate_mode):
    """Step size sigmoid(−2) ≈ 0.12, momentum keep sigmoid(−4) ≈ 0.018, forget sigmoid(−8) ≈ 3.4e-4, whatever
    the input (the gate projections start at zero)."""
    layer = NeuralMemory(16, heads=2, chunk_size=4, rule=rule, gate_mode=gate_mode, max_lr=0.5)
    gates, _ = layer._gates(torch.randn(3, 9, 16), None)
    expected = {"lr": 0.5 / (1 + math.exp(2.0)), "momentum": 1 / (1 + math.exp(4.0)), "forget": 1 / (1 + math.exp(8.0))}
    present = {"lr", "momentum", "forget"} - ({"momentum"} if not layer.rule.momentum else set()) - (
        {"forget"} if not layer.rule.forgetting else set())
    assert set(gates) == present
    for name, value in gates.items():
        torch.testing.assert_close(value, torch.full((3, 2, 9), expected[name]), rtol=1e-6, atol=0)  # [B, H, T]


def test_gate_init_overrides_and_rejects_bad_values():
    layer = NeuralMemory(16, heads=2, rule="titans", gate_init={"momentum": 0.9, "forget": 0.01})
    gates, _ = layer._gates(torch.randn(1, 3, 16), None)
    torch.testing.assert_close(gates["momentum"], torch.full((1, 2, 3), 0.9))  # [B, H, T]
    torch.testing.assert_close(gates["forget"], torch.full((1, 2, 3), 0.01))
    with pytest.raises(ValueError, match="gate_init\\['forget'\\] must be in \\(0, 1\\)"):
        NeuralMemory(16, rule="titans", gate_init={"forget": 1.0})
    with pytest.raises(ValueError, match="gate_init keys"):
        NeuralMemory(16, rule="titans", gate_init={"decay": 0.5})


def test_one_token_conv_is_the_depthwise_conv_of_its_history():
    torch.manual_seed(0)
    layer = NeuralMemory(16, heads=2, chunk_size=4, conv_kernel=4).double()
    history = torch.randn(3, 48, 3, dtype=torch.float64)
    token = torch.randn(3, 48, 1, dtype=torch.float64)
    out, new_history = layer._conv(token, history, slice(None))
    full = torch.cat([history, token], dim=2)
    expected = torch.nn.functional.silu(torch.nn.functional.conv1d(full, layer.conv.weight, layer.conv.bias, groups=48))
    torch.testing.assert_close(out, expected, atol=1e-14, rtol=0)
    assert torch.equal(new_history, full[:, :, 1:])
