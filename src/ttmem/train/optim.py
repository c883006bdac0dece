"""Optimizers by name, the warm-up + cosine learning-rate schedule, and the update that ends every
training step (gradient clipping, optimizer step, schedule step), shared by the trainer and by the small
training loops of evaluation (`ttmem.eval.mqar`).

Design: "adamw", "adam" and "sgd" come from torch; any other name is looked up in `ttmem.optim.OPTIMIZERS`
(the Nested Learning optimizers, by lower-case class name). A name `BASE-VARIANT` picks a variant of an
optimizer with a `variant` argument: `m3-paper` is `M3(variant="paper")`, `m3-precondition` its
precondition-first form; plain `m3` is the stable default.
Weight decay applies to matrices only (biases, norms and embeddings' 1-D gains are not decayed).
Optimizers that orthogonalise matrix updates (those taking an `orthogonalize` argument, e.g. M3) get
`ttmem.optim.m3_param_groups`: embedding tables and the output head in a group with
`orthogonalize=False` (the Muon convention: their rows are tokens, not a linear map; M3 gives them AdamW).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

from ttmem.optim import OPTIMIZERS, m3_param_groups

TORCH_OPTIMIZERS = ("adamw", "adam", "sgd")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def optimizer_names() -> list[str]:
    """Every name `build_optimizer` accepts (variants aside)."""
    return [*TORCH_OPTIMIZERS, *OPTIMIZERS]


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
    base, _, variant = key.partition("-")
    if key not in OPTIMIZERS and base not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{name}'; available: {', '.join(optimizer_names())}")
    cls = OPTIMIZERS[key] if key in OPTIMIZERS else OPTIMIZERS[base]
    kwargs: dict = {"lr": lr}
    if key not in OPTIMIZERS:
        variants = getattr(cls, "VARIANTS", ())
        if variant not in variants:
            raise ValueError(f"unknown optimizer '{name}': {base} has no variant '{variant}'; "
                             f"variants: {', '.join(variants) or 'none'}")
        kwargs["variant"] = variant
    if "orthogonalize" in inspect.signature(cls).parameters:
        groups = m3_param_groups(model, weight_decay)
    try:
        return cls(groups, **kwargs)
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


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip the gradients' global norm to `max_norm` (<= 0: no clipping); returns the norm before clipping."""
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else math.inf)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: a DTensor


def apply_update(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """The end of every training step: apply the optimizer, clear the gradients, advance the schedule."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
