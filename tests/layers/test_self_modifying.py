"""HOPE's self-modifying layer equals the Nested Learning equations written token by token (float64).

The projection memories M_p (p = k, v, η, α) follow the reference below, which shares no code with the package:
per token t of a chunk of C tokens, with M^(s) the weights at the start of t's chunk,

    k_t = M_k^(s) x_t,  v_t = M_v^(s) x_t,  η_t = sigmoid(M_η^(s) x_t + b_η),  α_t = sigmoid(M_α^(s) x_t + b_α)
    u_t = k_t / ‖k_t‖,  w_t = v_t / ‖v_t‖,  r_t = mean_heads(η_t) / (1 + mean_heads(η_t)) / C
    M_p^(s+1) = M_p^(s) + Σ_{t in chunk s} [M_p^(s) (I − r_t u_t u_tᵀ) − r_t (M_p^(s) u_t − M_p^(s) w_t) u_tᵀ − M_p^(s)]

(delta gradient descent on the self-generated target M_p w_t, the chunk's changes applied at its end). The main
memory reads and writes with the generated k, v, η, α through the engine's token-by-token reference, whose
equality with each rule's paper is tested elsewhere. Only the layer's public API is used: outputs, gradients
w.r.t. the input and every parameter, the state through continuing the sequence from it, and ``commit``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.layer_cases import assert_same_outputs_and_gradients, rel_err, run_in_calls
from ttmem.layers.self_modifying import SelfModifyingMemory
from ttmem.memory import initial_state, memorize

TOL = 1e-10



def projection_memories(layer: SelfModifyingMemory, x: torch.Tensor) -> tuple[list[torch.Tensor], list]:
    """The generated k, v, η (and α) [B, T, ·] and the chunk-start projection weights after the last chunk."""
    batch, length, dim = x.shape
    chunk = layer.chunk_size
    weights = [w.expand(batch, -1, -1) for w in layer.projection_init]
    pending = [torch.zeros_like(w) for w in weights]
    generated = [[] for _ in weights]
    identity = torch.eye(dim, dtype=x.dtype)
    for t in range(length):
        outs = [torch.einsum("bod,bd->bo", w, x[:, t]) for w in weights]
        outs[2] = torch.sigmoid(outs[2] + layer.step_bias)
        if len(outs) == 4:
            outs[3] = torch.sigmoid(outs[3] + layer.forget_bias)
        for store, out in zip(generated, outs, strict=True):
            store.append(out)
        eta = outs[2].mean(-1)
        rate = (eta / (1 + eta) / chunk)[:, None, None]
        u = F.normalize(outs[0], dim=-1)
        w_t = F.normalize(outs[1], dim=-1)
        for i, m in enumerate(weights):
            target = torch.einsum("bod,bd->bo", m, w_t)
            error = torch.einsum("bod,bd->bo", m, u) - target
            new = m @ (identity - rate * u[:, :, None] * u[:, None, :]) - rate * error[:, :, None] * u[:, None, :]
            pending[i] = pending[i] + (new - m)
        if (t + 1) % chunk == 0:
            weights = [m + p for m, p in zip(weights, pending, strict=True)]
            pending = [torch.zeros_like(m) for m in weights]
    return [torch.stack(g, dim=1) for g in generated], weights


def reference(layer: SelfModifyingMemory, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    batch, length, dim = x.shape
    generated, weights = projection_memories(layer, x)
    k, v, step = generated[:3]
    forget = generated[3] if len(generated) == 4 else None
    shape = (batch, length, layer.heads, layer.dim_head)
    q = F.normalize((x @ layer.to_query.weight.T).view(shape), dim=-1)
    momentum = torch.sigmoid(layer.to_momentum(x)) if layer.to_momentum is not None else None
    start = initial_state(layer.rule, batch, layer.heads, layer.dim_head, layer.dim_head,
                          weights=tuple(layer.memory_init), dtype=x.dtype)
    out, _ = memorize(q, F.normalize(k.view(shape), dim=-1), v.view(shape), step, momentum=momentum, forget=forget,
                      rule=layer.rule, chunk_size=layer.chunk_size, state=start, impl="reference")
    out = out * torch.rsqrt(out.square().mean(-1, keepdim=True) + torch.finfo(out.dtype).eps)
    out = (out * layer.out_norm.weight).reshape(batch, length, dim)
    out = out * F.silu(x @ layer.to_out_gate.weight.T)
    return out @ layer.to_out.weight.T, weights


def make_layer(rule: str, chunk: int, seed: int) -> SelfModifyingMemory:
    torch.manual_seed(seed)
    layer = SelfModifyingMemory(8, heads=2, chunk_size=chunk, rule=rule).double()
    with torch.no_grad():
        layer.step_bias.fill_(1.0)  # large steps: the projection memories change visibly
    return layer



@pytest.mark.parametrize("rule", ["titans", "delta"])
@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("cuts", [(), (4,), (1, 2, 7)], ids=["whole", "two-calls", "four-calls"])
def test_layer_equals_token_loop(rule, chunk, cuts):
    """Outputs and input / parameter gradients of a 10-token sequence run whole or in calls that end mid-chunk,
    then 5 more tokens from the final state (which holds the open chunk's pending changes)."""
    layer = make_layer(rule, chunk, seed=chunk)
    x = torch.randn(2, 10, 8, dtype=torch.float64, requires_grad=True)
    after = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    got = run_in_calls(layer, x, cuts, after)
    expected, _ = reference(layer, torch.cat([x, after], dim=1))
    assert_same_outputs_and_gradients(got, expected, [x, after, *layer.parameters()], TOL)


@pytest.mark.parametrize("chunk", [1, 4])
def test_commit_makes_the_chunk_start_projections_the_parameters(chunk):
    """After 12 tokens (whole chunks) at batch 1, ``commit`` writes the reference's projection weights."""
    layer = make_layer("titans", chunk, seed=5)
    x = torch.randn(1, 12, 8, dtype=torch.float64)
    _, state = layer(x)
    _, weights = reference(layer, x)
    layer.commit(state)
    for parameter, expected in zip(layer.projection_init, weights, strict=True):
        assert rel_err(parameter.detach(), expected[0]) <= TOL


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        SelfModifyingMemory(10, heads=3)
    with pytest.raises(ValueError, match="chunk_size"):
        SelfModifyingMemory(8, heads=2, chunk_size=0)
    with pytest.raises(ValueError, match="x must be"):
        SelfModifyingMemory(8, heads=2)(torch.randn(1, 3, 5))


def test_long_input_stays_bounded():
    """Near-maximal steps over 2048 tokens: unit keys and values keep the projection memories contractive."""
    torch.manual_seed(3)
    layer = SelfModifyingMemory(16, heads=2, chunk_size=4)
    with torch.no_grad():
        layer.step_bias.fill_(3.0)
        y, state = layer(torch.randn(1, 2048, 16) * 3)
    assert torch.isfinite(y).all()
    start = torch.cat(tuple(layer.projection_init), dim=0)
    assert state.projections.weights[0].norm() < 10 * start.norm()
