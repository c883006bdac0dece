"""Analytic FLOPs against FlopCounterMode on real forward passes."""

import pytest
import torch

from ttmem import memory
from ttmem.security import flops
from ttmem.security.reference_layers import DECODERS


@pytest.mark.parametrize("kind", sorted(DECODERS))
@pytest.mark.parametrize("dim,heads", [(32, 1), (48, 4)])
def test_decoder_step_flops_match_flop_counter(kind, dim, heads):
    torch.manual_seed(0)
    kwargs = {"rank": 5} if kind == "theta_lowrank" else {"hidden": 12} if kind == "titans_mlp" else {}
    layer = DECODERS[kind](dim, heads, **kwargs)
    for context in (0, 7, 40):
        state = layer.init_state(1, context)
        x = torch.randn(1, dim)
        with torch.no_grad():
            measured = flops.measure_flops(lambda x=x, state=state: layer.step(x, state))
        expected = flops.decoder_step_flops(kind, dim, heads, context=context, rank=5, hidden=12)
        assert measured == expected, (kind, context)


def test_only_kv_attention_grows_with_context():
    for kind in DECODERS:
        small = flops.decoder_step_flops(kind, 64, 2, context=10)
        large = flops.decoder_step_flops(kind, 64, 2, context=10_000)
        assert (large > small) == (kind == "kv_attention")


def test_attention_flops_against_naive_matmuls():
    # Independent check of the sdpa count: q Kᵀ and P V as explicit matmuls.
    q, k, v = torch.randn(1, 3, 1, 8), torch.randn(1, 3, 20, 8), torch.randn(1, 3, 20, 8)
    naive = flops.measure_flops(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v)
    assert naive == flops.kv_attention_flops(20, 8, 3)


def test_cpu_attention_kernel_is_counted():
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 10, 8)
    sdpa = flops.measure_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k))
    naive = flops.measure_flops(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ k)
    assert sdpa == naive == 2 * 4 * 3 * 10 * 8


def test_lowrank_is_cheaper_than_full_when_rank_small():
    assert flops.theta_lowrank_flops(256, 256, 8) < flops.theta_memory_flops(256, 256)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        flops.decoder_step_flops("lstm", 8)
    with pytest.raises(ValueError, match="dim_k"):
        flops.theta_memory_flops(0, 4)
    with pytest.raises(TypeError):
        flops.measure_flops(3)


def _core_flops(rule: str, dk: int, heads: int) -> int:
    arch = memory.get_rule(rule).architecture
    if rule == "theta_lowrank":
        return flops.theta_lowrank_flops(dk, dk, arch.rank, heads)
    if arch.kind == "mlp":
        return flops.titans_mlp_flops(dk, dk, arch.shapes(dk, dk)[0][0], heads)
    return flops.theta_memory_flops(dk, dk, heads)


@pytest.mark.parametrize("rule", ["theta", "theta_lowrank", "delta", "titans"])
@pytest.mark.parametrize("dk,heads", [(16, 2), (32, 1)])
def test_memory_engine_decode_step_flops_equal_analytic(rule, dk, heads):
    """One decoded token costs exactly the analytic per-token count, at every chunk size and position in a
    chunk (no padding to a chunk, no coefficient matrices)."""
    analytic = _core_flops(rule, dk, heads)
    for chunk in (1, 16):
        q, k, v = (torch.randn(1, 3, heads, dk) for _ in range(3))
        lr = torch.rand(1, 3, heads) * 0.1
        _, state = memory.memorize(q, k, v, lr, rule=rule, chunk_size=chunk)
        for t in range(3):
            token = (q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], lr[:, t:t + 1])
            measured = flops.measure_flops(
                lambda s=state, x=token, c=chunk: memory.memorize(*x, rule=rule, chunk_size=c, state=s))
            assert measured == analytic, (chunk, t, measured, analytic)
            _, state = memory.memorize(*token, rule=rule, chunk_size=chunk, state=state)


@pytest.mark.parametrize("rule", ["theta", "theta_lowrank"])
@pytest.mark.parametrize("dk,heads", [(16, 2), (32, 1)])
def test_memory_engine_per_token_flops_of_a_sequence(rule, dk, heads):
    """A sequence through the exact per-token path (chunk_size=1): fixed work per token whose O(d²) / O(r d)
    term is exactly the analytic one; only lower-order O(d) work (norms, scalar products) may be added."""
    analytic = _core_flops(rule, dk, heads)
    per_token = []
    for t in (5, 9):
        q, k, v = (torch.randn(1, t, heads, dk) for _ in range(3))
        lr = torch.rand(1, t, heads)
        total = flops.measure_flops(lambda q=q, k=k, v=v, lr=lr: memory.memorize(q, k, v, lr, rule=rule, chunk_size=1))
        per_token.append(total / t)
    assert per_token[0] == per_token[1]  # fixed work per token
    assert analytic <= per_token[0] <= analytic + 16 * heads * (2 * dk)


@pytest.mark.parametrize("rule", ["theta", "titans"])
def test_neural_memory_layer_decode_flops_equal_projections_plus_core(rule):
    """The whole layer's decode step: its dense projections, its depthwise conv, and the analytic core."""
    from ttmem.layers import NeuralMemory

    dim, heads, kernel = 32, 2, 4
    layer = NeuralMemory(dim, heads=heads, chunk_size=16, rule=rule, conv_kernel=kernel)
    inner = layer.heads * layer.dim_head
    with torch.no_grad():
        _, state = layer(torch.randn(1, 5, dim))
        measured = flops.measure_flops(lambda: layer(torch.randn(1, 1, dim), state))
    dense = (flops.linear_flops(dim, 3 * inner) + flops.linear_flops(dim, heads * layer.n_gates)
             + flops.linear_flops(dim, inner) + flops.linear_flops(inner, dim))
    conv = 2 * 3 * inner * kernel  # depthwise: one kernel per channel, one output position
    assert measured == dense + conv + _core_flops(rule, layer.dim_head, heads)


@pytest.mark.parametrize("rule", ["theta", "theta_lowrank"])
@pytest.mark.parametrize("chunk_size", [1, 16])
def test_neural_memory_layer_decode_flops_do_not_depend_on_context(rule, chunk_size):
    from ttmem.layers import NeuralMemory

    torch.manual_seed(0)
    layer = NeuralMemory(32, heads=2, chunk_size=chunk_size, rule=rule)
    counts = []
    for context in (3, 16, 40):
        with torch.no_grad():
            _, state = layer(torch.randn(1, context, 32))
            x = torch.randn(1, 1, 32)
            counts.append(flops.measure_flops(lambda x=x, state=state: layer(x, state)))
    assert counts[0] == counts[1] == counts[2] > 0
