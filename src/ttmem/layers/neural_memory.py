"""The neural memory layer: projections and gates around the ``memorize`` engine.

x -> q, k, v (one projection, optional short causal depthwise conv + SiLU, ℓ2-normalised q and k, per head)
  -> gates from learned projections of x: step size θ, momentum η, forget α (and a Huber threshold δ for
     rules that use one), per token by default, held per chunk or fixed per head optionally
     (``forget_gate="mamba2"``: Gated DeltaNet's decay, α = 1 − exp(−softplus(a_t) · A_h), see ``_mamba2_forget``)
  -> memorize(...) with learned initial memory weights per head
  -> RMS norm per head, SiLU output gate, head merge.

Design choices: the initial memory weights are ordinary parameters, one per memory layer, shaped [heads, out, in]
(no views into a shared buffer), so optimiser steps and ``load_state_dict`` work unchanged. The conv keeps its
last ``kernel − 1`` inputs in the state, and ``memorize`` continues partial chunks, so running a sequence whole, in
pieces, or token by token gives the same outputs and state.

``symplectic={...}`` adds complexity gating of the forget rate, memory pages and kinetics coupling
(``paging.py``); with it None (the default) none of their parameters, buffers or state fields exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fused import declare_row_blocks
from ..memory import MemoryRule, MemoryState, get_rule, initial_state, run_memory
from ..memory.functional import check_chunk_size, check_input_values, value_checks_enabled
from .paging import SymplecticPaging

GATE_MODES = ("token", "chunk", "fixed")
FORGET_GATES = ("sigmoid", "mamba2")
# Gate values at initialisation (before max_lr scales the step): step size θ = sigmoid(−2), momentum keep
# η = sigmoid(−4), forget α = sigmoid(−8). Momentum and forgetting start nearly off: at the older η = sigmoid(2) and
# α = sigmoid(−4), a chunk re-applied every write up to 1/(1 − η) ≈ 8 times and a stored pair kept
# (1 − α)^100 ≈ 16% of itself 100 tokens later, and Titans memories barely learned MQAR (docs/recall.md).
GATE_INIT = {"lr": 1 / (1 + math.exp(2.0)), "momentum": 1 / (1 + math.exp(4.0)), "forget": 1 / (1 + math.exp(8.0))}


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@dataclass
class NeuralMemoryState:
    memory: MemoryState
    conv: Tensor | None = None       # last kernel−1 projected inputs [B, channels, kernel−1]
    held_gates: Tensor | None = None  # gates of the chunk in progress [B, 1, heads, n_gates] ("chunk" mode)

    def detach(self) -> NeuralMemoryState:
        return NeuralMemoryState(self.memory.detach(), None if self.conv is None else self.conv.detach(),
                                 None if self.held_gates is None else self.held_gates.detach())


class NeuralMemory(nn.Module):
    """Test-time-learning memory layer. Input and output [batch, time, dim].

    ``gate_init`` overrides the gates' initial values (``GATE_INIT``: "lr", "momentum", "forget", each in (0, 1));
    the gates stay learned functions of the input either way.

    ``symplectic``: keyword arguments of ``paging.SymplecticPaging`` (complexity gating, pages, kinetics; the
    titans-pytorch fork's flag names). With ``num_pages`` P the layer holds P · heads internal heads."""

    def __init__(self, dim: int, heads: int = 1, chunk_size: int = 64, rule: str | MemoryRule = "titans",
                 dim_head: int | None = None, conv_kernel: int = 4, gate_mode: str = "token",
                 max_lr: float = 1.0, recompute: bool = False, forget_gate: str = "sigmoid",
                 gate_init: dict[str, float] | None = None, symplectic: dict[str, Any] | None = None):
        super().__init__()
        if symplectic is not None and not isinstance(symplectic, dict):
            raise TypeError(f"symplectic must be a dict of options or None, got {type(symplectic).__name__}")
        if dim < 1 or heads < 1:
            raise ValueError(f"dim and heads must be >= 1, got dim={dim}, heads={heads}")
        if gate_mode not in GATE_MODES:
            raise ValueError(f"gate_mode must be one of {GATE_MODES}, got {gate_mode!r}")
        if not 0 < max_lr <= 1:
            raise ValueError(f"max_lr must be in (0, 1], got {max_lr}")
        check_chunk_size(chunk_size)
        if dim_head is None and dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}) when dim_head is not given")
        self.rule = get_rule(rule)
        if forget_gate not in FORGET_GATES:
            raise ValueError(f"forget_gate must be one of {FORGET_GATES}, got {forget_gate!r}")
        if forget_gate != "sigmoid" and not self.rule.forgetting:
            raise ValueError(f"forget_gate={forget_gate!r} needs a rule with forgetting; {self.rule.name!r} has none")
        self.forget_gate = forget_gate
        self.dim, self.heads, self.chunk_size = dim, heads, chunk_size
        self.dim_head = dim_head or dim // heads
        if self.dim_head < 1:
            raise ValueError(f"dim_head must be >= 1, got {self.dim_head}")
        self.symplectic = None
        if symplectic:
            paging = SymplecticPaging(dim, heads, chunk_size, self.rule, **symplectic)
            if paging.active:
                self.symplectic = paging
                self.heads = heads = heads * paging.pages  # pages are page-major blocks of internal heads
        self.gate_mode, self.max_lr, self.conv_kernel = gate_mode, max_lr, conv_kernel
        self.recompute = recompute  # checkpointed segments of √n chunks in the engine (less memory, more time)
        inner = heads * self.dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.conv = nn.Conv1d(3 * inner, 3 * inner, conv_kernel, groups=3 * inner) if conv_kernel > 1 else None
        for fused in (self.to_qkv, self.conv):  # q, k, v: three matrices (ttmem.fused)
            if fused is not None:
                declare_row_blocks(fused, [inner] * 3)

        # Gate order: lr, [momentum], [forget], [threshold]; the biases set each gate's value at initialisation.
        init = {**GATE_INIT, **(gate_init or {})}
        unknown = set(init) - set(GATE_INIT)
        if unknown:
            raise ValueError(f"gate_init keys must be among {sorted(GATE_INIT)}, got {sorted(unknown)}")
        for name, value in init.items():
            if not 0 < value < 1:
                raise ValueError(f"gate_init[{name!r}] must be in (0, 1), got {value}")
        biases = [_logit(init["lr"])]
        if self.rule.momentum:
            biases.append(_logit(init["momentum"]))
        if self.rule.forgetting:
            biases.append(_logit(init["forget"]))
        if self.rule.objective.uses_threshold:
            biases.append(0.5)
        self.n_gates = len(biases)
        bias = torch.tensor(biases).repeat(heads)
        if gate_mode == "fixed":
            self.gate_logits = nn.Parameter(bias.view(heads, self.n_gates).clone())
        else:
            self.to_gates = nn.Linear(dim, heads * self.n_gates)
            nn.init.zeros_(self.to_gates.weight)
            with torch.no_grad():
                self.to_gates.bias.copy_(bias)

        if forget_gate == "mamba2":
            self._init_mamba2_forget()

        init = self.rule.initial_weights(heads, self.dim_head, self.dim_head)
        self.initial_weights = nn.ParameterList([nn.Parameter(w.clone()) for w in init])
        self.out_norm_weight = nn.Parameter(torch.ones(heads, self.dim_head))
        self.to_out_gate = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        nn.init.normal_(self.to_out.weight, std=1.0 / math.sqrt(inner))

    # -- pieces -------------------------------------------------------------------------------------------
    # Everything below works in the engine's layout [B, heads, T, dim_head] so the hot path never re-lays out.

    def _conv(self, seq: Tensor, cache: Tensor | None, channels: slice) -> tuple[Tensor, Tensor]:
        """Short causal depthwise conv + SiLU over seq [B, channels, T] with the previous kernel−1 inputs."""
        if cache is None:
            cache = seq.new_zeros(seq.shape[0], seq.shape[1], self.conv_kernel - 1)
        seq = torch.cat([cache, seq], dim=2)
        weight, bias = self.conv.weight[channels], self.conv.bias[channels]
        if seq.shape[2] == self.conv_kernel:  # one new token (decoding): a dot product per channel beats a conv
            out = torch.bmm(seq.transpose(0, 1), weight[:, 0].unsqueeze(-1)).squeeze(-1).t().add_(bias).unsqueeze(-1)
        else:
            out = F.conv1d(seq, weight, bias, groups=seq.shape[1])
        return F.silu(out), seq[:, :, -(self.conv_kernel - 1):]

    def _heads(self, x: Tensor, parts: int) -> Tensor:
        """[B, T, parts · heads · dim_head] -> [parts, B, heads, T, dim_head]."""
        b, t = x.shape[:2]
        return x.view(b, t, parts, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)

    def _init_mamba2_forget(self) -> None:
        """Gated DeltaNet's decay as Mamba-2 initialises it: A_h ~ U(1, 16) stored as log A_h, and the forget
        logit's bias the inverse softplus of a step Δ_h drawn log-uniformly in [1e-3, 0.1] (floor 1e-4)."""
        column = 1 + int(self.rule.momentum)  # gate order: lr, [momentum], forget, ...
        self.forget_log_rate = nn.Parameter(torch.empty(self.heads).uniform_(1.0, 16.0).log())
        step = torch.empty(self.heads).uniform_(math.log(1e-3), math.log(0.1)).exp().clamp(min=1e-4)
        bias = step + torch.log(-torch.expm1(-step))  # softplus(bias) = step
        with torch.no_grad():
            if self.gate_mode == "fixed":
                self.gate_logits[:, column] = bias
            else:
                self.to_gates.bias.view(self.heads, self.n_gates)[:, column] = bias

    def _mamba2_forget(self, logit: Tensor) -> Tensor:
        """α = 1 − exp(−softplus(logit) · A_h) for logits [..., heads, T]: Gated DeltaNet's decay
        exp(−softplus(·) A) is the keep 1 − α."""
        return -torch.expm1(-F.softplus(logit) * self.forget_log_rate.exp().unsqueeze(-1))

    def _project(self, x: Tensor, conv_cache: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        qkv = self.to_qkv(x)
        new_cache = None
        if self.conv is not None:
            seq, new_cache = self._conv(qkv.transpose(1, 2), conv_cache, slice(None))
            qkv = seq.transpose(1, 2)
        heads = self._heads(qkv, 3)
        q, k = F.normalize(heads[:2], dim=-1).unbind(0)  # one call for both (same values as two)
        return q, k, heads[2], new_cache

    def _project_queries(self, x: Tensor, conv_cache: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Only the queries (reads without writes): the q third of the projection and of the conv. The conv
        is depthwise, so its q channels do not depend on k and v; ``conv_cache`` holds those channels only."""
        inner = self.heads * self.dim_head
        q = F.linear(x, self.to_qkv.weight[:inner])
        new_cache = None
        if self.conv is not None:
            seq, new_cache = self._conv(q.transpose(1, 2), conv_cache, slice(0, inner))
            q = seq.transpose(1, 2)
        return F.normalize(self._heads(q, 1)[0], dim=-1), new_cache

    def _gates(self, x: Tensor, state: NeuralMemoryState | None) -> tuple[dict, Tensor | None]:
        """Gates [B, heads, T] by name, and the held logits of a chunk in progress ("chunk" mode)."""
        b, t, _ = x.shape
        held = None
        if self.gate_mode == "fixed":
            logits = self.gate_logits.view(1, 1, self.heads, self.n_gates).expand(b, t, self.heads, self.n_gates)
        else:
            logits = self.to_gates(x).view(b, t, self.heads, self.n_gates)
            if self.gate_mode == "chunk" and not self.rule.per_token:
                offset = 0 if state is None else state.memory.offset
                pos = (offset + torch.arange(t, device=x.device)) % self.chunk_size
                starts = torch.where(pos == 0, torch.arange(t, device=x.device), -1)
                source = torch.cummax(starts, dim=0).values  # last chunk start at or before t, −1 if none
                if state is not None and state.held_gates is not None:
                    logits = torch.cat([state.held_gates, logits], dim=1)
                    source = source + 1
                logits = logits[:, source.clamp(min=0)]
                held = logits[:, -1:]
        logits = logits.permute(0, 2, 1, 3)  # [B, heads, T, n_gates]
        names = ["lr"] + (["momentum"] if self.rule.momentum else []) + (["forget"] if self.rule.forgetting else [])
        gates = {name: torch.sigmoid(logits[..., i]) for i, name in enumerate(names)}
        if self.max_lr != 1.0:
            gates["lr"] = self.max_lr * gates["lr"]
        if self.forget_gate == "mamba2":
            gates["forget"] = self._mamba2_forget(logits[..., names.index("forget")])
        if self.rule.objective.uses_threshold:
            gates["threshold"] = F.softplus(logits[..., -1]) + 1e-3
        return gates, held

    def _merge(self, x: Tensor, out: Tensor) -> Tensor:
        """out [B, heads, T, dim_head] -> [B, T, dim]: RMS norm per head, SiLU output gate, head merge."""
        out = torch.rms_norm(out, out.shape[-1:], eps=1e-6) * self.out_norm_weight.unsqueeze(1)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1) * F.silu(self.to_out_gate(x))
        return self.to_out(out)

    def _check_input(self, x: Tensor, state: NeuralMemoryState | None) -> None:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape [batch, time, {self.dim}], got {tuple(getattr(x, 'shape', ()))}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"x must have at least one batch row and one time step, got shape {tuple(x.shape)}")
        if state is not None:
            if not isinstance(state, NeuralMemoryState):
                raise TypeError(f"state must be a NeuralMemoryState or None, got {type(state).__name__}")
            if state.memory.batch_size != x.shape[0]:
                raise ValueError(f"state has batch size {state.memory.batch_size}, x has {x.shape[0]}")

    def initial_state(self, batch: int) -> NeuralMemoryState:
        weights = tuple(self.initial_weights)
        mem = initial_state(self.rule, batch, self.heads, self.dim_head, self.dim_head, weights=weights,
                            dtype=weights[0].dtype, device=weights[0].device)
        return NeuralMemoryState(mem)

    # -- public -------------------------------------------------------------------------------------------

    def forward(self, x: Tensor, state: NeuralMemoryState | None = None) -> tuple[Tensor, NeuralMemoryState]:
        """Write each token into the memory, then read it with the token's query. x: [B, T, dim]."""
        self._check_input(x, state)
        if state is None:
            state = self.initial_state(x.shape[0])
        q, k, v, conv_cache = self._project(x, state.conv)
        gates, held = self._gates(x, state)
        carried = None
        if self.symplectic is not None:
            gates, carried = self.symplectic(x, gates, state.memory)
        forget = gates.get("forget")
        keep = None if forget is None else 1.0 - forget
        if value_checks_enabled():
            check_input_values({"q": q, "k": k, "v": v}, gates, state.memory)
        out, mem = run_memory(self.rule, q, k, v, gates["lr"], keep, gates.get("momentum"), gates.get("threshold"),
                              self.chunk_size, state.memory, recompute=self.recompute)
        if carried is not None:
            mem = replace(mem, **carried)
        return self._merge(x, out), NeuralMemoryState(mem, conv_cache, held)

    def read(self, x: Tensor, memory: MemoryState, conv_cache: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Read ``memory`` with the queries of x [B, T, dim] without writing. ``conv_cache`` is the query stream's
        own conv history (q channels only, [B, heads · dim_head, kernel − 1]); returns (out, its new history)."""
        q, conv_cache = self._project_queries(x, conv_cache)
        out = self.rule.architecture.forward(memory.weights, q)
        return self._merge(x, out), conv_cache

    def retrieve(self, x: Tensor, state: NeuralMemoryState | None = None) -> Tensor:
        """Read only, with the state's current weights; nothing is written. x: [B, T, dim]."""
        self._check_input(x, state)
        if state is None:
            state = self.initial_state(x.shape[0])
        inner = self.heads * self.dim_head
        conv_q = None if state.conv is None else state.conv[:, :inner]
        return self.read(x, state.memory, conv_q)[0]

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, heads={self.heads}, chunk_size={self.chunk_size}, rule={self.rule.name!r}, "
                f"forget_gate={self.forget_gate!r}")

