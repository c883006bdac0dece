"""Continuum memory system (Nested Learning / HOPE): MLP blocks whose weights keep learning in context.

One ``ContinuumLevel`` is a two-layer MLP ``y = W_out silu(W_in x)`` whose weights are fast weights: per
sequence, they start from learned parameters and every ``period`` tokens take one gradient step on the inner loss
accumulated over that span,

    l_t = eta_t / 2 * || W_out silu(W_in k_t) - v_t ||^2,   k_t = normalize(x_t W_k), v_t = x_t W_v,
    eta_t = sigmoid(w . x_t + b) / period                    (data-dependent step, span mean),

all gradients taken at the span-start weights. The outputs inside a span read the span-start weights, so a token
never sees an update that includes itself or later tokens. HOPE chains levels with growing periods (faster first,
e.g. 16 / 256 / 4096).

Design choices:
- The inner loop is the memory engine's ``continuum`` rule (``ttmem.memory.RULES``, equations in
  ``docs/rules.md``) with the period as its chunk size and q_t = x_t: the span's gradients come from the engine's
  closed-form backward, the outer loop differentiates through them with ordinary autograd, and only the span's
  end state is built (no period × period matrix).
- The state is the engine's ``MemoryState`` (one head): running a sequence whole, in pieces or token by token
  gives the same outputs and state; a call that ends inside a span keeps the span-start weights and the weights
  with the span's gradients so far.
- The step is divided by the period so one span step is as large as one token's step (stable over long contexts
  with unit-norm keys).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttmem.fused import declare_row_blocks
from ttmem.layers.mlp import mlp_hidden_size
from ttmem.memory import MemoryState, get_rule, initial_state, run_memory


class ContinuumLevel(nn.Module):
    """One continuum-memory MLP block updated every ``period`` tokens. x: [B, T, dim] -> [B, T, dim]."""

    def __init__(self, dim: int, period: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"period must be a positive integer, got {period!r}")
        hidden = mlp_hidden_size(dim, mlp_ratio)
        base = get_rule("continuum")
        self.rule = base.replace(architecture=replace(base.architecture, hidden=hidden))
        self.dim, self.period = dim, period
        self.w_in = nn.Parameter(torch.randn(hidden, dim) / math.sqrt(dim))
        self.w_out = nn.Parameter(torch.randn(dim, hidden) / math.sqrt(hidden))
        self.to_key_value = nn.Linear(dim, 2 * dim, bias=False)
        declare_row_blocks(self.to_key_value, [dim] * 2)  # key, value: two matrices (ttmem.fused)
        self.to_step = nn.Linear(dim, 1)
        nn.init.zeros_(self.to_step.weight)
        nn.init.constant_(self.to_step.bias, -2.0)  # start with small steps, sigmoid(-2) ~ 0.12

    def initial_state(self, batch: int) -> MemoryState:
        """Span-start state for a new sequence: the learned weights (one head), nothing accumulated."""
        return initial_state(self.rule, batch, 1, self.dim, self.dim,
                             weights=(self.w_in.unsqueeze(0), self.w_out.unsqueeze(0)))

    def forward(self, x: Tensor, state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
        """x: [B, T, dim] -> (y [B, T, dim], state after the last token)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, time, {self.dim}], got shape {tuple(x.shape)}")
        if state is None:
            state = self.initial_state(x.shape[0])
        key, value = self.to_key_value(x).chunk(2, dim=-1)
        key = F.normalize(key, dim=-1)
        steps = torch.sigmoid(self.to_step(x)).squeeze(-1) / self.period
        heads = (x.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1))  # engine layout, one head
        out, state = run_memory(self.rule, *heads, steps.unsqueeze(1), None, None, None, self.period, state)
        return out.squeeze(1), state

    @torch.no_grad()
    def commit(self, state: MemoryState) -> None:
        """Make the state's span-start fast weights (mean over the batch) the level's starting weights; gradients
        of a span still open are not committed."""
        w_in, w_out = state.ref if state.ref is not None else state.weights
        self.w_in.copy_(w_in[:, 0].mean(dim=0))
        self.w_out.copy_(w_out[:, 0].mean(dim=0))
