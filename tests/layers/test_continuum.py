"""A continuum-memory level equals the Nested Learning continuum memory system written token by token (float64).

The reference below shares no code with the package: per token t of a level with period C,

    k_t = normalize(W_k x_t),  v_t = W_v x_t,  η_t = sigmoid(w · x_t + b) / C
    y_t = W_out^(s) silu(W_in^(s) x_t)                          (s: the weights at the start of t's span)
    W^(s+1) = W^(s) − Σ_{t in span s} ∇_W η_t / 2 ‖W_out silu(W_in k_t) − v_t‖²   at W = W^(s)

each token's gradient from ``torch.autograd.grad`` with ``create_graph`` (so the outer loop's gradients flow
through the inner steps). Only the layer's public API is used: outputs, gradients w.r.t. the input and every
parameter, the state through what it does (continuing the sequence from it) and ``commit``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.layer_cases import assert_same_outputs_and_gradients, rel_err, run_in_calls
from ttmem.layers.continuum import ContinuumLevel

TOL = 1e-10



def reference(level: ContinuumLevel, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Outputs [B, T, dim] and the span-start weights after the last completed span."""
    batch, length, _ = x.shape
    w_in = level.w_in.expand(batch, -1, -1)
    w_out = level.w_out.expand(batch, -1, -1)
    w_key, w_value = level.to_key_value.weight.chunk(2, dim=0)
    pending_in, pending_out = torch.zeros_like(w_in), torch.zeros_like(w_out)
    outputs = []
    for t in range(length):
        x_t = x[:, t]
        outputs.append(torch.einsum("bdh,bh->bd", w_out, F.silu(torch.einsum("bhd,bd->bh", w_in, x_t))))
        k = F.normalize(x_t @ w_key.T, dim=-1)
        v = x_t @ w_value.T
        eta = torch.sigmoid(level.to_step(x_t)).squeeze(-1) / level.period
        at_in, at_out = w_in.view_as(w_in), w_out.view_as(w_out)  # the span-start weights, as leaves of ∇
        prediction = torch.einsum("bdh,bh->bd", at_out, F.silu(torch.einsum("bhd,bd->bh", at_in, k)))
        loss = (eta / 2 * (prediction - v).square().sum(-1)).sum()
        g_in, g_out = torch.autograd.grad(loss, (at_in, at_out), create_graph=True)
        pending_in, pending_out = pending_in + g_in, pending_out + g_out
        if (t + 1) % level.period == 0:
            w_in, w_out = w_in - pending_in, w_out - pending_out
            pending_in, pending_out = torch.zeros_like(w_in), torch.zeros_like(w_out)
    return torch.stack(outputs, dim=1), (w_in, w_out)


def make_level(dim: int, period: int, seed: int) -> ContinuumLevel:
    torch.manual_seed(seed)
    level = ContinuumLevel(dim, period, mlp_ratio=2.0).double()
    with torch.no_grad():  # steps large enough that the updates change the outputs visibly
        level.to_step.weight.normal_(0, 0.5)
        level.to_step.bias.fill_(1.0)
    return level



@pytest.mark.parametrize("period", [1, 3, 8])
@pytest.mark.parametrize("cuts", [(), (5,), (1, 2, 9)], ids=["whole", "two-calls", "four-calls"])
def test_level_equals_token_loop(period, cuts):
    """Outputs and input / parameter gradients of a 17-token sequence run whole or in calls that end mid-span,
    then 6 more tokens from the final state (which holds the open span's pending gradient)."""
    level = make_level(6, period, seed=period)
    x = torch.randn(2, 17, 6, dtype=torch.float64, requires_grad=True)
    after = torch.randn(2, 6, 6, dtype=torch.float64, requires_grad=True)
    got = run_in_calls(level, x, cuts, after)
    expected, _ = reference(level, torch.cat([x, after], dim=1))
    assert_same_outputs_and_gradients(got, expected, [x, after, *level.parameters()], TOL)
    if period < 17:  # the fast weights really moved: frozen weights give other outputs
        frozen = torch.einsum("bth,dh->btd", F.silu(x @ level.w_in.T), level.w_out)
        assert rel_err(got[:, period:17], frozen[:, period:]) > 1e-3


@pytest.mark.parametrize("period", [1, 4])
def test_commit_makes_the_span_start_weights_the_parameters(period):
    """After 12 tokens (whole spans) at batch 1, ``commit`` writes the reference's weights into the level."""
    level = make_level(5, period, seed=3)
    x = torch.randn(1, 12, 5, dtype=torch.float64)
    _, state = level(x)
    _, (w_in, w_out) = reference(level, x)
    level.commit(state)
    assert rel_err(level.w_in.detach(), w_in[0].detach()) <= TOL
    assert rel_err(level.w_out.detach(), w_out[0].detach()) <= TOL


def test_bad_arguments():
    for period in (0, 2.0, True):
        with pytest.raises(ValueError, match="period"):
            ContinuumLevel(4, period)
    with pytest.raises(ValueError, match="x must be"):
        ContinuumLevel(4, 2)(torch.randn(1, 3, 5))
