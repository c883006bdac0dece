"""Newton–Schulz orthogonalisation of matrices, batched over leading dimensions: two iterations by name.

``newton_schulz(x, steps, kind=...)`` maps each trailing matrix ``X = U Σ Vᵀ`` of ``x`` towards its polar
factor ``U Vᵀ`` using only matmuls. Acting on one singular value each step is a scalar polynomial ``p``
(``singular_value_map``), so the output is exactly ``U p^steps(Σ / ‖X‖_F) Vᵀ``. It sits below every
package because two of them use it:

* ``kind="cubic"`` (classical): ``X ← 1.5 X − 0.5 X Xᵀ X``, ``p(σ) = 1.5 σ − 0.5 σ³``. Converges to the exact
  polar factor for singular values in (0, √3), from below and never past 1; its slope at zero is 1.5, so
  rounding noise in near-null directions grows at most 1.5× a step. The memory engine uses it
  (``MemoryRule.newton_schulz_steps``): its momentum is orthogonalised at every chunk boundary, and a steep
  iteration would amplify that noise across boundaries (the recurrence becomes chaotic at small chunks).
  It is slow for small singular values: after 5 steps every σ / ‖X‖_F ≥ 0.3 lies in [0.995, 1], but
  σ / ‖X‖_F = 0.1 only reaches 0.66 and 0.03 reaches 0.22.
* ``kind="quintic"`` (Muon's ``(a, b, c) = (3.4445, −4.7750, 2.0315)``): ``X ← a X + (b A + c A²) X`` with
  ``A = X Xᵀ``, ``p(σ) = a σ + b σ³ + c σ⁵``. Slope ``a ≈ 3.44`` at zero, so small singular values grow fast,
  but it does not converge to 1: it oscillates inside a band. Measured on the scalar map (a grid of 2·10⁶
  points, ``tests/test_newton_schulz.py``): after 5 steps every σ / ‖X‖_F ≥ 3e-3 lies in [0.682, 1.203]
  (``SINGULAR_VALUE_BAND`` rounds it outwards to [0.68, 1.21]); the upper end comes from σ / ‖X‖_F ≈ 4e-3, and
  for σ / ‖X‖_F ≥ 1e-2 the band is [0.682, 1.135]. With 8 steps the same [0.682, 1.203] holds down to
  σ / ‖X‖_F ≥ 1e-4. Right for an optimiser step (``ttmem.optim.M3``), which is applied once and not fed
  back. It is the default.

Shared choices: the input is first divided by its largest absolute entry and then by its Frobenius norm, so
‖X‖_F = 1 and every singular value starts in (0, 1] (the first division keeps tiny inputs, 1e-30 in float32,
from underflowing when squared). A zero matrix maps to zero with no epsilon, so an empty momentum stays empty
and nonzero inputs are normalised exactly; exact zeros (rank deficiency) stay zero. Tall matrices are
transposed so the Gram matrix is the smaller side. Half-precision inputs are computed in float32 and cast
back; float32 and float64 stay as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor

KINDS = ("cubic", "quintic")
QUINTIC_COEFFS = (3.4445, -4.7750, 2.0315)
DEFAULT_STEPS = 5
# Band reached by every singular value with sigma / ||X||_F >= 3e-3 after 5 quintic steps (>= 1e-4 after 8).
SINGULAR_VALUE_BAND: tuple[float, float] = (0.68, 1.21)


def _check(steps: int, kind: str) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _safe_divide(x: Tensor, scale: Tensor) -> Tensor:
    return x / torch.where(scale > 0, scale, torch.ones_like(scale))


def newton_schulz(x: Tensor, steps: int = DEFAULT_STEPS, kind: str = "quintic") -> Tensor:
    """Approximately orthogonalise each trailing matrix of ``x`` ([..., m, n], at least 2 dims) with
    ``steps`` (>= 1) iterations of ``kind`` ("cubic" or "quintic", see the module docstring); returns a
    tensor of the same shape and dtype."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dims (..., m, n), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    _check(steps, kind)
    if x.numel() == 0:
        return x.clone()
    y = x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x
    transposed = y.shape[-2] > y.shape[-1]
    y = y.mT if transposed else y
    y = _safe_divide(y, y.detach().abs().amax(dim=(-2, -1), keepdim=True))
    y = _safe_divide(y, torch.linalg.matrix_norm(y, keepdim=True))
    for _ in range(steps):
        gram = y @ y.mT
        if kind == "cubic":
            y = 1.5 * y - 0.5 * gram @ y
        else:
            a, b, c = QUINTIC_COEFFS
            y = a * y + (b * gram + c * gram @ gram) @ y
    return (y.mT if transposed else y).to(x.dtype).contiguous()


def singular_value_map(sigma: Tensor, steps: int = DEFAULT_STEPS, kind: str = "quintic") -> Tensor:
    """``p^steps(sigma)``: what ``newton_schulz`` does to each singular value already divided by the
    matrix's Frobenius norm (any shape)."""
    _check(steps, kind)
    out = sigma
    for _ in range(steps):
        if kind == "cubic":
            out = 1.5 * out - 0.5 * out**3
        else:
            a, b, c = QUINTIC_COEFFS
            out = a * out + b * out**3 + c * out**5
    return out
