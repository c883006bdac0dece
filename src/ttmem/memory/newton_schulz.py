"""Newton–Schulz orthogonalisation, batched over leading dimensions.

Uses the quintic iteration of Muon (coefficients a, b, c = 3.4445, -4.7750, 2.0315, five steps). It does not
converge to the exact polar factor: it pushes every singular value of the normalised input into roughly
[0.68, 1.13] as fast as possible, which is what an optimiser or a memory update needs, and it is only matmuls.
"""

from __future__ import annotations

import torch
from torch import Tensor

QUINTIC_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(x: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """Approximately orthogonalise the last two dims of ``x`` ([..., m, n]).

    A zero matrix maps to zero (the norm is guarded by ``eps``), so empty momenta stay empty.
    """
    if x.dim() < 2:
        raise ValueError(f"newton_schulz: x must have at least 2 dims, got shape {tuple(x.shape)}")
    if steps < 0:
        raise ValueError(f"newton_schulz: steps must be >= 0, got {steps}")
    a, b, c = QUINTIC_COEFFS
    transposed = x.shape[-2] > x.shape[-1]
    y = x.mT if transposed else x
    y = y / (torch.linalg.matrix_norm(y, keepdim=True) + eps)
    for _ in range(steps):
        gram = y @ y.mT
        y = a * y + (b * gram + c * gram @ gram) @ y
    return y.mT if transposed else y
