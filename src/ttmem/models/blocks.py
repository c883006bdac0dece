"""Residual blocks and the per-architecture recipe of which sublayers one block holds.

Design choices:
- A model is a flat stack of pre-norm residual sublayers ``x + f(norm(x), state)``; every
  stateful sublayer maps ``(x, state) -> (y, state)`` so the model's streaming state is just the
  list of sublayer states (KV caches, memory states, fast weights).
- ``BLOCK_RECIPES[arch](config)`` returns the sublayers of one block; the model repeats it
  ``depth`` times. Adding an architecture means adding a recipe, not a model class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ttmem.layers.branch_gate import BranchGate, BranchGateState
from ttmem.layers.continuum import ContinuumLevel
from ttmem.layers.mlp import SwiGLU
from ttmem.layers.self_modifying import SelfModifyingMemory
from ttmem.models.config import ModelConfig
from ttmem.models.titans import MemoryAsContext, MemoryAsGate, attention, neural_memory


class PreNormResidual(nn.Module):
    """x + f(RMSNorm(x)); ``stateful`` sublayers take and return a streaming state."""

    def __init__(self, dim: int, module: nn.Module, stateful: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=eps)
        self.module = module
        self.stateful = stateful

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """x: [B, T, dim] -> ([B, T, dim], new state or None)."""
        h = self.norm(x)
        if self.stateful:
            y, state = self.module(h, state)
            return x + y, state
        return x + self.module(h), None


@dataclass
class GatedResidualState:
    inner: Any                     # the sublayer's own state (None for stateless ones)
    gate: BranchGateState

    def detach(self) -> GatedResidualState:
        return GatedResidualState(None if self.inner is None else self.inner.detach(), self.gate.detach())


class GatedPreNormResidual(PreNormResidual):
    """x + g ⊙ f(RMSNorm(x)) with the causal per-token branch gate g of ``layers.branch_gate``."""

    def __init__(self, dim: int, module: nn.Module, stateful: bool, eps: float, mix: float) -> None:
        super().__init__(dim, module, stateful, eps)
        self.gate = BranchGate(mix)

    def forward(self, x: Tensor, state: GatedResidualState | None = None) -> tuple[Tensor, GatedResidualState]:
        h = self.norm(x)
        gate, gate_state = self.gate(h, None if state is None else state.gate)
        inner = None
        if self.stateful:
            y, inner = self.module(h, None if state is None else state.inner)
        else:
            y = self.module(h)
        return x + gate * y, GatedResidualState(inner, gate_state)


def _mlp(config: ModelConfig) -> tuple[nn.Module, bool]:
    return SwiGLU(config.dim, config.mlp_ratio), False


def transformer_block(config: ModelConfig) -> list[tuple[nn.Module, bool]]:
    """Full causal attention, then MLP."""
    return [(attention(config, None), True), _mlp(config)]


def swa_transformer_block(config: ModelConfig) -> list[tuple[nn.Module, bool]]:
    """Sliding-window attention, then MLP."""
    return [(attention(config, config.window), True), _mlp(config)]


def memory_block(config: ModelConfig) -> list[tuple[nn.Module, bool]]:
    """Neural memory layer (rule from the config), then MLP: linear attention, DeltaNet family, LMM, θ-LM."""
    return [(neural_memory(config), True), _mlp(config)]


def mac_block(config: ModelConfig) -> list[tuple[nn.Module, bool]]:
    """Titans memory as context, then MLP."""
    return [(MemoryAsContext(config), True), _mlp(config)]


def mag_block(config: ModelConfig) -> list[tuple[nn.Module, bool]]:
    """Titans memory as gate (sliding-window attention ‖ memory), then MLP."""
    return [(MemoryAsGate(config), True), _mlp(config)]


def mal_block(config: ModelConfig) -> list[tuple[nn.Module, bool]]:
    """Titans memory as layer: memory, then sliding-window attention, then MLP."""
    return [(neural_memory(config), True), (attention(config, config.window), True), _mlp(config)]


def hope_block(config: ModelConfig) -> list[tuple[nn.Module, bool]]:
    """Self-modifying Titans layer, then the continuum memory levels, fastest first."""
    mixer = SelfModifyingMemory(config.dim, config.heads, config.chunk_size, config.rule,
                                symplectic=config.memory_options())
    levels = [ContinuumLevel(config.dim, period, config.mlp_ratio) for period in sorted(config.cms_periods)]
    return [(mixer, True)] + [(level, True) for level in levels]


BLOCK_RECIPES: dict[str, Callable[[ModelConfig], list[tuple[nn.Module, bool]]]] = {
    "transformer": transformer_block,
    "swa_transformer": swa_transformer_block,
    "linear_attention": memory_block,
    "deltanet": memory_block,
    "gated_deltanet": memory_block,
    "lmm": memory_block,
    "mac": mac_block,
    "mag": mag_block,
    "mal": mal_block,
    "hope": hope_block,
    "theta_lm": memory_block,
}


def build_sublayers(config: ModelConfig) -> nn.ModuleList:
    """All residual sublayers of the model, depth blocks in order."""
    recipe = BLOCK_RECIPES.get(config.arch)
    if recipe is None:
        raise ValueError(f"no block recipe for arch {config.arch!r}; known: {', '.join(BLOCK_RECIPES)}")
    sublayers = nn.ModuleList()
    for block in range(config.depth):
        gated = config.branch_gate_mix > 0 and (block % 2 == 1 or not config.branch_gate_odd_only)
        for module, stateful in recipe(config):
            if gated:
                sublayers.append(GatedPreNormResidual(config.dim, module, stateful, config.norm_eps,
                                                      config.branch_gate_mix))
            else:
                sublayers.append(PreNormResidual(config.dim, module, stateful, config.norm_eps))
    return sublayers
