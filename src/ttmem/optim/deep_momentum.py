"""Deep momentum gradient descent (DMGD, Nested Learning Eq. 23): the momentum is a small network.

For each parameter the optimiser keeps a momentum ``m`` (parameter-shaped) and a memory ``Φ`` whose
weights are optimiser state. Every step, with gradient ``g``::

    m_t = Φ(g_t, m_{t−1})            the memory maps (gradient, previous momentum) to an update
    θ  ← θ − lr · m_t

The memory, on rows ``x = [g_r, m_r]`` of width ``d`` each (see "kinds" below)::

    Φ(g, m) = A_g g + A_m m + s · W_out tanh(W_in [g, (1 − β) m] / s),
    s = RMS of [g, (1 − β) m] over the whole tensor (0 when both are 0)

* **Identity initialisation.** ``A_g = I``, ``A_m = β I`` and ``W_out = 0``, so at initialisation
  ``Φ(g, m) = g + β m``: classical momentum, bit for bit, whatever ``hidden`` is. ``hidden = 0`` drops the
  nonlinear branch (a linear memory). ``W_in`` is random (seeded by ``memory_seed`` and the parameter's
  position, so runs are reproducible without touching the global RNG).
* **Scale equivariance.** Dividing the branch input by ``s`` and multiplying its output by ``s`` makes
  ``Φ(λ g, λ m) = λ Φ(g, m)``: the memory does not care about the loss scale, and ``tanh`` has no bias so
  ``Φ`` is odd (flipping the gradient flips the update).
* **Inner ℓ2 regression loss (online learning of Φ).** Keys are the previous step's inputs
  ``(g_{t−1}, m_{t−2})``, the value is the newly revealed gradient rescaled to momentum size,
  ``v_t = g_t / (1 − β)`` (the steady state of classical momentum under a constant gradient):
  ``ℓ_t = ½ mean((Φ(g_{t−1}, m_{t−2}) − v_t)²) / mean(v_t²)``. One gradient step of size ``inner_lr`` on
  ``ℓ_t`` per optimiser step teaches the memory to output where the gradient is heading, i.e. how much
  to trust the fresh gradient against its history. The normalisation by ``mean(v²)`` makes ``inner_lr``
  independent of the gradient scale. ``inner_lr = 0`` switches inner learning off (and stores no keys).
* **Kinds.** ``"factorized"`` (default): every coordinate is a row of width ``d = 1`` and one memory is
  shared by all coordinates of the tensor — the dense map restricted to ``I_n ⊗ φ`` with ``φ: R² → R``,
  so the memory has ``2 + 3·hidden`` numbers whatever the parameter's size. ``"dense"``: the rows of the
  parameter (``shape[0]`` rows of width ``numel / shape[0]``; a 1-D tensor is one row) share a memory that
  mixes coordinates within a row, ``O(d² + hidden·d)`` numbers; tensors wider than ``max_dense_width``
  fall back to ``"factorized"``.
* ``weight_decay`` is decoupled (AdamW style).
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
    non_negative_int,
    one_of,
    positive_int,
    reject_sparse,
    unit_interval_open,
)

MEMORY_KINDS = ("factorized", "dense")
MEMORY_KEYS = ("lin_grad", "lin_momentum", "w_in", "w_out")


def memory_width(shape: torch.Size, kind: str, max_dense_width: int) -> int:
    """Row width ``d`` the memory works on for a parameter of ``shape``."""
    if kind == "factorized" or len(shape) == 0:
        return 1
    width = int(torch.Size(shape).numel()) // shape[0] if len(shape) >= 2 else shape[0]
    return width if 0 < width <= max_dense_width else 1


def init_memory(
    width: int, hidden: int, momentum: float, like: Tensor, generator: torch.Generator
) -> dict[str, Tensor]:
    """Identity-initialised memory: ``A_g = I``, ``A_m = β I``, ``W_out = 0``, random ``W_in``.

    Returns tensors shaped ``lin_grad, lin_momentum: (d, d)``, ``w_in: (hidden, 2d)``, ``w_out: (d, hidden)``
    (the last two only when ``hidden > 0``), with ``like``'s dtype and device.
    """
    eye = torch.eye(width, dtype=like.dtype, device=like.device)
    memory = {"lin_grad": eye.clone(), "lin_momentum": eye * momentum}
    if hidden > 0:
        w_in = torch.randn(hidden, 2 * width, generator=generator, dtype=torch.float64) / (2 * width) ** 0.5
        memory["w_in"] = w_in.to(dtype=like.dtype, device=like.device)
        memory["w_out"] = torch.zeros(width, hidden, dtype=like.dtype, device=like.device)
    return memory


def memory_output(memory: dict[str, Tensor], grad_rows: Tensor, momentum_rows: Tensor, beta: float) -> Tensor:
    """``Φ(g, m)`` on rows.

    Args:
        memory: tensors from ``init_memory`` (may require grad).
        grad_rows, momentum_rows: ``(rows, d)``.
        beta: the group's momentum keep rate (scales the momentum feature of the branch).

    Returns:
        ``(rows, d)`` new momentum.
    """
    out = grad_rows @ memory["lin_grad"].mT + momentum_rows @ memory["lin_momentum"].mT
    if "w_in" in memory:
        features = torch.cat([grad_rows, (1 - beta) * momentum_rows], dim=-1)
        scale = features.square().mean().sqrt()
        safe_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        branch = torch.tanh((features / safe_scale) @ memory["w_in"].mT) @ memory["w_out"].mT
        out = out + scale * branch
    return out


def inner_regression_loss(
    memory: dict[str, Tensor], key_grad: Tensor, key_momentum: Tensor, next_grad: Tensor, beta: float
) -> Tensor:
    """``½ mean((Φ(key) − v)²) / mean(v²)`` with ``v = next_grad / (1 − β)``; all inputs ``(rows, d)``."""
    value = next_grad / (1 - beta)
    power = value.square().mean()
    residual = memory_output(memory, key_grad, key_momentum, beta) - value
    return 0.5 * residual.square().mean() / torch.where(power > 0, power, torch.ones_like(power))


class DeepMomentumGD(CheckedOptimizer):
    """Momentum as a learned memory ``Φ`` (module docstring has the rule).

    Args:
        params: parameters or parameter groups.
        lr: step size (>= 0).
        momentum: ``β``, keep rate the memory is initialised with, in [0, 1).
        hidden: width of the memory's nonlinear branch (0 = linear memory).
        inner_lr: step size of the online ℓ2 regression on the memory (0 = no inner learning).
        memory: ``"factorized"`` or ``"dense"``.
        max_dense_width: widest row a dense memory is built for.
        weight_decay: decoupled weight decay (>= 0).
        memory_seed: seed of the memories' random ``W_in``.
    """

    CHECKS = {
        "lr": non_negative,
        "momentum": unit_interval_open,
        "hidden": non_negative_int,
        "inner_lr": non_negative,
        "memory": one_of(*MEMORY_KINDS),
        "max_dense_width": positive_int,
        "weight_decay": non_negative,
        "memory_seed": non_negative_int,
    }

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        momentum: float = 0.9,
        hidden: int = 8,
        inner_lr: float = 1e-3,
        memory: str = "factorized",
        max_dense_width: int = 256,
        weight_decay: float = 0.0,
        memory_seed: int = 0,
        **extra_defaults: Any,
    ):
        defaults = dict(
            lr=lr, momentum=momentum, hidden=hidden, inner_lr=inner_lr, memory=memory,
            max_dense_width=max_dense_width, weight_decay=weight_decay, memory_seed=memory_seed,
            **extra_defaults,
        )
        super().__init__(params, defaults)

    # -- state -------------------------------------------------------------------------------------
    def _indexed_params(self) -> Iterable[tuple[int, dict[str, Any], Tensor]]:
        index = 0
        for group in self.param_groups:
            for param in group["params"]:
                yield index, group, param
                index += 1

    def _ensure_state(self, index: int, group: dict[str, Any], param: Tensor) -> dict[str, Any]:
        state = self.state[param]
        if not state:
            width = memory_width(param.shape, group["memory"], group["max_dense_width"])
            generator = torch.Generator().manual_seed(group["memory_seed"] * 1_000_003 + index)
            state["width"] = width
            state["momentum"] = torch.zeros_like(param)
            memory = init_memory(width, group["hidden"], group["momentum"], param, generator)
            for name, tensor in memory.items():
                state[f"memory_{name}"] = tensor
        return state

    @staticmethod
    def memory_of(state: dict[str, Any]) -> dict[str, Tensor]:
        """The memory tensors stored in one parameter's state, keyed as in ``MEMORY_KEYS``."""
        return {name: state[f"memory_{name}"] for name in MEMORY_KEYS if f"memory_{name}" in state}

    @staticmethod
    def _rows(tensor: Tensor, width: int) -> Tensor:
        return tensor.reshape(-1, width)

    # -- step --------------------------------------------------------------------------------------
    def _learn_memory(self, state: dict[str, Any], grad_rows: Tensor, group: dict[str, Any]) -> None:
        width = state["width"]
        if "key_grad" in state:
            with torch.enable_grad():
                leaves = {k: v.detach().requires_grad_(True) for k, v in self.memory_of(state).items()}
                loss = inner_regression_loss(
                    leaves, self._rows(state["key_grad"], width), self._rows(state["key_momentum"], width),
                    grad_rows, group["momentum"],
                )
                grads = torch.autograd.grad(loss, list(leaves.values()))
            for name, grad in zip(leaves, grads, strict=True):
                state[f"memory_{name}"].sub_(grad, alpha=group["inner_lr"])
            state["key_grad"].copy_(grad_rows.reshape(state["key_grad"].shape))
            state["key_momentum"].copy_(state["momentum"])
        else:
            state["key_grad"] = grad_rows.reshape(state["momentum"].shape).clone()
            state["key_momentum"] = state["momentum"].clone()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = self._evaluate_closure(closure)
        for index, group, param in self._indexed_params():
            if param.grad is None:
                continue
            grad = reject_sparse(param, type(self).__name__)
            state = self._ensure_state(index, group, param)
            width = state["width"]
            grad_rows = self._rows(grad, width)
            if group["inner_lr"] > 0:
                self._learn_memory(state, grad_rows, group)
            new_momentum = memory_output(
                self.memory_of(state), grad_rows, self._rows(state["momentum"], width), group["momentum"]
            )
            state["momentum"].copy_(new_momentum.reshape(param.shape))
            apply_decoupled_weight_decay(param, group["lr"], group["weight_decay"])
            param.add_(state["momentum"], alpha=-group["lr"])
        return loss
