"""The token-by-token reference: the semantics of docs/design.md written out literally with plain autograd.

No dual form, no coefficient matrices, no closed-form gradients: each token's gradient comes from
``torch.autograd.grad`` of the objective's own loss at the chunk-start weights. Slow by design; it exists to prove
the fast paths exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ttmem.newton_schulz import newton_schulz

from .rules import MemoryRule
from .state import MemoryState


def _token_gradient(rule: MemoryRule, ref: tuple[Tensor, ...], sources: list, anchor) -> tuple[Tensor, ...]:
    """∇_W [Σ_lag decay^lag ℓ(M_W(k_{t−lag}), v̂_{t−lag}) + ½λ‖W − anchor‖²] at W = ref, per batch and head;
    v̂ = v, or M_ref(v) held constant for ``self_targets`` rules."""
    arch, objective = rule.architecture, rule.objective
    with torch.enable_grad():
        # A fresh node per call: the gradient counts only the paths through it, not through the targets M_ref(v).
        w = tuple(x.view_as(x) if x.requires_grad else x.detach().requires_grad_() for x in ref)
        loss = 0.0
        for lag, (k, v, thr, mask) in enumerate(reversed(sources)):
            pred = arch.forward(w, k.unsqueeze(-2)).squeeze(-2)
            if rule.self_targets:
                v = arch.forward(ref, v.unsqueeze(-2)).squeeze(-2)
            loss = loss + (rule.window_decay ** lag * mask * objective.loss(pred, v, thr)).sum()
        if anchor is not None:
            loss = loss + 0.5 * rule.retention.anchor * sum(((x - a) ** 2).sum() for x, a in zip(w, anchor))
        return torch.autograd.grad(loss, w, create_graph=True, allow_unused=True)


def memorize_reference(rule: MemoryRule, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, keep: Tensor,
                       eta: Tensor | None, thr: Tensor | None, chunk: int, state: MemoryState
                       ) -> tuple[Tensor, MemoryState]:
    """Engine layout: q, k [B, H, T, dk], v [B, H, T, dv], gates [B, H, T]."""
    arch = rule.architecture
    weights, momentum, accum = state.weights, state.momentum, state.accum
    step_momentum = state.momentum_step if state.momentum_step is not None else momentum
    ref = state.ref if state.ref is not None else weights
    offset = state.offset
    past = []
    if rule.window > 1:
        for j in range(state.past_k.shape[2]):
            past.append((state.past_k[:, :, j], state.past_v[:, :, j],
                         None if state.past_threshold is None else state.past_threshold[:, :, j],
                         state.past_mask[:, :, j]))
    ones = torch.ones(q.shape[:2], dtype=q.dtype, device=q.device)
    outputs = []
    for t in range(q.shape[2]):
        token = (k[:, :, t], v[:, :, t], None if thr is None else thr[:, :, t], ones)
        sources = (past + [token])[-rule.window:]
        f = keep[:, :, t, None, None]
        at = tuple(f * r for r in ref) if rule.forget_first else ref  # forget first: gradient on decayed memory
        u = _token_gradient(rule, at, sources, state.anchor)
        u = tuple(torch.zeros_like(r) if g is None else g for g, r in zip(u, ref))
        theta = lr[:, :, t, None, None]
        if momentum is not None:
            eta_t = eta[:, :, t, None, None]
            momentum = tuple(eta_t * s - theta * g for s, g in zip(momentum, u))
            step = step_momentum = tuple(eta_t * s - theta * g for s, g in zip(step_momentum, u))
        else:
            step = tuple(-theta * g for g in u)
        weights = tuple(f * w + s for w, s in zip(weights, step))
        if accum is not None:
            accum = tuple(f * a + s for a, s in zip(accum, step))
        read = ref if rule.read_at_chunk_start else weights  # the chunk start, or after this token's write
        outputs.append(arch.forward(read, q[:, :, t].unsqueeze(-2)))
        past = (past + [token])[-(rule.window - 1):] if rule.window > 1 else []
        offset += 1
        if offset == chunk:
            offset = 0
            if rule.newton_schulz_steps:
                step_momentum = tuple(newton_schulz(s, rule.newton_schulz_steps, kind="cubic") for s in momentum)
            if accum is not None:
                weights = rule.retention.apply_view(accum)
            ref = weights
    new_state = MemoryState(weights=weights, momentum=momentum, accum=accum, ref=ref if offset else None,
                            momentum_step=step_momentum if rule.newton_schulz_steps else None,
                            offset=offset, anchor=state.anchor)
    if rule.window > 1:
        new_state.past_k = torch.stack([p[0] for p in past], 2)
        new_state.past_v = torch.stack([p[1] for p in past], 2)
        new_state.past_threshold = None if thr is None else torch.stack([p[2] for p in past], 2)
        new_state.past_mask = torch.stack([p[3] for p in past], 2)
    return torch.cat(outputs, dim=2), new_state
