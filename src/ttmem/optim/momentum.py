"""Momentum read as an associative memory of gradients (Nested Learning, Eqs. 17–22).

Sign convention (as ``torch.optim.SGD``): the momentum ``m`` points along the gradient and the parameter
moves by ``θ ← θ − lr · m``; the paper writes ``W ← W + m`` with ``m`` accumulating ``−η ∇``, which is the
same rule with ``m_paper = −lr · m``.

* ``MomentumGD`` — classical heavy-ball momentum (Eq. 17 with a constant keep rate):
  ``m ← β m + g``. The value-less memory: it stores one vector and maps every gradient to it.
* ``PreconditionedMomentum`` — Eq. 20, the memory with values ``P g``: ``m ← β m + P g``. ``P`` is the
  diagonal ``1 / (√v̂ + ε)`` with ``v`` an exponential average of ``g²`` (bias corrected): the cheapest
  "function of gradients carrying curvature information" the paper asks for, an empirical-Fisher diagonal.
  ``preconditioner="identity"`` reduces it to ``MomentumGD``. ``lr`` plays the paper's ``η``; with
  ``β = 0.9`` the steady-state step is about ``10 ×`` an Adam step of the same ``lr``.
* ``DeltaRuleMomentum`` — Eq. 22, the ℓ2-regression (delta-rule) memory
  ``m ← (βI − γ k kᵀ) m + P g`` with key ``k = g / ‖g‖``. We read ``∇`` as the flattened gradient vector
  of one parameter tensor, so ``∇ᵀ∇`` is a rank-one outer product and ``(βI − γ k kᵀ) m = β m − γ ⟨k, m⟩ k``
  costs O(n) and never forms an n×n matrix. The paper's literal ``(εI − ∇ᵀ∇)`` has eigenvalue
  ``ε − ‖∇‖²`` along the gradient and diverges as soon as ``‖∇‖² > 1 + ε``, so the key is normalised (as in
  DeltaNet and in delta gradient descent) and the rank-one strength ``γ = delta_strength ∈ [0, 1]`` is
  exposed; the update then has eigenvalues ``β`` (orthogonal to ``g``) and ``β − γ`` (along ``g``), both in
  (−1, 1). ``γ = 0`` gives back ``PreconditionedMomentum``. Effect: the memory overwrites, rather than
  piles up, what it stored along the current gradient direction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ttmem.optim.base import (
    CheckedOptimizer,
    apply_decoupled_weight_decay,
    non_negative,
    one_of,
    positive,
    reject_sparse,
    unit_interval_closed,
    unit_interval_open,
)

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


class MomentumGD(CheckedOptimizer):
    """Classical momentum: ``m ← β m + g``, ``θ ← θ − lr · m`` (decoupled ``weight_decay``)."""

    CHECKS = {"lr": non_negative, "momentum": unit_interval_open, "weight_decay": non_negative}

    def __init__(self, params: Params, lr: float = 1e-2, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = self._evaluate_closure(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = reject_sparse(param, "MomentumGD")
                state = self.state[param]
                if not state:
                    state["momentum"] = torch.zeros_like(param)
                buf = state["momentum"]
                buf.mul_(group["momentum"]).add_(grad)
                apply_decoupled_weight_decay(param, group["lr"], group["weight_decay"])
                param.add_(buf, alpha=-group["lr"])
        return loss


def _preconditioned_gradient(state: dict[str, Any], grad: Tensor, group: dict[str, Any]) -> Tensor:
    """``P g`` for the group's preconditioner; updates the second-moment state for ``"rms"``."""
    if group["preconditioner"] == "identity":
        return grad
    beta2 = group["beta2"]
    if "second_moment" not in state:
        state["second_moment"] = torch.zeros_like(grad)
    state["second_moment"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction = 1 - beta2 ** state["step"]
    denom = (state["second_moment"] / bias_correction).sqrt_().add_(group["eps"])
    return grad / denom


class PreconditionedMomentum(CheckedOptimizer):
    """Momentum with values ``P g`` (Eq. 20): ``m ← β m + P g``, ``θ ← θ − lr · m``.

    ``preconditioner``: ``"rms"`` (``P = diag(1 / (√v̂ + eps))``, ``v`` an EMA of ``g²`` with rate
    ``beta2``) or ``"identity"``.
    """

    CHECKS = {
        "lr": non_negative,
        "momentum": unit_interval_open,
        "beta2": unit_interval_open,
        "eps": positive,
        "weight_decay": non_negative,
        "preconditioner": one_of("rms", "identity"),
    }

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        momentum: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        preconditioner: str = "rms",
    ):
        defaults = dict(
            lr=lr, momentum=momentum, beta2=beta2, eps=eps, weight_decay=weight_decay,
            preconditioner=preconditioner,
        )
        super().__init__(params, defaults)

    def _init_state(self, state: dict[str, Any], param: Tensor) -> None:
        state["step"] = 0
        state["momentum"] = torch.zeros_like(param)

    def _update_momentum(self, state: dict[str, Any], grad: Tensor, group: dict[str, Any]) -> None:
        state["momentum"].mul_(group["momentum"]).add_(_preconditioned_gradient(state, grad, group))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = self._evaluate_closure(closure)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = reject_sparse(param, type(self).__name__)
                state = self.state[param]
                if not state:
                    self._init_state(state, param)
                state["step"] += 1
                self._update_momentum(state, grad, group)
                apply_decoupled_weight_decay(param, group["lr"], group["weight_decay"])
                param.add_(state["momentum"], alpha=-group["lr"])
        return loss


class DeltaRuleMomentum(PreconditionedMomentum):
    """Delta-rule momentum (Eq. 22): ``m ← β m − γ ⟨k, m⟩ k + P g`` with ``k = g / ‖g‖`` (flattened).

    ``delta_strength`` is ``γ ∈ [0, 1]``; ``preconditioner`` defaults to ``"identity"`` (``P = I``).
    """

    CHECKS = {**PreconditionedMomentum.CHECKS, "delta_strength": unit_interval_closed}

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        momentum: float = 0.9,
        delta_strength: float = 0.5,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        preconditioner: str = "identity",
    ):
        defaults = dict(
            lr=lr, momentum=momentum, delta_strength=delta_strength, beta2=beta2, eps=eps,
            weight_decay=weight_decay, preconditioner=preconditioner,
        )
        CheckedOptimizer.__init__(self, params, defaults)

    def _update_momentum(self, state: dict[str, Any], grad: Tensor, group: dict[str, Any]) -> None:
        buf = state["momentum"]
        grad_norm = torch.linalg.vector_norm(grad)
        # A zero gradient gives a zero key (no branch, so no host sync on accelerators).
        key = grad / torch.where(grad_norm > 0, grad_norm, torch.ones_like(grad_norm))
        overlap = torch.sum(key * buf)
        buf.mul_(group["momentum"]).sub_(key * (group["delta_strength"] * overlap))
        buf.add_(_preconditioned_gradient(state, grad, group))
