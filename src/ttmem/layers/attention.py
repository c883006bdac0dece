"""Causal self-attention: full or sliding window, rotary positions, persistent tokens, KV cache.

Design choices:
- Scores come from ``torch.nn.functional.scaled_dot_product_attention`` (SDPA).
- Every key carries an absolute position and a query at position i sees the keys with
  ``i - window < j <= i`` (``window=None``: all ``j <= i``). One rule serves full attention,
  sliding windows, cached decoding and extra key streams that share the positions of the tokens
  they came from (Titans MAC attends to one retrieved-memory token per segment token).
- Persistent tokens are learned vectors in model space, projected by the same key/value maps,
  carry no rotary phase and are visible to every query (Titans' persistent memory).
- Long sliding-window inputs are processed in query blocks that slice only the keys the block can
  see, so memory stays O(T * window) instead of O(T^2).
- The cache is functional: ``forward`` returns a new ``KVCache``. Full-attention caches append into
  a shared, geometrically grown buffer (amortised O(1) per token); an older cache of the same
  stream stays valid because a cache only writes in place when it is the newest view of its
  buffer. Sliding-window caches keep only the last ``window - 1`` positions (bounded memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttmem.fused import declare_row_blocks


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (rotate-half convention) on the last dimension."""

    def __init__(self, dim_head: int, base: float = 10000.0) -> None:
        super().__init__()
        if dim_head % 2 != 0:
            raise ValueError(f"dim_head must be even for rotary embeddings, got {dim_head}")
        inv_freq = base ** (-torch.arange(0, dim_head, 2, dtype=torch.float32) / dim_head)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x: [B, H, T, d]; positions: [T] integer positions. Returns x rotated, same shape."""
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]  # [T, d/2]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


@dataclass
class _KVStore:
    """Buffers shared by successive caches of one stream; ``filled`` = entries written so far."""

    keys: Tensor  # [B, H, capacity, d]
    values: Tensor  # [B, H, capacity, d]
    positions: Tensor  # [capacity]
    filled: int


@dataclass
class KVCache:
    """Keys and values (rotary already applied) of the tokens an attention layer has seen.

    ``next_position`` is the position of the next input token; ``length`` the number of cached entries.
    """

    store: _KVStore
    length: int
    next_position: int

    @classmethod
    def from_tensors(cls, keys: Tensor, values: Tensor, positions: Tensor) -> KVCache:
        """A cache holding the given entries: keys, values [B, H, N, d] (rotary applied), positions [N]."""
        if keys.dim() != 4 or values.shape[:3] != keys.shape[:3] or positions.shape != (keys.shape[2],):
            raise ValueError(
                "keys and values must be [batch, heads, entries, dim] with matching leading dims and positions "
                f"[entries]; got {tuple(keys.shape)}, {tuple(values.shape)}, {tuple(positions.shape)}"
            )
        next_position = int(positions.max()) + 1 if positions.numel() else 0
        return cls(_KVStore(keys, values, positions, keys.shape[2]), keys.shape[2], next_position)

    @property
    def keys(self) -> Tensor:
        """[B, H, length, d]"""
        return self.store.keys[:, :, : self.length]

    @property
    def values(self) -> Tensor:
        """[B, H, length, d]"""
        return self.store.values[:, :, : self.length]

    @property
    def positions(self) -> Tensor:
        """[length] absolute positions of the cached entries."""
        return self.store.positions[: self.length]

    def detach(self) -> KVCache:
        """The same cache cut from the autograd graph (truncated backpropagation through time)."""
        store = _KVStore(self.keys.detach(), self.values.detach(), self.positions, self.length)
        return KVCache(store, self.length, self.next_position)


def _append(cache: KVCache | None, keys: Tensor, values: Tensor, positions: Tensor, next_position: int,
            grow: bool) -> KVCache:
    """Cache holding the old entries followed by the new ones (written in place when safe, see module doc)."""
    new_len = keys.shape[2]
    if cache is None:
        return KVCache(_KVStore(keys, values, positions, new_len), new_len, next_position)
    total = cache.length + new_len
    if torch.is_grad_enabled() and (keys.requires_grad or cache.keys.requires_grad):
        # Out of place, so that autograd sees an ordinary concatenation.
        store = _KVStore(
            torch.cat((cache.keys, keys), dim=2),
            torch.cat((cache.values, values), dim=2),
            torch.cat((cache.positions, positions)),
            total,
        )
        return KVCache(store, total, next_position)
    store = cache.store
    if not (grow and cache.length == store.filled and total <= store.keys.shape[2]):
        capacity = max(2 * total, 64) if grow else total
        batch, heads, _, _ = keys.shape
        store = _KVStore(
            keys.new_empty(batch, heads, capacity, keys.shape[-1]),
            values.new_empty(batch, heads, capacity, values.shape[-1]),
            positions.new_empty(capacity),
            cache.length,
        )
        store.keys[:, :, : cache.length] = cache.keys
        store.values[:, :, : cache.length] = cache.values
        store.positions[: cache.length] = cache.positions
    store.keys[:, :, cache.length : total] = keys
    store.values[:, :, cache.length : total] = values
    store.positions[cache.length : total] = positions
    store.filled = total
    return KVCache(store, total, next_position)


def _trim(cache: KVCache, keep_from: int, consecutive: bool) -> KVCache:
    """Drop the entries with position < keep_from (sliding window eviction). ``consecutive``: the entries hold
    consecutive positions ending at ``next_position − 1``, so the count to keep is known on the host."""
    if consecutive:
        keep = min(cache.length, cache.next_position - keep_from)
        if keep == cache.length:
            return cache
        drop = cache.length - keep
        store = _KVStore(cache.keys[:, :, drop:], cache.values[:, :, drop:], cache.positions[drop:], keep)
        return KVCache(store, keep, cache.next_position)
    keep = (cache.positions >= keep_from).nonzero().squeeze(-1)
    if keep.numel() == cache.length:
        return cache
    store = _KVStore(cache.keys[:, :, keep], cache.values[:, :, keep], cache.positions[keep], keep.numel())
    return KVCache(store, keep.numel(), cache.next_position)


def visibility_mask(query_positions: Tensor, key_positions: Tensor, window: int | None) -> Tensor:
    """Boolean [Tq, Tk]: True where a query may attend to a key (causal, optionally windowed)."""
    diff = query_positions[:, None] - key_positions[None, :]
    mask = diff >= 0
    if window is not None:
        mask &= diff < window
    return mask


class Attention(nn.Module):
    """Multi-head causal self-attention.

    Args:
        dim: model width. heads: number of heads. dim_head: per-head width (default dim // heads).
        window: sliding-window size in tokens (a query sees itself and the window - 1 previous
            tokens); None = full causal attention.
        persistent_tokens: number of learned always-visible tokens (0 = none).
        block_size: query block length for long sliding-window inputs.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int | None = None,
        window: int | None = None,
        persistent_tokens: int = 0,
        rotary_base: float = 10000.0,
        block_size: int = 256,
    ) -> None:
        super().__init__()
        if dim <= 0 or heads <= 0:
            raise ValueError(f"dim and heads must be positive, got dim={dim}, heads={heads}")
        if dim_head is None:
            if dim % heads != 0:
                raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}) when dim_head is None")
            dim_head = dim // heads
        if window is not None and window < 1:
            raise ValueError(f"window must be a positive number of tokens or None, got {window}")
        if persistent_tokens < 0:
            raise ValueError(f"persistent_tokens must be >= 0, got {persistent_tokens}")
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.heads, self.dim_head, self.window, self.block_size = heads, dim_head, window, block_size
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        declare_row_blocks(self.to_qkv, [inner] * 3)  # q, k, v: three matrices (ttmem.fused)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.rotary = RotaryEmbedding(dim_head, rotary_base)
        self.persistent = (
            nn.Parameter(torch.randn(persistent_tokens, dim) * 0.02) if persistent_tokens else None
        )

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.dim_head).transpose(1, 2)

    def _keys_values(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of x as [B, H, T, d], rotary applied to q and k."""
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        return self.rotary(q, positions), self.rotary(k, positions), v

    def _kv_projection(self, x: Tensor) -> Tensor:
        """The key and value part of the q/k/v projection, [..., 2 · heads · dim_head]: no queries nobody reads."""
        return F.linear(x, self.to_qkv.weight[self.heads * self.dim_head:])

    def _keys_values_only(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """k, v of x as [B, H, T, d], rotary applied to k."""
        k, v = self._kv_projection(x).chunk(2, dim=-1)
        return self.rotary(self._split_heads(k), positions), self._split_heads(v)

    def _persistent_keys_values(self, batch: int) -> tuple[Tensor, Tensor] | None:
        if self.persistent is None:
            return None
        # Project the parameter itself, not a view of it (a view made under no_grad has requires_grad set but no
        # gradient function, which hooks such as FlopCounterMode's cannot handle); the batch dim comes after.
        k, v = self._kv_projection(self.persistent)[None].chunk(2, dim=-1)
        k, v = self._split_heads(k), self._split_heads(v)
        return k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)

    def forward(
        self, x: Tensor, cache: KVCache | None = None, memory_tokens: Tensor | None = None
    ) -> tuple[Tensor, KVCache]:
        """x: [B, T, dim] -> (y [B, T, dim], cache covering everything seen so far).

        memory_tokens: optional [B, T, dim] extra key/value tokens, one per input token and sharing
        its position (visible under the same causal/window rule).
        """
        if x.dim() != 3:
            raise ValueError(f"x must be [batch, time, dim], got shape {tuple(x.shape)}")
        if memory_tokens is not None and memory_tokens.shape != x.shape:
            raise ValueError(
                f"memory_tokens must have the shape of x {tuple(x.shape)}, got {tuple(memory_tokens.shape)}"
            )
        batch, length, _ = x.shape
        start = 0 if cache is None else cache.next_position
        positions = torch.arange(start, start + length, device=x.device)
        q, k, v = self._keys_values(x, positions)
        new_positions = positions
        if memory_tokens is not None:
            k_mem, v_mem = self._keys_values_only(memory_tokens, positions)
            k, v = torch.cat((k_mem, k), dim=2), torch.cat((v_mem, v), dim=2)
            new_positions = torch.cat((positions, positions))
        full = _append(cache, k, v, new_positions, start + length, grow=self.window is None)
        persistent = self._persistent_keys_values(batch)
        if cache is None and memory_tokens is None and persistent is None and (
            self.window is None or self.window >= length
        ):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.window is not None and memory_tokens is None and length > self.block_size:
            out = self._blockwise(q, positions, full, persistent)
        else:
            out = self._attend(q, positions, full.keys, full.values, full.positions, persistent)
        new_cache = full
        if self.window is not None:
            consecutive = memory_tokens is None and (cache is None or cache.length <= full.next_position - length)
            new_cache = _trim(full, full.next_position - self.window + 1, consecutive)
        out = out.transpose(1, 2).reshape(batch, length, self.heads * self.dim_head)
        return self.to_out(out), new_cache

    def _attend(
        self,
        q: Tensor,
        query_positions: Tensor,
        keys: Tensor,
        values: Tensor,
        key_positions: Tensor,
        persistent: tuple[Tensor, Tensor] | None,
    ) -> Tensor:
        """Masked SDPA of q [B, H, Tq, d] over [persistent ‖ keys]."""
        if persistent is not None:
            keys, values = torch.cat((persistent[0], keys), dim=2), torch.cat((persistent[1], values), dim=2)
        if q.shape[2] == 1:
            # One query (decoding) sees every key it is given: caches hold only earlier positions, and window
            # caches are trimmed to the window. No mask, and no look at its values (a host sync on a GPU).
            return F.scaled_dot_product_attention(q, keys, values)
        mask = visibility_mask(query_positions, key_positions, self.window)
        if persistent is not None:
            mask = torch.cat((mask.new_ones(mask.shape[0], persistent[0].shape[2]), mask), dim=1)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)

    def _blockwise(
        self, q: Tensor, positions: Tensor, full: KVCache, persistent: tuple[Tensor, Tensor] | None
    ) -> Tensor:
        """Sliding-window attention in query blocks. Without memory tokens the cached keys hold consecutive
        positions ending at the last query, so each block's key range is known on the host (no device reads)."""
        key_positions = full.positions
        first_key = full.next_position - full.length  # position of the first cached key
        first_query = full.next_position - q.shape[2]
        outputs = []
        for begin in range(0, q.shape[2], self.block_size):
            block_positions = positions[begin : begin + self.block_size]
            block_first = first_query + begin
            block_last = block_first + block_positions.shape[0] - 1
            lo = max(0, block_first - self.window + 1 - first_key)
            hi = block_last + 1 - first_key
            outputs.append(
                self._attend(
                    q[:, :, begin : begin + self.block_size],
                    block_positions,
                    full.keys[:, :, lo:hi],
                    full.values[:, :, lo:hi],
                    key_positions[lo:hi],
                    persistent,
                )
            )
        return torch.cat(outputs, dim=2)
