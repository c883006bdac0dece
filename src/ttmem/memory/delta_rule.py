"""Exact per-token delta rule for a linear memory with the ℓ2 objective (DeltaNet, Gated DeltaNet, θMN).

Two orderings of forgetting and the delta step, with f_t = 1 − α_t the keep factor:

    Titans order       W_t = f_t W_{t−1} + θ_t (v_t − W_{t−1} k_t) k_tᵀ          (error on the undecayed memory)
    forget first       W_t = f_t W_{t−1} + θ_t (v_t − f_t W_{t−1} k_t) k_tᵀ      (Gated DeltaNet: decay, then delta)

Both are solved a block at a time in the WY / UT form: with Γ_t = Π_{j≤t} f_j within the block,

    W_t = Γ_t W_0 + Σ_{i≤t} (Γ_t / Γ_i) u_i k_iᵀ,
    u_t + θ_t Σ_{i<t} (Γ_e / Γ_i) (k_i · k_t) u_i = θ_t (v_t − Γ_e W_0 k_t),

with e the point whose memory the error reads: e = t − 1 in the Titans order (W_{t−1}), e = t when forgetting
comes first (the decayed memory f_t W_{t−1} = Γ_t W_0 + Σ_{i<t} (Γ_t / Γ_i) u_i k_iᵀ). This is a unit
lower-triangular system for the pseudo-values u (one ``solve_triangular`` per block). Reads and the block's end
state are then matmuls. Ratios of Γ are formed as products (``segment_products``), never divided, so a forget gate
of exactly 1 is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .coefficients import segment_products
from .state import MemoryState


def memorize_delta_rule(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, keep: Tensor, block: int,
                        state: MemoryState, forget_first: bool = False) -> tuple[Tensor, MemoryState]:
    """Engine layout: q, k [B, H, T, dk], v [B, H, T, dv], lr (θ), keep (1 − α) [B, H, T]; W in [B, H, dv, dk].
    ``forget_first``: the delta step's error is taken on the decayed memory (Gated DeltaNet), else on W_{t−1}."""
    b, h, t, dk = k.shape
    n = -(-t // block)
    total = n * block
    pad = total - t

    def chunks(x: Tensor, value: float = 0.0) -> Tensor:
        if pad:
            x = torch.cat([x, x.new_full((*x.shape[:2], pad, *x.shape[3:]), value)], dim=2)
        return x.reshape(b, h, n, block, *x.shape[3:])

    q_c, k_c, v_c = chunks(q), chunks(k), chunks(v)
    lr_c, keep_c = chunks(lr), chunks(keep, 1.0)
    decay = segment_products(keep_c)                         # [t, i] = Γ_t / Γ_i
    gamma = torch.cumprod(keep_c, dim=-1)                    # Γ_t
    if forget_first:  # the error sees the memory after this token's decay: Γ_t W_0, Γ_t / Γ_i
        gamma_err, decay_err = gamma, decay
    else:  # the error sees W_{t−1}: Γ_{t−1} W_0, Γ_{t−1} / Γ_i
        gamma_err = torch.cat([torch.ones_like(gamma[..., :1]), gamma[..., :-1]], dim=-1)
        decay_err = torch.cat([torch.zeros_like(decay[..., :1, :]), decay[..., :-1, :]], dim=-2)
    kk = k_c @ k_c.mT
    system = torch.eye(block, dtype=q.dtype, device=q.device) + lr_c.unsqueeze(-1) * (decay_err * kk).tril(-1)
    scores = decay * (q_c @ k_c.mT)                          # [t, i] = Γ_t / Γ_i (q_t · k_i), i ≤ t

    weights = state.weights[0]
    outputs = []
    for i in range(n):
        row = block - 1 if i < n - 1 else (t - 1) % block
        recalled = gamma_err[:, :, i].unsqueeze(-1) * (k_c[:, :, i] @ weights.mT)
        rhs = lr_c[:, :, i].unsqueeze(-1) * (v_c[:, :, i] - recalled)
        u = torch.linalg.solve_triangular(system[:, :, i], rhs, upper=False, unitriangular=True)
        outputs.append(gamma[:, :, i].unsqueeze(-1) * (q_c[:, :, i] @ weights.mT) + scores[:, :, i] @ u)
        weights = gamma[:, :, i, row, None, None] * weights + (decay[:, :, i, row].unsqueeze(-1) * u).mT @ k_c[:, :, i]
    out = torch.cat(outputs, dim=2)[:, :, :t]
    return out, MemoryState(weights=(weights,))
