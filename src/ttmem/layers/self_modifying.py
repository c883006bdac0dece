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
- The projection memories are the memory engine's ``self_modifying`` rule (``ttmem.memory.RULES``, equations in
  ``docs/rules.md``): delta gradient descent (the ``dgd`` objective) on self-generated targets, read at the chunk
  start. The four share their keys u_t, values w_t and rates eta'_t and their updates act row by row, so they are
  one stacked linear memory [M_k; M_v; M_eta; M_alpha] (exact: rows do not mix).
- Chunk-wise parallel form, as the paper trains it: inside a chunk of ``chunk_size`` tokens the projection
  memories are read at the chunk-start weights, and their updates (taken at those weights) are summed over the
  chunk with rates eta'_t / chunk_size and applied at its end. Dividing by the chunk size keeps one chunk step
  as large as one token step, so the contraction (I - eta' u u^T) stays contractive. A chunk's rates come from
  its own reads (eta_t = sigmoid(M_eta x_t + b)), so the layer runs the engine one chunk at a time: read at the
  chunk start, make the gates, write.
- The main memory is the engine with the generated k, v, eta, alpha; its initial weights, like the projection
  memories' initial weights, are learned parameters.
- Keys and the values fed to the self-referential targets are unit vectors: then the update's factor
  I - eta'(2u - w)u^T has its one non-unit eigenvalue in [1 - 3 eta', 1 - eta'], so the memories
  cannot amplify themselves through their own targets (with raw values they diverge over long inputs).
- Both memories' states are the engine's ``MemoryState``: whole / pieces / token-by-token runs agree exactly.
- ``commit(state)`` makes the state's fast weights the starting weights (test-time adaptation that
  persists across calls; ``LanguageModel.adaptation_scope`` undoes it).
- ``symplectic={...}``: the complexity gating, memory pages and kinetics of ``paging.SymplecticPaging`` act on the
  main memory's generated step size, forget rate and momentum exactly as in ``NeuralMemory`` (the signal reads the
  layer's input; the page, running statistics and switch history live in the main memory's ``MemoryState``).
  With P pages the main memory holds P · heads internal heads (page-major) with their own query slice, initial
  weights, step and forget rows of the projection memories, and momentum gate; the generated keys and values are
  shared by the pages, since the projection memories' self-referential targets live in the input space (the
  fork's pages had their own key and value projections; here those projections are the memories themselves).
  The projection memories are not gated or paged: their rule has no forget gate for the signal to slow and one
  head to page. With it None (the default) the layer is exactly the one above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttmem.layers.paging import SymplecticPaging
from ttmem.memory import MemoryState, get_rule, initial_state, read_chunk_start, run_memory


@dataclass
class SelfModifyingState:
    """projections: the stacked projection memories' state (one head, weights [B, 1, outputs, dim]);
    memory: the main memory's state."""

    projections: MemoryState
    memory: MemoryState

    def detach(self) -> SelfModifyingState:
        return SelfModifyingState(self.projections.detach(), self.memory.detach())


class SelfModifyingMemory(nn.Module):
    """x: [B, T, dim] -> [B, T, dim]; heads * dim_head must equal dim (values feed the projections).

    ``symplectic``: keyword arguments of ``paging.SymplecticPaging`` for the main memory (module docstring)."""

    def __init__(self, dim: int, heads: int, chunk_size: int = 16, rule: str = "titans",
                 symplectic: dict[str, Any] | None = None) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if symplectic is not None and not isinstance(symplectic, dict):
            raise TypeError(f"symplectic must be a dict of options or None, got {type(symplectic).__name__}")
        self.rule = get_rule(rule)
        self.projection_rule = get_rule("self_modifying")
        self.dim, self.heads, self.dim_head, self.chunk_size = dim, heads, dim // heads, chunk_size
        self.symplectic, self.pages = None, 1
        if symplectic:
            paging = SymplecticPaging(dim, heads, chunk_size, self.rule, **symplectic)
            if paging.active:
                self.symplectic, self.pages = paging, paging.pages
        inner = heads * self.pages  # internal heads of the main memory, page-major
        self.to_query = nn.Linear(dim, self.pages * dim, bias=False)
        self.to_momentum = nn.Linear(dim, inner) if self.rule.momentum else None
        outs = [dim, dim, inner] + ([inner] if self.rule.forgetting else [])
        self.projection_init = nn.ParameterList(nn.Parameter(torch.randn(o, dim) / math.sqrt(dim)) for o in outs)
        self.step_bias = nn.Parameter(torch.full((inner,), -2.0))
        self.forget_bias = nn.Parameter(torch.full((inner,), -4.0)) if self.rule.forgetting else None
        self.memory_init = nn.ParameterList(
            nn.Parameter(w) for w in self.rule.initial_weights(inner, self.dim_head, self.dim_head)
        )
        self.out_norm = nn.RMSNorm(self.dim_head)
        self.to_out_gate = nn.Linear(dim, self.pages * dim, bias=False)
        self.to_out = nn.Linear(self.pages * dim, dim, bias=False)

    def initial_state(self, batch: int) -> SelfModifyingState:
        """Learned starting weights for a new sequence."""
        stacked = torch.cat(tuple(self.projection_init), dim=0).unsqueeze(0)  # [1 head, outputs, dim]
        projections = initial_state(self.projection_rule, batch, 1, self.dim, stacked.shape[1], weights=(stacked,))
        memory = initial_state(self.rule, batch, self.heads * self.pages, self.dim_head, self.dim_head,
                               weights=tuple(self.memory_init))
        return SelfModifyingState(projections, memory)

    def _generate(self, x: Tensor, state: MemoryState) -> tuple[list[Tensor], MemoryState]:
        """Run the projection memories over x a chunk at a time: returns [k, v, step(, forget)] and their state."""
        rule = self.projection_rule
        sizes = [p.shape[0] for p in self.projection_init]
        generated: list[list[Tensor]] = [[] for _ in sizes]
        begin = 0
        while begin < x.shape[1]:
            end = min(x.shape[1], begin + self.chunk_size - state.offset)
            span = x[:, begin:end].unsqueeze(1)  # engine layout, one head
            outs = list(read_chunk_start(rule, span, state).squeeze(1).split(sizes, dim=-1))
            outs[2] = torch.sigmoid(outs[2] + self.step_bias)
            if self.forget_bias is not None:
                outs[3] = torch.sigmoid(outs[3] + self.forget_bias)
            for store, out in zip(generated, outs, strict=True):
                store.append(out)
            mean_step = outs[2].mean(dim=-1)
            rates = mean_step / (1 + mean_step) / self.chunk_size
            keys, values = F.normalize(outs[0], dim=-1).unsqueeze(1), F.normalize(outs[1], dim=-1).unsqueeze(1)
            _, state = run_memory(rule, span, keys, values, rates.unsqueeze(1), None, None, None, self.chunk_size,
                                  state)
            begin = end
        return [torch.cat(parts, dim=1) for parts in generated], state

    def forward(self, x: Tensor, state: SelfModifyingState | None = None) -> tuple[Tensor, SelfModifyingState]:
        """x: [B, T, dim] -> (y [B, T, dim], state after the last token)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be [batch, time, {self.dim}], got shape {tuple(x.shape)}")
        batch, length, _ = x.shape
        if state is None:
            state = self.initial_state(batch)
        generated, projections = self._generate(x, state.projections)
        heads = (batch, length, self.heads, self.dim_head)  # then the engine layout [B, H, T, ·]
        query = F.normalize(self.to_query(x).view(batch, length, -1, self.dim_head), dim=-1).transpose(1, 2)
        key = F.normalize(generated[0].view(heads), dim=-1).transpose(1, 2)
        value = generated[1].view(heads).transpose(1, 2)
        if self.pages > 1:  # the pages share the generated keys and values
            key, value = key.repeat(1, self.pages, 1, 1), value.repeat(1, self.pages, 1, 1)
        gates = {"lr": generated[2].transpose(1, 2)}
        if self.to_momentum is not None:
            gates["momentum"] = torch.sigmoid(self.to_momentum(x)).transpose(1, 2)
        if self.forget_bias is not None:
            gates["forget"] = generated[3].transpose(1, 2)
        carried = None
        if self.symplectic is not None:
            gates, carried = self.symplectic(x, gates, state.memory)
        keep = 1 - gates["forget"] if "forget" in gates else None
        out, memory = run_memory(self.rule, query, key, value, gates["lr"], keep, gates.get("momentum"), None,
                                 self.chunk_size, state.memory)
        if carried is not None:
            memory = replace(memory, **carried)
        out = out.transpose(1, 2)
        state = SelfModifyingState(projections, memory)
        out = self.out_norm(out).reshape(batch, length, self.pages * self.dim) * F.silu(self.to_out_gate(x))
        return self.to_out(out), state

    @torch.no_grad()
    def commit(self, state: SelfModifyingState) -> None:
        """Make the state's fast weights (mean over the batch) the layer's starting weights.

        Updates still pending in an unfinished chunk are not committed."""
        projections = state.projections.ref if state.projections.ref is not None else state.projections.weights
        rows = projections[0][:, 0].mean(dim=0).split([p.shape[0] for p in self.projection_init])
        for parameter, weights in zip(self.projection_init, rows, strict=True):
            parameter.copy_(weights)
        memory_weights = state.memory.accum if state.memory.accum is not None else state.memory.weights
        for parameter, weights in zip(self.memory_init, memory_weights, strict=True):
            parameter.copy_(weights.mean(dim=0))
