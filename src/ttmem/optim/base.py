"""Shared machinery for the optimisers in ``ttmem.optim``.

Every optimiser here is a plain ``torch.optim.Optimizer``: parameter groups, ``state_dict`` /
``load_state_dict`` and closures work as in ``torch.optim``. ``CheckedOptimizer`` adds one thing: every
parameter group (those given at construction and those added later with ``add_param_group``) is validated
against a table of hyper-parameter checks, so a bad value fails with a ``ValueError`` that names it.

Weight decay is decoupled everywhere (``θ ← θ · (1 − lr · weight_decay)`` before the update, as AdamW),
so it is the only thing that moves a parameter whose gradient is zero in a fresh optimiser.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

Check = Callable[[str, Any], None]


def non_negative(name: str, value: Any) -> None:
    """Finite real number >= 0."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def positive(name: str, value: Any) -> None:
    """Finite real number > 0."""
    non_negative(name, value)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def unit_interval_open(name: str, value: Any) -> None:
    """Real number in [0, 1)."""
    non_negative(name, value)
    if value >= 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def unit_interval_closed(name: str, value: Any) -> None:
    """Real number in [0, 1]."""
    non_negative(name, value)
    if value > 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def positive_int(name: str, value: Any) -> None:
    """Integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def non_negative_int(name: str, value: Any) -> None:
    """Integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def boolean(name: str, value: Any) -> None:
    """A bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def one_of(*choices: str) -> Check:
    """Check factory: a string among ``choices``."""

    def check(name: str, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")

    return check


def betas_in_unit_interval(count: int) -> Check:
    """Check factory: a tuple of ``count`` numbers, each in [0, 1)."""

    def check(name: str, value: Any) -> None:
        if not isinstance(value, (tuple, list)) or len(value) != count:
            raise ValueError(f"{name} must be a tuple of {count} numbers in [0, 1), got {value!r}")
        for index, beta in enumerate(value):
            unit_interval_open(f"{name}[{index}]", beta)

    return check


class CheckedOptimizer(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` whose parameter groups are validated by ``CHECKS`` (name -> check)."""

    CHECKS: dict[str, Check] = {}

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        for name, value in defaults.items():
            if name in self.CHECKS:
                self.CHECKS[name](name, value)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for name, check in self.CHECKS.items():
            check(name, group[name])
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])

    def _evaluate_closure(self, closure: Callable[[], Tensor] | None) -> Tensor | None:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()


def apply_decoupled_weight_decay(param: Tensor, lr: float, weight_decay: float) -> None:
    """``θ ← θ · (1 − lr · weight_decay)`` in place (no-op when ``weight_decay == 0``)."""
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)


def reject_sparse(param: Tensor, optimizer_name: str) -> Tensor:
    """Return ``param.grad``; sparse gradients are not supported by these dense rules."""
    grad = param.grad
    if grad.is_sparse:
        raise TypeError(f"{optimizer_name} does not support sparse gradients")
    return grad
