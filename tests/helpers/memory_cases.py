"""Shared inputs for the memory tests: random float64 problems for any rule."""

from __future__ import annotations

import torch

from ttmem.memory import MemoryRule, get_rule, initial_state


def make_inputs(rule: str | MemoryRule, batch: int = 1, time: int = 7, heads: int = 2, dim: int = 8,
                seed: int = 0, requires_grad: bool = False) -> dict:
    """q, k, v and every gate the rule uses, as keyword arguments of ``memorize``."""
    rule = get_rule(rule)
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, low=0.0, high=1.0):
        return (low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)).requires_grad_(
            requires_grad)

    k = torch.nn.functional.normalize(torch.randn(batch, time, heads, dim, generator=gen, dtype=torch.float64), dim=-1)
    inputs = {
        "q": torch.randn(batch, time, heads, dim, generator=gen, dtype=torch.float64).requires_grad_(requires_grad),
        "k": k.requires_grad_(requires_grad),
        "v": torch.randn(batch, time, heads, dim, generator=gen, dtype=torch.float64).requires_grad_(requires_grad),
        "lr": rand(batch, time, heads, high=0.1),
        "forget": rand(batch, time, heads, high=0.02),
    }
    if rule.momentum:
        inputs["momentum"] = rand(batch, time, heads)
    if rule.objective.uses_threshold:
        inputs["threshold"] = rand(batch, time, heads, low=0.3, high=1.5)
    return inputs


def learned_initial_weights(rule: str | MemoryRule, heads: int = 2, dim: int = 8, seed: int = 1) -> tuple:
    """Random initial weights [heads, out, in] per layer, as a layer would learn them."""
    rule = get_rule(rule)
    gen = torch.Generator().manual_seed(seed)
    shapes = rule.architecture.shapes(dim, dim)
    return tuple((0.5 * torch.randn(heads, o, i, generator=gen, dtype=torch.float64)).requires_grad_()
                 for o, i in shapes)


def start_state(rule, weights, batch: int = 1, heads: int = 2, dim: int = 8):
    return initial_state(rule, batch, heads, dim, dim, weights=weights, dtype=torch.float64)
