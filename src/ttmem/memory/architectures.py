"""Memory architectures: the network M_W whose weights the inner loop trains.

Every architecture is a stack of bias-free linear layers, so each layer's per-token weight gradient is the
rank-one product g_i ⊗ x_i that the chunked engine exploits. Weights are plain tensors shaped
[..., out, in] (leading dims are batch and heads); nothing here owns parameters.

- ``linear``: M(k) = W k.
- ``mlp``: L >= 1 layers with an activation between them, optionally in the residual + norm form
  M(x) = x + LN(W_L σ(... σ(W_1 x))) with a parameter-free LayerNorm (so all memory weights stay linear maps),
  or the plain residual form M(x) = x + W_L σ(... σ(W_1 x)) (``residual``). The LayerNorm's backward multiplies
  the inner gradient by 1 / std of its input; with unit-norm keys and the 1/√fan-in initial weights that input
  is small and the gain large (about 11 at head width 32), so one write of step θ moves M(k) by more than θ.
- ``lowrank``: M(k) = U V k with rank r, i.e. a two-layer linear MLP (θMN(r)).

An MLP's hidden width is ``hidden`` when given (a layer that sizes its memory like its feed-forward block, e.g.
the continuum-memory levels), else round(expansion · dim_k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LN_EPS = 1e-5
ACTIVATIONS = ("gelu", "silu", "relu", "identity")


def activation(name: str, x: Tensor) -> Tensor:
    if name == "gelu":
        return F.gelu(x)
    if name == "silu":
        return F.silu(x)
    if name == "relu":
        return torch.relu(x)
    return x


def activation_derivative(name: str, x: Tensor) -> Tensor:
    """Closed-form σ'(x); differentiable, so the outer loop can train through it."""
    if name == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
        return cdf + x * pdf
    if name == "silu":
        s = torch.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    if name == "relu":
        return (x > 0).to(x.dtype)
    return torch.ones_like(x)


def activation_backward(name: str, grad: Tensor, x: Tensor) -> Tensor:
    """grad ⊙ σ'(x), as GELU's fused backward kernel for GELU (itself differentiable, so the outer loop still
    trains through it; SiLU's has no derivative in torch) and from ``activation_derivative`` otherwise."""
    if name == "gelu":
        return torch.ops.aten.gelu_backward(grad, x)
    if name == "identity":
        return grad
    return grad * activation_derivative(name, x)


def layer_norm(x: Tensor) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=LN_EPS)


def layer_norm_backward(x: Tensor, grad_out: Tensor, differentiable: bool = True) -> Tensor:
    """Gradient of a parameter-free LayerNorm at input ``x`` given the output gradient: the closed form, which
    autograd differentiates to any order, or with ``differentiable=False`` torch's fused kernel (two calls
    instead of a dozen; its own derivative is right only to first order, so only where none is taken)."""
    if not differentiable:
        shape = x.shape[-1:]
        _, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, None, None, LN_EPS)
        return torch.ops.aten.native_layer_norm_backward(grad_out, x, shape, mean, rstd, None, None,
                                                         [True, False, False])[0]
    mean = x.mean(-1, keepdim=True)
    inv_std = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + LN_EPS)
    y = (x - mean) * inv_std
    g = grad_out
    return inv_std * (g - g.mean(-1, keepdim=True) - y * (g * y).mean(-1, keepdim=True))


@dataclass(frozen=True)
class MemoryArchitecture:
    """What the memory network is. ``hidden`` (or ``expansion`` · dim_k) sets the MLP hidden width, ``rank`` the
    low-rank width."""

    kind: str = "linear"
    depth: int = 1
    expansion: float = 4.0
    hidden: int | None = None    # explicit MLP hidden width; None = round(expansion · dim_k)
    rank: int = 16
    activation: str = "gelu"
    residual_norm: bool = False  # M(x) = x + LN(h)
    residual: bool = False       # M(x) = x + h

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "mlp", "lowrank"):
            raise ValueError(f"architecture kind must be 'linear', 'mlp' or 'lowrank', got {self.kind!r}")
        if self.depth < 1:
            raise ValueError(f"architecture depth must be >= 1, got {self.depth}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"architecture activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.hidden is not None and (isinstance(self.hidden, bool) or not isinstance(self.hidden, int)
                                        or self.hidden < 1):
            raise ValueError(f"architecture hidden must be an integer >= 1 or None, got {self.hidden!r}")
        if self.kind == "lowrank" and self.rank < 1:
            raise ValueError(f"architecture rank must be >= 1, got {self.rank}")
        if self.residual and self.residual_norm:
            raise ValueError("architecture residual and residual_norm are exclusive (x + h or x + LN(h))")

    @property
    def act(self) -> str:
        return "identity" if self.kind == "lowrank" else self.activation

    def shapes(self, dim_k: int, dim_v: int) -> list[tuple[int, int]]:
        """(out, in) of each layer."""
        if (self.residual_norm or self.residual) and dim_k != dim_v:
            raise ValueError(f"residual memory needs dim_k == dim_v, got {dim_k} and {dim_v}")
        if self.kind == "linear" or (self.kind == "mlp" and self.depth == 1):
            return [(dim_v, dim_k)]
        if self.kind == "lowrank":
            return [(self.rank, dim_k), (dim_v, self.rank)]
        hidden = self.hidden if self.hidden is not None else max(1, int(round(self.expansion * dim_k)))
        return [(hidden, dim_k)] + [(hidden, hidden)] * (self.depth - 2) + [(dim_v, hidden)]

    def forward(self, weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
        """M_W(x): weights [..., out, in] per layer, x [..., N, in] -> [..., N, out]."""
        h = x
        for i, w in enumerate(weights):
            h = h @ w.mT
            if i < len(weights) - 1:
                h = activation(self.act, h)
        return self.output(x, h)

    def output(self, x: Tensor, h: Tensor) -> Tensor:
        """M(x) from the input and the last layer's output h: h, x + h or x + LN(h)."""
        if self.residual_norm:
            return x + layer_norm(h)
        return x + h if self.residual else h

    def forward_with_cache(self, weights: tuple[Tensor, ...], x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Like ``forward`` but also returns each layer's input and pre-activation (for the backward)."""
        inputs, pre = [], []
        h = x
        for i, w in enumerate(weights):
            inputs.append(h)
            a = h @ w.mT
            pre.append(a)
            h = activation(self.act, a) if i < len(weights) - 1 else a
        return self.output(x, h), inputs, pre

    def output_grads(self, weights: tuple[Tensor, ...], pre: list[Tensor], grad_out: Tensor,
                     differentiable: bool = True) -> list[Tensor]:
        """Per-token gradients of the loss w.r.t. each layer's output, g^l [..., N, out_l] (closed form).
        ``differentiable=False``: nothing will differentiate the result (a decode step without autograd), so
        fused kernels may stand in for the closed forms."""
        g = layer_norm_backward(pre[-1], grad_out, differentiable) if self.residual_norm else grad_out
        grads = [g]
        for i in range(len(weights) - 1, 0, -1):
            g = activation_backward(self.act, g @ weights[i], pre[i - 1])
            grads.append(g)
        return grads[::-1]

    def initial_weights(self, heads: int, dim_k: int, dim_v: int, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None, zero: bool = False) -> tuple[Tensor, ...]:
        """Deterministic initial weights [heads, out, in] per layer: zeros, or a fixed-seed scaled normal."""
        shapes = self.shapes(dim_k, dim_v)
        if zero:
            return tuple(torch.zeros(heads, o, i, dtype=dtype, device=device) for o, i in shapes)
        gen = torch.Generator().manual_seed(0)
        return tuple(
            (torch.randn(heads, o, i, generator=gen, dtype=torch.float64) / math.sqrt(i)).to(dtype=dtype, device=device)
            for o, i in shapes
        )
