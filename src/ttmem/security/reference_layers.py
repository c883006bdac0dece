"""Single-layer decoders, one token at a time.

They exist so that the timing and FLOP instruments can be checked on layers whose work is known,
independently of any model preset: each module has ``init_state(batch, context=0)`` and
``step(x [B, d], state) -> (y [B, d], state)``, with q/k/v/out projections around a core.

The memory cores are the memory engine's one-token step (``ttmem.memory``, ``impl="step"``) with a constant
step size and unit keys; the engine writes each rank-one gradient as a matmul of a column by a row, so
FlopCounterMode sees every product. States are plain tensors, as the engine's weights [B, H, out, in].

- ThetaMemoryDecoder: the ``theta`` rule (θMN), linear memory W [B, H, dv, dk], O(d²).
- LowRankThetaDecoder: the ``theta_lowrank`` rule (θMN(r)), W = U V with U [dv, r], V [r, dk], O(r d).
- TitansMLPDecoder: a two-layer SiLU MLP memory, one ℓ2 gradient step per token (a rule instance, no
  momentum or forgetting), O(hidden · d).
- KVAttentionDecoder: softmax attention over a key/value cache that grows by one token per step, O(n d).
- NormalizedLinearAttentionDecoder: a toy reference, not an engine rule: linear attention with the elu + 1
  feature map and its normaliser (Katharopoulos et al.), a [dk, dv] state and a [dk] normaliser, O(d²). The
  engine's ``linear_attention`` rule is the unnormalised form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ttmem.memory import MemoryArchitecture, MemoryRule, MemoryState, Objective, get_rule, run_memory


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


def _engine_step(rule: MemoryRule, q: Tensor, k: Tensor, v: Tensor, lr: float,
                 weights: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One token through the engine's step: q, k, v [B, H, d]; weights [B, H, out, in] per layer.
    Returns y [B, H, dv] (read after write) and the new weights."""
    state = MemoryState(weights=weights, rule=rule.name)
    step = q.new_full((*q.shape[:2], 1), lr)
    y, state = run_memory(rule, q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), step, None, None, None, 1, state,
                          impl="step")
    return y.squeeze(2), state.weights


class ThetaMemoryDecoder(_Heads):
    """θMN: W <- W - lr (W k - v) kᵀ, y = W q (read after write); keys unit-norm so lr in [0, 1] is stable."""

    rule = get_rule("theta")

    def __init__(self, dim: int, heads: int = 1, lr: float = 0.5) -> None:
        super().__init__(dim, heads)
        self.lr = lr

    def init_state(self, batch: int, context: int = 0) -> Tensor:
        return torch.zeros(batch, self.heads, self.dim_head, self.dim_head)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        q, k, v = self.split(x)
        y, (state,) = _engine_step(self.rule, q, F.normalize(k, dim=-1), v, self.lr, (state,))
        return self.merge(y), state


class LowRankThetaDecoder(_Heads):
    """θMN(r): memory U V of rank r; gradient step on both factors, O(r d) per token. State (U, V)."""

    def __init__(self, dim: int, heads: int = 1, rank: int = 8, lr: float = 0.5) -> None:
        super().__init__(dim, heads)
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        self.rank, self.lr = rank, lr
        self.rule = get_rule("theta_lowrank").replace(architecture=MemoryArchitecture(kind="lowrank", rank=rank))

    def init_state(self, batch: int, context: int = 0) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(0)
        u = torch.randn(batch, self.heads, self.dim_head, self.rank, generator=g) / self.rank**0.5
        v = torch.randn(batch, self.heads, self.rank, self.dim_head, generator=g) / self.dim_head**0.5
        return u, v

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self.split(x)
        u, w = state
        y, (w, u) = _engine_step(self.rule, q, F.normalize(k, dim=-1), v, self.lr, (w, u))  # engine: V first
        return self.merge(y), (u, w)


class TitansMLPDecoder(_Heads):
    """Two-layer MLP memory M(k) = W2 silu(W1 k), one ℓ2 gradient step per token. State (W1, W2)."""

    def __init__(self, dim: int, heads: int = 1, hidden: int = 32, lr: float = 0.1) -> None:
        super().__init__(dim, heads)
        self.hidden, self.lr = hidden, lr
        self.rule = MemoryRule("titans_mlp", MemoryArchitecture(kind="mlp", depth=2, hidden=hidden, activation="silu"),
                               Objective("l2"), per_token=True)

    def init_state(self, batch: int, context: int = 0) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(0)
        w1 = torch.randn(batch, self.heads, self.hidden, self.dim_head, generator=g) / self.dim_head**0.5
        w2 = torch.randn(batch, self.heads, self.dim_head, self.hidden, generator=g) / self.hidden**0.5
        return w1, w2

    def step(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self.split(x)
        y, state = _engine_step(self.rule, q, F.normalize(k, dim=-1), v, self.lr, state)
        return self.merge(y), state


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


class NormalizedLinearAttentionDecoder(_Heads):
    """Toy reference (not an engine rule): y = φ(q)ᵀ S / φ(q)ᵀ z with S += φ(k) vᵀ, z += φ(k); φ = elu + 1."""

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
    "normalized_linear_attention": NormalizedLinearAttentionDecoder,
}
