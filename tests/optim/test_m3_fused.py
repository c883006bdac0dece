"""M3 on fused weights: each logical matrix of a stacked weight is orthogonalised on its own.

References are built from ``newton_schulz`` on each block separately (its own tests check it against the
polar factor), never from M3's helpers."""

import copy
import math

import pytest
import torch
from torch import nn

from ttmem.fused import declare_row_blocks, row_blocks
from ttmem.layers.attention import Attention
from ttmem.layers.continuum import ContinuumLevel
from ttmem.layers.mlp import SwiGLU
from ttmem.layers.neural_memory import NeuralMemory
from ttmem.newton_schulz import newton_schulz
from ttmem.optim import M3, m3_param_groups
from ttmem.train.optim import build_optimizer

BLOCKS = (3, 7, 5)  # unequal on purpose: rows of a fused (15, 6) weight, some blocks tall, some wide


def fused_weight(seed: int = 0) -> nn.Parameter:
    gen = torch.Generator().manual_seed(seed)
    return nn.Parameter(torch.randn(sum(BLOCKS), 6, generator=gen, dtype=torch.float64))


def gradient(seed: int = 1) -> torch.Tensor:
    """Columns and blocks of very different scales, so a joint orthogonalisation differs from split ones."""
    gen = torch.Generator().manual_seed(seed)
    grad = torch.randn(sum(BLOCKS), 6, generator=gen, dtype=torch.float64)
    return grad * torch.tensor([1.0] * 3 + [30.0] * 7 + [0.1] * 5, dtype=torch.float64)[:, None]


def first_step(variant: str, blocks: tuple[int, ...] | None, lr: float = 1e-2, **kwargs) -> torch.Tensor:
    """The parameter change of M3's first step on ``gradient()``, divided by -lr."""
    weight = fused_weight()
    before = weight.detach().clone()
    optimizer = M3([{"params": [weight], "row_blocks": blocks}], lr=lr, variant=variant, **kwargs)
    weight.grad = gradient()
    optimizer.step()
    return (before - weight.detach()) / lr


def split_reference(matrix: torch.Tensor, rule) -> torch.Tensor:
    """``rule(block)`` on each row block of ``matrix``, stacked back: the independent computation."""
    out, start = [], 0
    for rows in BLOCKS:
        out.append(rule(matrix[start:start + rows]))
        start += rows
    return torch.cat(out)


def frobenius_size(direction: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    return direction * torch.linalg.matrix_norm(block) / torch.linalg.matrix_norm(direction)


def projected_size(direction: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    return direction * (direction * block).sum() / (direction * direction).sum()


@pytest.mark.parametrize(("variant", "size"), [("precondition", frobenius_size),
                                               ("precondition-project", projected_size)])
def test_preconditioned_rules_orthogonalise_each_block(variant, size):
    """Step 1: P = m̂ / (√v̂ + ε) = g / (|g| + ε); each block is NS(P_b) at P_b's Frobenius norm (default) or
    P_b projected on NS(P_b) (precondition-project), which is never larger."""
    grad, eps = gradient(), 1e-8
    adam = grad / (grad.abs() + eps)
    expected = split_reference(adam, lambda block: size(newton_schulz(block, steps=5), block))
    update = first_step(variant, BLOCKS)
    torch.testing.assert_close(update, expected, rtol=1e-10, atol=1e-12)
    joint = first_step(variant, None)
    assert (joint - expected).abs().max() > 1e-2  # the split changes the update: the test can fail
    for block, adam_block in zip(update.split(list(BLOCKS)), adam.split(list(BLOCKS)), strict=True):
        assert torch.linalg.matrix_norm(block) <= torch.linalg.matrix_norm(adam_block) * (1 + 1e-12)


@pytest.mark.parametrize("variant", ["rms-only", "precondition-shape"])
def test_shape_based_rms_matching_is_per_block(variant):
    """Muon's factor update_rms · √max(m, n) uses each block's own shape (3×6 → √6, 7×6 → √7, 5×6 → √6)."""
    grad, update_rms = gradient(), 0.3
    direction_input = grad if variant == "rms-only" else grad / (grad.abs() + 1e-8)

    def scaled(block: torch.Tensor) -> torch.Tensor:
        return newton_schulz(block, steps=5) * update_rms * math.sqrt(max(block.shape))

    expected = split_reference(direction_input, scaled)
    torch.testing.assert_close(first_step(variant, BLOCKS, update_rms=update_rms), expected,
                               rtol=1e-10, atol=1e-12)


def test_orth_moment_gives_every_block_the_target_rms():
    update = first_step("orth-moment", BLOCKS, update_rms=0.2)
    for block in update.split(list(BLOCKS)):
        assert abs(block.square().mean().sqrt().item() - 0.2) < 1e-10


def test_paper_variant_splits_its_orth_too():
    """Paper rule, step 1: (orth(g_b) per block) / (|g| + ε), orth = NS rescaled to the block's norm."""
    grad = gradient()

    expected = split_reference(grad, lambda block: frobenius_size(newton_schulz(block, steps=5), block))
    expected = expected / (grad.abs() + 1e-8)
    torch.testing.assert_close(first_step("paper", BLOCKS), expected, rtol=1e-10, atol=1e-12)


def test_three_dimensional_fused_weight_is_flattened_then_split():
    """A depthwise conv's (channels, 1, k) weight: rows are channels, each block a (rows, k) matrix."""
    gen = torch.Generator().manual_seed(2)
    weight = nn.Parameter(torch.randn(12, 1, 4, generator=gen, dtype=torch.float64))
    grad = torch.randn(12, 1, 4, generator=gen, dtype=torch.float64)
    before = weight.detach().clone()
    optimizer = M3([{"params": [weight], "row_blocks": (4, 4, 4)}], lr=1.0, variant="rms-only")
    weight.grad = grad
    optimizer.step()
    expected = torch.cat([newton_schulz(b, steps=5) * 2.0 for b in grad.reshape(12, 4).split(4)])  # √max(4, 4)
    torch.testing.assert_close((before - weight.detach()).reshape(12, 4), expected, rtol=1e-10, atol=1e-12)


def group_of(groups: list[dict], param: torch.Tensor) -> dict:
    (group,) = [g for g in groups if any(p is param for p in g["params"])]
    return group


def test_layers_declare_their_fused_weights_and_routing_reads_them():
    attention, swiglu = Attention(dim=16, heads=2), SwiGLU(16, mlp_ratio=2.0)
    memory, continuum = NeuralMemory(dim=16, heads=2, chunk_size=4), ContinuumLevel(16, period=4)
    model = nn.ModuleDict({"attention": attention, "swiglu": swiglu, "memory": memory, "continuum": continuum})
    groups = m3_param_groups(model, weight_decay=0.1)
    assert group_of(groups, attention.to_qkv.weight)["row_blocks"] == (16, 16, 16)
    assert group_of(groups, swiglu.to_gate_and_value.weight)["row_blocks"] == (32, 32)
    inner = memory.heads * memory.dim_head
    assert group_of(groups, memory.to_qkv.weight)["row_blocks"] == (inner,) * 3
    assert group_of(groups, memory.conv.weight)["row_blocks"] == (inner,) * 3
    assert group_of(groups, memory.conv.bias).get("row_blocks") is None  # 1-D: AdamW, nothing to split
    assert group_of(groups, continuum.to_key_value.weight)["row_blocks"] == (16, 16)
    for plain in (attention.to_out.weight, swiglu.to_out.weight, memory.to_out.weight):
        group = group_of(groups, plain)
        assert group["row_blocks"] is None and group["weight_decay"] == 0.1
    listed = [id(p) for g in groups for p in g["params"]]
    assert sorted(listed) == sorted({id(p) for p in model.parameters()})
    optimizer = build_optimizer("m3", model, 1e-3, 0.1, (0.9, 0.95))
    layouts = {None, (16, 16, 16), (32, 32), (inner,) * 3, (16, 16)}
    assert {g["row_blocks"] for g in optimizer.param_groups} == layouts
    assert row_blocks(copy.deepcopy(attention).to_qkv) == (16, 16, 16)  # the declaration survives copies


def test_bad_layouts_name_the_argument():
    with pytest.raises(ValueError, match=r"row_blocks \(3, 3\) of param group 0 add up to 6 rows.*\(15, 6\)"):
        M3([{"params": [fused_weight()], "row_blocks": (3, 3)}])
    with pytest.raises(ValueError, match="row_blocks must be None or|row_blocks must be a non-empty"):
        M3([fused_weight()], row_blocks=(15, 0))
    with pytest.raises(ValueError, match=r"sizes \(8, 8\) add up to 16 rows.*\(24, 4\)"):
        declare_row_blocks(nn.Linear(4, 24), [8, 8])
    with pytest.raises(ValueError, match="sizes must be a non-empty sequence"):
        declare_row_blocks(nn.Linear(4, 24), [])
    with pytest.raises(ValueError, match=">=2-D weight"):
        declare_row_blocks(nn.LayerNorm(4), [2, 2])
