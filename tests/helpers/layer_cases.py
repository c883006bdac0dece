"""Shared checks for layers with fast weights: a sequence run in calls, then continued from the final state,
against a reference run of the whole stream, in outputs and in gradients w.r.t. the inputs and every parameter."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-30))


def functional(outputs: torch.Tensor, seed: int = 7) -> torch.Tensor:
    """A random linear functional of the outputs (what the gradients are taken of)."""
    gen = torch.Generator().manual_seed(seed)
    return (outputs * torch.randn(outputs.shape, generator=gen, dtype=outputs.dtype)).sum()


def run_in_calls(layer: torch.nn.Module, x: torch.Tensor, cuts: tuple[int, ...], after: torch.Tensor) -> torch.Tensor:
    """x run in calls split at ``cuts``, then ``after`` from the final state; the outputs concatenated."""
    state, pieces = None, []
    for start, stop in zip((0, *cuts), (*cuts, x.shape[1])):
        y, state = layer(x[:, start:stop], state)
        pieces.append(y)
    y_after, _ = layer(after, state)
    return torch.cat([*pieces, y_after], dim=1)


def assert_same_outputs_and_gradients(got: torch.Tensor, expected: torch.Tensor, leaves: list, tol: float) -> None:
    assert rel_err(got, expected) <= tol
    g1 = torch.autograd.grad(functional(got), leaves, allow_unused=True)
    g2 = torch.autograd.grad(functional(expected), leaves, allow_unused=True)
    for a, b in zip(g1, g2, strict=True):
        assert (a is None) == (b is None)
        if b is not None:
            assert rel_err(a, b) <= tol
