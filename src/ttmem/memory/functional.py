"""``memorize``: the functional entry point of the memory engine, and ``run_memory``, the core that layers call.

Two layers of checking, so that the hot path never waits on the device:

- ``memorize`` (public, [batch, time, heads, dim] layout) checks what costs nothing: types, shapes, dtypes, the
  state's rule, shapes, dtype and batch, which are all host-side attributes. Checks that must read tensor values
  (NaN / infinity, gates outside [0, 1], a non-finite result from finite inputs) run only with value checks on:
  ``memorize(..., check_values=True)``, ``with value_checks(): ...``, or ``TTMEM_CHECK_VALUES=1`` in the
  environment. Each of them is a host synchronisation on a GPU.
- ``run_memory`` (engine layout [batch, heads, time, dim], no argument checks) is what layers call in their hot
  loop: it fills default gates and dispatches to one of the paths in ``IMPLS``.

Paths (``impl``):
- ``"chunked"``: the chunked dual form (``chunked.py``), every rule.
- ``"delta_rule"``: the exact per-token WY / UT form (``delta_rule.py``) for linear ℓ2 rules without momentum.
- ``"step"``: one token (``step.py``), the decoding step; rules without an Omega window, retention view or anchor.
- ``"reference"``: token by token with plain autograd (``reference.py``); slow, the tests' ground truth.
- ``"auto"`` (default): ``"step"`` for one token where it applies, else ``"delta_rule"`` where it applies, else
  ``"chunked"``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from .chunked import memorize_chunked
from .delta_rule import memorize_delta_rule
from .reference import memorize_reference
from .rules import MemoryRule, get_rule
from .state import MemoryState
from .step import memorize_token, step_applies

IMPLS = ("auto", "chunked", "delta_rule", "step", "reference")

_value_checks = os.environ.get("TTMEM_CHECK_VALUES", "") not in ("", "0")
_decode_in_place: ContextVar[bool] = ContextVar("ttmem_decode_in_place", default=False)


@contextmanager
def decode_in_place() -> Iterator[None]:
    """Within this context, a one-token call without autograd decays and updates the momentum buffers of the
    memory state it is given in place instead of allocating new ones (1–9% less time per decoded token for
    lmm-tiny at batch 1 in interleaved measurements on a CPU). The state passed in must not be used again:
    ``generate`` uses it for its decode loop, whose every state it owns and replaces. The weights are never
    written in place (layers such as MAC keep reading an earlier state's weights)."""
    token = _decode_in_place.set(True)
    try:
        yield
    finally:
        _decode_in_place.reset(token)


def set_value_checks(enabled: bool) -> bool:
    """Turn the value checks (NaN, gate ranges, non-finite results) on or off globally; returns the old setting."""
    global _value_checks
    old, _value_checks = _value_checks, bool(enabled)
    return old


@contextmanager
def value_checks(enabled: bool = True) -> Iterator[None]:
    """``with value_checks(): ...`` runs every ``memorize`` (and every memory layer) inside with value checks."""
    old = set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(old)


def value_checks_enabled() -> bool:
    return _value_checks


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
    state = MemoryState(weights=base, accum=accum, rule=rule.name)
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


# -- checks that read only host-side attributes -------------------------------------------------------------


def check_chunk_size(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    return chunk_size


def _check_tensor(name: str, x: Tensor, shape: tuple[int, ...] | None = None, dim: int | None = None,
                  dtype: torch.dtype | None = None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if dim is not None and x.dim() != dim:
        raise ValueError(f"{name} must have {dim} dims [batch, time, heads, dim], got shape {tuple(x.shape)}")
    if shape is not None and tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but q has {dtype}; give q, k and v one dtype")


def check_state(state: MemoryState, rule: MemoryRule, batch: int, heads: int, dim_k: int, dim_v: int,
                chunk: int, dtype: torch.dtype) -> None:
    """Everything about a state that can be known without reading its values."""
    if not isinstance(state, MemoryState):
        raise TypeError(f"state must be a MemoryState or None, got {type(state).__name__}")
    if state.rule is not None and state.rule != rule.name:
        raise ValueError(f"state was made by rule {state.rule!r} and cannot be continued by rule {rule.name!r}")
    shapes = rule.architecture.shapes(dim_k, dim_v)
    if len(state.weights) != len(shapes):
        raise ValueError(f"state: rule {rule.name!r} has {len(shapes)} memory layers, state has {len(state.weights)}")
    if state.weights[0].shape[0] != batch:
        raise ValueError(f"state has batch size {state.weights[0].shape[0]}, the input has {batch}")
    for i, (w, (o, n)) in enumerate(zip(state.weights, shapes)):
        if tuple(w.shape) != (batch, heads, o, n):
            raise ValueError(f"state.weights[{i}]: expected shape {(batch, heads, o, n)}, got {tuple(w.shape)}")
    if state.weights[0].dtype != dtype and not torch.is_autocast_enabled(state.weights[0].device.type):
        raise TypeError(f"state has dtype {state.weights[0].dtype} but the input has {dtype}; "
                        f"convert one of them (state.to(dtype))")
    parts = (("momentum", rule.momentum, state.momentum is not None),
             ("an Omega window", rule.window > 1, state.past_k is not None),
             ("a retention accumulator", rule.retention.has_view, state.accum is not None),
             ("an orthogonalised momentum", bool(rule.newton_schulz_steps), state.momentum_step is not None))
    for what, needed, present in parts:
        if needed != present:
            raise ValueError(f"state: rule {rule.name!r} {'needs' if needed else 'has no'} {what}, "
                             f"the state {'lacks it' if needed else 'has one'}")
    if state.past_k is not None and state.past_k.shape[2] != rule.window - 1:
        raise ValueError(f"state holds {state.past_k.shape[2]} past tokens, rule {rule.name!r} a window of "
                         f"{rule.window - 1}")
    if not 0 <= state.offset < chunk:
        raise ValueError(f"state.offset {state.offset} is not inside a chunk of size {chunk}")


# -- checks that read values (host synchronisations on a GPU; on with value checks) ---------------------------


def _check_finite(name: str, x: Tensor) -> None:
    if not bool(torch.isfinite(x.detach()).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_range(name: str, g: Tensor, unit: bool = True) -> None:
    low, high = float(g.detach().min()), float(g.detach().max())
    if low < 0 or (unit and high > 1):
        bound = "[0, 1]" if unit else ">= 0"
        raise ValueError(f"{name} must lie in {bound}, got values in [{low:.4g}, {high:.4g}]")


def check_input_values(tensors: dict[str, Tensor | None], gates: dict[str, Tensor | None], state: MemoryState) -> None:
    """NaN / infinity in any input or state tensor, gates outside their range."""
    for name, x in tensors.items():
        if x is not None:
            _check_finite(name, x)
    for name, g in gates.items():
        if g is not None:
            _check_finite(name, g)
            _check_range(name, g, unit=name != "threshold")
    for name in ("weights", "momentum"):
        value = getattr(state, name)
        if value is not None:
            for x in value:
                _check_finite(f"state.{name}", x)


def check_result(out: Tensor, tensors: dict[str, Tensor]) -> None:
    """A non-finite result from finite inputs: name the likely cause."""
    if not bool(torch.isfinite(out.detach()).all()):
        scale = max(float(x.detach().abs().max()) for x in tensors.values())
        raise ValueError(f"the memory produced NaN or infinite values from finite inputs (largest |input| "
                         f"{scale:.3g}); scale q, k, v down or lower the step size")


# -- the core ------------------------------------------------------------------------------------------------


def _delta_rule_applies(rule: MemoryRule, state: MemoryState) -> bool:
    """The exact per-token delta-rule fast path: linear memory, ℓ2, no momentum, window or anchor."""
    return rule.exact_delta_rule and state.anchor is None


def run_memory(rule: MemoryRule, q: Tensor, k: Tensor, v: Tensor, lr: Tensor, keep: Tensor | None,
               eta: Tensor | None, thr: Tensor | None, chunk_size: int, state: MemoryState, impl: str = "auto",
               recompute: bool = False) -> tuple[Tensor, MemoryState]:
    """The engine without argument checks. Engine layout: q, k [B, H, T, dk], v [B, H, T, dv]; lr (θ), keep
    (1 − α, None = 1), eta (η, None = 0), thr (Huber δ, None = the rule's constant) [B, H, T]; ``state`` must
    be a state of this rule (see ``initial_state``). Returns out [B, H, T, dv] and the new state. Under autocast
    the inner loop runs in the state's dtype (float32 for a float32 model)."""
    device = q.device.type
    if torch.is_autocast_enabled(device):
        # Under mixed precision the inner loop still runs in the state's precision: its recurrence accumulates
        # over the whole sequence (bf16 rounding compounds), and the delta rule's triangular solve has no bf16
        # kernel. The caller's autocast resumes for whatever consumes the output.
        dtype = state.weights[0].dtype
        with torch.autocast(device, enabled=False):
            cast = (None if x is None else x.to(dtype) for x in (q, k, v, lr, keep, eta, thr))
            return run_memory(rule, *cast, chunk_size, state, impl, recompute)
    chunk = 1 if rule.per_token else chunk_size
    if impl == "auto":
        if q.shape[2] == 1 and step_applies(rule, state):
            impl = "step"
        elif _delta_rule_applies(rule, state):
            impl = "delta_rule"
        else:
            impl = "chunked"
    if rule.objective.uses_threshold and thr is None:
        thr = torch.full_like(lr, rule.objective.threshold)
    if impl == "step":
        # compiled code allocates anyway (and cannot trace a ContextVar): in place only when eager
        in_place = not torch.compiler.is_compiling() and _decode_in_place.get() and not torch.is_grad_enabled()
        out, new_state = memorize_token(rule, q, k, v, lr, keep, eta, thr, chunk, state, in_place=in_place)
    else:
        if keep is None:
            keep = torch.ones_like(lr)
        if rule.momentum and eta is None:
            eta = torch.zeros_like(lr)
        if impl == "reference":
            out, new_state = memorize_reference(rule, q, k, v, lr, keep, eta, thr, chunk, state)
        elif impl == "delta_rule":
            out, new_state = memorize_delta_rule(q, k, v, lr, keep, chunk_size, state, rule.forget_first)
        else:
            out, new_state = memorize_chunked(rule, q, k, v, lr, keep, eta, thr, chunk, state, recompute)
    new_state.rule = rule.name
    return out, new_state


def read_chunk_start(rule: MemoryRule, q: Tensor, state: MemoryState) -> Tensor:
    """M_{W_ref}(q): what a rule that reads at the chunk start (``read_at_chunk_start``) returns for tokens of the
    chunk that ``state`` is in, without writing. Engine layout: q [B, H, T, dk] -> [B, H, T, dv]. A layer whose
    gates come from these reads (HOPE's projection memories) reads, makes the gates, then writes with
    ``run_memory``. Under autocast it runs in the state's precision, like ``run_memory``."""
    weights = state.ref if state.ref is not None else state.weights
    device = q.device.type
    if torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            return rule.architecture.forward(weights, q.to(weights[0].dtype))
    return rule.architecture.forward(weights, q)


def memorize(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, *, momentum: Tensor | None = None,
             forget: Tensor | None = None, rule: str | MemoryRule = "titans", chunk_size: int = 64,
             state: MemoryState | None = None, impl: str = "auto", threshold: Tensor | None = None,
             recompute: bool = False, check_values: bool | None = None) -> tuple[Tensor, MemoryState]:
    """Write (k, v) pairs into a memory that learns at test time, reading it with q after each write.

    Args:
        q, k: [batch, time, heads, dim_k]; v: [batch, time, heads, dim_v]; one floating dtype. For rules with
            ``self_targets`` v has width dim_k and the memory's output width is the state's (dim_k without one).
        lr: step size θ_t [batch, time, heads] in [0, 1].
        momentum: momentum keep η_t [batch, time, heads] in [0, 1] (rules with momentum; None means 0).
        forget: forget gate α_t [batch, time, heads] in [0, 1] (None means 0).
        rule: preset name (see ``RULES``) or a ``MemoryRule``.
        chunk_size: tokens per chunk; gradients are taken at the chunk-start weights (1 = fully sequential).
            Rules flagged ``per_token`` always update token by token; the chunk size then only blocks the work.
        state: the state returned by a previous call of the same rule (continues the sequence exactly), or None.
        impl: one of ``IMPLS``; "auto" picks the fastest exact path (module docstring).
        threshold: Huber threshold δ_t [batch, time, heads] > 0 (Huber objective; None means the rule's constant).
        recompute: chunked dual form only: keep, for the backward, only the state at the start of every segment
            of about √n chunks (n chunks in the call) and rebuild each segment's intermediates there (activation
            checkpointing). Same results; less memory, more time.
        check_values: also check values (NaN, gate ranges, a non-finite result); None follows ``value_checks``.

    Returns:
        out [batch, time, heads, dim_v] (y_t = M_{W_t}(q_t), read after write; M_{W_ref(t)}(q_t) for rules that
        read at the chunk start) and the new ``MemoryState``.
    """
    rule = get_rule(rule)
    check_chunk_size(chunk_size)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if not isinstance(recompute, bool):
        raise TypeError(f"recompute must be a bool, got {type(recompute).__name__}")
    _check_tensor("q", q, dim=4)
    batch, time, heads, dim_k = q.shape
    _check_tensor("k", k, shape=tuple(q.shape), dtype=q.dtype)
    _check_tensor("v", v, dim=4, dtype=q.dtype)
    if tuple(v.shape[:3]) != (batch, time, heads):
        raise ValueError(f"v must have shape [{batch}, {time}, {heads}, dim_v], got {tuple(v.shape)}")
    if time == 0:
        raise ValueError("q, k, v must have at least one time step")
    if batch == 0:
        raise ValueError("q, k, v must have a batch size of at least 1")
    dim_v = v.shape[-1]
    if rule.self_targets:  # v is what the memory reads its own targets from: the keys' width
        if dim_v != dim_k:
            raise ValueError(f"v: rule {rule.name!r} generates its targets M(v) from v, which must have the keys' "
                             f"width {dim_k}, got {dim_v}")
        dim_v = dim_k if state is None or not isinstance(state, MemoryState) else state.weights[-1].shape[-2]
    gates = {"lr": lr, "momentum": momentum, "forget": forget, "threshold": threshold}
    for name, g in gates.items():
        if g is not None:
            _check_tensor(name, g, (batch, time, heads))
    if momentum is not None and not rule.momentum:
        raise ValueError(f"momentum was given but rule {rule.name!r} has no momentum")
    if threshold is not None and not rule.objective.uses_threshold:
        raise ValueError(f"threshold was given but rule {rule.name!r} uses the {rule.objective.kind!r} objective")
    if impl == "step" and time != 1:
        raise ValueError(f"impl 'step' takes one token, got time = {time}")
    chunk = 1 if rule.per_token else chunk_size
    if state is None:
        state = initial_state(rule, batch, heads, dim_k, dim_v, dtype=q.dtype, device=q.device)
    else:
        check_state(state, rule, batch, heads, dim_k, dim_v, chunk, q.dtype)
    if impl == "step" and not step_applies(rule, state):
        raise ValueError(f"impl 'step' does not serve rule {rule.name!r} (Omega window, retention view or anchor)")
    if impl == "delta_rule" and not _delta_rule_applies(rule, state):
        raise ValueError(f"impl 'delta_rule' needs a linear ℓ2 per-token rule without momentum, got {rule.name!r}")
    checking = _value_checks if check_values is None else check_values
    if checking:
        check_input_values({"q": q, "k": k, "v": v}, gates, state)

    def engine(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.to(q.dtype).movedim(1, 2)

    keep = None if forget is None else 1.0 - engine(forget)
    out, new_state = run_memory(rule, engine(q), engine(k), engine(v), engine(lr), keep, engine(momentum),
                                engine(threshold), chunk_size, state, impl, recompute)
    out = out.movedim(2, 1)
    if checking:
        check_result(out, {"q": q, "k": k, "v": v})
    return out, new_state
