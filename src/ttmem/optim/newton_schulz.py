"""Newton–Schulz orthogonalisation of matrices, batched over leading dimensions.

``newton_schulz(x)`` maps each trailing matrix ``X = U Σ Vᵀ`` of ``x`` to roughly ``U Vᵀ`` using only
matmuls. Design choices:

* **Coefficients.** The quintic iteration ``X ← a X + (b A + c A²) X`` with ``A = X Xᵀ`` and
  ``(a, b, c) = (3.4445, −4.7750, 2.0315)`` (Muon's). Acting on one singular value it is the scalar map
  ``p(σ) = a σ + b σ³ + c σ⁵``. Its slope at zero is ``a ≈ 3.44``, so small singular values grow fast,
  but the iteration does not converge to 1: it oscillates inside a band. That is the trade an optimiser
  wants (an approximately orthogonal direction in a few matmuls), not an exact polar factor.
* **Steps.** ``steps = 5`` by default. Measured on the scalar map (see ``singular_value_map``): every
  singular value with ``σ / ‖X‖_F ≥ 3e-3`` ends in ``[0.68, 1.21]`` after 5 steps; with 8 steps the same
  holds down to ``σ / ‖X‖_F ≥ 1e-4``. Smaller singular values are amplified by at most ``a^steps`` and stay
  below the band; exact zeros (rank deficiency) stay zero.
* **Normalisation.** The input is first divided by its largest absolute entry and then by its Frobenius
  norm, so ``‖X‖_F = 1`` and every singular value starts in (0, 1] where the map is stable. The first
  division keeps tiny inputs (1e-30 in float32) from underflowing when squared. A zero matrix maps to a
  zero matrix; no epsilon is added, so no NaN appears and nonzero inputs are normalised exactly.
* **Shape.** Tall matrices are transposed so the Gram matrix is the smaller side. Half-precision inputs are
  computed in float32 and cast back; float32 and float64 stay as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ttmem.memory.newton_schulz import QUINTIC_COEFFS
from ttmem.memory.newton_schulz import newton_schulz as _iterate

DEFAULT_STEPS = 5
# Band reached by every singular value with sigma / ||X||_F >= 3e-3 after DEFAULT_STEPS (>= 1e-4 after 8).
SINGULAR_VALUE_BAND: tuple[float, float] = (0.68, 1.21)


def newton_schulz(x: Tensor, steps: int = DEFAULT_STEPS) -> Tensor:
    """Approximately orthogonalise each trailing matrix of ``x``.

    Args:
        x: tensor of shape ``(..., m, n)`` with at least 2 dims.
        steps: number of quintic iterations (>= 1).

    Returns:
        Tensor of the same shape and dtype as ``x``; each ``(m, n)`` slice has its nonzero singular values
        pushed into ``SINGULAR_VALUE_BAND`` (see module docstring for the exact condition).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dims (..., m, n), got shape {tuple(x.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        return x.clone()
    compute_dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    return _iterate(x.to(compute_dtype), steps, kind="quintic").to(x.dtype).contiguous()


def singular_value_map(sigma: Tensor, steps: int = DEFAULT_STEPS) -> Tensor:
    """The scalar map that ``newton_schulz`` applies to each normalised singular value.

    Args:
        sigma: singular values already divided by the matrix's Frobenius norm, any shape.
        steps: number of quintic iterations.

    Returns:
        ``p^steps(sigma)`` with ``p(σ) = a σ + b σ³ + c σ⁵``, same shape as ``sigma``.
    """
    a, b, c = QUINTIC_COEFFS
    out = sigma
    for _ in range(steps):
        out = a * out + b * out**3 + c * out**5
    return out
