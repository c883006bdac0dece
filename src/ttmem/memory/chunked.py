"""The chunked engine: exact mini-batch test-time learning in the dual form.

Per chunk (docs/design.md): one batched forward of the chunk's keys (and the Omega window's earlier keys) through the
memory at the chunk-start weights, one closed-form batched backward giving every layer's rank-one gradient
factors g_i ⊗ x_i, then reads and the chunk's end state as plain matmuls with the coefficient matrices of
``coefficients.py``. No per-token weight gradient is ever built. Everything is differentiable, so the outer loop
trains through the inner updates (second-order terms included) with ordinary autograd.

Tensors inside the engine are laid out [B, H, T, d]; gates [B, H, T].
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ttmem.newton_schulz import newton_schulz

from .architectures import activation
from .coefficients import ChunkCoefficients, chunk_coefficients, window_matrix
from .fused import rank_update, scaled_sum
from .rules import MemoryRule
from .state import MemoryState


def _chunks(x: Tensor | None, n: int, c: int) -> Tensor | None:
    """[B, H, n*c, ...] -> [B, H, n, c, ...]."""
    return None if x is None else x.reshape(x.shape[0], x.shape[1], n, c, *x.shape[3:])


def _sources(past: Tensor | None, x: Tensor, n: int, c: int) -> Tensor:
    """Per chunk, the window's earlier tokens followed by the chunk: [B, H, n, P + c, ...]."""
    if past is None or past.shape[2] == 0:
        return _chunks(x, n, c)
    ext = torch.cat([past, x], dim=2)
    p = past.shape[2]
    win = ext.unfold(2, p + c, c)  # [B, H, n, ..., p + c]
    return win.movedim(-1, 3)


def _advance(scale: Tensor, tensors: tuple[Tensor, ...], extra: list[tuple[Tensor | None, tuple | None]],
             xs: list[Tensor], gs: list[Tensor], coef_row: Tensor) -> tuple[Tensor, ...]:
    """Per layer: scale · T + Σ s · E (the ``extra`` pairs whose scale is not None) − Gᵀ diag(coef_row) X."""
    new = []
    for layer, (t, x, g) in enumerate(zip(tensors, xs, gs)):
        terms = [(scale, t)] + [(s, e[layer]) for s, e in extra if s is not None]
        new.append(rank_update(scaled_sum(*terms), g, -coef_row * x))
    return tuple(new)


class _Carry:
    """The running state inside one call."""

    def __init__(self, rule: MemoryRule, state: MemoryState):
        self.rule = rule
        self.weights = state.weights
        self.momentum = state.momentum
        self.step = state.momentum_step if state.momentum_step is not None else state.momentum
        self.accum = state.accum
        self.ref = state.ref if state.ref is not None else state.weights
        self.anchor = state.anchor
        self.past = (state.past_k, state.past_v, state.past_threshold, state.past_mask)

    @property
    def running(self) -> tuple:
        """What changes from chunk to chunk: (weights, step, momentum, accum, ref)."""
        return self.weights, self.step, self.momentum, self.accum, self.ref

    @running.setter
    def running(self, values: tuple) -> None:
        self.weights, self.step, self.momentum, self.accum, self.ref = values

    def push_past(self, k: Tensor, v: Tensor, thr: Tensor | None, mask: Tensor) -> None:
        p = self.rule.window - 1
        if p == 0:
            return
        pk, pv, pt, pm = self.past
        self.past = (
            torch.cat([pk, k], 2)[:, :, -p:],
            torch.cat([pv, v], 2)[:, :, -p:],
            None if thr is None else torch.cat([pt, thr], 2)[:, :, -p:],
            torch.cat([pm, mask], 2)[:, :, -p:],
        )


def _boundary(rule: MemoryRule, weights: tuple, step: tuple | None, momentum: tuple | None,
              accum: tuple | None) -> tuple:
    """Chunk complete: orthogonalise the momentum's step, refresh the retention view, start a new chunk.
    Returns the new (weights, step, ref)."""
    if rule.newton_schulz_steps:
        step = tuple(newton_schulz(s, rule.newton_schulz_steps, kind="cubic") for s in momentum)
    if accum is not None:
        weights = rule.retention.apply_view(accum)
    return weights, step, weights


def _chunk_step(rule: MemoryRule, q: Tensor, k: Tensor, v: Tensor, thr: Tensor | None, mask: Tensor | None,
                coef: ChunkCoefficients, ref: tuple[Tensor, ...], weights: tuple[Tensor, ...],
                step: tuple[Tensor, ...] | None, momentum: tuple[Tensor, ...] | None,
                accum: tuple[Tensor, ...] | None, anchor: tuple[Tensor, ...] | None) -> tuple:
    """One chunk, as a pure function of its inputs: reads of every token, then the state after its last token.

    q [B, H, C, dk]; k, v, thr, mask: the chunk's sources (Omega window's earlier tokens first; mask None when
    every source is real; v of the keys' width for ``self_targets`` rules); coef: this chunk's coefficients.
    Returns (out [B, H, C, dv], weights, step, momentum, accum).
    """
    arch = rule.architecture
    pred, xs, pre = arch.forward_with_cache(ref, k)
    target = arch.forward(ref, v) if rule.self_targets else v
    grad_out = rule.objective.grad(pred, target, thr)
    gs = arch.output_grads(ref, pre, grad_out if mask is None else grad_out * mask.unsqueeze(-1))
    anchor_grad = None
    if anchor is not None:
        anchor_grad = tuple(rule.retention.anchor * (w - a) for w, a in zip(ref, anchor))
    beta, read, c_in, d_in = coef.beta, coef.read, coef.momentum_in, coef.anchor

    if rule.read_at_chunk_start:  # every token reads the chunk-start weights (coef holds only the last row)
        out = arch.forward(ref, q)
    else:  # layer by layer in the dual form, each token with its own W_t
        hidden = q
        for layer, (w, x, g) in enumerate(zip(weights, xs, gs)):
            a = beta.unsqueeze(-1) * (hidden @ w.mT)
            if c_in is not None:
                a = a + c_in.unsqueeze(-1) * (hidden @ step[layer].mT)
            a = a - (read * (hidden @ x.mT)) @ g
            if anchor_grad is not None:
                a = a - d_in.unsqueeze(-1) * (hidden @ anchor_grad[layer].mT)
            hidden = a if layer == len(xs) - 1 else activation(arch.act, a)
        out = arch.output(q, hidden)

    # End state at the chunk's last token: W = β W + c S − d ∇anchor − Gᵀ diag(A[−1]) X, per layer.
    beta_r = beta[:, :, -1, None, None]
    read_r = read[:, :, -1].unsqueeze(-1)
    c_r = None if c_in is None else c_in[:, :, -1, None, None]
    d_r = None if d_in is None else -d_in[:, :, -1, None, None]
    extra = [(c_r, step), (d_r, anchor_grad)]
    new_weights = _advance(beta_r, weights, extra, xs, gs, read_r)
    if accum is not None:
        accum = _advance(beta_r, accum, extra, xs, gs, read_r)
    if momentum is not None:
        carry_r = coef.carry[:, :, -1, None, None]
        mom_r = coef.momentum[:, :, -1].unsqueeze(-1)
        ma_r = None if anchor_grad is None else -coef.momentum_anchor[:, :, -1, None, None]
        extra = [(ma_r, anchor_grad)]
        if rule.newton_schulz_steps:  # the weights see NS(S); the raw buffer and its step advance alike
            step = _advance(carry_r, step, extra, xs, gs, mom_r)
        momentum = _advance(carry_r, momentum, extra, xs, gs, mom_r)
        if not rule.newton_schulz_steps:  # the weights see the raw momentum: one tensor, computed once
            step = momentum
    return out, new_weights, step, momentum, accum


def _run_group(carry: _Carry, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, keep: Tensor, eta: Tensor | None,
               thr: Tensor | None, chunk: int, last_complete: bool, recompute: bool) -> Tensor:
    """Process tokens [B, H, T, ·], T a multiple of ``chunk``, as T / chunk chunks starting at a chunk boundary of
    ``carry``; ``last_complete``: the last chunk ends at a chunk boundary of the sequence."""
    rule = carry.rule
    b, h, t = q.shape[:3]
    n = t // chunk

    pk, pv, pt, pm = carry.past
    k_src, v_src = _sources(pk, k, n, chunk), _sources(pv, v, n, chunk)
    t_src = None if thr is None else _sources(pt, thr, n, chunk)
    m_src, omega = None, None
    if rule.window > 1:  # the window's earlier tokens may not exist yet: mask them
        m_src = _sources(pm, torch.ones(b, h, t, dtype=q.dtype, device=q.device), n, chunk)
        omega = window_matrix(chunk, pk.shape[2], rule.window, rule.window_decay, q.dtype, q.device)

    with_anchor = carry.anchor is not None
    coef = chunk_coefficients(_chunks(lr, n, chunk), _chunks(keep, n, chunk), _chunks(eta, n, chunk),
                              m_src, omega, with_anchor, last_row_only=rule.read_at_chunk_start)
    # Split along chunks once: indexing inside the loop would give every chunk a full-size backward.
    q_c = _chunks(q, n, chunk).unbind(2)
    k_src, v_src = k_src.unbind(2), v_src.unbind(2)
    m_src = None if m_src is None else m_src.unbind(2)
    t_src = None if t_src is None else t_src.unbind(2)
    fields = (getattr(coef, f.name) for f in dataclasses.fields(coef))
    coef_c = tuple(None if c is None else c.unbind(2) for c in fields)  # per chunk, split once
    # Forget-first rules (per token, so one-token chunks) take the gradient on the memory after the token's decay.
    keep_c = _chunks(keep, n, chunk).unbind(2) if rule.forget_first else None
    anchor = carry.anchor

    def chunks(first: int, last: int, running: tuple) -> tuple[list[Tensor], tuple]:
        """Chunks first..last−1 from the running state; a pure function of it (so it can be recomputed)."""
        outs = []
        for i in range(first, last):
            weights, step, momentum, accum, ref = running
            coef_i = ChunkCoefficients(*(None if c is None else c[i] for c in coef_c))
            at = ref if keep_c is None else tuple(keep_c[i].unsqueeze(-1) * r for r in ref)
            out, weights, step, momentum, accum = _chunk_step(
                rule, q_c[i], k_src[i], v_src[i], None if t_src is None else t_src[i],
                None if m_src is None else m_src[i], coef_i, at, weights, step, momentum, accum, anchor)
            outs.append(out)
            if i < n - 1 or last_complete:
                weights, step, ref = _boundary(rule, weights, step, momentum, accum)
            running = (weights, step, momentum, accum, ref)
        return outs, running

    if recompute and torch.is_grad_enabled():
        # Keep only every segment's starting state and inputs; a segment's intermediates are rebuilt during
        # the backward. Segments of about √n chunks balance the two: n/√n kept states, √n chunks rebuilt at once.
        segment = max(1, round(math.sqrt(n)))
        outputs = []
        for first in range(0, n, segment):
            outs, carry.running = checkpoint(chunks, first, min(n, first + segment), carry.running,
                                             use_reentrant=False)
            outputs += outs
    else:
        outputs, carry.running = chunks(0, n, carry.running)

    carry.push_past(k, v, thr, torch.ones(b, h, t, dtype=q.dtype, device=q.device))
    return torch.cat(outputs, dim=2) if n > 1 else outputs[0]


def memorize_chunked(rule: MemoryRule, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, keep: Tensor,
                     eta: Tensor | None, thr: Tensor | None, chunk: int, state: MemoryState,
                     recompute: bool = False) -> tuple[Tensor, MemoryState]:
    """Engine layout: q, k [B, H, T, dk], v [B, H, T, dv], gates [B, H, T]. Returns out [B, H, T, dv], state.
    ``recompute``: keep only every segment's (≈ √n chunks) starting state for the backward, rebuild the rest."""
    carry = _Carry(rule, state)
    t = q.shape[2]
    offset = state.offset
    pieces = []

    def group(begin: int, end: int, size: int, complete: bool) -> None:
        sl = slice(begin, end)
        pieces.append(_run_group(carry, q[:, :, sl], k[:, :, sl], v[:, :, sl], lr[:, :, sl], keep[:, :, sl],
                                 None if eta is None else eta[:, :, sl], None if thr is None else thr[:, :, sl],
                                 size, complete, recompute))

    # Groups of whole chunks; a chunk in progress (from the state) and a trailing partial chunk are groups of
    # their own, sized to their tokens, so nothing is ever padded (a one-token decode step costs one token).
    start = 0
    if offset:
        start = min(chunk - offset, t)
        group(0, start, start, offset + start == chunk)
    whole = (t - start) // chunk * chunk
    if whole:
        group(start, start + whole, chunk, True)
    if start + whole < t:
        group(start + whole, t, t - start - whole, False)
    new_offset = (offset + t) % chunk
    pk, pv, pt, pm = carry.past
    new_state = MemoryState(
        weights=carry.weights, momentum=carry.momentum, accum=carry.accum,
        momentum_step=carry.step if rule.newton_schulz_steps else None,
        ref=carry.ref if new_offset else None, offset=new_offset, anchor=carry.anchor,
        past_k=pk, past_v=pv, past_threshold=pt, past_mask=pm,
    )
    return torch.cat(pieces, dim=2), new_state
