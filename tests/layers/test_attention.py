"""Attention layer against a naive loop-and-softmax reference; cached decoding against one full pass."""

import math

import pytest
import torch

from ttmem.layers.attention import Attention, RotaryEmbedding


def _rotate_complex(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary phase as complex multiplication of (x_i, x_{i+d/2}) pairs: x [B, H, T, d]."""
    half = x.shape[-1] // 2
    freqs = torch.tensor([base ** (-2 * i / x.shape[-1]) for i in range(half)], dtype=torch.float64)
    phase = torch.polar(torch.ones(len(positions), half, dtype=torch.float64), positions[:, None] * freqs)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * phase
    return torch.cat((z.real, z.imag), dim=-1).to(x.dtype)


def naive_attention(layer: Attention, x: torch.Tensor, memory_tokens: torch.Tensor | None = None):
    """Loop over queries, explicit softmax over the visible keys (float64)."""
    batch, length, _ = x.shape
    heads, d = layer.heads, layer.dim_head
    w_q, w_k, w_v = layer.to_qkv.weight.double().chunk(3, dim=0)
    positions = torch.arange(length, dtype=torch.float64)

    def project(inp, w):
        return (inp.double() @ w.T).view(batch, -1, heads, d).transpose(1, 2)

    q = _rotate_complex(project(x, w_q), positions)
    k = _rotate_complex(project(x, w_k), positions)
    v = project(x, w_v)
    if memory_tokens is not None:
        k_mem, v_mem = _rotate_complex(project(memory_tokens, w_k), positions), project(memory_tokens, w_v)
    out = torch.zeros(batch, heads, length, d, dtype=torch.float64)
    for i in range(length):
        lo = 0 if layer.window is None else max(0, i - layer.window + 1)
        keys, values = [k[:, :, lo : i + 1]], [v[:, :, lo : i + 1]]
        if memory_tokens is not None:
            keys.append(k_mem[:, :, lo : i + 1])
            values.append(v_mem[:, :, lo : i + 1])
        if layer.persistent is not None:
            p = layer.persistent.double()[None].expand(batch, -1, -1)
            keys.append(project(p, w_k))
            values.append(project(p, w_v))
        keys, values = torch.cat(keys, dim=2), torch.cat(values, dim=2)
        scores = torch.einsum("bhd,bhjd->bhj", q[:, :, i], keys) / math.sqrt(d)
        weights = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out[:, :, i] = torch.einsum("bhj,bhjd->bhd", weights, values)
    out = out.transpose(1, 2).reshape(batch, length, heads * d)
    return (out @ layer.to_out.weight.double().T).float()


@pytest.mark.parametrize(
    "window,persistent,block_size",
    [(None, 0, 256), (None, 3, 256), (5, 0, 256), (5, 2, 256), (5, 2, 4), (1, 0, 3), (40, 0, 256)],
)
def test_matches_naive_reference(window, persistent, block_size):
    torch.manual_seed(0)
    layer = Attention(32, heads=4, window=window, persistent_tokens=persistent, block_size=block_size)
    x = torch.randn(2, 23, 32)
    y, _ = layer(x)
    torch.testing.assert_close(y, naive_attention(layer, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("window", [None, 4])
def test_memory_tokens_match_naive_reference(window):
    torch.manual_seed(1)
    layer = Attention(16, heads=2, window=window, persistent_tokens=2)
    x, mem = torch.randn(2, 11, 16), torch.randn(2, 11, 16)
    y, _ = layer(x, memory_tokens=mem)
    torch.testing.assert_close(y, naive_attention(layer, x, mem), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("window,persistent", [(None, 0), (None, 2), (6, 0), (6, 3)])
@pytest.mark.parametrize("pieces", [[1] * 19, [7, 1, 1, 5, 5], [3, 16]])
def test_cached_decoding_equals_full_forward(window, persistent, pieces):
    torch.manual_seed(2)
    layer = Attention(24, heads=3, window=window, persistent_tokens=persistent, block_size=4)
    x = torch.randn(2, sum(pieces), 24)
    full, _ = layer(x)
    cache, outs, begin = None, [], 0
    for size in pieces:
        y, cache = layer(x[:, begin : begin + size], cache)
        outs.append(y)
        begin += size
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.next_position == x.shape[1]
    if window is not None:
        assert cache.length == window - 1
    else:
        assert cache.length == x.shape[1]


def test_older_cache_stays_valid_after_newer_appends():
    torch.manual_seed(3)
    layer = Attention(16, heads=2)
    x = torch.randn(1, 10, 16)
    with torch.no_grad():
        _, newer = layer(x[:, :6])
        _, middle = layer(x[:, 6:7], newer)  # moves into a grown buffer
        newer = middle
        for t in range(7, 9):  # these append in place into middle's buffer
            _, newer = layer(x[:, t : t + 1], newer)
        assert newer.store is middle.store
        branch, _ = layer(x[:, 9:10], middle)
        reference, _ = layer(torch.cat((x[:, :7], x[:, 9:10]), dim=1))
        replay, _ = layer(x[:, 9:10], newer)
        full, _ = layer(x)
    torch.testing.assert_close(branch[:, 0], reference[:, -1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(replay[:, 0], full[:, -1], atol=1e-5, rtol=1e-4)


def test_gradients_flow_through_cached_pieces():
    torch.manual_seed(4)
    layer = Attention(16, heads=2, persistent_tokens=2)
    x = torch.randn(2, 9, 16)
    full, _ = layer(x)
    grads_full = torch.autograd.grad(full.square().sum(), list(layer.parameters()))
    y1, cache = layer(x[:, :4])
    y2, _ = layer(x[:, 4:], cache)
    grads_pieces = torch.autograd.grad(torch.cat((y1, y2), 1).square().sum(), list(layer.parameters()))
    for a, b in zip(grads_full, grads_pieces, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_rotary_scores_depend_only_on_relative_position():
    rotary = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m, n):
        return (rotary(q, torch.tensor([m])) * rotary(k, torch.tensor([n]))).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rotary(q, torch.tensor([5])).norm(), q.norm())


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, heads=3)
    with pytest.raises(ValueError, match="window"):
        Attention(8, heads=2, window=0)
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(5)
    layer = Attention(8, heads=2)
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.randn(3, 8))
    with pytest.raises(ValueError, match="memory_tokens"):
        layer(torch.randn(1, 3, 8), memory_tokens=torch.randn(1, 2, 8))
