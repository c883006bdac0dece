"""Every architecture: shapes, overfitting, streaming == full forward, save/load, gradient coverage."""

import pytest
import torch
import torch.nn.functional as F

from ttmem.models import ARCHITECTURES, ModelConfig, build_model, load_model, save_model

# Small enough that the whole file runs in seconds; lengths chosen so prompts end mid-chunk
# (chunk 4), mid-segment (segment 8) and past the window (8).
SMALL = dict(dim=32, depth=2, heads=2, window=8, segment_len=8, chunk_size=4, persistent_tokens=2,
             cms_periods=(4, 8, 16), mlp_ratio=2.0)


def small_model(arch: str, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch=arch, **{**SMALL, **overrides}))


def assert_decode_equals_forward(model: torch.nn.Module, tokens: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Prompt of ``prompt_len`` tokens, then one token at a time: the logits equal one full forward's."""
    with torch.no_grad():
        full = model(tokens).logits
        out = model(tokens[:, :prompt_len])
        pieces = [out.logits]
        for t in range(prompt_len, tokens.shape[1]):
            out = model(tokens[:, t : t + 1], out.state)
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)
    return full


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_shapes(arch):
    model = small_model(arch)
    out = model(torch.randint(0, 256, (3, 13)))
    assert out.logits.shape == (3, 13, 256)
    assert out.state.position == 13
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loss_decreases_on_tiny_batch(arch):
    model = small_model(arch)
    data = torch.randint(0, 256, (2, 25), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        logits = model(data[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, 256), data[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("prompt_len", [1, 11])
def test_streaming_decode_equals_full_forward(arch, prompt_len):
    model = small_model(arch).eval()
    tokens = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(2))
    assert_decode_equals_forward(model, tokens, prompt_len)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_load_round_trip(arch, tmp_path):
    model = small_model(arch).eval()
    tokens = torch.randint(0, 256, (2, 15))
    save_model(model, tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(model(tokens).logits, loaded(tokens).logits)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_gradients_reach_every_parameter(arch):
    model = small_model(arch)
    tokens = torch.randint(0, 256, (2, 24))
    logits = model(tokens[:, :-1]).logits
    F.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_truncated_backprop_with_detached_state(arch):
    model = small_model(arch)
    tokens = torch.randint(0, 256, (2, 19))
    out = model(tokens[:, :10])
    out.logits.sum().backward()
    state = out.state.detach()
    model.zero_grad()
    second = model(tokens[:, 10:], state)
    second.logits.square().mean().backward()  # must not reach into the first piece's graph
    assert second.state.position == 19


@pytest.mark.parametrize("arch,rule", [(arch, rule) for arch in ("lmm", "mac", "mag", "mal", "hope")
                                       for rule in ("moneta", "yaad", "memora", "atlas")]
                         + [("theta_lm", "theta_lowrank")])
def test_any_memory_rule_plugs_in_and_streams_exactly(arch, rule):
    model = small_model(arch, memory_rule=rule).eval()
    tokens = torch.randint(0, 256, (2, 14), generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(assert_decode_equals_forward(model, tokens, 9)).all()


def test_hope_adaptation_persists_inside_scope_and_is_undone_after():
    model = small_model("hope").eval()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    text = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(4))
    probe = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        baseline = model(probe).logits
    with model.adaptation_scope():
        model.adapt(text)
        changed = {name for name, t in model.state_dict().items() if not torch.equal(t, before[name])}
        assert any("projection_init" in n for n in changed) and any(n.endswith("w_in") for n in changed)
        assert any("memory_init" in n for n in changed)
        with torch.no_grad():
            assert not torch.allclose(model(probe).logits, baseline, atol=1e-4)
    assert all(torch.equal(t, before[name]) for name, t in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(probe).logits, baseline)


def test_adapt_needs_fast_weights():
    with pytest.raises(ValueError, match="arch 'transformer' has no fast weights"):
        small_model("transformer").adapt(torch.randint(0, 256, (1, 4)))


@pytest.mark.parametrize("mac_output,memory_input", [("gate", "attention"), ("residual", "attention"),
                                                     ("product", "segment")])
def test_mac_options_stream_exactly_and_train_every_parameter(mac_output, memory_input):
    model = small_model("mac", mac_output=mac_output, mac_memory_input=memory_input).eval()
    tokens = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(4))
    assert_decode_equals_forward(model, tokens, 5)
    model.train()
    F.cross_entropy(model(tokens[:, :-1]).logits.reshape(-1, 256), tokens[:, 1:].reshape(-1)).backward()
    assert not [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


@pytest.mark.parametrize("mac_output,memory_input", [("product", "attention"), ("gate", "attention"),
                                                     ("residual", "attention"), ("residual", "segment")])
def test_mac_output_is_the_named_combination_of_attention_and_memory(mac_output, memory_input):
    from ttmem.models.titans import MemoryAsContext

    torch.manual_seed(0)
    config = ModelConfig(arch="mac", **{**SMALL, "mac_output": mac_output, "mac_memory_input": memory_input})
    mixer = MemoryAsContext(config).double()
    x = torch.randn(2, config.segment_len, config.dim, dtype=torch.float64)  # one segment: one retrieval
    out, _ = mixer(x)
    retrieved, _ = mixer.memory.read(x, mixer.memory.initial_state(2).memory, None)
    y, _ = mixer.attention(x, None, memory_tokens=retrieved)
    m, _ = mixer.memory(y if memory_input == "attention" else x, None)
    if mac_output == "product":
        expected = y * m
    elif mac_output == "residual":
        expected = y + m
    else:
        g = torch.sigmoid(x @ mixer.combine.to_gate.weight.T + mixer.combine.to_gate.bias)
        rms = lambda t, w: t / t.pow(2).mean(-1, keepdim=True).add(config.norm_eps).sqrt() * w  # noqa: E731
        mixed = g * rms(y, mixer.combine.attention_norm.weight) + (1 - g) * rms(m, mixer.combine.memory_norm.weight)
        expected = mixed @ mixer.combine.to_out.weight.T
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)


def test_mac_options_refuse_unknown_values():
    with pytest.raises(ValueError, match="mac_output must be one of product, gate, residual; got 'sum'"):
        ModelConfig(arch="mac", mac_output="sum")
    with pytest.raises(ValueError, match="mac_memory_input must be one of attention, segment; got 'x'"):
        ModelConfig(arch="mac", mac_memory_input="x")


@pytest.mark.parametrize("arch,overrides", [(a, {}) for a in ARCHITECTURES] + [("mac", {"segment_len": 6})])
def test_decoding_with_momentum_updated_in_place_equals_decoding_without(arch, overrides):
    """generate's loop updates the memories' momentum in place; every architecture's logits stay bitwise those of
    the allocating path (MAC, for one, keeps reading an earlier state's weights), and generate leaves the model
    as it was."""
    from ttmem.memory import decode_in_place

    model = small_model(arch, **overrides).eval()  # MAC segments of 6 start mid-chunk (chunk 4)
    tokens = torch.randint(0, 256, (2, 23), generator=torch.Generator().manual_seed(3))
    runs = []
    for in_place in (False, True):
        with torch.inference_mode():
            out = model(tokens[:, :5])
            logits = []
            for t in range(5, tokens.shape[1]):
                if in_place:
                    with decode_in_place():
                        out = model(tokens[:, t : t + 1], out.state)
                else:
                    out = model(tokens[:, t : t + 1], out.state)
                logits.append(out.logits)
        runs.append(torch.cat(logits, dim=1))
    assert torch.equal(runs[0], runs[1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.generate(tokens[:, :5], 18)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
