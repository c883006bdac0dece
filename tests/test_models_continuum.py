"""Continuum memory levels against a token-by-token autograd reference."""

import pytest
import torch
import torch.nn.functional as F

from ttmem.layers.continuum import ContinuumLevel, mlp_regression_gradients


def reference_level(level: ContinuumLevel, x: torch.Tensor) -> torch.Tensor:
    """One token at a time: read span-start weights; gradient of each token's loss by autograd."""
    batch, length, _ = x.shape
    w_in = level.w_in.detach().double().expand(batch, -1, -1).clone()
    w_out = level.w_out.detach().double().expand(batch, -1, -1).clone()
    w_key, w_value = level.to_key_value.weight.detach().double().chunk(2, dim=0)
    pending_in, pending_out = torch.zeros_like(w_in), torch.zeros_like(w_out)
    outputs = []
    for t in range(length):
        x_t = x[:, t].double()
        hidden = F.silu(torch.einsum("bhd,bd->bh", w_in, x_t))
        outputs.append(torch.einsum("bdh,bh->bd", w_out, hidden))
        k = F.normalize(x_t @ w_key.T, dim=-1)
        v = x_t @ w_value.T
        step = torch.sigmoid(x_t @ level.to_step.weight.detach().double().T + level.to_step.bias.double())
        step = step.squeeze(-1) / level.period
        a, b = w_in.clone().requires_grad_(True), w_out.clone().requires_grad_(True)
        prediction = torch.einsum("bdh,bh->bd", b, F.silu(torch.einsum("bhd,bd->bh", a, k)))
        loss = (step / 2 * (prediction - v).square().sum(-1)).sum()
        g_in, g_out = torch.autograd.grad(loss, (a, b))
        pending_in += g_in
        pending_out += g_out
        if (t + 1) % level.period == 0:
            w_in, w_out = w_in - pending_in, w_out - pending_out
            pending_in, pending_out = torch.zeros_like(w_in), torch.zeros_like(w_out)
    return torch.stack(outputs, dim=1).float()


def test_closed_form_gradients_match_autograd():
    torch.manual_seed(0)
    w_in, w_out = torch.randn(2, 12, 5, dtype=torch.float64), torch.randn(2, 5, 12, dtype=torch.float64)
    keys, values = torch.randn(2, 7, 5, dtype=torch.float64), torch.randn(2, 7, 5, dtype=torch.float64)
    steps = torch.rand(2, 7, dtype=torch.float64)
    a, b = w_in.clone().requires_grad_(True), w_out.clone().requires_grad_(True)
    prediction = torch.einsum("bdh,bth->btd", b, F.silu(torch.einsum("bhd,btd->bth", a, keys)))
    loss = (steps / 2 * (prediction - values).square().sum(-1)).sum()
    expected = torch.autograd.grad(loss, (a, b))
    for got, want in zip(mlp_regression_gradients(w_in, w_out, keys, values, steps), expected, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("period", [1, 3, 8])
def test_level_matches_token_by_token_reference(period):
    torch.manual_seed(1)
    level = ContinuumLevel(6, period, mlp_ratio=2.0)
    with torch.no_grad():
        level.to_step.bias.fill_(2.0)  # large steps so that updates visibly change the outputs
    x = torch.randn(2, 17, 6)
    y, _ = level(x)
    torch.testing.assert_close(y, reference_level(level, x), atol=1e-5, rtol=1e-4)
    if period < 17:
        frozen = torch.einsum("bth,dh->btd", F.silu(x @ level.w_in.T), level.w_out)
        assert not torch.allclose(y[:, period:], frozen[:, period:], atol=1e-3)


@pytest.mark.parametrize("pieces", [[1] * 13, [5, 3, 5], [2, 11]])
def test_pieces_give_same_outputs_and_state(pieces):
    torch.manual_seed(2)
    level = ContinuumLevel(8, 4)
    x = torch.randn(3, 13, 8)
    full, full_state = level(x)
    state, outs, begin = None, [], 0
    for size in pieces:
        y, state = level(x[:, begin : begin + size], state)
        outs.append(y)
        begin += size
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state.w_in, full_state.w_in, atol=1e-5, rtol=1e-4)
    assert state.offset == full_state.offset == 13 % 4
    torch.testing.assert_close(state.grad_out, full_state.grad_out, atol=1e-5, rtol=1e-4)


def test_commit_and_bad_period():
    level = ContinuumLevel(4, 2)
    _, state = level(torch.randn(2, 6, 4))
    level.commit(state)
    torch.testing.assert_close(level.w_in.data, state.w_in.mean(0))
    with pytest.raises(ValueError, match="period"):
        ContinuumLevel(4, 0)
