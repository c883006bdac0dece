"""Every preset equals its paper's recurrence, written token by token in ``paper_recurrences.py`` (float64, 1e-10):
outputs, final weights (and momentum) and gradients w.r.t. q, k, v, the gates and the initial weights, for chunk
sizes 1, 16, 64 and lengths 1, 33, 100, from a fresh state and after an earlier call of 5 tokens (which leaves
the state mid-chunk). Gated DeltaNet is also held to a port of its published reference recurrence, in that
recurrence's own layout and conventions."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.memory_cases import learned_initial_weights, make_inputs, start_state
from tests.helpers.paper_recurrences import gated_delta_rule_kv, paper_recurrence
from ttmem.memory import RULES, get_rule, memorize

TOL = 1e-10
CHUNKS = (1, 16, 64)
LENGTHS = (1, 33, 100)
PREFIX = 5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-30))


def paper_inputs(rule: str, time: int, seed: int, requires_grad: bool = True) -> dict:
    """``make_inputs`` without a forget gate for rules whose paper has none."""
    inputs = make_inputs(rule, time=time, seed=seed, requires_grad=requires_grad)
    if not get_rule(rule).forgetting:
        del inputs["forget"]
    return inputs


def projection(out: torch.Tensor, weights: tuple, seed: int = 7) -> torch.Tensor:
    """A random linear functional of the outputs and the final weights (what the gradients are taken of)."""
    gen = torch.Generator().manual_seed(seed)
    total = (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum()
    for w in weights:
        total = total + (w * torch.randn(w.shape, generator=gen, dtype=w.dtype)).sum()
    return total


def engine_run(rule, inputs, init, chunk, prefix, impl="auto"):
    state = start_state(rule, init)
    if prefix is not None:
        state = memorize(**prefix, rule=rule, chunk_size=chunk, state=state, impl=impl)[1]
    out, state = memorize(**inputs, rule=rule, chunk_size=chunk, state=state, impl=impl)
    return out, state.weights, state.momentum


def paper_run(rule, inputs, init, chunk, prefix):
    """The paper's loop over the whole stream (prefix included); the outputs of ``inputs``' tokens."""
    stream = inputs if prefix is None else {name: torch.cat([prefix[name], x], 1) for name, x in inputs.items()}
    out, final = paper_recurrence(rule, stream, init, chunk)
    return out[:, out.shape[1] - inputs["q"].shape[1]:], final["weights"], final.get("momentum")


def assert_same_run(rule, engine, paper, leaves, where):
    (o1, w1, m1), (o2, w2, m2) = engine, paper
    assert rel_err(o1, o2) <= TOL, f"outputs differ: {where}: {rel_err(o1, o2):.2e}"
    for a, b in zip(w1, w2, strict=True):
        assert rel_err(a, b) <= TOL, f"final weights differ: {where}: {rel_err(a, b):.2e}"
    if m2 is not None:
        for a, b in zip(m1, m2, strict=True):
            assert rel_err(a, b) <= TOL, f"final momentum differs: {where}: {rel_err(a, b):.2e}"
    g1 = torch.autograd.grad(projection(o1, w1), leaves, allow_unused=True, retain_graph=True)
    g2 = torch.autograd.grad(projection(o2, w2), leaves, allow_unused=True)
    for i, (a, b) in enumerate(zip(g1, g2, strict=True)):
        assert (a is None) == (b is None), f"gradient presence differs for leaf {i}: {where}"
        if b is not None and b.norm() > 0:
            assert rel_err(a, b) <= TOL, f"gradient w.r.t. leaf {i} differs: {where}: {rel_err(a, b):.2e}"


@pytest.mark.parametrize("incoming", [False, True], ids=["fresh", "incoming-state"])
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_engine_equals_paper_recurrence(rule, chunk, incoming):
    for time in LENGTHS:
        init = learned_initial_weights(rule)
        inputs = paper_inputs(rule, time, seed=time + chunk)
        prefix = paper_inputs(rule, PREFIX, seed=99, requires_grad=False) if incoming else None
        leaves = [inputs[name] for name in sorted(inputs)] + list(init)
        engine = engine_run(rule, inputs, init, chunk, prefix)
        paper = paper_run(rule, inputs, init, chunk, prefix)
        assert_same_run(rule, engine, paper, leaves, f"{rule} chunk={chunk} time={time} incoming={incoming}")


def strong_gates(inputs: dict, seed: int) -> dict:
    """Gated DeltaNet's regime: write strength β up to 1 and decay a = 1 − α down to 0.5, where the order of decay
    and delta step changes the outputs by several percent."""
    gen = torch.Generator().manual_seed(seed)
    shape = inputs["lr"].shape
    inputs["lr"] = torch.rand(shape, generator=gen, dtype=torch.float64).requires_grad_()
    inputs["forget"] = (0.5 * torch.rand(shape, generator=gen, dtype=torch.float64)).requires_grad_()
    return inputs


def fla_layout_run(inputs: dict, init: tuple, prefix: dict | None):
    """The published reference recurrence in its own conventions: state Sᵀ, log-space decay, queries scaled by
    1/√d (undone here, ttmem's reads are unscaled), then mapped back to ttmem's layout."""
    stream = inputs if prefix is None else {name: torch.cat([prefix[name], x], 1) for name, x in inputs.items()}
    dk = stream["k"].shape[-1]
    state = init[0].unsqueeze(0).mT.expand(stream["q"].shape[0], -1, -1, -1)
    out, h = gated_delta_rule_kv(stream["q"] * math.sqrt(dk), stream["k"], stream["v"], stream["lr"],
                                 torch.log1p(-stream["forget"]), scale=dk ** -0.5, state=state)
    return out[:, out.shape[1] - inputs["q"].shape[1]:], (h.mT,), None


@pytest.mark.parametrize("impl", ["delta_rule", "chunked"])
@pytest.mark.parametrize("incoming", [False, True], ids=["fresh", "incoming-state"])
@pytest.mark.parametrize("chunk", CHUNKS)
def test_gated_delta_equals_published_recurrence(chunk, incoming, impl):
    """Acceptance for ``gated_delta``: the engine's WY / UT path (and the chunked dual form, one token per chunk)
    equals both the equation's matrix form and the port of the published reference recurrence, to 1e-10 in
    outputs, final state and gradients. The one-token decode step is checked below."""
    for time in LENGTHS:
        init = learned_initial_weights("gated_delta")
        inputs = strong_gates(make_inputs("gated_delta", time=time, seed=time + chunk, requires_grad=True), time)
        prefix = strong_gates(make_inputs("gated_delta", time=PREFIX, seed=99), 98) if incoming else None
        if prefix is not None:
            prefix = {name: x.detach() for name, x in prefix.items()}
        leaves = [inputs[name] for name in sorted(inputs)] + list(init)
        engine = engine_run("gated_delta", inputs, init, chunk, prefix, impl)
        where = f"gated_delta {impl} chunk={chunk} time={time} incoming={incoming}"
        assert_same_run("gated_delta", engine, fla_layout_run(inputs, init, prefix), leaves, where + " (published)")
        assert_same_run("gated_delta", engine, paper_run("gated_delta", inputs, init, chunk, prefix), leaves,
                        where + " (equation)")


def test_gated_delta_token_by_token_equals_published_recurrence():
    """Streaming one token per call (the decode step) gives the published recurrence's outputs and state."""
    init = learned_initial_weights("gated_delta")
    inputs = strong_gates(make_inputs("gated_delta", time=21, seed=4), 4)
    state, outs = start_state("gated_delta", init), []
    for t in range(21):
        out, state = memorize(**{name: x[:, t:t + 1] for name, x in inputs.items()}, rule="gated_delta",
                              chunk_size=16, state=state, impl="step")
        outs.append(out)
    expected, weights, _ = fla_layout_run(inputs, init, None)
    assert rel_err(torch.cat(outs, 1), expected) <= TOL
    assert rel_err(state.weights[0], weights[0]) <= TOL


@pytest.mark.parametrize("impl", ["delta_rule", "chunked", "reference"])
def test_titans_order_is_a_different_recurrence(impl):
    """``forget_first=False`` keeps the Titans order (error on the undecayed memory): it equals that form and
    differs from Gated DeltaNet's, so the acceptance tests above can tell the two apart."""
    titans_order = get_rule("gated_delta").replace(forget_first=False)
    inputs = strong_gates(make_inputs("gated_delta", time=50, seed=5), 5)
    out, _ = memorize(**inputs, rule=titans_order, chunk_size=16, impl=impl)
    w = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    expected = []
    for t in range(50):
        k, v = inputs["k"][:, t], inputs["v"][:, t]
        beta, keep = inputs["lr"][:, t, :, None, None], 1 - inputs["forget"][:, t, :, None, None]
        w = keep * w + beta * (v - torch.einsum("bhij,bhj->bhi", w, k)).unsqueeze(-1) * k.unsqueeze(-2)
        expected.append(torch.einsum("bhij,bhj->bhi", w, inputs["q"][:, t]))
    assert rel_err(out, torch.stack(expected, 1)) <= TOL
    gated, _ = fla_layout_run(inputs, (torch.zeros(2, 8, 8, dtype=torch.float64),), None)[:2]
    assert rel_err(out, gated) > 1e-2


def test_forget_first_needs_the_exact_delta_rule():
    with pytest.raises(ValueError, match="forget_first needs the exact per-token delta rule"):
        get_rule("titans").replace(forget_first=True)
