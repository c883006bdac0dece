"""Retention: how old content fades, beyond the scalar forget gate α that every rule may use.

Linear retention (the forget gate α_t, an EWC-style anchor) lives inside the chunk's linear recurrence.
Nonlinear retention is a *view* W = R(A) of an accumulator A that the linear recurrence updates:

- ``none``:    W = A
- ``lq``:      W = A / ‖A‖_q^{q−2} per layer matrix (Moneta; ‖·‖_q is the entrywise q-norm, guarded by ε)
- ``softmax``: W = scale · softmax(A) per row (Memora: W_t = Softmax(α log W_{t−1} − η∇) is exactly this with
  A the logits, since softmax ignores the per-row log-normaliser)

The view is refreshed at chunk boundaries, as MIRAS and ATLAS do in their parallel form: at a chunk's start the
memory is W_ref = R(A_ref); inside the chunk both W and A take the same linear increments, so gradients are taken at
R(A_ref) and reads at W_t = β_t R(A_ref) + (increments). With chunk size 1 the view is refreshed every token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

VIEWS = ("none", "lq", "softmax")


@dataclass(frozen=True)
class Retention:
    view: str = "none"
    q: float = 4.0
    eps: float = 1e-6
    softmax_scale: float = 1.0
    anchor: float = 0.0  # EWC-style strength λ: adds λ (W_ref − W_anchor) to every token's gradient

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"retention view must be one of {VIEWS}, got {self.view!r}")
        if self.view == "lq" and self.q < 2:
            raise ValueError(f"retention q must be >= 2, got {self.q}")
        if self.anchor < 0:
            raise ValueError(f"retention anchor strength must be >= 0, got {self.anchor}")

    @property
    def has_view(self) -> bool:
        return self.view != "none"

    def apply_view(self, accum: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """W = R(A) for each layer matrix [..., out, in]."""
        if self.view == "none":
            return accum
        if self.view == "lq":
            out = []
            for a in accum:
                power = (a * a + self.eps).pow(0.5 * self.q).sum((-2, -1), keepdim=True)
                out.append(a * power.pow(-(self.q - 2.0) / self.q))
            return tuple(out)
        return tuple(self.softmax_scale * torch.softmax(a, dim=-1) for a in accum)
