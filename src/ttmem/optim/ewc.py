"""Elastic weight consolidation (Kirkpatrick et al., 2017) for continual learning on task sequences.

After a task, ``consolidate`` estimates the diagonal Fisher information ``F`` of the model's parameters
on that task's data and stores the current parameters as the anchor ``θ*``. While later tasks train,
``penalty(model)`` returns ``λ Σ_i F_i (θ_i − θ*_i)²`` (summed over consolidated tasks) to add to the loss.
Note the convention: no factor ½ (use ``lam / 2`` for the paper's form).

Fisher estimate (empirical Fisher, gradients of the training loss at the observed targets):

* ``mode="per_sample"`` (the textbook estimator): ``F = mean over samples of (∇ℓ(sample))²``. The batch is
  split along dim 0 and each sample is back-propagated on its own, so cost is one backward per sample.
* ``mode="per_batch"`` (cheap): ``F = mean over batches of (∇ mean-loss(batch))²``. Averaging inside the
  batch first cancels per-sample noise, so it is smaller than the per-sample estimate (by up to the batch
  size when gradients are noise-dominated); ``λ`` must be set for the estimator used.

Several tasks: with ``fisher_decay=None`` every task keeps its own ``(F, θ*)`` pair (original EWC, memory
grows with the number of tasks); with ``fisher_decay=γ`` there is one pair, ``F ← γ F + F_new`` and
``θ* ← θ`` (online EWC, Schwarz et al., 2018).

Parameters are matched by name (``model.named_parameters()``); parameters created after a consolidation
(new heads) carry no penalty. ``state_dict`` / ``load_state_dict`` store everything as tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ttmem.optim.base import non_negative, one_of, positive_int, unit_interval_closed

BatchLoss = Callable[[nn.Module, Any], Tensor]
FISHER_MODES = ("per_sample", "per_batch")


def _batch_size(batch: Any) -> int:
    tensors = [batch] if isinstance(batch, Tensor) else [t for t in batch if isinstance(t, Tensor)]
    if not tensors:
        raise TypeError("batch must be a tensor or a tuple/list containing tensors with a batch dim 0")
    return tensors[0].shape[0]


def _sample(batch: Any, index: int) -> Any:
    if isinstance(batch, Tensor):
        return batch[index : index + 1]
    return type(batch)(t[index : index + 1] if isinstance(t, Tensor) else t for t in batch)


def estimate_fisher(
    model: nn.Module, loader: Iterable[Any], loss_fn: BatchLoss, mode: str = "per_sample",
    max_batches: int | None = None,
) -> dict[str, Tensor]:
    """Diagonal empirical Fisher of ``model``'s trainable parameters.

    Args:
        model: the model at the parameters to consolidate.
        loader: iterable of batches; a batch is a tensor or tuple/list of tensors with batch dim 0.
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of the batch.
        mode: ``"per_sample"`` or ``"per_batch"`` (module docstring).
        max_batches: stop after this many batches (``None``: the whole loader).

    Returns:
        ``{name: F}`` with ``F`` shaped like the parameter.
    """
    one_of(*FISHER_MODES)("mode", mode)
    if max_batches is not None:
        positive_int("max_batches", max_batches)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    fisher = {name: torch.zeros_like(p) for name, p in named}
    count = 0

    def accumulate(loss: Tensor) -> None:
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        for (name, _), grad in zip(named, grads, strict=True):
            if grad is not None:
                fisher[name].add_(grad.detach().square())

    with torch.enable_grad():
        for batch_index, batch in enumerate(loader):
            if max_batches is not None and batch_index >= max_batches:
                break
            if mode == "per_batch":
                accumulate(loss_fn(model, batch))
                count += 1
            else:
                for index in range(_batch_size(batch)):
                    accumulate(loss_fn(model, _sample(batch, index)))
                    count += 1
    if count == 0:
        raise ValueError("loader must yield at least one batch (with at least one sample)")
    return {name: f / count for name, f in fisher.items()}


class EWC:
    """EWC penalty ``λ Σ F (θ − θ*)²`` over consolidated tasks.

    Args:
        lam: ``λ`` (>= 0).
        fisher_decay: ``None`` (one ``(F, θ*)`` per task) or ``γ ∈ [0, 1]`` (online EWC).
    """

    def __init__(self, lam: float, fisher_decay: float | None = None):
        non_negative("lam", lam)
        if fisher_decay is not None:
            unit_interval_closed("fisher_decay", fisher_decay)
        self.lam = float(lam)
        self.fisher_decay = fisher_decay
        self.tasks: list[dict[str, dict[str, Tensor]]] = []

    def consolidate(
        self, model: nn.Module, loader: Iterable[Any], loss_fn: BatchLoss, mode: str = "per_sample",
        max_batches: int | None = None,
    ) -> dict[str, Tensor]:
        """Estimate the Fisher on this task's data, anchor the current parameters; returns the new Fisher."""
        fisher = estimate_fisher(model, loader, loss_fn, mode, max_batches)
        anchor = {name: p.detach().clone() for name, p in model.named_parameters() if name in fisher}
        if self.fisher_decay is not None and self.tasks:
            previous = self.tasks[0]["fisher"]
            merged = {
                name: f + self.fisher_decay * previous[name] if name in previous else f
                for name, f in fisher.items()
            }
            self.tasks = [{"fisher": merged, "anchor": anchor}]
        else:
            self.tasks.append({"fisher": fisher, "anchor": anchor})
        return fisher

    def penalty(self, model: nn.Module) -> Tensor:
        """Scalar penalty, differentiable with respect to ``model``'s parameters (0 before any task)."""
        params = dict(model.named_parameters())
        total = None
        for task in self.tasks:
            for name, fisher in task["fisher"].items():
                if name not in params:
                    raise ValueError(f"model has no parameter named {name!r} that EWC consolidated")
                term = (fisher * (params[name] - task["anchor"][name]).square()).sum()
                total = term if total is None else total + term
        if total is None:
            reference = next(iter(params.values()), None)
            return torch.zeros((), device=None if reference is None else reference.device)
        return self.lam * total

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters and, per task, the Fisher and anchor tensors keyed by parameter name."""
        return {
            "lam": self.lam,
            "fisher_decay": self.fisher_decay,
            "tasks": [
                {"fisher": dict(task["fisher"]), "anchor": dict(task["anchor"])} for task in self.tasks
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()`` output (validated)."""
        for key in ("lam", "fisher_decay", "tasks"):
            if key not in state:
                raise ValueError(f"state is missing {key!r}")
        restored = EWC(state["lam"], state["fisher_decay"])
        for task in state["tasks"]:
            if set(task.get("fisher", {})) != set(task.get("anchor", {})):
                raise ValueError("each task needs fisher and anchor tensors for the same parameter names")
            restored.tasks.append(
                {"fisher": {k: v.clone() for k, v in task["fisher"].items()},
                 "anchor": {k: v.clone() for k, v in task["anchor"].items()}}
            )
        self.lam, self.fisher_decay, self.tasks = restored.lam, restored.fisher_decay, restored.tasks
