"""The memory state carried across calls (streaming): everything needed to continue a sequence exactly.

All tensors are per batch and head. ``weights`` are what reads use (for a linear memory one [B, H, dv, dk] tensor
with M(k) = W k). A call may end inside a chunk; ``ref`` then holds that chunk's start weights (gradients are taken
there) and ``offset`` how many of its tokens are done. ``rule`` names the rule that made the state, so a state is
never silently read by another rule (shapes, dtype and batch are read off the tensors themselves).

The ``signal_*``, ``chunk_*``, ``active_page`` and ``switch_history`` fields belong to a memory layer's complexity
gating and paging (``ttmem.layers.paging``): the engine neither reads nor writes them, the layer carries them from
call to call. They stay None when those options are off.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from torch import Tensor


@dataclass
class MemoryState:
    weights: tuple[Tensor, ...]                   # W_t per layer, [B, H, out, in]
    momentum: tuple[Tensor, ...] | None = None    # S_t, same shapes (rules with momentum)
    momentum_step: tuple[Tensor, ...] | None = None  # the momentum as the weights see it (Newton–Schulz rules)
    accum: tuple[Tensor, ...] | None = None       # A_t for rules with a retention view (W_ref = R(A_ref))
    ref: tuple[Tensor, ...] | None = None         # chunk-start weights while a chunk is in progress
    offset: int = 0                               # tokens done in the chunk in progress
    anchor: tuple[Tensor, ...] | None = None      # EWC-style anchor weights
    past_k: Tensor | None = None                  # Omega window: last window−1 keys [B, H, window−1, dk]
    past_v: Tensor | None = None                  # ... values [B, H, window−1, dv]
    past_threshold: Tensor | None = None          # ... Huber thresholds [B, H, window−1]
    past_mask: Tensor | None = None               # ... 1 where a past token exists [B, H, window−1]
    rule: str | None = None                       # name of the rule that made this state
    signal_inputs: Tensor | None = None           # the last inputs the complexity signal reads [B, ≤context, D]
    signal_offset: int = 0                        # tokens done in the current decision chunk
    chunk_complexity: Tensor | None = None        # running max of the signal over that chunk [B]
    chunk_phase: Tensor | None = None             # running Σ cos, Σ sin of its manifold-state angles [B, 2]
    chunk_lr_sum: Tensor | None = None            # running Σ of step sizes over that chunk (kinetics) [B, H]
    active_page: Tensor | None = None             # page that receives writes, per sample [B] (integer)
    switch_history: Tensor | None = None          # page changes at the last W − 1 boundaries (switch budget) [B, W−1]

    def _map(self, fn) -> MemoryState:
        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                changes[f.name] = tuple(fn(t) for t in value)
            elif isinstance(value, Tensor):
                changes[f.name] = fn(value)
        return replace(self, **changes)

    def detach(self) -> MemoryState:
        """Cut the autograd history (truncated backpropagation through time)."""
        return self._map(lambda t: t.detach())

    def to(self, *args, **kwargs) -> MemoryState:
        def move(t: Tensor) -> Tensor:  # integer fields (the active page) change device, never dtype
            moved = t.to(*args, **kwargs)
            return moved if t.is_floating_point() else moved.to(t.dtype)
        return self._map(move)

    @property
    def batch_size(self) -> int:
        return self.weights[0].shape[0]

    @property
    def heads(self) -> int:
        return self.weights[0].shape[1]

    @property
    def dtype(self):
        return self.weights[0].dtype
