"""The one-token step's in-place momentum update (``decode_in_place``): the same values as the allocating path,
written into the given buffers only where that is safe."""

from __future__ import annotations

import pytest
import torch

from ttmem.memory import MemoryState, decode_in_place, get_rule, memorize


def _inputs(time: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    b, h, d = 2, 3, 6
    qkv = [torch.nn.functional.normalize(torch.randn(b, time, h, d, generator=gen), dim=-1) for _ in range(3)]
    gates = [torch.rand(b, time, h, generator=gen) * 0.5 for _ in range(3)]
    return dict(q=qkv[0], k=qkv[1], v=qkv[2], lr=gates[0], momentum=gates[1], forget=gates[2])


def _copy(state: MemoryState) -> MemoryState:
    return state._map(lambda t: t.clone())


RULES = {
    "titans": get_rule("titans"),
    "titans_linear": get_rule("titans_linear"),
    "titans_newton_schulz": get_rule("titans").replace(newton_schulz_steps=3),
}


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("prefix", [5, 8])  # the next token mid-chunk, and at a chunk start
def test_in_place_step_equals_the_allocating_step(name, prefix):
    rule = RULES[name]
    with torch.no_grad():
        _, state = memorize(**_inputs(prefix, 0), rule=rule, chunk_size=4)
        token = _inputs(1, 1)
        out_a, new_a = memorize(**token, rule=rule, chunk_size=4, state=_copy(state), impl="step")
        given = _copy(state)
        with decode_in_place():
            out_b, new_b = memorize(**token, rule=rule, chunk_size=4, state=given, impl="step")
    assert torch.equal(out_a, out_b)
    for field in ("weights", "momentum", "momentum_step", "ref"):
        a, b = getattr(new_a, field), getattr(new_b, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), field
    written = [new.data_ptr() == old.data_ptr() for new, old in zip(new_b.momentum, given.momentum)]
    if rule.newton_schulz_steps:  # two buffers that may be one tensor: never in place, the given state unchanged
        assert not any(written)
        assert all(torch.equal(x, y) for x, y in zip(given.momentum, state.momentum))
    else:
        assert all(written)
    assert all(new.data_ptr() != old.data_ptr() for new, old in zip(new_b.weights, given.weights))


def test_no_in_place_update_while_autograd_records():
    rule = RULES["titans"]
    _, state = memorize(**_inputs(5, 0), rule=rule, chunk_size=4)
    state = state.detach()
    with decode_in_place():
        _, new = memorize(**_inputs(1, 1), rule=rule, chunk_size=4, state=state, impl="step")
    assert all(n.data_ptr() != o.data_ptr() for n, o in zip(new.momentum, state.momentum))


def test_newton_schulz_step_equals_the_reference():
    """The step's Newton–Schulz branch (both buffers take one step) against the token-by-token reference, fp64,
    across chunk boundaries (9 tokens, chunk 4) after an incoming state that ends mid-chunk."""
    rule = RULES["titans_newton_schulz"]
    prefix = {k: v.double() for k, v in _inputs(5, 0).items()}
    tokens = {k: v.double() for k, v in _inputs(9, 1).items()}
    _, start = memorize(**prefix, rule=rule, chunk_size=4, impl="reference")
    expected, end_ref = memorize(**tokens, rule=rule, chunk_size=4, state=_copy(start), impl="reference")
    state, outs = _copy(start), []
    for t in range(9):
        out, state = memorize(**{k: v[:, t:t + 1] for k, v in tokens.items()}, rule=rule, chunk_size=4, state=state,
                              impl="step")
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), expected, rtol=1e-10, atol=1e-10)
    for a, b in zip(state.weights + state.momentum, end_ref.weights + end_ref.momentum, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
