"""Inner objectives ("attentional bias"): the per-token loss ℓ(M(k), v) the memory minimises.

Each objective has the loss itself (used by the token-by-token reference through autograd) and its closed-form
gradient with respect to the prediction (used by the chunked engine). Tests hold the two equal.

- ``l2``:    ½‖p − v‖²  (one GD step on a linear memory is exactly the delta rule)
- ``lp``:    Σ_j (e_j² + ε)^{p/2}, e = p − v: ℓp with a smooth |·| (Moneta); gradient p e (e² + ε)^{p/2 − 1}
- ``huber``: ½‖e‖² if ‖e‖ ≤ δ else δ‖e‖₁ (Yaad, δ per token): gradient e, or δ sign(e)
- ``dot``:   −⟨p, v⟩ (Hebbian; a GD step on a linear memory is linear attention's v kᵀ)
- ``dgd``:   ½‖p − v‖² + ½‖p‖²: a GD step on a linear memory is Nested Learning's delta gradient descent,
  W (I − θ k kᵀ) − θ (W k − v) kᵀ: the ℓ2 step plus a decay of the memory along the key (gradient 2p − v)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

OBJECTIVES = ("l2", "lp", "huber", "dot", "dgd")


@dataclass(frozen=True)
class Objective:
    kind: str = "l2"
    p: float = 3.0
    eps: float = 1e-6
    threshold: float = 1.0  # Huber δ used when no per-token threshold is given

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.kind!r}")
        if self.kind == "lp" and self.p < 1:
            raise ValueError(f"objective p must be >= 1, got {self.p}")

    @property
    def uses_threshold(self) -> bool:
        return self.kind == "huber"

    def loss(self, pred: Tensor, target: Tensor, threshold: Tensor | None = None) -> Tensor:
        """Per-token loss [...] for pred/target [..., d]; threshold [...] (Huber only)."""
        if self.kind == "dot":
            return -(pred * target).sum(-1)
        e = pred - target
        if self.kind == "l2":
            return 0.5 * (e * e).sum(-1)
        if self.kind == "dgd":
            return 0.5 * (e * e).sum(-1) + 0.5 * (pred * pred).sum(-1)
        if self.kind == "lp":
            return ((e * e + self.eps) ** (0.5 * self.p)).sum(-1)
        delta = self._delta(threshold, e)
        small = e.norm(dim=-1) <= delta
        return torch.where(small, 0.5 * (e * e).sum(-1), delta * e.abs().sum(-1))

    def grad(self, pred: Tensor, target: Tensor, threshold: Tensor | None = None) -> Tensor:
        """dℓ/dpred [..., d], closed form and differentiable."""
        if self.kind == "dot":
            return -target.expand_as(pred) if target.shape != pred.shape else -target
        e = pred - target
        if self.kind == "l2":
            return e
        if self.kind == "dgd":
            return e + pred
        if self.kind == "lp":
            return self.p * e * (e * e + self.eps) ** (0.5 * self.p - 1.0)
        delta = self._delta(threshold, e)
        small = (e.norm(dim=-1) <= delta).unsqueeze(-1)
        return torch.where(small, e, delta.unsqueeze(-1) * torch.sign(e))

    def _delta(self, threshold: Tensor | None, e: Tensor) -> Tensor:
        if threshold is None:
            return torch.full(e.shape[:-1], self.threshold, dtype=e.dtype, device=e.device)
        return threshold
