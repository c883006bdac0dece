"""Each optimiser against an independent, naive re-implementation of its documented rule."""

import pytest
import torch
from torch import nn

from ttmem.newton_schulz import singular_value_map
from ttmem.optim import (
    M3,
    DeepMomentumGD,
    DeltaRuleMomentum,
    MomentumGD,
    PreconditionedMomentum,
)
from ttmem.optim.deep_momentum import MEMORY_KEYS


def gradient_stream(shapes, steps, seed=0):
    """A fixed sequence of gradients (lists of tensors, one per shape), float64."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(steps)]


def run_optimizer(optimizer_factory, initial, grads):
    params = [nn.Parameter(p.clone()) for p in initial]
    optimizer = optimizer_factory(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach() for p in params], optimizer


SHAPES = [(6, 5), (6,), (3, 2, 6)]


def initial_params(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=torch.float64) for s in SHAPES]


def classical_momentum(initial, grads, lr, beta):
    params = [p.clone() for p in initial]
    bufs = [torch.zeros_like(p) for p in params]
    for step_grads in grads:
        for p, buf, g in zip(params, bufs, step_grads, strict=True):
            buf.mul_(beta).add_(g)
            p.add_(buf, alpha=-lr)
    return params


def test_momentum_gd_matches_hand_loop_and_torch_sgd():
    grads = gradient_stream(SHAPES, 20)
    ours, _ = run_optimizer(lambda p: MomentumGD(p, lr=0.05, momentum=0.8), initial_params(), grads)
    for a, b in zip(ours, classical_momentum(initial_params(), grads, 0.05, 0.8), strict=True):
        assert torch.equal(a, b)
    sgd, _ = run_optimizer(lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8), initial_params(), grads)
    for a, b in zip(ours, sgd, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("memory", ["factorized", "dense"])
@pytest.mark.parametrize("hidden", [0, 8])
def test_deep_momentum_identity_memory_is_exactly_classical_momentum(memory, hidden):
    grads = gradient_stream(SHAPES, 25)
    ours, _ = run_optimizer(
        lambda p: DeepMomentumGD(p, lr=0.03, momentum=0.9, hidden=hidden, inner_lr=0.0, memory=memory),
        initial_params(),
        grads,
    )
    for a, b in zip(ours, classical_momentum(initial_params(), grads, 0.03, 0.9), strict=True):
        assert torch.equal(a, b)


def test_deep_momentum_inner_learning_matches_closed_form_linear_memory():
    lr, beta, inner_lr = 0.02, 0.9, 0.5
    grads = gradient_stream([(7,)], 12, seed=3)
    ours, optimizer = run_optimizer(
        lambda p: DeepMomentumGD(p, lr=lr, momentum=beta, hidden=0, inner_lr=inner_lr),
        [torch.zeros(7, dtype=torch.float64)],
        grads,
    )
    # Closed form: memory m_t = a g_t + b m_{t-1}; loss ½ mean((a g_{t-1} + b m_{t-2} - v)²) / mean(v²).
    a, b = 1.0, beta
    theta, m_prev, key = torch.zeros(7, dtype=torch.float64), torch.zeros(7, dtype=torch.float64), None
    for (g,) in grads:
        if key is not None:
            key_g, key_m = key
            value = g / (1 - beta)
            residual = a * key_g + b * key_m - value
            power = value.square().mean()
            grad_a, grad_b = (residual * key_g).mean() / power, (residual * key_m).mean() / power
            a, b = a - inner_lr * grad_a, b - inner_lr * grad_b
        key = (g, m_prev)
        m_prev = a * g + b * m_prev
        theta = theta - lr * m_prev
    torch.testing.assert_close(ours[0], theta, rtol=0, atol=1e-12)
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    torch.testing.assert_close(state["memory_lin_grad"].item(), float(a), rtol=0, atol=1e-12)
    torch.testing.assert_close(state["memory_lin_momentum"].item(), float(b), rtol=0, atol=1e-12)


def test_factorized_memory_size_does_not_grow_with_parameter():
    def memory_numel(shape, memory):
        param = nn.Parameter(torch.zeros(*shape))
        optimizer = DeepMomentumGD([param], hidden=8, memory=memory, max_dense_width=64)
        param.grad = torch.ones_like(param)
        optimizer.step()
        return sum(
            optimizer.state[param][f"memory_{k}"].numel()
            for k in MEMORY_KEYS
            if f"memory_{k}" in optimizer.state[param]
        )

    assert memory_numel((4, 4), "factorized") == memory_numel((300, 500), "factorized") == 2 + 3 * 8
    assert memory_numel((4, 8), "dense") < memory_numel((4, 32), "dense")
    assert memory_numel((4, 200), "dense") == memory_numel((4, 4), "factorized")  # wider than 64: fallback


def orth_reference(momentum, steps=5):
    matrix = momentum.reshape(momentum.shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    frob = torch.linalg.matrix_norm(matrix)
    direction = u @ torch.diag(singular_value_map(s / frob, steps)) @ vh
    return (direction * frob / torch.linalg.matrix_norm(direction)).reshape(momentum.shape)


def test_m3_matches_naive_reference():
    lr, (b1, b2, b3), alpha, f, eps = 0.01, (0.8, 0.95, 0.7), 0.4, 4, 1e-8
    grads = gradient_stream(SHAPES, 13, seed=5)
    ours, _ = run_optimizer(
        lambda p: M3(p, lr=lr, betas=(b1, b2, b3), alpha=alpha, frequency=f, eps=eps, variant="paper"),
        initial_params(),
        grads,
    )
    for index, shape in enumerate(SHAPES):
        theta = initial_params()[index]
        m1, v, m2, chunk, o2 = (torch.zeros(shape, dtype=torch.float64) for _ in range(5))
        slow_updates = 0
        for t, step_grads in enumerate(grads, start=1):
            g = step_grads[index]
            m1 = b1 * m1 + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            chunk = chunk + g
            m1_hat = m1 / (1 - b1**t)
            o1 = orth_reference(m1_hat) if len(shape) >= 2 else m1_hat
            theta = theta - lr * (o1 + alpha * o2) / ((v / (1 - b2**t)).sqrt() + eps)
            if t % f == 0:
                m2 = b3 * m2 + (1 - b3) * chunk / f
                slow_updates += 1
                m2_hat = m2 / (1 - b3**slow_updates)
                o2 = orth_reference(m2_hat) if len(shape) >= 2 else m2_hat
                chunk = torch.zeros_like(chunk)
        torch.testing.assert_close(ours[index], theta, rtol=0, atol=1e-10)


def ns_reference(momentum, steps=5):
    """Newton–Schulz output from the SVD: singular values through the scalar map, no rescaling."""
    matrix = momentum.reshape(momentum.shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return (u @ torch.diag(singular_value_map(s / torch.linalg.matrix_norm(matrix), steps)) @ vh).reshape(
        momentum.shape
    )


def project_reference(momentum, steps=5):
    """Adam's update projected on its Newton–Schulz direction: the multiple of D closest to it."""
    direction = ns_reference(momentum, steps)
    return direction * (direction * momentum).sum() / direction.square().sum()


@pytest.mark.parametrize("variant",
                         ["orth-moment", "precondition", "precondition-project", "precondition-shape", "rms-only"])
def test_stable_m3_matches_naive_reference(variant):
    """The stable rules of the M3 module docstring, written out step by step; 1-D parameters get AdamW."""
    lr, (b1, b2, b3), alpha, f, eps, rms, wd = 0.02, (0.8, 0.9, 0.7), 0.4, 4, 1e-8, 0.2, 0.1
    grads = gradient_stream(SHAPES, 13, seed=7)
    ours, _ = run_optimizer(
        lambda p: M3(p, lr=lr, betas=(b1, b2, b3), alpha=alpha, frequency=f, eps=eps, variant=variant,
                     update_rms=rms, weight_decay=wd),
        initial_params(),
        grads,
    )
    for index, shape in enumerate(SHAPES):
        theta = initial_params()[index]
        m1, v, m2, chunk, o2, v2, chunk_sq = (torch.zeros(shape, dtype=torch.float64) for _ in range(7))
        rows, cols = shape[0], int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1
        shape_scale = rms * max(rows, cols) ** 0.5
        slow_updates = 0
        for t, step_grads in enumerate(grads, start=1):
            g = step_grads[index]
            m1 = b1 * m1 + (1 - b1) * g
            m1_hat = m1 / (1 - b1**t)
            if len(shape) < 2:  # AdamW
                v = b2 * v + (1 - b2) * g * g
                update = m1_hat / ((v / (1 - b2**t)).sqrt() + eps)
            elif variant in ("precondition", "precondition-project"):  # NS direction, Adam's norm / projection
                size = orth_reference if variant == "precondition" else project_reference
                v = b2 * v + (1 - b2) * g * g
                denom = (v / (1 - b2**t)).sqrt() + eps
                update = size(m1_hat / denom) + alpha * o2
            elif variant == "precondition-shape":
                v = b2 * v + (1 - b2) * g * g
                denom = (v / (1 - b2**t)).sqrt() + eps
                update = shape_scale * (ns_reference(m1_hat / denom) + alpha * o2)
            else:
                o = ns_reference(m1_hat) + alpha * o2
                if variant == "rms-only":
                    update = shape_scale * o
                else:
                    v = b2 * v + (1 - b2) * o * o
                    u = o / ((v / (1 - b2**t)).sqrt() + eps)
                    update = u * rms / u.square().mean().sqrt()
            theta = theta * (1 - lr * wd) - lr * update
            chunk, chunk_sq = chunk + g, chunk_sq + g * g
            if len(shape) >= 2 and t % f == 0:
                m2 = b3 * m2 + (1 - b3) * chunk / f
                v2 = b3 * v2 + (1 - b3) * chunk_sq / f
                slow_updates += 1
                m2_hat = m2 / (1 - b3**slow_updates)
                if variant in ("precondition", "precondition-project"):  # slow momentum over its own moment
                    o2 = size(m2_hat / ((v2 / (1 - b3**slow_updates)).sqrt() + eps))
                elif variant == "precondition-shape":
                    o2 = ns_reference(m2_hat / denom)
                else:
                    o2 = ns_reference(m2_hat)
                chunk, chunk_sq = torch.zeros_like(chunk), torch.zeros_like(chunk)
        torch.testing.assert_close(ours[index], theta, rtol=0, atol=1e-10)


@pytest.mark.parametrize("preconditioner", ["identity", "rms"])
def test_delta_rule_momentum_matches_explicit_matrix_form(preconditioner):
    lr, beta, gamma, beta2, eps = 0.03, 0.85, 0.7, 0.9, 1e-8
    grads = gradient_stream(SHAPES, 10, seed=6)
    ours, _ = run_optimizer(
        lambda p: DeltaRuleMomentum(
            p, lr=lr, momentum=beta, delta_strength=gamma, beta2=beta2, eps=eps, preconditioner=preconditioner
        ),
        initial_params(),
        grads,
    )
    for index, shape in enumerate(SHAPES):
        theta = initial_params()[index].reshape(-1)
        n = theta.numel()
        m, v = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for t, step_grads in enumerate(grads, start=1):
            g = step_grads[index].reshape(-1)
            k = g / g.norm()
            transition = beta * torch.eye(n, dtype=torch.float64) - gamma * torch.outer(k, k)
            v = beta2 * v + (1 - beta2) * g * g
            pg = g if preconditioner == "identity" else g / ((v / (1 - beta2**t)).sqrt() + eps)
            m = transition @ m + pg
            theta = theta - lr * m
        torch.testing.assert_close(ours[index], theta.reshape(shape), rtol=0, atol=1e-12)


def test_delta_strength_zero_is_preconditioned_momentum():
    grads = gradient_stream(SHAPES, 10, seed=7)
    delta, _ = run_optimizer(
        lambda p: DeltaRuleMomentum(p, lr=0.01, delta_strength=0.0, preconditioner="rms"),
        initial_params(),
        grads,
    )
    plain, _ = run_optimizer(lambda p: PreconditionedMomentum(p, lr=0.01), initial_params(), grads)
    for a, b in zip(delta, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_preconditioned_momentum_matches_formula_and_identity_is_momentum_gd():
    lr, beta, beta2, eps = 0.01, 0.9, 0.99, 1e-8
    grads = gradient_stream(SHAPES, 10, seed=8)
    ours, _ = run_optimizer(
        lambda p: PreconditionedMomentum(p, lr, beta, beta2, eps), initial_params(), grads
    )
    for index, shape in enumerate(SHAPES):
        theta, m, v = initial_params()[index], torch.zeros(shape, dtype=torch.float64), 0.0
        for t, step_grads in enumerate(grads, start=1):
            g = step_grads[index]
            v = beta2 * v + (1 - beta2) * g * g
            m = beta * m + g / ((v / (1 - beta2**t)).sqrt() + eps)
            theta = theta - lr * m
        torch.testing.assert_close(ours[index], theta, rtol=0, atol=1e-12)
    identity, _ = run_optimizer(
        lambda p: PreconditionedMomentum(p, lr=0.05, momentum=0.8, preconditioner="identity"),
        initial_params(),
        grads,
    )
    momentum, _ = run_optimizer(lambda p: MomentumGD(p, lr=0.05, momentum=0.8), initial_params(), grads)
    for a, b in zip(identity, momentum, strict=True):
        assert torch.equal(a, b)
