"""The causal per-token branch gate: its formula token by token, causality, streaming, and in models."""

import math

import pytest
import torch

from ttmem.layers.branch_gate import BranchGate
from ttmem.models import ModelConfig, build_model


def loop_gate(h, mix, eps=1e-6):
    """The gate written out token by token."""
    b, t, _ = h.shape
    out = torch.ones(b, t, dtype=h.dtype)
    for i in range(b):
        seen = []
        for s in range(1, t):
            e = float(((h[i, s] - h[i, s - 1]) ** 2).mean())
            seen.append(e)
            n = e / (sum(seen) / len(seen) + eps)
            out[i, s] = min(max((1 - mix) + mix * math.tanh(n), 0.0), 1.0)
    return out


def test_gate_matches_the_formula_token_by_token():
    h = torch.randn(2, 9, 5, dtype=torch.float64)
    h[:, 4] *= 5  # one token that changes a lot
    gate, _ = BranchGate(0.4)(h)
    assert torch.allclose(gate.squeeze(-1), loop_gate(h, 0.4), atol=1e-12, rtol=0)
    assert gate[:, 4].min() > gate[:, 2].max()


def test_gate_is_causal_and_streams():
    h = torch.randn(2, 12, 4, dtype=torch.float64)
    gate_module = BranchGate(0.7)
    whole, _ = gate_module(h)
    changed = h.clone()
    changed[:, 7:] = torch.randn_like(changed[:, 7:])
    assert torch.equal(gate_module(changed)[0][:, :7], whole[:, :7])
    for sizes in ((1,) * 12, (5, 1, 6)):
        state, parts, start = None, [], 0
        for n in sizes:
            g, state = gate_module(h[:, start:start + n], state)
            parts.append(g)
            start += n
        assert torch.allclose(torch.cat(parts, 1), whole, atol=1e-12, rtol=0)


def test_mix_zero_is_the_identity_and_bad_mix_is_rejected():
    gate, _ = BranchGate(0.0)(torch.randn(1, 6, 3))
    assert torch.equal(gate, torch.ones_like(gate))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="mix"):
            BranchGate(bad)
    with pytest.raises(ValueError, match="branch_gate_mix"):
        ModelConfig(arch="transformer", branch_gate_mix=2.0)


SMALL = dict(dim=32, depth=2, heads=2, window=8, segment_len=8, chunk_size=4, mlp_ratio=2.0)


@pytest.mark.parametrize("arch, odd", [("transformer", False), ("mac", True)])
def test_models_with_the_gate_decode_like_the_full_forward(arch, odd):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, branch_gate_mix=0.5, branch_gate_odd_only=odd, **SMALL)).double()
    model.eval()
    tokens = torch.randint(0, 256, (2, 15), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens).logits
        out = model(tokens[:, :1])
        parts = [out.logits]
        for t in range(1, 15):
            out = model(tokens[:, t:t + 1], out.state)
            parts.append(out.logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-10, rtol=0)
    gated = sum(type(m).__name__ == "GatedPreNormResidual" for m in model.layers)
    assert gated == (len(model.layers) // 2 if odd else len(model.layers))


def test_gate_off_builds_the_plain_model():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(arch="transformer", **SMALL))
    torch.manual_seed(0)
    off = build_model(ModelConfig(arch="transformer", branch_gate_mix=0.0, **SMALL))
    assert list(plain.state_dict()) == list(off.state_dict())
    tokens = torch.randint(0, 256, (1, 9))
    assert torch.equal(plain(tokens).logits, off(tokens).logits)
