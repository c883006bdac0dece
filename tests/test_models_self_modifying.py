"""HOPE's self-modifying layer against a token-by-token reference built from the written equations."""

import pytest
import torch
import torch.nn.functional as F

from ttmem.layers.self_modifying import SelfModifyingMemory
from ttmem.memory import initial_state, memorize


def reference_layer(layer: SelfModifyingMemory, x: torch.Tensor) -> torch.Tensor:
    """Token loop: projections read chunk-start weights; each token's delta-GD change
    W(I - r u u^T) - r (W u - W v) u^T - W, summed over the chunk and applied at its end.
    The main memory uses the engine's token-by-token reference implementation."""
    batch, length, dim = x.shape
    heads, dh, chunk = layer.heads, layer.dim_head, layer.chunk_size
    weights = [w.detach().expand(batch, -1, -1).clone() for w in layer.projection_init]
    pending = [torch.zeros_like(w) for w in weights]
    generated = [[] for _ in weights]
    for t in range(length):
        x_t = x[:, t]
        outs = [torch.einsum("bod,bd->bo", w, x_t) for w in weights]
        outs[2] = torch.sigmoid(outs[2] + layer.step_bias.detach())
        if len(outs) == 4:
            outs[3] = torch.sigmoid(outs[3] + layer.forget_bias.detach())
        for store, out in zip(generated, outs, strict=True):
            store.append(out)
        eta = outs[2].mean(-1)
        rate = (eta / (1 + eta) / chunk)[:, None, None]
        u = F.normalize(outs[0], dim=-1)
        identity = torch.eye(dim).expand(batch, -1, -1)
        for i, w in enumerate(weights):
            target = torch.einsum("bod,bd->bo", w, outs[1] / outs[1].norm(dim=-1, keepdim=True))
            error = torch.einsum("bod,bd->bo", w, u) - target
            new = w @ (identity - rate * u[:, :, None] * u[:, None, :]) - rate * error[:, :, None] * u[:, None, :]
            pending[i] = pending[i] + (new - w)
        if (t + 1) % chunk == 0:
            weights = [w + p for w, p in zip(weights, pending, strict=True)]
            pending = [torch.zeros_like(w) for w in weights]
    k, v, step = (torch.stack(g, dim=1) for g in generated[:3])
    forget = torch.stack(generated[3], dim=1) if len(generated) == 4 else None
    shape = (batch, length, heads, dh)
    q = F.normalize((x @ layer.to_query.weight.detach().T).view(shape), dim=-1)
    momentum = torch.sigmoid(layer.to_momentum(x)).detach() if layer.to_momentum is not None else None
    start = initial_state(layer.rule, batch, heads, dh, dh, weights=tuple(w.detach() for w in layer.memory_init))
    out, _ = memorize(q, F.normalize(k.view(shape), dim=-1), v.view(shape), step, momentum=momentum, forget=forget,
                      rule=layer.rule, chunk_size=chunk, state=start, impl="reference")
    out = out * torch.rsqrt(out.square().mean(-1, keepdim=True) + torch.finfo(out.dtype).eps)
    out = (out * layer.out_norm.weight.detach()).reshape(batch, length, dim)
    out = out * F.silu(x @ layer.to_out_gate.weight.detach().T)
    return out @ layer.to_out.weight.detach().T


@pytest.mark.parametrize("rule", ["titans", "delta"])
def test_matches_token_by_token_reference(rule):
    torch.manual_seed(0)
    layer = SelfModifyingMemory(8, heads=2, chunk_size=3, rule=rule)
    with torch.no_grad():
        layer.step_bias.fill_(1.0)  # large steps: the projection memories change visibly
    x = torch.randn(2, 10, 8)
    with torch.no_grad():
        y, state = layer(x)
        expected = reference_layer(layer, x)
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(state.projections[0], layer.projection_init[0].expand(2, -1, -1), atol=1e-3)


@pytest.mark.parametrize("pieces", [[1] * 11, [4, 7], [2, 2, 5, 2]])
def test_pieces_equal_whole(pieces):
    torch.manual_seed(1)
    layer = SelfModifyingMemory(8, heads=2, chunk_size=4)
    x = torch.randn(2, 11, 8)
    with torch.no_grad():
        full, full_state = layer(x)
        state, outs, begin = None, [], 0
        for size in pieces:
            y, state = layer(x[:, begin : begin + size], state)
            outs.append(y)
            begin += size
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)
    for a, b in zip(state.projections, full_state.projections, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_commit_sets_starting_weights_and_bad_arguments():
    torch.manual_seed(2)
    layer = SelfModifyingMemory(8, heads=2, chunk_size=2)
    _, state = layer(torch.randn(1, 6, 8))
    layer.commit(state)
    torch.testing.assert_close(layer.projection_init[1].data, state.projections[1][0])
    torch.testing.assert_close(layer.memory_init[0].data, state.memory.weights[0][0])
    with pytest.raises(ValueError, match="divisible"):
        SelfModifyingMemory(10, heads=3)
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.randn(1, 3, 5))


def test_long_input_stays_bounded():
    torch.manual_seed(3)
    layer = SelfModifyingMemory(16, heads=2, chunk_size=4)
    with torch.no_grad():
        layer.step_bias.fill_(3.0)  # near-maximal steps
        y, state = layer(torch.randn(1, 2048, 16) * 3)
    assert torch.isfinite(y).all()
    for start, now in zip(layer.projection_init, state.projections, strict=True):
        assert now.norm() < 10 * start.norm()
