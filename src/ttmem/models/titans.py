"""Titans sequence mixers (arXiv 2501.00663) that combine attention with a neural memory.

- ``MemoryAsContext`` (MAC): the sequence is cut into segments of ``segment_len`` tokens. For each
  segment: read the memory (as it stood at the segment start) with the segment's queries,
  h = M*(x); attend over [persistent ‖ h ‖ segment]; write the attention output y into the memory
  and combine it with a fresh read of the updated memory, o = y ⊗ M(y). ``ModelConfig.mac_output`` picks
  the combination ⊗: "product" (y ⊙ M(y), elementwise), "gate" (MAG's normalised sigmoid gate, the paper's
  description of ⊗ as non-linear gating, o = W_o (g ⊙ norm(y) + (1 − g) ⊙ norm(M(y))), g = sigmoid(W_g x))
  or "residual" (y + M(y)). ``ModelConfig.mac_memory_input`` picks what the memory is written with and read at
  for o: "attention" (the paper: y) or "segment" (the segment's input x, as titans-pytorch's MAC does; then
  o = y ⊗ M(x)).
- ``MemoryAsGate`` (MAG): sliding-window attention and the memory read the same input in parallel;
  both outputs are RMS-normalised (learned per-channel weights) and mixed by a learned gate
  g = sigmoid(W_g x): o = W_o (g ⊙ norm(attn) + (1 − g) ⊙ norm(mem)).
- MAL (memory layer, then sliding-window attention) needs no class: it is a recipe of two sublayers.

Design choices:
- Causality inside a MAC segment: the retrieved token h_j comes from segment token j, so a query at
  position i sees h_j only for j <= i (same rule as the segment's own keys); the paper's equations
  would otherwise let a token read what later tokens of its segment retrieved. The write-then-read
  ``NeuralMemory.forward`` updates per token, so M(y_i) never contains later tokens either.
- Streaming: the MAC state holds the running memory, the memory as it stood at the segment start
  (used for retrieval), the KV cache of the open segment and the offset inside it; any split of
  the input gives the same result as one pass.
- Any memory rule of the engine can be plugged in (``ModelConfig.memory_rule``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ttmem.layers import NeuralMemory, NeuralMemoryState
from ttmem.layers.attention import Attention, KVCache
from ttmem.models.config import ModelConfig


def neural_memory(config: ModelConfig) -> NeuralMemory:
    """The memory layer a model config asks for."""
    return NeuralMemory(
        config.dim,
        heads=config.heads,
        chunk_size=config.chunk_size,
        rule=config.rule,
        dim_head=config.head_dim,
        conv_kernel=config.conv_kernel,
        # Gated DeltaNet's own decay parametrisation (Mamba-2's exp(−softplus(·) A)); the others keep sigmoids.
        forget_gate="mamba2" if config.arch == "gated_deltanet" else "sigmoid",
        symplectic=config.memory_options(),
    )


def attention(config: ModelConfig, window: int | None) -> Attention:
    """The attention layer a model config asks for (full when window is None)."""
    return Attention(
        config.dim,
        config.heads,
        dim_head=config.head_dim,
        window=window,
        persistent_tokens=config.persistent_tokens,
        rotary_base=config.rotary_base,
    )


def _detach(value: Any) -> Any:
    return None if value is None else value.detach()


@dataclass
class MACState:
    """memory: running memory state (its conv history is that of the written attention outputs);
    segment_memory: memory at the open segment's start; retrieval_conv: conv history of the retrieval
    stream (the segment inputs; query channels only) [B, heads · dim_head, kernel - 1] or None; cache: KV
    cache of the open segment (None at a boundary); offset: tokens done in the open segment."""

    memory: NeuralMemoryState | None
    segment_memory: NeuralMemoryState | None
    retrieval_conv: Tensor | None
    cache: KVCache | None
    offset: int

    def detach(self) -> MACState:
        return MACState(_detach(self.memory), _detach(self.segment_memory), _detach(self.retrieval_conv),
                        _detach(self.cache), self.offset)


class MemoryAsContext(nn.Module):
    """Titans MAC mixer. x: [B, T, dim] -> [B, T, dim]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.segment_len = config.segment_len
        self.memory = neural_memory(config)
        self.attention = attention(config, None)
        self.output = config.mac_output
        self.write_attention = config.mac_memory_input == "attention"
        if self.output == "gate":
            self.combine = NormalisedGate(config)

    def forward(self, x: Tensor, state: MACState | None = None) -> tuple[Tensor, MACState]:
        """x: [B, T, dim] -> (o [B, T, dim], state after the last token)."""
        if state is None:
            state = MACState(self.memory.initial_state(x.shape[0]), None, None, None, 0)
        memory, segment_memory, conv = state.memory, state.segment_memory, state.retrieval_conv
        cache, offset = state.cache, state.offset
        outputs, begin = [], 0
        while begin < x.shape[1]:
            if offset == 0:
                segment_memory, cache = memory, None
            end = min(x.shape[1], begin + self.segment_len - offset)
            piece = x[:, begin:end]
            # Read the segment-start weights with the piece's queries; the retrieval stream keeps its own conv
            # history (query channels only).
            retrieved, conv = self.memory.read(piece, segment_memory.memory, conv)
            attended, cache = self.attention(piece, cache, memory_tokens=retrieved)
            fresh, memory = self.memory(attended if self.write_attention else piece, memory)
            outputs.append(self._combine(piece, attended, fresh))
            offset = (offset + end - begin) % self.segment_len
            begin = end
        return torch.cat(outputs, dim=1), MACState(memory, segment_memory, conv, cache, offset)

    def _combine(self, x: Tensor, attended: Tensor, fresh: Tensor) -> Tensor:
        if self.output == "product":
            return attended * fresh
        if self.output == "residual":
            return attended + fresh
        return self.combine(x, attended, fresh)


class NormalisedGate(nn.Module):
    """o = W_o (g ⊙ norm(a) + (1 − g) ⊙ norm(b)), g = sigmoid(W_g x): both branches RMS-normalised with learned
    per-channel weights, mixed by a gate read from the mixer's input. x, a, b: [B, T, dim] -> [B, T, dim]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.memory_norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.to_gate = nn.Linear(config.dim, config.dim)
        self.to_out = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x: Tensor, attended: Tensor, remembered: Tensor) -> Tensor:
        return self.mix(x, attended, remembered)

    def mix(self, x: Tensor, attended: Tensor, remembered: Tensor) -> Tensor:
        gate = torch.sigmoid(self.to_gate(x))
        return self.to_out(gate * self.attention_norm(attended) + (1 - gate) * self.memory_norm(remembered))


@dataclass
class MAGState:
    """cache: sliding-window KV cache; memory: memory state."""

    cache: KVCache | None
    memory: Any

    def detach(self) -> MAGState:
        return MAGState(_detach(self.cache), _detach(self.memory))


class MemoryAsGate(NormalisedGate):
    """Titans MAG mixer: a ``NormalisedGate`` over sliding-window attention and the memory, both reading x.
    x: [B, T, dim] -> [B, T, dim]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.attention = attention(config, config.window)
        self.memory = neural_memory(config)

    def forward(self, x: Tensor, state: MAGState | None = None) -> tuple[Tensor, MAGState]:
        """x: [B, T, dim] -> (o [B, T, dim], state after the last token)."""
        if state is None:
            state = MAGState(None, None)
        attended, cache = self.attention(x, state.cache)
        remembered, memory = self.memory(x, state.memory)
        return self.mix(x, attended, remembered), MAGState(cache, memory)
