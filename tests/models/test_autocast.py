"""bf16 autocast on CPU: a training step (loss and gradients) of every architecture runs and stays close to fp32.

Tolerance (README, "Speed"): loss within 5e-3 of fp32 and the whole gradient's cosine with fp32's at least 0.8.
The memory engine runs its inner loop in fp32 under autocast (``run_memory``), so what remains is bf16 rounding
in the projections and MLPs, amplified by each model's own sensitivity (the residual + LayerNorm memories of
lmm / mal / hope the most: measured cosines 0.91 to 0.98 at this size; attention and linear memories >= 0.998)."""

from __future__ import annotations

import pytest
import torch

from ttmem.memory import memorize
from ttmem.models import ARCHITECTURES, build_model

TINY = dict(dim=32, depth=2, heads=2, window=8, segment_len=8, chunk_size=4, cms_periods=(4, 8))


def _loss_and_grads(model, ids, autocast: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(ids[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    return loss, torch.cat([g.float().flatten() for g in grads])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_training_step_under_bf16_autocast_stays_close_to_fp32(arch):
    torch.manual_seed(0)
    model = build_model(f"{arch}-tiny", **TINY)
    ids = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(1))
    loss32, grad32 = _loss_and_grads(model, ids, autocast=False)
    loss16, grad16 = _loss_and_grads(model, ids, autocast=True)
    assert torch.isfinite(loss16) and torch.isfinite(grad16).all()
    assert abs(float(loss16 - loss32)) <= 5e-3
    assert float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)) >= 0.8


def test_memory_engine_runs_in_fp32_under_autocast():
    """Under autocast the inner loop sees float32 inputs: its result equals the float32 run exactly."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 9, 2, 8, generator=gen) for _ in range(3))
    k = torch.nn.functional.normalize(k, dim=-1)
    lr = 0.1 * torch.rand(1, 9, 2, generator=gen)
    for rule in ("titans", "delta"):
        plain, _ = memorize(q, k, v, lr, rule=rule, chunk_size=4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, state = memorize(q, k, v, lr, rule=rule, chunk_size=4)
        assert mixed.dtype == torch.float32 and state.weights[0].dtype == torch.float32
        torch.testing.assert_close(mixed, plain, rtol=0, atol=0)
