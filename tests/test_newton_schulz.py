"""Newton–Schulz, both iterations: against an SVD reference and the polar factor, the singular-value bands the
module docstring states (measured here on the polynomials written out), and degenerate inputs."""

import pytest
import torch

from ttmem.newton_schulz import SINGULAR_VALUE_BAND, newton_schulz, singular_value_map

LOW, HIGH = SINGULAR_VALUE_BAND




def svd_reference(x: torch.Tensor, steps: int, kind: str = "quintic") -> torch.Tensor:
    """U p^steps(Σ / ‖X‖_F) Vᵀ computed from an SVD in float64."""
    u, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    frob = torch.linalg.matrix_norm(x.double(), keepdim=True)[..., 0]
    mapped = singular_value_map(s / frob, steps, kind)
    return u @ torch.diag_embed(mapped) @ vh


def polynomial(kind: str, sigma: torch.Tensor, steps: int) -> torch.Tensor:
    """The scalar iteration written from its definition, independent of the module."""
    for _ in range(steps):
        if kind == "cubic":
            sigma = 1.5 * sigma - 0.5 * sigma**3
        else:
            sigma = 3.4445 * sigma - 4.7750 * sigma**3 + 2.0315 * sigma**5
    return sigma


GRID = torch.logspace(-6, 0, 2_000_001, dtype=torch.float64)  # sigma / ||X||_F


@pytest.mark.parametrize("kind", ["cubic", "quintic"])
def test_singular_value_map_is_the_written_polynomial(kind):
    torch.testing.assert_close(singular_value_map(GRID, 5, kind), polynomial(kind, GRID, 5), rtol=0, atol=0)


@pytest.mark.parametrize("threshold,steps,low,high", [(3e-3, 5, 0.682, 1.203), (1e-2, 5, 0.682, 1.135),
                                                      (1e-4, 8, 0.682, 1.203)])
def test_quintic_band_is_what_the_steps_reach(threshold, steps, low, high):
    """The documented band, and that it is tight (within 1e-3 of what the steps actually reach)."""
    reached = polynomial("quintic", GRID[GRID >= threshold], steps)
    assert low - 1e-3 <= reached.min() <= low + 1e-3 and high - 1e-3 <= reached.max() <= high + 1e-3
    assert LOW <= reached.min() and reached.max() <= HIGH
    assert polynomial("quintic", torch.tensor([1e-3], dtype=torch.float64), 5) < LOW  # below 3e-3 it is not reached


def test_cubic_approaches_one_from_below_slowly():
    reached = polynomial("cubic", GRID, 5)
    assert reached.max() <= 1.0
    assert reached[GRID >= 0.3].min() >= 0.995
    at = polynomial("cubic", torch.tensor([0.1, 0.03], dtype=torch.float64), 5)
    torch.testing.assert_close(at, torch.tensor([0.66, 0.22], dtype=torch.float64), rtol=0, atol=0.01)


@pytest.mark.parametrize("kind", ["cubic", "quintic"])
@pytest.mark.parametrize("shape", [(9, 13), (13, 9), (2, 3, 6, 4)])
def test_both_kinds_match_the_svd_reference_in_float64(kind, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    torch.testing.assert_close(newton_schulz(x, 5, kind=kind), svd_reference(x, 5, kind), rtol=0, atol=1e-10)


def test_cubic_converges_to_the_polar_factor():
    """Enough cubic steps give U Vᵀ exactly (singular values of X / ||X||_F in (0, 1])."""
    sigma = torch.linspace(1.0, 0.05, 8, dtype=torch.float64)
    x = with_singular_values(sigma, 8, 11, seed=11)
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    torch.testing.assert_close(newton_schulz(x, 40, kind="cubic"), u @ vh, rtol=0, atol=1e-12)


def with_singular_values(sigma: torch.Tensor, m: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    k = sigma.numel()
    return u[:, :k] @ torch.diag(sigma.double()) @ v[:, :k].T


@pytest.mark.parametrize("shape", [(16, 24), (24, 16), (3, 8, 5), (2, 2, 7, 7)])
def test_matches_svd_reference_float64(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = newton_schulz(x)
    assert out.shape == x.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, svd_reference(x, 5), rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (4, 32, 48)])
def test_random_inputs_land_in_band(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(newton_schulz(x).double())
    assert s.min() >= LOW and s.max() <= HIGH


def test_low_rank_keeps_rank_and_band():
    gen = torch.Generator().manual_seed(2)
    left = torch.randn(64, 4, generator=gen, dtype=torch.float64)
    x = left @ torch.randn(4, 48, generator=gen, dtype=torch.float64)
    s = torch.linalg.svdvals(newton_schulz(x))
    assert s[:4].min() >= LOW and s[:4].max() <= HIGH
    assert s[4:].max() < 1e-9


def test_ill_conditioned_band_with_eight_steps():
    sigma = torch.logspace(0, -3, 40)  # condition number 1e3
    x = with_singular_values(sigma, 40, 56, seed=3)
    assert (sigma / sigma.norm()).min() >= 1e-4  # the documented condition for 8 steps
    s = torch.linalg.svdvals(newton_schulz(x, steps=8))
    assert s.min() >= LOW and s.max() <= HIGH


def test_ill_conditioned_five_steps_band_above_threshold():
    sigma = torch.logspace(0, -4, 40)
    x = with_singular_values(sigma, 40, 40, seed=4)
    s = torch.linalg.svdvals(newton_schulz(x, steps=5))
    relative = torch.sort(sigma / sigma.norm(), descending=True).values
    above = relative >= 3e-3
    assert above.sum() > 10
    assert s[above].min() >= LOW and s[above].max() <= HIGH
    assert torch.isfinite(s).all()


def test_zero_input_gives_zero_without_nan():
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        out = newton_schulz(torch.zeros(2, 5, 7, dtype=dtype))
        assert out.dtype == dtype and torch.equal(out, torch.zeros_like(out))


def test_tiny_input_is_orthogonalised_like_its_rescaled_copy():
    x = torch.randn(12, 20, generator=torch.Generator().manual_seed(5))
    for scale in (1e-20, 1e-30, 1e-37):
        out = newton_schulz(x * scale)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, newton_schulz(x), rtol=1e-4, atol=1e-5)
    subnormal = newton_schulz(torch.full((3, 3), 1e-44))
    assert torch.isfinite(subnormal).all()


def test_mixed_zero_and_nonzero_batch():
    x = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(6))
    x[1] = 0
    out = newton_schulz(x)
    assert torch.equal(out[1], torch.zeros(6, 6))
    torch.testing.assert_close(out[0], newton_schulz(x[0]))


def test_half_precision_computed_in_float32():
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(7))
    out = newton_schulz(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), newton_schulz(x.bfloat16().float()), rtol=2e-2, atol=2e-2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="x must have at least 2 dims"):
        newton_schulz(torch.ones(5))
    with pytest.raises(ValueError, match="steps"):
        newton_schulz(torch.ones(2, 2), steps=0)
    with pytest.raises(TypeError, match="floating-point"):
        newton_schulz(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        newton_schulz([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="kind must be one of"):
        newton_schulz(torch.ones(2, 2), kind="quartic")
