"""Newton–Schulz orthogonalisation, batched over leading dimensions.

Two iterations, both only matmuls, on the input scaled to unit Frobenius norm:

- ``cubic`` (classical): X ← 1.5 X − 0.5 X Xᵀ X. Converges to the exact polar factor for singular values in
  (0, √3); its slope at zero is 1.5, so rounding noise in near-null directions grows at most 1.5× a step. The
  memory engine uses it: its momentum is orthogonalised at every chunk boundary, and a steep iteration would
  amplify that noise across boundaries (the recurrence becomes chaotic at small chunks).
- ``quintic`` (Muon: a, b, c = 3.4445, −4.7750, 2.0315): pushes singular values into roughly [0.68, 1.13] in five
  steps, much faster for small singular values but with slope 3.4 at zero. Right for an optimiser step, which is
  applied once and not fed back.
"""

from __future__ import annotations

import torch
from torch import Tensor

QUINTIC_COEFFS = (3.4445, -4.7750, 2.0315)
KINDS = ("cubic", "quintic")


def newton_schulz(x: Tensor, steps: int = 5, kind: str = "cubic", eps: float = 1e-7) -> Tensor:
    """Approximately orthogonalise the last two dims of ``x`` ([..., m, n]).

    A zero matrix maps to zero (the norm is guarded by ``eps``), so an empty momentum stays empty.
    """
    if x.dim() < 2:
        raise ValueError(f"newton_schulz: x must have at least 2 dims, got shape {tuple(x.shape)}")
    if steps < 0:
        raise ValueError(f"newton_schulz: steps must be >= 0, got {steps}")
    if kind not in KINDS:
        raise ValueError(f"newton_schulz: kind must be one of {KINDS}, got {kind!r}")
    transposed = x.shape[-2] > x.shape[-1]
    y = x.mT if transposed else x
    y = y / (torch.linalg.matrix_norm(y, keepdim=True) + eps)
    for _ in range(steps):
        gram = y @ y.mT
        if kind == "cubic":
            y = 1.5 * y - 0.5 * gram @ y
        else:
            a, b, c = QUINTIC_COEFFS
            y = a * y + (b * gram + c * gram @ gram) @ y
    return y.mT if transposed else y
