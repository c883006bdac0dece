"""M3, multi-scale momentum Muon (Nested Learning, Algorithm 1).

Per parameter, with gradient ``g_t`` at step ``t`` (1-based) and chunk length ``f``:

    M1 ← β1 M1 + (1 − β1) g_t                   fast momentum, every step
    V  ← β2 V  + (1 − β2) g_t²                  second moment, every step
    O1 = orth(M1 / (1 − β1^t))                  fast direction
    θ  ← θ − lr · (O1 + α O2) / (√(V / (1 − β2^t)) + ε)
    every f steps (t ≡ 0 mod f), after the update:
        M2 ← β3 M2 + (1 − β3) · mean(g over the last f steps)
        O2 = orth(M2 / (1 − β3^k))              slow direction, k = number of slow updates so far

Choices, and why:

* **Momentum form.** Algorithm 1 writes plain sums ``M ← M + β g``; a sum never forgets, so the "fast"
  memory would not be fast. We use exponential averages with bias correction, as Adam does, so that
  ``β1``, ``β2``, ``β3`` are keep rates and the first steps are not damped. ``O2`` is computed from the
  gradients of chunk ``k`` and used for the ``f`` steps of chunk ``k + 1``, as in Algorithm 1 (it is zero
  during the first chunk).
* **orth for 2-D parameters.** ``orth(M) = NS(M) · ‖M‖_F / ‖NS(M)‖_F``: Newton–Schulz (``ns_steps``
  quintic iterations, coefficients and band documented in ``ttmem.optim.newton_schulz``) fixes the
  direction, and the rescaling keeps the magnitude of ``M``. The paper's ``NS(M) / √V`` divides an
  orthogonal matrix (entries ~ 1/√n, whatever the gradient scale) by a gradient-sized ``√V``, so the step
  size would depend on the loss scale; with the rescaling ``orth(M) / √V`` is dimensionless, as in Adam,
  and ``lr`` means what it means for Adam.
* **>2-D parameters** (convolutions) are flattened to ``(shape[0], prod(shape[1:]))`` for Newton–Schulz,
  the usual Muon convention (output channels × fan-in).
* **1-D parameters** (biases, norm gains) have no matrix structure to orthogonalise: ``orth`` is the
  identity and the rule becomes Adam with an extra slow momentum, ``(M1̂ + α M2̂) / (√V̂ + ε)``.
  A parameter group with ``orthogonalize=False`` uses the same fallback for its 2-D parameters; this is
  the standard Muon practice for embeddings and output heads, whose rows are tokens rather than a
  linear map.
* ``weight_decay`` is decoupled (AdamW). State per parameter: ``M1, V, M2, O2`` and the running gradient
  sum of the current chunk, all in the parameter's dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ttmem.optim.base import (
    CheckedOptimizer,
    apply_decoupled_weight_decay,
    betas_in_unit_interval,
    boolean,
    non_negative,
    positive,
    positive_int,
    reject_sparse,
)
from ttmem.optim.newton_schulz import newton_schulz


def orthogonalize_keep_norm(momentum: Tensor, steps: int) -> Tensor:
    """Newton–Schulz direction of ``momentum`` rescaled to ``momentum``'s Frobenius norm.

    Args:
        momentum: parameter-shaped tensor with at least 2 dims; >2-D is flattened to
            ``(shape[0], -1)``.
        steps: Newton–Schulz iterations.

    Returns:
        Tensor shaped like ``momentum``; zero stays zero.
    """
    matrix = momentum.reshape(momentum.shape[0], -1)
    direction = newton_schulz(matrix, steps=steps)
    direction_norm = torch.linalg.matrix_norm(direction)
    scale = torch.linalg.matrix_norm(matrix) / torch.where(
        direction_norm > 0, direction_norm, torch.ones_like(direction_norm)
    )
    return (direction * scale).reshape(momentum.shape)


class M3(CheckedOptimizer):
    """Multi-scale momentum Muon. See the module docstring for the exact rule.

    Args:
        params: parameters or parameter groups.
        lr: step size (>= 0).
        betas: ``(β1, β2, β3)`` keep rates of the fast momentum, second moment and slow momentum.
        alpha: weight of the slow direction (>= 0).
        frequency: ``f``, steps per slow-momentum update (>= 1).
        eps: added to ``√V̂`` (> 0).
        ns_steps: Newton–Schulz iterations (>= 1).
        weight_decay: decoupled weight decay (>= 0).
        orthogonalize: whether 2-D (and larger) parameters of the group are orthogonalised.
    """

    CHECKS = {
        "lr": non_negative,
        "betas": betas_in_unit_interval(3),
        "alpha": non_negative,
        "frequency": positive_int,
        "eps": positive,
        "ns_steps": positive_int,
        "weight_decay": non_negative,
        "orthogonalize": boolean,
    }

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9),
        alpha: float = 0.5,
        frequency: int = 10,
        eps: float = 1e-8,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        orthogonalize: bool = True,
    ):
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, alpha=alpha,
            frequency=frequency, eps=eps, ns_steps=ns_steps, weight_decay=weight_decay,
            orthogonalize=orthogonalize,
        )
        super().__init__(params, defaults)

    @staticmethod
    def _direction(momentum: Tensor, group: dict[str, Any]) -> Tensor:
        if momentum.dim() >= 2 and group["orthogonalize"]:
            return orthogonalize_keep_norm(momentum, group["ns_steps"])
        return momentum

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = self._evaluate_closure(closure)
        for group in self.param_groups:
            beta1, beta2, beta3 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = reject_sparse(param, "M3")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["slow_updates"] = 0
                    for name in ("fast_momentum", "second_moment", "slow_momentum", "slow_direction",
                                 "chunk_grad_sum"):
                        state[name] = torch.zeros_like(param)
                state["step"] += 1
                step = state["step"]
                state["fast_momentum"].lerp_(grad, 1 - beta1)
                state["second_moment"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                state["chunk_grad_sum"].add_(grad)

                fast = self._direction(state["fast_momentum"] / (1 - beta1**step), group)
                update = fast.add_(state["slow_direction"], alpha=group["alpha"])
                denom = (state["second_moment"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
                apply_decoupled_weight_decay(param, group["lr"], group["weight_decay"])
                param.addcdiv_(update, denom, value=-group["lr"])

                if step % group["frequency"] == 0:
                    chunk_mean = state["chunk_grad_sum"] / group["frequency"]
                    state["slow_momentum"].lerp_(chunk_mean, 1 - beta3)
                    state["slow_updates"] += 1
                    slow = state["slow_momentum"] / (1 - beta3 ** state["slow_updates"])
                    state["slow_direction"].copy_(self._direction(slow, group))
                    state["chunk_grad_sum"].zero_()
        return loss
