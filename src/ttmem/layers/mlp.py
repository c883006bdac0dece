"""Position-wise feed-forward block used after every sequence mixer.

SwiGLU (gate and value projections, SiLU on the gate), the Transformer++ / Llama block the Titans
and Nested Learning papers compare against. ``hidden`` is rounded up to a multiple of 8.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ttmem.fused import declare_row_blocks


def mlp_hidden_size(dim: int, mlp_ratio: float) -> int:
    """Hidden width of a SwiGLU block: mlp_ratio * dim rounded up to a multiple of 8."""
    if mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
    hidden = int(round(mlp_ratio * dim))
    return -(-hidden // 8) * 8


class SwiGLU(nn.Module):
    """y = W_out (silu(W_gate x) * W_in x); x: [..., dim] -> [..., dim]."""

    def __init__(self, dim: int, mlp_ratio: float = 8 / 3) -> None:
        super().__init__()
        hidden = mlp_hidden_size(dim, mlp_ratio)
        self.to_gate_and_value = nn.Linear(dim, 2 * hidden, bias=False)
        declare_row_blocks(self.to_gate_and_value, [hidden] * 2)  # two matrices (ttmem.fused)
        self.to_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.to_gate_and_value(x).chunk(2, dim=-1)
        return self.to_out(F.silu(gate) * value)
