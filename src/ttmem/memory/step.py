"""One token through the memory: the decoding step (the ``step()`` of state-space models).

Semantics are exactly the chunked engine's (``chunked.py``), specialised to one token: the token's gradient is
taken at the chunk-start weights ``ref`` (for per-token rules, the current weights; for ``forget_first`` rules,
those weights after the token's decay), momentum and forgetting advance once, and the read uses the new weights
(read after write). Nothing is padded and no coefficient matrix is built, so one step costs what the rule's
per-token FLOP formula says: for a linear memory 6·dk·dv (predict W k, rank-one gradient, read W q), for a
two-layer MLP memory h·(6·dk + 8·dv); a rule with ``self_targets`` adds one forward for its target M(v).
``read_at_chunk_start`` rules read the chunk-start weights ``ref`` instead of the new weights.

Rules with an Omega window, a retention view or an anchor keep earlier tokens' or accumulators' state that this
step does not model; ``step_applies`` says which rules it serves and the dispatcher sends the others through the
chunked engine with a one-token group (still no padding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ttmem.newton_schulz import newton_schulz

from .rules import MemoryRule
from .state import MemoryState


def step_applies(rule: MemoryRule, state: MemoryState) -> bool:
    """Whether ``memorize_token`` models every part of this rule's state."""
    return (rule.window == 1 and not rule.retention.has_view and rule.retention.anchor == 0
            and state.anchor is None)


def _rank_one_into(base: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """base + leftᵀ right for left [..., 1, m], right [..., 1, n], accumulated in place into ``base`` [..., m, n],
    which must be the caller's own: a fresh temporary (autograd keeps working: a product's backward does not need
    the value it overwrote) or a buffer given up to ``in_place`` decoding."""
    m, n = base.shape[-2:]
    base = base.contiguous()  # a no-op unless the buffer it was made from had another layout
    base.view(-1, m, n).baddbmm_(left.reshape(-1, 1, m).mT, right.reshape(-1, 1, n))
    return base


def memorize_token(rule: MemoryRule, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, keep: Tensor | None,
                   eta: Tensor | None, thr: Tensor | None, chunk: int, state: MemoryState, in_place: bool = False
                   ) -> tuple[Tensor, MemoryState]:
    """Engine layout with one time step: q, k [B, H, 1, dk], v [B, H, 1, dv], gates [B, H, 1] (keep = 1 − α,
    None meaning 1; eta None meaning 0). Returns out [B, H, 1, dv] and the state after the token.
    ``in_place`` (no autograd, the caller gives ``state`` up): the momentum buffers are decayed and updated in
    place where they are plain dense tensors (not for Newton–Schulz rules, whose two buffers may be one tensor)."""
    arch = rule.architecture
    ref = state.ref if state.ref is not None else state.weights
    at = ref  # where the token's gradient is taken
    if rule.forget_first and keep is not None:  # Gated DeltaNet: on the memory after this token's decay
        at = tuple(keep.unsqueeze(-1) * w for w in ref)
    pred, xs, pre = arch.forward_with_cache(at, k)
    target = arch.forward(at, v) if rule.self_targets else v
    gs = arch.output_grads(at, pre, rule.objective.grad(pred, target, thr), differentiable=torch.is_grad_enabled())
    # Per layer the token's scaled weight gradient −θ g xᵀ, as a matmul (so FLOP counters see the rank-one
    # product), with θ applied to the small factor g rather than to the weight-sized product.
    neg_lr = -lr.unsqueeze(-1)
    factors = tuple(neg_lr * g for g in gs)  # [B, H, 1, out]
    momentum, momentum_step = state.momentum, state.momentum_step
    if momentum is not None and eta is not None and momentum_step is None:
        # η S + step, the rank-one product accumulated into the decayed buffer (no separate step tensor)
        keep_m = eta.unsqueeze(-1)
        own = in_place and all(s.is_contiguous() for s in momentum)
        momentum = tuple(_rank_one_into(s.mul_(keep_m) if own else s * keep_m, f, x)
                         for s, f, x in zip(momentum, factors, xs))
        step = momentum
    else:
        step = tuple(f.mT @ x for f, x in zip(factors, xs))
        if momentum is not None and eta is None:  # no momentum carried over: the buffer is this token's step
            momentum = step
            momentum_step = None if momentum_step is None else step
        elif momentum is not None:
            # Newton–Schulz rules: both buffers take the step, formed once; the weights see the orthogonalised one
            keep_m = eta.unsqueeze(-1)
            momentum = tuple(torch.addcmul(u, s, keep_m) for s, u in zip(momentum, step))
            momentum_step = tuple(torch.addcmul(u, s, keep_m) for s, u in zip(momentum_step, step))
            step = momentum_step
    if keep is None:
        weights = tuple(w + s for w, s in zip(state.weights, step))
    else:
        f = keep.unsqueeze(-1)
        weights = tuple(torch.addcmul(s, w, f) for w, s in zip(state.weights, step))
    out = arch.forward(ref if rule.read_at_chunk_start else weights, q)

    offset = state.offset + 1
    if offset == chunk:  # chunk complete: new reference weights, orthogonalised momentum
        offset, ref = 0, None
        if rule.newton_schulz_steps:
            momentum_step = tuple(newton_schulz(s, rule.newton_schulz_steps, kind="cubic") for s in momentum)
    new_state = MemoryState(weights=weights, momentum=momentum, momentum_step=momentum_step,
                            ref=None if offset == 0 else ref, offset=offset, rule=state.rule)
    return out, new_state
