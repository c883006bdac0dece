"""Nested deep momentum GD: DMGD whose memories are also meta-trained through an unrolled inner loop.

``NestedDeepMomentumGD`` is ``DeepMomentumGD`` (same state, same ``step``) plus
``meta_step(model, train_loss, val_loss, unroll_steps)``:

1. Copy the current parameters ``θ_0`` and momenta ``m_0``.
2. Unroll ``K = unroll_steps`` optimiser steps functionally, with the memories ``Φ`` as differentiable
   leaves: ``g_k = ∇ train_loss(θ_k)``, ``m_{k+1} = Φ(g_k, m_k)``, ``θ_{k+1} = θ_k(1 − lr·wd) − lr·m_{k+1}``.
   Inner ℓ2 learning is not applied inside the unroll, so the meta-gradient is taken with respect to the
   memories as they are now.
3. ``val_loss(θ_K)`` is the meta-loss; its gradient with respect to every memory tensor is one backward
   pass through the unroll. With ``second_order=False`` (default) each ``g_k`` is treated as a constant
   (first-order, as first-order MAML), so only ``Φ``'s own Jacobians are differentiated; with
   ``second_order=True`` the gradients are differentiated too (Hessian-vector products through the model).
4. The memories take one step of size ``meta_lr`` along the meta-gradient (its global norm clipped to
   ``meta_grad_clip``). Parameters and momenta are left untouched: the unroll is a look-ahead probe.

``train_loss`` and ``val_loss`` are callables ``loss(model) -> Tensor``; they are evaluated with the
model's parameters replaced by the unrolled ones (``torch.func.functional_call``), so any module works.
Every parameter of the optimiser must be a parameter of ``model``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ttmem.optim.base import non_negative, positive
from ttmem.optim.deep_momentum import DeepMomentumGD, memory_output

ModelLoss = Callable[[nn.Module], Tensor]
Entry = tuple[str, int, dict[str, Any], Tensor]  # (name in model, position in optimizer, group, parameter)


class _LossOfModel(nn.Module):
    """Wraps ``loss(model)`` so that ``functional_call`` can swap the model's parameters."""

    def __init__(self, model: nn.Module, loss: ModelLoss):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self) -> Tensor:
        return self.loss(self.model)


def _by_name(entries: list[Entry], tensors: list[Tensor]) -> dict[str, Tensor]:
    """``{"model.<name>": tensor}`` for ``functional_call`` on ``_LossOfModel``."""
    return {f"model.{name}": tensor for (name, *_), tensor in zip(entries, tensors, strict=True)}


class NestedDeepMomentumGD(DeepMomentumGD):
    """``DeepMomentumGD`` plus ``meta_step`` (module docstring). Extra argument: ``meta_lr`` (>= 0)."""

    CHECKS = {**DeepMomentumGD.CHECKS, "meta_lr": non_negative}

    def __init__(
        self, params: Iterable[Tensor] | Iterable[dict[str, Any]], meta_lr: float = 1e-2, **kwargs: Any
    ):
        super().__init__(params, meta_lr=meta_lr, **kwargs)

    def _named(self, model: nn.Module) -> list[Entry]:
        names = {id(param): name for name, param in model.named_parameters()}
        entries = []
        for index, group, param in self._indexed_params():
            if id(param) not in names:
                raise ValueError("model must own every parameter of the optimizer; one is not in it")
            entries.append((names[id(param)], index, group, param))
        return entries

    def unrolled_val_loss(
        self, model: nn.Module, train_loss: ModelLoss, val_loss: ModelLoss, unroll_steps: int,
        memories: list[dict[str, Tensor]] | None = None, second_order: bool = False,
    ) -> Tensor:
        """``val_loss`` after ``unroll_steps`` functional optimiser steps from the current state.

        ``memories`` (one dict per optimiser parameter, in order) overrides the stored memories; pass
        tensors that require grad to differentiate through the unroll.
        """
        if isinstance(unroll_steps, bool) or not isinstance(unroll_steps, int) or unroll_steps < 1:
            raise ValueError(f"unroll_steps must be an integer >= 1, got {unroll_steps!r}")
        entries = self._named(model)
        states = [self._ensure_state(index, group, param) for _, index, group, param in entries]
        if memories is None:
            memories = [self.memory_of(state) for state in states]
        if len(memories) != len(entries):
            raise ValueError(
                f"memories must have one dict per parameter ({len(entries)}), got {len(memories)}"
            )
        train_module, val_module = _LossOfModel(model, train_loss), _LossOfModel(model, val_loss)
        thetas = [param.detach().clone().requires_grad_(True) for *_, param in entries]
        momenta = [state["momentum"].detach() for state in states]
        for _ in range(unroll_steps):
            probes = thetas if second_order else [t.detach().requires_grad_(True) for t in thetas]
            loss = functional_call(train_module, _by_name(entries, probes), ())
            grads = torch.autograd.grad(loss, probes, create_graph=second_order, allow_unused=True)
            new_thetas, new_momenta = [], []
            for (_, _, group, param), state, memory, theta, momentum, grad in zip(
                entries, states, memories, thetas, momenta, grads, strict=True
            ):
                grad = torch.zeros_like(theta) if grad is None else grad
                width = state["width"]
                new_momentum = memory_output(
                    memory, grad.reshape(-1, width), momentum.reshape(-1, width), group["momentum"]
                ).reshape(param.shape)
                lr, weight_decay = group["lr"], group["weight_decay"]
                decayed = theta * (1 - lr * weight_decay) if weight_decay else theta
                new_thetas.append(decayed - lr * new_momentum)
                new_momenta.append(new_momentum)
            thetas, momenta = new_thetas, new_momenta
        return functional_call(val_module, _by_name(entries, thetas), ())

    def meta_gradients(
        self, model: nn.Module, train_loss: ModelLoss, val_loss: ModelLoss, unroll_steps: int = 3,
        second_order: bool = False,
    ) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """Meta-loss and its gradient with respect to every memory tensor (one dict per parameter)."""
        leaves = []
        for _, index, group, param in self._named(model):
            state = self._ensure_state(index, group, param)
            memory = self.memory_of(state)
            leaves.append({k: v.detach().clone().requires_grad_(True) for k, v in memory.items()})
        with torch.enable_grad():
            meta_loss = self.unrolled_val_loss(
                model, train_loss, val_loss, unroll_steps, leaves, second_order
            )
            flat = [tensor for memory in leaves for tensor in memory.values()]
            flat_grads = torch.autograd.grad(meta_loss, flat, allow_unused=True)
        grads, position = [], 0
        for memory in leaves:
            grads.append({})
            for name, tensor in memory.items():
                grad = flat_grads[position]
                grads[-1][name] = torch.zeros_like(tensor) if grad is None else grad
                position += 1
        return meta_loss.detach(), grads

    def meta_step(
        self, model: nn.Module, train_loss: ModelLoss, val_loss: ModelLoss, unroll_steps: int = 3,
        second_order: bool = False, meta_grad_clip: float = 1.0,
    ) -> Tensor:
        """One meta-training step of the memories through an ``unroll_steps`` look-ahead.

        Returns the meta-loss (validation loss after the unroll, before the memories change).
        """
        positive("meta_grad_clip", meta_grad_clip)
        meta_loss, grads = self.meta_gradients(model, train_loss, val_loss, unroll_steps, second_order)
        total_norm = torch.sqrt(sum(g.square().sum() for memory in grads for g in memory.values()))
        clip = torch.clamp(meta_grad_clip / (total_norm + 1e-12), max=1.0)
        with torch.no_grad():
            for (_, _, group, param), memory_grads in zip(self._named(model), grads, strict=True):
                state = self.state[param]
                for name, grad in memory_grads.items():
                    state[f"memory_{name}"].sub_(grad * clip, alpha=group["meta_lr"])
        return meta_loss
