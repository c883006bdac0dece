"""Complexity gating, pages and kinetics on HOPE's main memory: options off change nothing, streaming (the model's
decoding test is in test_paging.py), causality, page isolation, the one refusal (a rule without a forget gate) and
the training CLI (in test_paging.py)."""

from dataclasses import replace

import pytest
import torch

from ttmem.layers.self_modifying import SelfModifyingMemory
from ttmem.models import ModelConfig, build_model, load_model, save_model

SMALL = dict(arch="hope", dim=32, depth=2, heads=2, chunk_size=4, mlp_ratio=2.0, cms_periods=(3, 7))
OPTIONS = dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=1.0, page_threshold_units="noise",
               page_routing="manifold", kinetics_mix=0.3, complexity_args={"phase_mix": 0.5, "quorum_mix": 0.3})
LAYER_OPTIONS = dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=0.0, kinetics_coupling=True,
                     kinetics_mix=0.5)


def hope(**fields):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**SMALL, **fields})).double().eval()


def layer(options, seed=0):
    torch.manual_seed(seed)
    return SelfModifyingMemory(16, 2, chunk_size=4, symplectic=options).double()


def _states_equal(a, b, exact=True):
    for mine, theirs in ((a.projections, b.projections), (a.memory, b.memory)):
        for name in ("weights", "momentum", "active_page", "chunk_complexity", "chunk_lr_sum", "signal_offset"):
            x, y = getattr(mine, name), getattr(theirs, name)
            for u, v in zip(x if isinstance(x, tuple) else (x,), y if isinstance(y, tuple) else (y,), strict=True):
                if isinstance(u, torch.Tensor) and u.is_floating_point() and not exact:
                    torch.testing.assert_close(u, v, atol=1e-12, rtol=0)
                else:
                    assert (torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v), name


@pytest.mark.parametrize("options", [{}, {"num_pages": 1}, {"kinetics_coupling": False, "kinetics_mix": 0.3}])
def test_options_off_is_the_plain_layer_bit_for_bit(options):
    plain, off = layer(None), layer(options)
    assert off.symplectic is None and off.pages == 1
    assert list(plain.state_dict()) == list(off.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(plain.state_dict().values(), off.state_dict().values(), strict=True))
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    (ya, sa), (yb, sb) = plain(x), off(x)
    assert torch.equal(ya, yb)
    _states_equal(sa, sb)
    assert sb.memory.active_page is None and sb.memory.signal_inputs is None


def test_options_off_config_builds_the_plain_hope_model():
    plain = hope()
    assert plain.config.memory_options() is None
    assert not any("symplectic" in name for name in plain.state_dict())
    paged = hope(**OPTIONS)
    assert paged.layers[0].module.symplectic.pages == 2
    assert paged.layers[1].module.period == 3  # the continuum levels are untouched


def test_layer_whole_equals_pieces_equals_token_by_token_with_options_on():
    mem = layer(LAYER_OPTIONS)
    x = torch.randn(2, 13, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    whole, state = mem(x)
    pieces, s = [], None
    for a, b in ((0, 3), (3, 9), (9, 13)):
        y, s = mem(x[:, a:b], s)
        pieces.append(y)
    tokens, t_state = [], None
    for t in range(13):
        y, t_state = mem(x[:, t:t + 1], t_state)
        tokens.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.cat(tokens, 1), whole, atol=1e-12, rtol=0)
    _states_equal(s, state, exact=False)
    _states_equal(t_state, state, exact=False)
    assert int(mem.symplectic.page_switch_events) > 0  # threshold 0: the page changes at every boundary


def test_the_future_does_not_reach_the_past():
    model = hope(**OPTIONS)
    tokens = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(3))
    changed = tokens.clone()
    changed[:, 9:] = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = model(tokens).logits, model(changed).logits
    assert torch.equal(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_inactive_page_is_exactly_unchanged_with_momentum_on():
    mem = layer(dict(use_symplectic_gating=True, num_pages=2, symplectic_page_threshold=10.0))  # never switches
    assert mem.rule.momentum
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    start = mem.initial_state(2)
    for page in (0, 1):
        pinned = replace(start, memory=replace(start.memory, active_page=torch.full((2,), page)))
        _, state = mem(x, pinned)
        idle = slice(2, 4) if page == 0 else slice(0, 2)  # internal heads of the other page
        busy = slice(0, 2) if page == 0 else slice(2, 4)
        for w, w0, s in zip(state.memory.weights, start.memory.weights, state.memory.momentum, strict=True):
            assert torch.equal(w[:, idle], w0[:, idle]) and not torch.equal(w[:, busy], w0[:, busy])
            assert torch.equal(s[:, idle], torch.zeros_like(s[:, idle]))


def test_save_and_load_keep_the_options(tmp_path):
    model = hope(**OPTIONS).float()
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt").eval()
    tokens = torch.randint(0, 256, (2, 9))
    assert loaded.config == model.config and list(loaded.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, loaded(tokens).logits)


def test_gating_needs_the_main_memory_to_forget():
    with pytest.raises(ValueError, match="forget gate; rule 'delta' has none"):
        ModelConfig(**SMALL, memory_rule="delta", use_symplectic_gating=True)
    ModelConfig(**SMALL, memory_rule="delta", kinetics_mix=0.5)  # kinetics needs no forget gate
