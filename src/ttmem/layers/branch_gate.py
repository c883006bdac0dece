"""A per-token gate on a residual branch from how much the branch's input changed (causal, streaming).

For a branch input h [B, T, D] (the normalised residual stream):

    e_t = mean_d (h_t − h_{t−1})²              (t ≥ 1 of the stream)
    n_t = e_t / (mean_{1≤s≤t} e_s + ε)           (running mean: only tokens already seen)
    g_t = clamp((1 − mix) + mix · tanh(n_t), 0, 1),   g_0 = 1 (the first token has nothing to compare with)

and the residual update becomes x + g ⊙ f(h). Tokens that change the stream more than usual keep the branch at
full strength, ordinary ones damp it by up to ``mix``. This is the nanochat transfer gate of the titans-pytorch
symplectic fork, made causal (the fork normalised by the mean over the whole sequence, so a token's gate
depended on later tokens) and applied at every sequence length (the fork skipped it for one-token calls, so
decoding ran a different model than training). The state (last input, running sum and count) continues a
stream exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class BranchGateState:
    last: Tensor      # the previous token's branch input [B, 1, D]
    total: Tensor     # Σ e_s over the tokens s ≥ 1 seen so far [B]
    count: int        # how many such tokens

    def detach(self) -> BranchGateState:
        return BranchGateState(self.last.detach(), self.total.detach(), self.count)


class BranchGate(nn.Module):
    """g [B, T, 1] from h [B, T, D] (module docstring); no parameters."""

    def __init__(self, mix: float, eps: float = 1e-6):
        super().__init__()
        if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0 <= mix <= 1 or math.isnan(mix):
            raise ValueError(f"branch gate mix must be in [0, 1], got {mix!r}")
        self.mix, self.eps = float(mix), eps

    def forward(self, h: Tensor, state: BranchGateState | None = None) -> tuple[Tensor, BranchGateState]:
        b, t, _ = h.shape
        if state is None:
            prev = torch.cat([h[:, :1], h[:, :-1]], dim=1)          # e_0 = 0 at the stream start
            total, count, first = h.new_zeros(b), 0, 1
        else:
            prev = torch.cat([state.last, h[:, :-1]], dim=1)
            total, count, first = state.total, state.count, 0
        change = (h - prev).pow(2).mean(-1)                           # [B, T]
        counts = count + torch.clamp(torch.arange(t, device=h.device) + 1 - first, min=0).to(h.dtype)
        running = (total.unsqueeze(1) + torch.cumsum(change, dim=1)) / counts.clamp(min=1)
        gate = ((1 - self.mix) + self.mix * torch.tanh(change / (running + self.eps))).clamp(0.0, 1.0)
        if first:
            gate = torch.cat([torch.ones_like(gate[:, :1]), gate[:, 1:]], dim=1)
        new = BranchGateState(h[:, -1:], total + change.sum(1), count + t - first)
        return gate.unsqueeze(-1), new
