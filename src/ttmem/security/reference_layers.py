"""Single-layer decoders built from plain torch ops, one token at a time.

They exist so that the timing and FLOP instruments can be checked on layers whose work is known,
independently of any model preset: each module has ``init_state(batch, context=0)`` and
``step(x [B, d], state) -> (y [B, d], state)``. Rank-one gradient terms are written as matmuls of
a column by a row (as a batched engine computes them), so FlopCounterMode sees every product.

- ThetaMemoryDecoder: θMN, linear memory W [B, H, dv, dk], one ℓ2 gradient step per token, O(d²).
- LowRankThetaDecoder: θMN(r), W = U V with U [dv, r], V [r, dk], one gradient step on U and V, O(r d).
- TitansMLPDecoder: two-layer MLP memory (SiLU), one gradient step per token, O(hidden · d).
- KVAttentionDecoder: softmax attention over a key/value cache that grows by one token per step, O(n d).
- LinearAttentionDecoder: normalised linear attention with a [dk, dv] state, O(d²).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_x(x: Tensor, dim: int) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"x must be a [batch, {dim}] tensor, got {getattr(x, 'shape', type(x))}")


class _Heads(nn.Module):
    """q/k/v/out projections shared by every decoder."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim <= 0 or heads <= 0 or dim % heads:
            raise ValueError(f"dim ({dim}) must be a positive multiple of heads ({heads})")
        self.dim, self.heads, self.dim_head = dim, heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, d] -> three [B, H, dh] tensors."""
        _check_x(x, self.dim)
        q, k, v = self.qkv(x).view(x.shape[0], 3, self.heads, self.dim_head).unbind(1)
        return q, k, v

    def merge(self, y: Tensor) -> Tensor:
        return self.out(y.reshape(y.shape[0], self.dim))


class ThetaMemoryDecoder(_Heads):
    """θMN: W <- W - lr (W k - v) kᵀ, y = W q (read after write); keys unit-norm so lr in [0, 1] is stable."""

    def __init__(self, dim: int, heads: int = 1, lr: float = 0.5) -> None:
        super().__init__(dim, heads)
        self.lr = lr

    def init_state(self, batch: int, context: int = 0) -> Tensor:
        return torch.zeros(batch, self.heads, self.dim_head, self.dim_head)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        q, k, v = self.split(x)
        k = F.normalize(k, dim=-1)
        err = (state @ k.unsqueeze(-1)).squeeze(-1) - v  # [B, H, dv]
        state = state - self.lr * (err.unsqueeze(-1) @ k.unsqueeze(-2))
        return self.merge((state @ q.unsqueeze(-1)).squeeze(-1)), state


class LowRankThetaDecoder(_Heads):
    """θMN(r): memory U V of rank r; gradient step on both factors, O(r d) per token."""

    def __init__(self, dim: int, heads: int = 1, rank: int = 8, lr: float = 0.5) -> None:
        super().__init__(dim, heads)
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        self.rank, self.lr = rank, lr

    def init_state(self, batch: int, context: int = 0) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(0)
        u = torch.randn(batch, self.heads, self.dim_head, self.rank, generator=g) / self.rank**0.5
        v = torch.randn(batch, self.heads, self.rank, self.dim_head, generator=g) / self.dim_head**0.5
        return u, v

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self.split(x)
        k = F.normalize(k, dim=-1).unsqueeze(-1)  # [B, H, dk, 1]
        u, w = state
        hidden = w @ k  # [B, H, r, 1]
        err = u @ hidden - v.unsqueeze(-1)  # [B, H, dv, 1]
        grad_u = err @ hidden.transpose(-1, -2)
        grad_w = (u.transpose(-1, -2) @ err) @ k.transpose(-1, -2)
        u, w = u - self.lr * grad_u, w - self.lr * grad_w
        y = (u @ (w @ q.unsqueeze(-1))).squeeze(-1)
        return self.merge(y), (u, w)


class TitansMLPDecoder(_Heads):
    """Two-layer MLP memory M(k) = W2 silu(W1 k), one ℓ2 gradient step per token (closed-form backward)."""

    def __init__(self, dim: int, heads: int = 1, hidden: int = 32, lr: float = 0.1) -> None:
        super().__init__(dim, heads)
        self.hidden, self.lr = hidden, lr

    def init_state(self, batch: int, context: int = 0) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(0)
        w1 = torch.randn(batch, self.heads, self.hidden, self.dim_head, generator=g) / self.dim_head**0.5
        w2 = torch.randn(batch, self.heads, self.dim_head, self.hidden, generator=g) / self.hidden**0.5
        return w1, w2

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self.split(x)
        k = F.normalize(k, dim=-1).unsqueeze(-1)
        w1, w2 = state
        pre = w1 @ k
        act = F.silu(pre)
        err = w2 @ act - v.unsqueeze(-1)
        grad_w2 = err @ act.transpose(-1, -2)
        sig = torch.sigmoid(pre)
        grad_pre = (w2.transpose(-1, -2) @ err) * (sig * (1 + pre * (1 - sig)))  # silu'(pre)
        grad_w1 = grad_pre @ k.transpose(-1, -2)
        w1, w2 = w1 - self.lr * grad_w1, w2 - self.lr * grad_w2
        y = (w2 @ F.silu(w1 @ q.unsqueeze(-1))).squeeze(-1)
        return self.merge(y), (w1, w2)


class KVAttentionDecoder(_Heads):
    """Causal softmax attention with a key/value cache; state = (K, V) each [B, H, n, dh]."""

    def init_state(self, batch: int, context: int = 0) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(0)
        shape = (batch, self.heads, context, self.dim_head)
        return torch.randn(shape, generator=g), torch.randn(shape, generator=g)

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self.split(x)
        keys = torch.cat([state[0], k.unsqueeze(2)], dim=2)
        values = torch.cat([state[1], v.unsqueeze(2)], dim=2)
        y = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values).squeeze(2)
        return self.merge(y), (keys, values)


class LinearAttentionDecoder(_Heads):
    """y = φ(q)ᵀ S / φ(q)ᵀ z with S += φ(k) vᵀ, z += φ(k); φ = elu + 1."""

    def init_state(self, batch: int, context: int = 0) -> tuple[Tensor, Tensor]:
        return (
            torch.zeros(batch, self.heads, self.dim_head, self.dim_head),
            torch.zeros(batch, self.heads, self.dim_head, 1),
        )

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self.split(x)
        fq, fk = (F.elu(q) + 1).unsqueeze(-2), (F.elu(k) + 1).unsqueeze(-1)  # [B,H,1,dk], [B,H,dk,1]
        s = state[0] + fk @ v.unsqueeze(-2)
        z = state[1] + fk
        y = (fq @ s) / (fq @ z + 1e-6)
        return self.merge(y.squeeze(-2)), (s, z)


DECODERS: dict[str, type[_Heads]] = {
    "theta": ThetaMemoryDecoder,
    "theta_lowrank": LowRankThetaDecoder,
    "titans_mlp": TitansMLPDecoder,
    "kv_attention": KVAttentionDecoder,
    "linear_attention": LinearAttentionDecoder,
}
