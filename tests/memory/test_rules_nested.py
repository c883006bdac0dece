"""The rule options that the Nested Learning memories need, checked against closed forms: the ``dgd`` objective,
reads at the chunk-start weights, self-generated targets, an explicit MLP hidden width, and the last-row-only
coefficients that reads at the chunk start use."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.memory_cases import make_inputs
from ttmem.memory import MemoryArchitecture, Objective, get_rule, initial_state, memorize
from ttmem.memory.coefficients import chunk_coefficients, last_row_products


def test_dgd_gradient_is_the_gradient_of_its_loss():
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    objective = Objective("dgd")
    (expected,) = torch.autograd.grad(objective.loss(pred, target).sum(), pred)
    torch.testing.assert_close(objective.grad(pred, target), expected, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(expected, 2 * pred - target, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("impl", ["chunked", "reference", "step"])
def test_one_dgd_step_with_self_targets_is_the_delta_gradient_descent_matrix_form(impl):
    """One token: W' = W (I − θ k kᵀ) − θ (W k − W v) kᵀ; the read sees W (chunk start), not W'."""
    b, h, d = 2, 3, 5
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(h, d, d, generator=gen, dtype=torch.float64)
    q, k, v = (torch.randn(b, 1, h, d, generator=gen, dtype=torch.float64) for _ in range(3))
    lr = torch.rand(b, 1, h, generator=gen, dtype=torch.float64)
    state = initial_state("self_modifying", b, h, d, d, weights=(w0,), dtype=torch.float64)
    out, new = memorize(q, k, v, lr, rule="self_modifying", state=state, chunk_size=4, impl=impl)
    kk, vv, th = k[:, 0], v[:, 0], lr[:, 0, :, None, None]
    error = torch.einsum("hij,bhj->bhi", w0, kk - vv)
    expected = w0 @ (torch.eye(d, dtype=torch.float64) - th * kk.unsqueeze(-1) * kk.unsqueeze(-2))
    expected = expected - th * error.unsqueeze(-1) * kk.unsqueeze(-2)
    torch.testing.assert_close(new.weights[0], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[:, 0], torch.einsum("hij,bhj->bhi", w0, q[:, 0]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["chunked", "reference"])
def test_reads_at_chunk_start_see_no_write_of_their_own_chunk(impl):
    """Outputs of chunk s are M^(s)(q_t): a read of the state before the chunk, with nothing written."""
    rule = get_rule("continuum")
    inputs = make_inputs(rule, time=11, dim=6)
    out, _ = memorize(**inputs, rule=rule, chunk_size=4, impl=impl)
    state = None
    for start in (0, 4, 8):
        piece = {name: x[:, start:start + 4] for name, x in inputs.items()}
        frozen, _ = memorize(**{**piece, "lr": torch.zeros_like(piece["lr"])}, rule=rule, chunk_size=4, state=state)
        torch.testing.assert_close(out[:, start:start + 4], frozen, rtol=1e-12, atol=1e-12)
        _, state = memorize(**piece, rule=rule, chunk_size=4, state=state)


def test_last_row_coefficients_equal_the_matrices_last_row():
    gen = torch.Generator().manual_seed(2)
    keep = torch.rand(2, 3, 9, generator=gen, dtype=torch.float64)
    keep[..., 2], keep[..., 5] = 0.0, 1.0  # exact products through gates of 0 and 1
    lr, eta = (torch.rand(2, 3, 9, generator=gen, dtype=torch.float64) for _ in range(2))
    expected = torch.stack([torch.stack([keep[..., s + 1:].prod(-1) for s in range(9)], -1)], -2)
    assert torch.all(last_row_products(keep)[..., 0, :2] == 0)  # a product through a gate of 0 is exactly 0
    torch.testing.assert_close(last_row_products(keep), expected, rtol=1e-15, atol=0)
    for momentum in (None, eta):
        full = chunk_coefficients(lr, keep, momentum, None, None, with_anchor=True)
        last = chunk_coefficients(lr, keep, momentum, None, None, with_anchor=True, last_row_only=True)
        for name in ("beta", "read", "momentum_in", "anchor", "carry", "momentum", "momentum_anchor"):
            a, b = getattr(last, name), getattr(full, name)
            assert (a is None) == (b is None), name
            if b is not None:
                assert a.shape[:-2] == b.shape[:-2] and a.shape[-2 if b.dim() == 4 else -1] == 1, name
                torch.testing.assert_close(a, b[..., -1:, :] if b.dim() == 4 else b[..., -1:], rtol=1e-13,
                                           atol=1e-15)


def test_explicit_hidden_width():
    arch = MemoryArchitecture(kind="mlp", depth=2, hidden=24, activation="silu")
    assert arch.shapes(8, 8) == [(24, 8), (8, 24)]
    assert MemoryArchitecture(kind="mlp", depth=2, expansion=2.0).shapes(8, 8) == [(16, 8), (8, 16)]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="architecture hidden"):
            MemoryArchitecture(kind="mlp", depth=2, hidden=bad)


def test_self_targets_need_values_of_the_keys_width():
    q = k = torch.randn(1, 3, 2, 4)
    with pytest.raises(ValueError, match="keys' width 4"):
        memorize(q, k, torch.randn(1, 3, 2, 5), torch.rand(1, 3, 2), rule="self_modifying")


def test_self_targets_output_width_comes_from_the_state():
    """A non-square self-target memory (HOPE stacks projections of several widths): v has the keys' width, the
    outputs the state's."""
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(1, 7, 4, generator=gen, dtype=torch.float64)
    q, k, v = (torch.randn(2, 5, 1, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    lr = torch.rand(2, 5, 1, generator=gen, dtype=torch.float64) * 0.1
    outs = {}
    for impl in ("chunked", "reference"):
        state = initial_state("self_modifying", 2, 1, 4, 7, weights=(w0,), dtype=torch.float64)
        outs[impl] = memorize(q, k, v, lr, rule="self_modifying", chunk_size=2, state=state, impl=impl)
    assert outs["chunked"][0].shape == (2, 5, 1, 7)
    torch.testing.assert_close(outs["chunked"][0], outs["reference"][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs["chunked"][1].weights[0], outs["reference"][1].weights[0], rtol=1e-12, atol=1e-12)


def test_read_chunk_start_reads_what_the_chunk_reads_without_writing():
    """Mid-chunk (6 tokens done of a chunk of 4: offset 2), the next tokens' outputs are the chunk-start read."""
    from ttmem.memory import read_chunk_start

    rule = get_rule("continuum")
    inputs = make_inputs(rule, time=9, dim=6)
    first = {name: x[:, :6] for name, x in inputs.items()}
    rest = {name: x[:, 6:] for name, x in inputs.items()}
    _, state = memorize(**first, rule=rule, chunk_size=4)
    before = [w.clone() for w in state.weights]
    out, _ = memorize(**rest, rule=rule, chunk_size=4, state=state)
    read = read_chunk_start(rule, rest["q"][:, :2].transpose(1, 2), state).transpose(1, 2)
    torch.testing.assert_close(read, out[:, :2], rtol=1e-12, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(before, state.weights))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the state's precision under autocast
        mixed = read_chunk_start(rule, rest["q"][:, :2].transpose(1, 2), state)
    assert mixed.dtype == torch.float64
