"""HOPE's self-modifying Titans layer (Nested Learning): projections that are memories themselves.

The layer reads and writes a Titans-style memory (any engine rule) like ``NeuralMemory``, but its
key, value, step-size and forget projections are not fixed matrices: each is a linear memory
M_p (p in k, v, eta, alpha) that keeps learning in context from its own self-generated targets

    k_t = M_k x_t,  v_t = M_v x_t,  eta_t = sigmoid(M_eta x_t + b_eta),  alpha_t = sigmoid(M_alpha x_t + b_alpha)
    target  v^_p,t = M_p w_t,  w_t = v_t / ||v_t||     (each memory generates its own values)
    update  M_p <- M_p (I - eta'_t u_t u_t^T) - eta'_t (M_p u_t - v^_p,t) u_t^T,   u_t = k_t / ||k_t||

Nested Learning's delta-gradient-descent (DGD) step with eta'_t = eta_t / (1 + eta_t), eta_t averaged
over heads. The query projection stays a plain learned matrix, as in the paper.

Design choices:
- Chunk-wise parallel form, as the paper trains it: inside a chunk of ``chunk_size`` tokens the
  projection memories are read at the chunk-start weights, and their updates (taken at those
  weights) are averaged over the chunk and applied at its end. Averaging keeps one chunk step as
  large as one token step, so the contraction (I - eta' u u^T) stays contractive.
- The main memory is the engine's ``memorize`` with the generated k, v, eta, alpha; its initial
  weights, like the projection memories' initial weights, are learned parameters.
- Keys and the values fed to the self-referential targets are unit vectors: then the update's factor
  I - eta'(2u - w)u^T has its one non-unit eigenvalue in [1 - 3 eta', 1 - eta'], so the memories
  cannot amplify themselves through their own targets (with raw values they diverge over long inputs).
- Updates at fixed weights add over tokens, so whole / pieces / token-by-token runs agree exactly.
- ``commit(state)`` makes the state's fast weights the starting weights (test-time adaptation that
  persists across calls; ``LanguageModel.adaptation_scope`` undoes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttmem.memory import MemoryState, get_rule, initial_state, memorize


@dataclass
class SelfModifyingState:
    """projections: fast weights [B, out, dim] of M_k, M_v, M_eta (and M_alpha); pending: their
    accumulated chunk updates or None; offset: tokens done in the open chunk; memory: main memory."""

    projections: tuple[Tensor, ...]
    pending: tuple[Tensor, ...] | None
    offset: int
    memory: MemoryState

    def detach(self) -> SelfModifyingState:
        pending = None if self.pending is None else tuple(p.detach() for p in self.pending)
        return SelfModifyingState(tuple(p.detach() for p in self.projections), pending, self.offset,
                                  self.memory.detach())


def delta_gradient_updates(weights: Tensor, keys: Tensor, values: Tensor, rates: Tensor) -> Tensor:
    """Sum over t of the delta-GD change of one linear memory at fixed weights.

    weights: [B, out, dim]; keys, values (unit norm): [B, T, dim]; rates eta'_t: [B, T].
    Returns -sum_t rate_t (2 W u_t - W v_t) u_t^T as [B, out, dim].
    """
    direction = 2 * torch.einsum("bod,btd->bto", weights, keys) - torch.einsum("bod,btd->bto", weights, values)
    return -torch.einsum("bto,btd->bod", direction * rates[..., None], keys)


class SelfModifyingMemory(nn.Module):
    """x: [B, T, dim] -> [B, T, dim]; heads * dim_head must equal dim (values feed the projections)."""

    def __init__(self, dim: int, heads: int, chunk_size: int = 16, rule: str = "titans") -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.rule = get_rule(rule)
        self.dim, self.heads, self.dim_head, self.chunk_size = dim, heads, dim // heads, chunk_size
        self.to_query = nn.Linear(dim, dim, bias=False)
        self.to_momentum = nn.Linear(dim, heads) if self.rule.momentum else None
        outs = [dim, dim, heads] + ([heads] if self.rule.forgetting else [])
        self.projection_init = nn.ParameterList(nn.Parameter(torch.randn(o, dim) / math.sqrt(dim)) for o in outs)
        self.step_bias = nn.Parameter(torch.full((heads,), -2.0))
        self.forget_bias = nn.Parameter(torch.full((heads,), -4.0)) if self.rule.forgetting else None
        self.memory_init = nn.ParameterList(
            nn.Parameter(w) for w in self.rule.initial_weights(heads, self.dim_head, self.dim_head)
        )
        self.out_norm = nn.RMSNorm(self.dim_head)
        self.to_out_gate = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def initial_state(self, batch: int) -> SelfModifyingState:
        """Learned starting weights for a new sequence."""
        projections = tuple(w.expand(batch, -1, -1) for w in self.projection_init)
        memory = initial_state(self.rule, batch, self.heads, self.dim_head, self.dim_head,
                               weights=tuple(self.memory_init))
        return SelfModifyingState(projections, None, 0, memory)

    def _generate(self, x: Tensor, state: SelfModifyingState) -> tuple[list[Tensor], SelfModifyingState]:
        """Run the projection memories over x chunk by chunk: returns [k, v, step(, forget)] and their new state."""
        projections, pending, offset = state.projections, state.pending, state.offset
        generated: list[list[Tensor]] = [[] for _ in projections]
        begin = 0
        while begin < x.shape[1]:
            end = min(x.shape[1], begin + self.chunk_size - offset)
            span = x[:, begin:end]
            outs = [torch.einsum("bod,btd->bto", w, span) for w in projections]
            step = torch.sigmoid(outs[2] + self.step_bias)
            outs[2] = step
            if self.forget_bias is not None:
                outs[3] = torch.sigmoid(outs[3] + self.forget_bias)
            for store, out in zip(generated, outs, strict=True):
                store.append(out)
            mean_step = step.mean(dim=-1)
            rates = mean_step / (1 + mean_step) / self.chunk_size
            keys, values = F.normalize(outs[0], dim=-1), F.normalize(outs[1], dim=-1)
            updates = tuple(delta_gradient_updates(w, keys, values, rates) for w in projections)
            pending = updates if pending is None else tuple(p + u for p, u in zip(pending, updates, strict=True))
            offset += end - begin
            if offset == self.chunk_size:
                projections = tuple(w + p for w, p in zip(projections, pending, strict=True))
                pending, offset = None, 0
            begin = end
        tensors = [torch.cat(parts, dim=1) for parts in generated]
        return tensors, SelfModifyingState(projections, pending, offset, state.memory)

    def forward(self, x: Tensor, state: SelfModifyingState | None = None) -> tuple[Tensor, SelfModifyingState]:
        """x: [B, T, dim] -> (y [B, T, dim], state after the last token)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, time, {self.dim}], got shape {tuple(x.shape)}")
        batch, length, _ = x.shape
        if state is None:
            state = self.initial_state(batch)
        generated, state = self._generate(x, state)
        heads = (batch, length, self.heads, self.dim_head)
        query = F.normalize(self.to_query(x).view(heads), dim=-1)
        key = F.normalize(generated[0].view(heads), dim=-1)
        value = generated[1].view(heads)
        momentum = torch.sigmoid(self.to_momentum(x)) if self.to_momentum is not None else None
        forget = generated[3] if self.forget_bias is not None else None
        out, memory = memorize(query, key, value, generated[2], momentum=momentum, forget=forget,
                               rule=self.rule, chunk_size=self.chunk_size, state=state.memory)
        state = SelfModifyingState(state.projections, state.pending, state.offset, memory)
        out = self.out_norm(out).reshape(batch, length, self.dim) * F.silu(self.to_out_gate(x))
        return self.to_out(out), state

    @torch.no_grad()
    def commit(self, state: SelfModifyingState) -> None:
        """Make the state's fast weights (mean over the batch) the layer's starting weights.

        Updates still pending in an unfinished chunk are not committed."""
        for parameter, weights in zip(self.projection_init, state.projections, strict=True):
            parameter.copy_(weights.mean(dim=0))
        memory_weights = state.memory.accum if state.memory.accum is not None else state.memory.weights
        for parameter, weights in zip(self.memory_init, memory_weights, strict=True):
            parameter.copy_(weights.mean(dim=0))
