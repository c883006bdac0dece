"""Properties every optimiser in ttmem.optim must have (drop-in torch.optim behaviour)."""

import copy
import io

import pytest
import torch
from torch import nn

from ttmem.optim import (
    M3,
    DeepMomentumGD,
    DeltaRuleMomentum,
    MomentumGD,
    NestedDeepMomentumGD,
    PreconditionedMomentum,
)

# name -> (factory(params, lr), lr that converges on the problems below)
OPTIMIZERS = {
    "M3": (lambda p, lr: M3(p, lr=lr, frequency=3), 1e-2),
    "M3-precondition": (lambda p, lr: M3(p, lr=lr, frequency=3, variant="precondition"), 1e-2),
    "M3-precondition-shape": (lambda p, lr: M3(p, lr=lr, frequency=3, variant="precondition-shape"), 6e-3),
    "M3-rms-only": (lambda p, lr: M3(p, lr=lr, frequency=3, variant="rms-only"), 6e-3),
    "M3-no-orthogonalize": (lambda p, lr: M3(p, lr=lr, frequency=3, orthogonalize=False), 3e-2),
    "M3-paper": (lambda p, lr: M3(p, lr=lr, frequency=3, variant="paper", betas=(0.9, 0.999, 0.9)), 3e-2),
    "M3-paper-no-orthogonalize": (
        lambda p, lr: M3(p, lr=lr, frequency=3, variant="paper", betas=(0.9, 0.999, 0.9), orthogonalize=False),
        3e-2,
    ),
    "DeepMomentumGD": (lambda p, lr: DeepMomentumGD(p, lr=lr, hidden=4, inner_lr=1e-2), 2e-2),
    "DeepMomentumGD-dense": (
        lambda p, lr: DeepMomentumGD(p, lr=lr, hidden=4, inner_lr=1e-2, memory="dense"), 2e-2
    ),
    "NestedDeepMomentumGD": (lambda p, lr: NestedDeepMomentumGD(p, lr=lr, hidden=4, inner_lr=1e-2), 2e-2),
    "DeltaRuleMomentum": (lambda p, lr: DeltaRuleMomentum(p, lr=lr), 2e-2),
    "PreconditionedMomentum": (lambda p, lr: PreconditionedMomentum(p, lr=lr), 3e-3),
    "MomentumGD": (lambda p, lr: MomentumGD(p, lr=lr), 2e-2),
}
NAMES = list(OPTIMIZERS)




class TinyNet(nn.Module):
    """2-D, 1-D and 3-D parameters, so every code path (orthogonalise, fallback, flatten) runs."""

    def __init__(self, seed: int = 0, dtype: torch.dtype = torch.float64):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(6, 5, generator=gen, dtype=dtype) * 0.4)
        self.b1 = nn.Parameter(torch.zeros(6, dtype=dtype))
        self.w3 = nn.Parameter(torch.randn(3, 2, 6, generator=gen, dtype=dtype) * 0.4)
        self.w2 = nn.Parameter(torch.randn(1, 6, generator=gen, dtype=dtype) * 0.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x @ self.w1.T + self.b1)
        u = torch.tanh(torch.einsum("bi,kji->bkj", h, self.w3)).reshape(x.shape[0], 6)
        return u @ self.w2.T


def regression_data(seed: int = 1, n: int = 64, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=dtype)
    y = torch.sin(x[:, :1] + 0.5 * x[:, 1:2]) * 0.8
    return x, y


def train(model, optimizer, x, y, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        optimizer.step()
    return (model(x) - y).square().mean().item()


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_mid_run_is_bitwise(name):
    factory, lr = OPTIMIZERS[name]
    x, y = regression_data()
    model = TinyNet()
    optimizer = factory(model.parameters(), lr)
    train(model, optimizer, x, y, 7)  # mid-chunk for M3 (frequency 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(model, optimizer, x, y, 6)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored = TinyNet(seed=123)
    restored.load_state_dict(saved["model"])
    restored_optimizer = factory(restored.parameters(), lr)
    restored_optimizer.load_state_dict(saved["optimizer"])
    train(restored, restored_optimizer, x, y, 6)
    for a, b in zip(model.parameters(), restored.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_scale_first_step_and_freeze_zero_lr(name):
    factory, lr = OPTIMIZERS[name]
    x, y = regression_data()
    models = [TinyNet(seed=0) for _ in range(3)]
    scales = (1.0, 2.0, 0.0)
    groups = [{"params": m.parameters(), "lr": s * lr} for m, s in zip(models, scales, strict=True)]
    optimizer = factory(groups, lr)
    starts = [copy.deepcopy(m) for m in models]
    optimizer.zero_grad()
    sum((m(x) - y).square().mean() for m in models).backward()
    optimizer.step()
    for p0, p_slow, p_fast, p_frozen in zip(*(m.parameters() for m in [starts[0], *models]), strict=True):
        torch.testing.assert_close(p_fast - p0, 2 * (p_slow - p0), rtol=1e-9, atol=1e-15)
        assert torch.equal(p_frozen, p0)
    pairs = zip(models[0].parameters(), starts[0].parameters(), strict=True)
    assert any(not torch.equal(p, p0) for p, p0 in pairs)


@pytest.mark.parametrize("name", NAMES)
def test_add_param_group_validates(name):
    factory, lr = OPTIMIZERS[name]
    optimizer = factory(TinyNet().parameters(), lr)
    with pytest.raises(ValueError, match="lr"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(3))], "lr": -1.0})


@pytest.mark.parametrize("name", NAMES)
def test_negative_lr_rejected(name):
    factory, _ = OPTIMIZERS[name]
    with pytest.raises(ValueError, match="lr must be"):
        factory(TinyNet().parameters(), -1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_convex_quadratic(name):
    factory, lr = OPTIMIZERS[name]
    gen = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    hessian = q @ torch.diag(torch.linspace(0.5, 5.0, 12, dtype=torch.float64)) @ q.T  # condition number 10
    target = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    weight = nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
    bias = nn.Parameter(torch.ones(4, dtype=torch.float64))

    def loss_fn():
        delta = (weight - target).reshape(-1)
        return 0.5 * delta @ hessian @ delta + 0.5 * (bias - 0.3).square().sum()

    optimizer = factory([weight, bias], lr)
    initial = loss_fn().item()
    for step in range(300):
        if step in (150, 225):  # step decay: also exercises changing lr between steps
            for group in optimizer.param_groups:
                group["lr"] *= 0.3
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
    assert loss_fn().item() < 1e-3 * initial


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_regression_mlp(name):
    factory, lr = OPTIMIZERS[name]
    x, y = regression_data(dtype=torch.float32)
    model = TinyNet(dtype=torch.float32)
    initial = (model(x) - y).square().mean().item()
    final = train(model, factory(model.parameters(), lr), x, y, 200)
    assert final < 0.1 * initial


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradient_changes_nothing(name):
    factory, lr = OPTIMIZERS[name]
    model = TinyNet()
    before = copy.deepcopy(model)
    optimizer = factory(model.parameters(), lr)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
    for p, p0 in zip(model.parameters(), before.parameters(), strict=True):
        assert torch.equal(p, p0)


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradient_with_weight_decay_only_decays(name):
    factory, lr = OPTIMIZERS[name]
    model = TinyNet()
    before = copy.deepcopy(model)
    optimizer = factory(model.parameters(), lr)
    for group in optimizer.param_groups:
        group["weight_decay"] = 0.5
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for p, p0 in zip(model.parameters(), before.parameters(), strict=True):
        torch.testing.assert_close(p, p0 * (1 - lr * 0.5), rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_parameters_without_grad_are_skipped(name):
    factory, lr = OPTIMIZERS[name]
    model = TinyNet()
    before = copy.deepcopy(model)
    optimizer = factory(model.parameters(), lr)
    model.w1.grad = torch.ones_like(model.w1)
    optimizer.step()
    assert not torch.equal(model.w1, before.w1)
    assert torch.equal(model.w2, before.w2) and len(optimizer.state[model.w2]) == 0


@pytest.mark.parametrize("name", NAMES)
def test_closure_is_evaluated_and_returned(name):
    factory, lr = OPTIMIZERS[name]
    x, y = regression_data()
    model = TinyNet()
    optimizer = factory(model.parameters(), lr)
    expected = (model(x) - y).square().mean().item()

    def closure():
        optimizer.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss

    returned = optimizer.step(closure)
    assert returned.item() == expected
    assert (model(x) - y).square().mean().item() != expected


BAD_ARGUMENTS = [
    (M3, {"betas": (0.9, 1.0, 0.9)}, r"betas\[1\]"),
    (M3, {"betas": (0.9, 0.99)}, "betas"),
    (M3, {"frequency": 0}, "frequency"),
    (M3, {"ns_steps": 0}, "ns_steps"),
    (M3, {"eps": 0.0}, "eps"),
    (M3, {"alpha": -0.1}, "alpha"),
    (M3, {"weight_decay": -1.0}, "weight_decay"),
    (M3, {"orthogonalize": "yes"}, "orthogonalize"),
    (MomentumGD, {"momentum": 1.0}, "momentum"),
    (MomentumGD, {"lr": float("nan")}, "lr"),
    (PreconditionedMomentum, {"preconditioner": "shampoo"}, "preconditioner"),
    (PreconditionedMomentum, {"beta2": -0.1}, "beta2"),
    (DeltaRuleMomentum, {"delta_strength": 1.5}, "delta_strength"),
    (DeepMomentumGD, {"hidden": -1}, "hidden"),
    (DeepMomentumGD, {"inner_lr": -1e-3}, "inner_lr"),
    (DeepMomentumGD, {"memory": "huge"}, "memory"),
    (DeepMomentumGD, {"max_dense_width": 0}, "max_dense_width"),
    (NestedDeepMomentumGD, {"meta_lr": -1.0}, "meta_lr"),
]


@pytest.mark.parametrize(("cls", "kwargs", "pattern"), BAD_ARGUMENTS)
def test_bad_hyperparameters_name_the_argument(cls, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(TinyNet().parameters(), **kwargs)


def test_sparse_gradients_rejected():
    embedding = nn.Embedding(10, 4, sparse=True)
    optimizer = MomentumGD(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        optimizer.step()
