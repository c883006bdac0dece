"""Analytic per-token FLOPs of decode steps, and a measured counterpart.

Convention (the one torch.utils.flop_counter.FlopCounterMode uses): a matmul of [m, k] by [k, n] costs
2 m k n FLOPs; element-wise work (activations, gates, decay, bias adds, softmax) is not counted. The
formulas below count exactly the matmul work of one decode step at batch 1 and are checked in the tests
against FlopCounterMode on real modules. With heads H, head sizes dk, dv:

- θMN:               H · 6 dk dv            (predict W k, rank-one gradient (Wk - v) kᵀ, read W q)
- θMN(r):            H · r (6 dk + 8 dv)    (factors U [dv, r], V [r, dk]; gradient on both)
- Titans MLP memory: H · h (6 dk + 8 dv)    (two layers, hidden size h; forward, closed-form backward, read)
- KV attention:      H · 4 n dh             (n = keys attended, i.e. cache length after appending the token)
- normalised linear attention: H · (4 dk dv + 2 dk)   (state update, read, normaliser)
Projections of a layer (q, k, v, out) add 8 d².

``measure_flops`` runs any callable under FlopCounterMode, so whole models can be audited the same way;
it adds formulas for the kernels FlopCounterMode itself does not count (the CPU attention kernel and the
in-place batched product).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, baddbmm_flop, sdpa_flop_count


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # Same formula as torch's GPU attention kernels (full score rectangle, causal masking not discounted).
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _inplace_baddbmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return baddbmm_flop(self_shape, a_shape, b_shape)


# FlopCounterMode's registry misses the CPU flash-attention kernel that scaled_dot_product_attention
# dispatches to on CPU and the in-place batched product (it would count 0 FLOPs for them).
_EXTRA_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten.baddbmm_: _inplace_baddbmm_flops,
}


def _positive(**kwargs: int) -> None:
    for name, value in kwargs.items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def linear_flops(in_features: int, out_features: int) -> int:
    """One token through a dense layer."""
    _positive(in_features=in_features, out_features=out_features)
    return 2 * in_features * out_features


def theta_memory_flops(dim_k: int, dim_v: int, heads: int = 1) -> int:
    """θMN core: O(dk dv) per token, independent of the context length."""
    _positive(dim_k=dim_k, dim_v=dim_v, heads=heads)
    return heads * 6 * dim_k * dim_v


def theta_lowrank_flops(dim_k: int, dim_v: int, rank: int, heads: int = 1) -> int:
    """θMN(r) core: O(r (dk + dv)) per token."""
    _positive(dim_k=dim_k, dim_v=dim_v, rank=rank, heads=heads)
    return heads * rank * (6 * dim_k + 8 * dim_v)


def titans_mlp_flops(dim_k: int, dim_v: int, hidden: int, heads: int = 1) -> int:
    """Two-layer MLP memory core: O(hidden (dk + dv)) per token."""
    _positive(dim_k=dim_k, dim_v=dim_v, hidden=hidden, heads=heads)
    return heads * hidden * (6 * dim_k + 8 * dim_v)


def kv_attention_flops(context: int, dim_head: int, heads: int = 1) -> int:
    """Softmax attention of one query over ``context`` cached keys/values: O(n d)."""
    _positive(context=context, dim_head=dim_head, heads=heads)
    return heads * 4 * context * dim_head


def normalized_linear_attention_flops(dim_k: int, dim_v: int, heads: int = 1) -> int:
    """Normalised linear attention core (elu + 1 features and a normaliser): O(dk dv) per token."""
    _positive(dim_k=dim_k, dim_v=dim_v, heads=heads)
    return heads * (4 * dim_k * dim_v + 2 * dim_k)


def decoder_step_flops(kind: str, dim: int, heads: int = 1, context: int = 0, rank: int = 8, hidden: int = 32) -> int:
    """Per-token FLOPs of one ``reference_layers`` decoder step (projections + core).

    context: tokens already cached (KV attention attends to context + 1 keys); ignored by the others.
    """
    _positive(dim=dim, heads=heads)
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
    dh = dim // heads
    cores: dict[str, Callable[[], int]] = {
        "theta": lambda: theta_memory_flops(dh, dh, heads),
        "theta_lowrank": lambda: theta_lowrank_flops(dh, dh, rank, heads),
        "titans_mlp": lambda: titans_mlp_flops(dh, dh, hidden, heads),
        "kv_attention": lambda: kv_attention_flops(context + 1, dh, heads),
        "normalized_linear_attention": lambda: normalized_linear_attention_flops(dh, dh, heads),
    }
    if kind not in cores:
        raise ValueError(f"kind must be one of {sorted(cores)}, got {kind!r}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    return linear_flops(dim, 3 * dim) + linear_flops(dim, dim) + cores[kind]()


def measure_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs FlopCounterMode records while ``fn()`` runs."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        fn()
    return int(counter.get_total_flops())
