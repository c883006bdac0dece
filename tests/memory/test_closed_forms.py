"""Known closed forms, independent of the engine's own code paths."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.memory_cases import make_inputs
from ttmem.memory import MemoryArchitecture, MemoryRule, Objective, get_rule, initial_state, memorize

IMPLS = ("chunked", "reference")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rule", ["delta", "gated_delta", "theta"])
def test_one_l2_step_on_linear_memory_is_delta_rule(rule, impl):
    b, h, d = 2, 3, 5
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(h, d, d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, 1, h, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, 1, h, d, generator=gen, dtype=torch.float64)
    q = torch.randn(b, 1, h, d, generator=gen, dtype=torch.float64)
    lr = torch.rand(b, 1, h, generator=gen, dtype=torch.float64)
    state = initial_state(rule, b, h, d, d, weights=(w0,), dtype=torch.float64)
    out, new = memorize(q, k, v, lr, rule=rule, state=state, impl=impl)
    kk, vv, th = k[:, 0], v[:, 0], lr[:, 0, :, None, None]
    expected = w0 + th * (vv - torch.einsum("hij,bhj->bhi", w0, kk)).unsqueeze(-1) * kk.unsqueeze(-2)
    torch.testing.assert_close(new.weights[0], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[:, 0], torch.einsum("bhij,bhj->bhi", expected, q[:, 0]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_linear_attention_is_causal_unnormalised_linear_attention(impl, chunk):
    inputs = make_inputs("linear_attention", batch=2, time=13, heads=2, dim=6)
    q, k, v, lr = inputs["q"], inputs["k"], inputs["v"], inputs["lr"]
    out, _ = memorize(q, k, v, lr, rule="linear_attention", chunk_size=chunk, impl=impl)
    scores = torch.einsum("bthd,bshd->bhts", q, k) * lr.permute(0, 2, 1).unsqueeze(-2)
    scores = scores * torch.ones(13, 13, dtype=torch.float64).tril()
    expected = torch.einsum("bhts,bshd->bthd", scores, v)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_forget_one_resets_hebbian_memory_each_token(impl, chunk):
    """Linear attention with α = 1 keeps only the current token: y_t = θ_t v_t (k_t · q_t)."""
    inputs = make_inputs("linear_attention", time=9, dim=6)
    inputs["forget"] = torch.ones_like(inputs["lr"])
    out, _ = memorize(**inputs, rule="linear_attention", chunk_size=chunk, impl=impl)
    expected = inputs["lr"].unsqueeze(-1) * inputs["v"] * (inputs["k"] * inputs["q"]).sum(-1, keepdim=True)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("forget_first", [False, True], ids=["titans-order", "forget-first"])
def test_forget_one_linear_l2_keeps_only_current_token(forget_first):
    """Linear ℓ2 memory with α = 1, a closed form per token. Titans order (error on the undecayed memory):
    W_t = θ_t (v_t − W_{t−1} k_t) k_tᵀ. Forget first (Gated DeltaNet, the memory is wiped before the delta step):
    W_t = θ_t v_t k_tᵀ."""
    rule = get_rule("gated_delta").replace(forget_first=forget_first)
    inputs = make_inputs(rule, time=6, dim=5)
    inputs["forget"] = torch.ones_like(inputs["lr"])
    out, state = memorize(**inputs, rule=rule, chunk_size=4)
    w = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    for t in range(6):
        k, v, q = inputs["k"][:, t], inputs["v"][:, t], inputs["q"][:, t]
        th = inputs["lr"][:, t, :, None, None]
        recalled = torch.zeros_like(v) if forget_first else torch.einsum("bhij,bhj->bhi", w, k)
        w = th * (v - recalled).unsqueeze(-1) * k.unsqueeze(-2)
        torch.testing.assert_close(out[:, t], torch.einsum("bhij,bhj->bhi", w, q), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.weights[0], w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("objective", ["l2", "lp", "huber", "dot"])
def test_objective_gradient_matches_autograd(objective):
    obj = Objective(objective)
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(50, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    thr = 0.5 + 2 * torch.rand(50, generator=gen, dtype=torch.float64)
    (auto,) = torch.autograd.grad(obj.loss(pred, target, thr).sum(), pred)
    torch.testing.assert_close(obj.grad(pred, target, thr), auto, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch", [
    MemoryArchitecture("linear"),
    MemoryArchitecture("mlp", depth=3, expansion=2.0, activation="silu"),
    MemoryArchitecture("mlp", depth=2, activation="gelu", residual_norm=True),
    MemoryArchitecture("mlp", depth=2, activation="gelu", residual=True),
    MemoryArchitecture("lowrank", rank=3),
], ids=["linear", "mlp3-silu", "mlp2-residual-norm", "mlp2-residual", "lowrank"])
def test_gradcheck_per_architecture(arch):
    """Second-order-safe gradients of the chunked engine, checked by finite differences."""
    rule = MemoryRule("probe", arch, Objective("l2"), momentum=True, forgetting=True)
    inputs = make_inputs(rule, time=5, heads=1, dim=3, requires_grad=True)
    names = sorted(inputs)

    def fn(*tensors):
        kwargs = dict(zip(names, tensors))
        out, state = memorize(**kwargs, rule=rule, chunk_size=2)
        return out.sum() + sum(w.sum() for w in state.weights)

    assert torch.autograd.gradcheck(fn, tuple(inputs[n] for n in names), eps=1e-6, atol=1e-6)


def test_plain_residual_memory_is_input_plus_mlp_and_excludes_the_norm_form():
    arch = MemoryArchitecture("mlp", depth=2, activation="gelu", residual=True)
    gen = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(12, 3, generator=gen), torch.randn(3, 12, generator=gen)
    x = torch.randn(5, 3, generator=gen)
    expected = x + torch.nn.functional.gelu(x @ w1.T) @ w2.T
    torch.testing.assert_close(arch.forward((w1, w2), x), expected)
    with pytest.raises(ValueError, match="exclusive"):
        MemoryArchitecture("mlp", depth=2, residual=True, residual_norm=True)
    with pytest.raises(ValueError, match="dim_k == dim_v"):
        arch.shapes(3, 4)


@pytest.mark.parametrize("differentiable", [True, False])
def test_layer_norm_backward_matches_autograd(differentiable):
    """Both forms of the parameter-free LayerNorm's backward against autograd through F.layer_norm."""
    from ttmem.memory.architectures import LN_EPS, layer_norm_backward

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(3, 2, 5, 7, generator=gen, dtype=torch.float64)
    (expected,) = torch.autograd.grad(torch.nn.functional.layer_norm(x, (7,), eps=LN_EPS), x, grad_out)
    with torch.set_grad_enabled(differentiable):
        got = layer_norm_backward(x, grad_out, differentiable)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    if differentiable:  # the closed form is twice differentiable: the outer loop trains through it
        assert torch.autograd.gradgradcheck(lambda a, g: layer_norm_backward(a, g), (x, grad_out.requires_grad_()))
