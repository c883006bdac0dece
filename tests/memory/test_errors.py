"""Bad input: clear errors naming the argument."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.memory_cases import make_inputs
from ttmem.memory import get_rule, initial_state, memorize, value_checks


def base():
    return make_inputs("titans", time=5, dim=4)


def test_wrong_rank():
    x = base()
    x["q"] = x["q"][0]
    with pytest.raises(ValueError, match="q must have 4 dims"):
        memorize(**x)


def test_mismatched_shapes():
    x = base()
    x["k"] = x["k"][:, :4]
    with pytest.raises(ValueError, match="k must have shape"):
        memorize(**x)
    x = base()
    x["v"] = x["v"][:, :, :1]
    with pytest.raises(ValueError, match="v must have shape"):
        memorize(**x)


@pytest.mark.parametrize("gate", ["lr", "momentum", "forget"])
def test_gate_out_of_range_or_wrong_shape(gate):
    x = base()
    x[gate] = x[gate] + 1.5
    with pytest.raises(ValueError, match=f"{gate} must lie in \\[0, 1\\]"):
        memorize(**x, check_values=True)
    with value_checks():
        with pytest.raises(ValueError, match=f"{gate} must lie in \\[0, 1\\]"):
            memorize(**x)
    x = base()
    x[gate] = x[gate][..., :1]
    with pytest.raises(ValueError, match=f"{gate} must have shape"):
        memorize(**x)


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True])
def test_bad_chunk_size(chunk):
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        memorize(**base(), chunk_size=chunk)


def test_unknown_preset_and_impl():
    with pytest.raises(ValueError, match="unknown memory rule 'titanz'"):
        memorize(**base(), rule="titanz")
    with pytest.raises(ValueError, match="impl must be one of"):
        memorize(**base(), impl="fast")


@pytest.mark.parametrize("name", ["q", "k", "v", "lr"])
def test_non_finite_input(name):
    x = base()
    x[name] = x[name].clone()
    x[name].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=f"{name} contains NaN"):
        memorize(**x, check_values=True)


def test_state_of_another_shape_or_rule():
    x = base()
    _, state = memorize(**x)
    with pytest.raises(ValueError, match="state was made by rule 'titans' and cannot be continued by rule 'moneta'"):
        memorize(**make_inputs("moneta", time=5, dim=4), rule="moneta", state=state)
    y = make_inputs("titans", time=5, dim=4, heads=3)
    with pytest.raises(ValueError, match=r"state.weights\[0\]: expected shape"):
        memorize(**y, state=state)


def test_momentum_for_rule_without_momentum():
    x = make_inputs("delta", time=3)
    x["momentum"] = torch.rand_like(x["lr"])
    with pytest.raises(ValueError, match="momentum was given but rule 'delta' has no momentum"):
        memorize(**x, rule="delta")


@pytest.mark.parametrize("made_by,used_by", [("titans", "atlas"), ("atlas", "titans"), ("moneta", "memora"),
                                             ("memora", "moneta"), ("moneta", "yaad")])
def test_state_of_another_rule_is_refused(made_by, used_by):
    _, state = memorize(**make_inputs(made_by, time=5, dim=4), rule=made_by)
    with pytest.raises(ValueError, match=f"made by rule '{made_by}' and cannot be continued by rule '{used_by}'"):
        memorize(**make_inputs(used_by, time=5, dim=4), rule=used_by, state=state)


def test_state_structure_is_checked_for_a_changed_rule():
    """A rule changed with ``replace`` keeps its name; the state's structure still has to fit it."""
    _, state = memorize(**base())
    windowed = get_rule("titans").replace(window=3)
    with pytest.raises(ValueError, match="needs an Omega window"):
        memorize(**base(), rule=windowed, state=state)


def test_state_dtype_and_batch_mismatch():
    x = base()
    state = initial_state("titans", 1, 2, 4, 4, dtype=torch.float32)
    with pytest.raises(TypeError, match="state has dtype torch.float32 but the input has torch.float64"):
        memorize(**x, state=state)
    state = initial_state("titans", 2, 2, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="state has batch size 2, the input has 1"):
        memorize(**x, state=state)


def test_mixed_input_dtypes_are_refused():
    x = base()
    x["k"] = x["k"].float()
    with pytest.raises(TypeError, match="k has dtype torch.float32 but q has torch.float64"):
        memorize(**x)


def test_empty_batch_is_refused():
    x = make_inputs("titans", time=5, dim=4, batch=1)
    x = {name: t[:0] for name, t in x.items()}
    with pytest.raises(ValueError, match="batch size of at least 1"):
        memorize(**x)


def test_huge_finite_input_gives_a_clear_error_with_value_checks():
    x = base()
    x["v"] = x["v"] * 1e300
    with pytest.raises(ValueError, match="NaN or infinite values from finite inputs"):
        memorize(**x, check_values=True)


def test_impl_names_are_honest():
    with pytest.raises(ValueError, match="impl 'step' takes one token"):
        memorize(**base(), impl="step")
    with pytest.raises(ValueError, match="impl 'delta_rule' needs a linear"):
        memorize(**base(), impl="delta_rule")
    with pytest.raises(ValueError, match="impl 'step' does not serve rule 'atlas'"):
        memorize(**make_inputs("atlas", time=1, dim=4), rule="atlas", impl="step")


def test_default_checks_read_no_tensor_values(monkeypatch):
    """Without value checks, nothing in memorize converts a tensor to a Python value (a host sync on a GPU)."""
    x = base()
    _, state = memorize(**x)

    def forbidden(*args, **kwargs):
        raise AssertionError("a tensor value was read on the host")

    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    memorize(**x, state=state)
    memorize(**{n: t[:, :1] for n, t in x.items()}, state=state)
