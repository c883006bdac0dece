"""Continuum memory system (Nested Learning / HOPE): MLP blocks whose weights keep learning in context.

One ``ContinuumLevel`` is a two-layer MLP ``y = W_out silu(W_in x)`` whose weights are fast
weights: per sequence, they start from learned parameters and every ``period`` tokens take one
gradient step on the inner loss accumulated over that span,

    l_t = eta_t / 2 * || W_out silu(W_in k_t) - v_t ||^2,   k_t = normalize(x_t W_k), v_t = x_t W_v,
    eta_t = sigmoid(w . x_t + b) / period                    (data-dependent step, span mean),

all gradients taken at the span-start weights. The outputs inside a span read the span-start
weights, so a token never sees an update that includes itself or later tokens. HOPE chains levels
with growing periods (faster first, e.g. 16 / 256 / 4096).

Design choices:
- The per-span gradient is closed form (two batched matmuls per weight), not ``autograd.grad``,
  so the outer loop differentiates through the inner steps with ordinary autograd.
- Gradients at fixed weights add over tokens, so running a sequence whole, in pieces or token by
  token gives the same outputs and state: the state carries the weights, the gradient accumulated
  so far in the open span, and the span offset.
- The step is divided by the period so one span step is as large as one token's step (stable
  over long contexts with unit-norm keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttmem.layers.mlp import mlp_hidden_size


@dataclass
class ContinuumState:
    """Fast weights (per batch element) and the open span's accumulated gradient.

    w_in: [B, hidden, dim]; w_out: [B, dim, hidden]; grad_in / grad_out: same shapes or None when the
    open span is empty; offset: tokens already seen in the open span (0 <= offset < period).
    """

    w_in: Tensor
    w_out: Tensor
    grad_in: Tensor | None
    grad_out: Tensor | None
    offset: int

    def detach(self) -> ContinuumState:
        """The same state cut from the autograd graph."""

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach()

        return ContinuumState(self.w_in.detach(), self.w_out.detach(), cut(self.grad_in), cut(self.grad_out),
                              self.offset)


def silu_derivative(h: Tensor) -> Tensor:
    """d silu(h) / dh."""
    s = torch.sigmoid(h)
    return s * (1 + h * (1 - s))


def mlp_read(x: Tensor, w_in: Tensor, w_out: Tensor) -> Tensor:
    """w_out silu(w_in x) with per-batch weights. x: [B, T, dim] -> [B, T, dim]."""
    return torch.einsum("bth,bdh->btd", F.silu(torch.einsum("btd,bhd->bth", x, w_in)), w_out)


def mlp_regression_gradients(
    w_in: Tensor, w_out: Tensor, keys: Tensor, values: Tensor, steps: Tensor
) -> tuple[Tensor, Tensor]:
    """Gradients of sum_t steps_t / 2 * ||w_out silu(w_in k_t) - v_t||^2 w.r.t. w_in and w_out.

    w_in: [B, hidden, dim]; w_out: [B, dim, hidden]; keys, values: [B, T, dim]; steps: [B, T].
    """
    pre = torch.einsum("btd,bhd->bth", keys, w_in)
    hidden = F.silu(pre)
    error = (torch.einsum("bth,bdh->btd", hidden, w_out) - values) * steps[..., None]
    grad_out = torch.einsum("btd,bth->bdh", error, hidden)
    grad_pre = torch.einsum("btd,bdh->bth", error, w_out) * silu_derivative(pre)
    grad_in = torch.einsum("bth,btd->bhd", grad_pre, keys)
    return grad_in, grad_out


class ContinuumLevel(nn.Module):
    """One continuum-memory MLP block updated every ``period`` tokens. x: [B, T, dim] -> [B, T, dim]."""

    def __init__(self, dim: int, period: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if not isinstance(period, int) or period < 1:
            raise ValueError(f"period must be a positive integer, got {period!r}")
        hidden = mlp_hidden_size(dim, mlp_ratio)
        self.period = period
        self.w_in = nn.Parameter(torch.randn(hidden, dim) / math.sqrt(dim))
        self.w_out = nn.Parameter(torch.randn(dim, hidden) / math.sqrt(hidden))
        self.to_key_value = nn.Linear(dim, 2 * dim, bias=False)
        self.to_step = nn.Linear(dim, 1)
        nn.init.zeros_(self.to_step.weight)
        nn.init.constant_(self.to_step.bias, -2.0)  # start with small steps, sigmoid(-2) ~ 0.12

    def initial_state(self, batch: int) -> ContinuumState:
        """Span-start state for a new sequence: the learned weights, no accumulated gradient."""
        return ContinuumState(
            self.w_in.expand(batch, -1, -1), self.w_out.expand(batch, -1, -1), None, None, 0
        )

    def forward(self, x: Tensor, state: ContinuumState | None = None) -> tuple[Tensor, ContinuumState]:
        """x: [B, T, dim] -> (y [B, T, dim], state after the last token)."""
        if x.dim() != 3:
            raise ValueError(f"x must be [batch, time, dim], got shape {tuple(x.shape)}")
        if state is None:
            state = self.initial_state(x.shape[0])
        key, value = self.to_key_value(x).chunk(2, dim=-1)
        key = F.normalize(key, dim=-1)
        steps = torch.sigmoid(self.to_step(x)).squeeze(-1) / self.period
        w_in, w_out, offset = state.w_in, state.w_out, state.offset
        grad_in, grad_out = state.grad_in, state.grad_out
        outputs, begin = [], 0
        while begin < x.shape[1]:
            end = min(x.shape[1], begin + self.period - offset)
            span = slice(begin, end)
            outputs.append(mlp_read(x[:, span], w_in, w_out))
            g_in, g_out = mlp_regression_gradients(w_in, w_out, key[:, span], value[:, span], steps[:, span])
            grad_in = g_in if grad_in is None else grad_in + g_in
            grad_out = g_out if grad_out is None else grad_out + g_out
            offset += end - begin
            if offset == self.period:
                w_in, w_out = w_in - grad_in, w_out - grad_out
                grad_in, grad_out, offset = None, None, 0
            begin = end
        return torch.cat(outputs, dim=1), ContinuumState(w_in, w_out, grad_in, grad_out, offset)

    @torch.no_grad()
    def commit(self, state: ContinuumState) -> None:
        """Make the state's fast weights (mean over the batch) the level's starting weights."""
        self.w_in.copy_(state.w_in.mean(dim=0))
        self.w_out.copy_(state.w_out.mean(dim=0))
