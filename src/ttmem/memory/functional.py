"""``memorize``: the one functional entry point that layers, tests and benchmarks use.

It validates its input (clear errors naming the argument), builds the initial state when none is given, and
dispatches to a fast path or to the token-by-token reference. Public tensors are laid out [batch, time, heads, dim]
like attention inputs; the engine works in [batch, heads, time, dim].
"""

from __future__ import annotations

import torch
from torch import Tensor

from .chunked import memorize_chunked
from .delta_rule import memorize_delta_rule
from .reference import memorize_reference
from .rules import MemoryRule, get_rule
from .state import MemoryState

IMPLS = ("chunked", "reference")


def initial_state(rule: str | MemoryRule, batch: int, heads: int, dim_k: int, dim_v: int, *,
                  weights: tuple[Tensor, ...] | None = None, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> MemoryState:
    """The state before any token: ``weights`` ([heads, out, in] per layer, e.g. learned initial weights) or the
    rule's own initial weights, zero momentum, an empty Omega window. For rules with a retention view the given
    weights are the accumulator A and the memory starts at R(A)."""
    rule = get_rule(rule)
    shapes = rule.architecture.shapes(dim_k, dim_v)
    if weights is None:
        weights = rule.initial_weights(heads, dim_k, dim_v, dtype=dtype, device=device)
    if len(weights) != len(shapes):
        raise ValueError(f"weights: rule {rule.name!r} has {len(shapes)} memory layers, got {len(weights)} tensors")
    for i, (w, (o, n)) in enumerate(zip(weights, shapes)):
        if tuple(w.shape) != (heads, o, n):
            raise ValueError(f"weights[{i}]: expected shape {(heads, o, n)}, got {tuple(w.shape)}")
    base = tuple(w.unsqueeze(0).expand(batch, *w.shape) for w in weights)
    accum = None
    if rule.retention.has_view:
        accum, base = base, rule.retention.apply_view(base)
    state = MemoryState(weights=base, accum=accum)
    if rule.momentum:
        state.momentum = tuple(torch.zeros_like(w) for w in base)
        if rule.newton_schulz_steps:
            state.momentum_step = state.momentum
    if rule.retention.anchor > 0:
        state.anchor = base
    if rule.window > 1:
        p = rule.window - 1
        ref = base[0]
        state.past_k = ref.new_zeros(batch, heads, p, dim_k)
        state.past_v = ref.new_zeros(batch, heads, p, dim_v)
        state.past_mask = ref.new_zeros(batch, heads, p)
        if rule.objective.uses_threshold:
            state.past_threshold = ref.new_zeros(batch, heads, p)
    return state


def _check_tensor(name: str, x: Tensor, shape: tuple[int, ...] | None = None, dim: int | None = None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if dim is not None and x.dim() != dim:
        raise ValueError(f"{name} must have {dim} dims [batch, time, heads, dim], got shape {tuple(x.shape)}")
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_gate(name: str, g: Tensor | None, shape: tuple[int, ...], unit: bool = True) -> None:
    if g is None:
        return
    _check_tensor(name, g, shape)
    low, high = float(g.detach().min()), float(g.detach().max())
    if low < 0 or (unit and high > 1):
        bound = "[0, 1]" if unit else ">= 0"
        raise ValueError(f"{name} must lie in {bound}, got values in [{low:.4g}, {high:.4g}]")


def _check_state(state: MemoryState, rule: MemoryRule, batch: int, heads: int, dim_k: int, dim_v: int,
                 chunk: int) -> None:
    if not isinstance(state, MemoryState):
        raise TypeError(f"state must be a MemoryState or None, got {type(state).__name__}")
    shapes = rule.architecture.shapes(dim_k, dim_v)
    if len(state.weights) != len(shapes):
        raise ValueError(f"state: rule {rule.name!r} has {len(shapes)} memory layers, state has {len(state.weights)}")
    for i, (w, (o, n)) in enumerate(zip(state.weights, shapes)):
        if tuple(w.shape) != (batch, heads, o, n):
            raise ValueError(f"state.weights[{i}]: expected shape {(batch, heads, o, n)}, got {tuple(w.shape)}")
    if rule.momentum != (state.momentum is not None):
        raise ValueError(f"state: rule {rule.name!r} {'needs' if rule.momentum else 'has no'} momentum")
    if not 0 <= state.offset < chunk:
        raise ValueError(f"state.offset {state.offset} is not inside a chunk of size {chunk}")
    for name, t in (("state.weights", state.weights), ("state.momentum", state.momentum)):
        if t is not None and not all(bool(torch.isfinite(x.detach()).all()) for x in t):
            raise ValueError(f"{name} contains NaN or infinite values")


def memorize(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, *, momentum: Tensor | None = None,
             forget: Tensor | None = None, rule: str | MemoryRule = "titans", chunk_size: int = 64,
             state: MemoryState | None = None, impl: str = "chunked", threshold: Tensor | None = None,
             recompute: bool = False) -> tuple[Tensor, MemoryState]:
    """Write (k, v) pairs into a memory that learns at test time, reading it with q after each write.

    Args:
        q, k: [batch, time, heads, dim_k]; v: [batch, time, heads, dim_v].
        lr: step size θ_t [batch, time, heads] in [0, 1].
        momentum: momentum keep η_t [batch, time, heads] in [0, 1] (rules with momentum; None means 0).
        forget: forget gate α_t [batch, time, heads] in [0, 1] (None means 0).
        rule: preset name (see ``RULES``) or a ``MemoryRule``.
        chunk_size: tokens per chunk; gradients are taken at the chunk-start weights (1 = fully sequential).
            Rules flagged ``per_token`` always update token by token; the chunk size then only blocks the work.
        state: the state returned by a previous call (continues the sequence exactly), or None.
        impl: "chunked" (fast) or "reference" (token by token, plain autograd).
        threshold: Huber threshold δ_t [batch, time, heads] > 0 (Huber objective; None means the rule's constant).
        recompute: chunked dual form only: keep just each chunk's inputs for the backward and recompute its
            intermediates there (activation checkpointing per chunk). Same results; less memory, more time.

    Returns:
        out [batch, time, heads, dim_v] (y_t = M_{W_t}(q_t), read after write) and the new ``MemoryState``.
    """
    rule = get_rule(rule)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not isinstance(recompute, bool):
        raise TypeError(f"recompute must be a bool, got {type(recompute).__name__}")
    _check_tensor("q", q, dim=4)
    batch, time, heads, dim_k = q.shape
    _check_tensor("k", k, shape=tuple(q.shape))
    _check_tensor("v", v, dim=4)
    if tuple(v.shape[:3]) != (batch, time, heads):
        raise ValueError(f"v must have shape [{batch}, {time}, {heads}, dim_v], got {tuple(v.shape)}")
    if time == 0:
        raise ValueError("q, k, v must have at least one time step")
    dim_v = v.shape[-1]
    gate_shape = (batch, time, heads)
    _check_gate("lr", lr, gate_shape)
    _check_gate("momentum", momentum, gate_shape)
    _check_gate("forget", forget, gate_shape)
    _check_gate("threshold", threshold, gate_shape, unit=False)
    if momentum is not None and not rule.momentum:
        raise ValueError(f"momentum was given but rule {rule.name!r} has no momentum")
    if threshold is not None and not rule.objective.uses_threshold:
        raise ValueError(f"threshold was given but rule {rule.name!r} uses the {rule.objective.kind!r} objective")
    chunk = 1 if rule.per_token else chunk_size
    if state is None:
        state = initial_state(rule, batch, heads, dim_k, dim_v, dtype=q.dtype, device=q.device)
    else:
        _check_state(state, rule, batch, heads, dim_k, dim_v, chunk)

    def engine(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.to(q.dtype).movedim(1, 2)

    q_, k_, v_ = engine(q), engine(k), engine(v)
    lr_ = engine(lr)
    keep = 1.0 - engine(forget) if forget is not None else torch.ones_like(lr_)
    eta = None
    if rule.momentum:
        eta = engine(momentum) if momentum is not None else torch.zeros_like(lr_)
    thr = engine(threshold)
    if rule.objective.uses_threshold and thr is None:
        thr = torch.full_like(lr_, rule.objective.threshold)

    if impl == "reference":
        out, new_state = memorize_reference(rule, q_, k_, v_, lr_, keep, eta, thr, chunk, state)
    elif _delta_rule_applies(rule, state):
        out, new_state = memorize_delta_rule(q_, k_, v_, lr_, keep, chunk_size, state, rule.forget_first)
    elif rule.forget_first:
        raise ValueError(f"state.anchor: rule {rule.name!r} decays before its delta step, which only the exact "
                         "delta rule implements, and that path takes no anchor; pass a state without one")
    else:
        out, new_state = memorize_chunked(rule, q_, k_, v_, lr_, keep, eta, thr, chunk, state, recompute)
    return out.movedim(2, 1), new_state


def _delta_rule_applies(rule: MemoryRule, state: MemoryState) -> bool:
    """The exact per-token delta-rule fast path: linear memory, ℓ2, no momentum, window or anchor."""
    return rule.exact_delta_rule and state.anchor is None
