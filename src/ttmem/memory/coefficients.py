"""Inside a chunk, momentum, forgetting, step sizes and the Omega window are linear, so they collapse into
lower-triangular C×C coefficient matrices (docs/design.md, "The fast paths").

With gates for chunk positions 1..C, a momentum S_in and weights W_in at the chunk start, and u_i the gradient
of token i at the chunk-start weights:

    W_t = β_t W_in + c_t S_in − Σ_i A[t, i] u_i        S_t = e_t S_in − Σ_i B[t, i] u_i

    F[t, s] = Π_{s<j≤t} (1 − α_j)      E[s, i] = Π_{i<j≤s} η_j      β_t = Π_{j≤t} (1 − α_j)     e_t = Π_{j≤t} η_j
    A = F · E · diag(θ) · Ω   c = F · e   B = E · diag(θ) · Ω

Ω is the (banded) Omega window matrix; its sources that do not exist yet (before the first token) are masked.
Every matrix is lower triangular. Products are taken with cumprod on masked matrices,
never as exp(Σ log), so gates of exactly 0 or 1 are exact.

Rules that read at the chunk-start weights (``MemoryRule.read_at_chunk_start``) need only the chunk's end state,
i.e. the last row of every matrix: ``last_row_only`` builds just that row (O(C) memory instead of O(C²) without
momentum), so a continuum-memory level with a period of thousands of tokens builds no C × C matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def segment_products(x: Tensor) -> Tensor:
    """P[..., t, s] = Π_{s<j≤t} x_j for s ≤ t, else 0. x: [..., C] -> [..., C, C]."""
    c = x.shape[-1]
    idx = torch.arange(c, device=x.device)
    later = idx[:, None] > idx[None, :]  # [j, s]: j > s
    factors = torch.where(later, x.unsqueeze(-1), torch.ones((), dtype=x.dtype, device=x.device))
    return torch.cumprod(factors, dim=-2).tril()


def last_row_products(x: Tensor) -> Tensor:
    """The last row of ``segment_products``: P[..., 0, s] = Π_{s<j≤C} x_j. x: [..., C] -> [..., 1, C]."""
    later = torch.cumprod(x.flip(-1), dim=-1).flip(-1)  # Π_{j≥s} x_j
    return torch.cat([later[..., 1:], torch.ones_like(x[..., :1])], dim=-1).unsqueeze(-2)


def window_matrix(chunk: int, past: int, window: int, decay: float, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    """Ω [chunk, past + chunk]: Ω[t, j] = decay^lag with lag = t + past − j in [0, window)."""
    t = torch.arange(chunk, device=device)[:, None] + past
    j = torch.arange(past + chunk, device=device)[None, :]
    lag = t - j
    inside = (lag >= 0) & (lag < window)
    return torch.where(inside, torch.tensor(decay, dtype=dtype, device=device) ** lag.clamp(min=0).to(dtype),
                       torch.zeros((), dtype=dtype, device=device))


@dataclass
class ChunkCoefficients:
    """Rows are chunk positions (C of them, or only the last one with ``last_row_only``)."""

    beta: Tensor            # [..., C]
    read: Tensor            # A [..., C, Cw]
    momentum_in: Tensor | None   # c [..., C]
    anchor: Tensor | None        # Σ_s M[t, s] θ_s [..., C] (coefficient of the per-token constant anchor gradient)
    carry: Tensor | None         # e [..., C]
    momentum: Tensor | None      # B [..., C, Cw]
    momentum_anchor: Tensor | None  # Σ_s E[t, s] θ_s [..., C]


def chunk_coefficients(lr: Tensor, keep: Tensor, eta: Tensor | None, source_mask: Tensor | None,
                       omega: Tensor | None, with_anchor: bool, last_row_only: bool = False) -> ChunkCoefficients:
    """Gates lr (θ), keep (1 − α), eta (η or None): [..., C]; source_mask (1 = a real source) [..., Cw] or None
    (all real); omega [C, Cw] or None (window 1, Cw = C). ``last_row_only``: every coefficient for the chunk's
    last position only (a row dimension of 1)."""
    beta = torch.cumprod(keep, dim=-1)
    if last_row_only:
        forget, beta = last_row_products(keep), beta[..., -1:]
    else:
        forget = segment_products(keep)
    if eta is None:
        mixing = forget
        momentum_in = carry = momentum = momentum_anchor = None
    else:
        decay = segment_products(eta)
        carry = torch.cumprod(eta, dim=-1)
        mixing = forget @ decay
        momentum_in = (forget @ carry.unsqueeze(-1)).squeeze(-1)
        if last_row_only:
            decay, carry = decay[..., -1:, :], carry[..., -1:]
        momentum_theta = decay * lr.unsqueeze(-2)
        momentum_anchor = momentum_theta.sum(-1) if with_anchor else None
        momentum = momentum_theta @ omega if omega is not None else momentum_theta
        if source_mask is not None:
            momentum = momentum * source_mask.unsqueeze(-2)
    mixing_theta = mixing * lr.unsqueeze(-2)
    anchor = mixing_theta.sum(-1) if with_anchor else None
    read = mixing_theta @ omega if omega is not None else mixing_theta
    if source_mask is not None:
        read = read * source_mask.unsqueeze(-2)
    return ChunkCoefficients(beta, read, momentum_in, anchor, carry, momentum, momentum_anchor)
