"""The chunk-end state update with as few weight-sized passes as possible.

At every chunk boundary the engine forms, per memory layer and per (batch, head),

    W_new = Σ_j s_j X_j + Gᵀ Y          (s_j scalars, X_j and W_new weight-sized, G and Y chunk-sized)

e.g. ``β W + c S − Gᵀ diag(a) X``. Written with plain operators, autograd keeps one weight-sized temporary per
product and per sum, and its backward adds as many again, plus a weight-sized product and a reduction for every
scalar's gradient. When the memory's weights are larger than a chunk's activations (small chunks, wide MLP
memories) those passes dominate the engine's time. Here the scaled sum is one autograd node that writes its
result once, and the matmul accumulates into that result in place (``baddbmm``). The backward is built from
differentiable operations, so higher-order gradients still work.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _flat(x: Tensor) -> Tensor:
    """[..., m, n] -> [prod(...), m, n] (a view where the layout allows)."""
    return x.reshape(-1, *x.shape[-2:])


def _batched_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_{m,n} a ⊙ b per leading index, [..., m, n] -> [..., 1, 1]."""
    return (a * b).sum((-2, -1), keepdim=True)


def _reduce_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to an input's shape."""
    if grad.shape == shape:
        return grad
    extra = grad.dim() - len(shape)
    dims = tuple(range(extra)) + tuple(i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1)
    return grad.sum(dims, keepdim=True).view(shape) if dims else grad


class _ScaledSum(torch.autograd.Function):
    """Σ_j s_j X_j for pairs (s_j [..., 1, 1], X_j [..., m, n]) given flat as s_0, X_0, s_1, X_1, ..."""

    @staticmethod
    def forward(ctx, *pairs: Tensor) -> Tensor:
        scales, mats = pairs[0::2], pairs[1::2]
        out = mats[0] * scales[0]
        for s, x in zip(scales[1:], mats[1:]):
            out.addcmul_(x, s)
        ctx.save_for_backward(*pairs)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        pairs = ctx.saved_tensors
        grads: list[Tensor | None] = []
        for j in range(0, len(pairs), 2):
            s, x = pairs[j], pairs[j + 1]
            grad_s = _reduce_to(_batched_dot(grad, x), s.shape) if ctx.needs_input_grad[j] else None
            grad_x = _reduce_to(grad * s, x.shape) if ctx.needs_input_grad[j + 1] else None
            grads += [grad_s, grad_x]
        return tuple(grads)


def scaled_sum(*pairs: tuple[Tensor, Tensor]) -> Tensor:
    """Σ_j s_j X_j with s_j [..., 1, 1] and X_j [..., m, n] (broadcast over leading dims)."""
    if not pairs:
        raise ValueError("scaled_sum needs at least one (scale, tensor) pair")
    lead = torch.broadcast_shapes(*(s.shape[:-2] for s, _ in pairs), *(x.shape[:-2] for _, x in pairs))
    mats = [(s, x.expand(*lead, *x.shape[-2:])) for s, x in pairs]
    return _ScaledSum.apply(*[t for pair in mats for t in pair])


def rank_update(base: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """base + leftᵀ right: base [..., m, n], left [..., c, m], right [..., c, n]; the matmul accumulates into a copy
    of ``base`` in one pass."""
    lead = base.shape[:-2]
    out = torch.baddbmm(_flat(base), _flat(left).mT, _flat(right.expand(*lead, *right.shape[-2:])))
    return out.view(base.shape)
