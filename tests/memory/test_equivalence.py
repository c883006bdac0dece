"""The fast paths equal the token-by-token reference (float64) for every preset, on awkward shapes:
lengths that are not multiples of the chunk size, length 1, with and without an incoming state (which may end
mid-chunk), for outputs, final state and gradients w.r.t. q, k, v, the gates and the initial weights.

The gates are drawn where the inner loop is stable (θ ≤ 0.1, α ≤ 0.02). With α up to 0.2 per token the
residual-norm MLP memories decay towards zero, the LayerNorm's 1/σ gain explodes, and the 100-token recurrence
becomes chaotic: gradients reach 1e8–1e10 and any two float64 evaluations of the same math differ at ~1e-7.
That is a property of those dynamics, not of either implementation, so it is no test of their agreement."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.memory_cases import learned_initial_weights, make_inputs, start_state
from ttmem.memory import RULES, MemoryArchitecture, memorize

TOL = 1e-8
# Every preset, plus combinations no preset uses yet: the plain residual MLP memory M(x) = x + W2 σ(W1 x), and
# reads at the chunk start with momentum, an Omega window and Newton–Schulz (only the coefficients' last row).
CASES = {**RULES, "titans_plain_residual": RULES["titans"].replace(
    name="titans_plain_residual",
    architecture=MemoryArchitecture("mlp", depth=2, expansion=4.0, activation="gelu", residual=True)),
    "atlas_read_at_chunk_start": RULES["atlas"].replace(name="atlas_read_at_chunk_start", read_at_chunk_start=True)}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run(rule, impl, inputs, chunk, state, recompute=False):
    extra = {"recompute": True} if recompute else {}
    out, new_state = memorize(**inputs, rule=rule, chunk_size=chunk, state=state, impl=impl, **extra)
    return out, new_state


def objective(out, state, seed=7):
    gen = torch.Generator().manual_seed(seed)
    total = (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum()
    for w in state.weights:
        total = total + (w * torch.randn(w.shape, generator=gen, dtype=w.dtype)).sum()
    return total


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recomputed"])
@pytest.mark.parametrize("incoming", [False, True], ids=["fresh", "incoming-state"])
@pytest.mark.parametrize("rule", [CASES[name] for name in sorted(CASES)], ids=sorted(CASES))
def test_chunked_equals_reference(rule, incoming, recompute):
    """``recompute=True`` (per-chunk activation checkpointing) must give the same values and gradients."""
    for chunk in (1, 4, 16):
        for time in (1, 7, 33, 100):
            init = learned_initial_weights(rule)
            inputs = make_inputs(rule, time=time, seed=time + chunk, requires_grad=True)
            results = {}
            for impl in ("chunked", "reference"):
                state = start_state(rule, init)
                if incoming:  # a previous call of 5 tokens: the state may end mid-chunk
                    state = memorize(**make_inputs(rule, time=5, seed=99), rule=rule, chunk_size=chunk,
                                     state=state, impl=impl)[1]
                out, new_state = run(rule, impl, inputs, chunk, state, recompute and impl == "chunked")
                leaves = [inputs[name] for name in sorted(inputs)] + list(init)
                grads = torch.autograd.grad(objective(out, new_state), leaves, allow_unused=True)
                results[impl] = (out, new_state, grads)
            (o1, s1, g1), (o2, s2, g2) = results["chunked"], results["reference"]
            where = f"{rule.name} chunk={chunk} time={time} incoming={incoming}"
            assert rel_err(o1, o2) <= TOL, f"outputs differ: {where}"
            assert s1.offset == s2.offset, where
            for a, b in zip(s1.weights, s2.weights, strict=True):
                assert rel_err(a, b) <= TOL, f"final weights differ: {where}"
            if s2.momentum is not None:
                for a, b in zip(s1.momentum, s2.momentum, strict=True):
                    assert rel_err(a, b) <= TOL, f"final momentum differs: {where}"
            names = sorted(inputs) + [f"init{i}" for i in range(len(init))]
            for name, a, b in zip(names, g1, g2, strict=True):
                assert (a is None) == (b is None), f"gradient presence differs for {name}: {where}"
                if b is not None and b.norm() > 0:
                    assert rel_err(a, b) <= TOL, f"gradient w.r.t. {name} differs: {where}"


@pytest.mark.parametrize("rule", sorted(RULES))
def test_streaming_pieces_equal_whole(rule):
    """Calling memorize on pieces of a sequence (ending mid-chunk) continues it exactly."""
    inputs = make_inputs(rule, time=23, seed=3)
    whole, whole_state = memorize(**inputs, rule=rule, chunk_size=4)
    outs, state = [], None
    for start, stop in ((0, 3), (3, 4), (4, 13), (13, 23)):
        piece = {name: x[:, start:stop] for name, x in inputs.items()}
        out, state = memorize(**piece, rule=rule, chunk_size=4, state=state)
        outs.append(out)
    assert rel_err(torch.cat(outs, 1), whole) <= 1e-12
    for a, b in zip(state.weights, whole_state.weights, strict=True):
        assert rel_err(a, b) <= 1e-12


def _saved_numel(fn) -> int:
    """Elements that autograd stores for the backward while ``fn`` runs."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_recompute_stores_less_for_the_backward():
    """Per-chunk recomputation keeps far fewer intermediates alive than the stored form (titans, 8 chunks)."""
    init = learned_initial_weights("titans")
    inputs = make_inputs("titans", time=64, seed=5, requires_grad=True)

    def call(recompute):
        return lambda: memorize(**inputs, rule="titans", chunk_size=8, state=start_state("titans", init),
                                recompute=recompute)

    stored, recomputed = _saved_numel(call(False)), _saved_numel(call(True))
    assert recomputed < 0.25 * stored, (stored, recomputed)


@pytest.mark.parametrize("incoming", [False, True], ids=["fresh", "incoming-state"])
@pytest.mark.parametrize("rule", sorted(RULES))
def test_token_by_token_decoding_equals_reference(rule, incoming):
    """Decoding one token per call (the ``step`` path where it applies, a one-token chunked group elsewhere)
    equals the token-by-token reference run in one call: outputs, state and gradients, across chunk
    boundaries (13 tokens, chunk 4), with and without an incoming state that ends mid-chunk."""
    chunk, time = 4, 13
    init = learned_initial_weights(rule)
    inputs = make_inputs(rule, time=time, seed=11, requires_grad=True)
    results = {}
    for impl in ("auto", "reference"):
        state = start_state(rule, init)
        if incoming:
            state = memorize(**make_inputs(rule, time=5, seed=99), rule=rule, chunk_size=chunk, state=state,
                             impl="reference")[1]
        if impl == "reference":
            out, state = memorize(**inputs, rule=rule, chunk_size=chunk, state=state, impl="reference")
        else:
            outs = []
            for t in range(time):
                token = {name: x[:, t:t + 1] for name, x in inputs.items()}
                o, state = memorize(**token, rule=rule, chunk_size=chunk, state=state, impl="auto")
                outs.append(o)
            out = torch.cat(outs, 1)
        leaves = [inputs[name] for name in sorted(inputs)] + list(init)
        grads = torch.autograd.grad(objective(out, state), leaves, allow_unused=True)
        results[impl] = (out, state, grads)
    (o1, s1, g1), (o2, s2, g2) = results["auto"], results["reference"]
    assert rel_err(o1, o2) <= TOL
    assert s1.offset == s2.offset
    for a, b in zip(s1.weights, s2.weights, strict=True):
        assert rel_err(a, b) <= TOL
    for a, b in zip(g1, g2, strict=True):
        assert (a is None) == (b is None)
        if b is not None and b.norm() > 0:
            assert rel_err(a, b) <= TOL


def test_step_path_is_taken_for_one_token(monkeypatch):
    """One token of a rule the step serves goes through ``memorize_token``, never the chunked engine."""
    import ttmem.memory.functional as functional

    def refuse(*args, **kwargs):
        raise AssertionError("chunked engine used for one token")

    monkeypatch.setattr(functional, "memorize_chunked", refuse)
    monkeypatch.setattr(functional, "memorize_delta_rule", refuse)
    for rule in ("titans", "yaad", "delta", "theta", "theta_lowrank", "linear_attention"):
        memorize(**make_inputs(rule, time=1), rule=rule, chunk_size=4)
