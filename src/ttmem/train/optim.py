"""Optimizers by name and the warm-up + cosine learning-rate schedule.

Design: "adamw", "adam" and "sgd" come from torch; any other name is looked up lazily in
`ttmem.optim` (the Nested Learning optimizers), so this module works before that package exists.
Weight decay applies to matrices only (biases, norms and embeddings' 1-D gains are not decayed).
Optimizers that orthogonalise matrix updates (those taking an `orthogonalize` argument, e.g. M3) get
embedding tables and the output head in a group with `orthogonalize=False` (the Muon convention):
their rows are tokens, not a linear map, and orthogonalising spreads the update into the rows of
tokens absent from the batch, whose second moment is zero, so those rows would be divided by eps.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

TORCH_OPTIMIZERS = ("adamw", "adam", "sgd")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


HEAD_NAMES = ("lm_head", "head", "output")


def token_matrices(model: nn.Module) -> list[nn.Parameter]:
    """Parameters whose rows are tokens: `nn.Embedding` tables and the weight of an output head
    (a module whose name ends in one of `HEAD_NAMES`); tied weights are listed once."""
    found: dict[int, nn.Parameter] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or name.rsplit(".", 1)[-1] in HEAD_NAMES:
            weight = getattr(module, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.requires_grad and weight.ndim >= 2:
                found[id(weight)] = weight
    return list(found.values())


def orthogonalizing_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """`param_groups`, with token matrices split into their own group with `orthogonalize=False`."""
    tokens = {id(p) for p in token_matrices(model)}
    groups = []
    for group in param_groups(model, weight_decay):
        kept = [p for p in group["params"] if id(p) not in tokens]
        moved = [p for p in group["params"] if id(p) in tokens]
        if kept:
            groups.append({**group, "params": kept})
        if moved:
            groups.append({**group, "params": moved, "orthogonalize": False})
    return groups


def _optim_registry() -> dict[str, Callable]:
    try:
        module = importlib.import_module("ttmem.optim")
    except ImportError:
        return {}
    registry = getattr(module, "OPTIMIZERS", None)
    if isinstance(registry, dict):
        return {str(k).lower(): v for k, v in registry.items()}
    return {
        name.lower(): obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)
    }


def build_optimizer(
    name: str, model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    """Optimizer `name` over `model`'s trainable parameters."""
    key = name.lower()
    groups = param_groups(model, weight_decay)
    if key == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if key == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=betas[0])
    registry = _optim_registry()
    if key not in registry:
        raise ValueError(f"unknown optimizer '{name}'; available: {', '.join([*TORCH_OPTIMIZERS, *registry])}")
    if "orthogonalize" in inspect.signature(registry[key]).parameters:
        groups = orthogonalizing_groups(model, weight_decay)
    try:
        return registry[key](groups, lr=lr)
    except TypeError as err:
        raise ValueError(f"optimizer '{name}' could not be built with lr={lr}: {err}") from err


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier for step s (0-based): linear warm-up to 1 over `warmup_steps`, then cosine to
    `min_ratio` at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
