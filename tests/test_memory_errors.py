"""Bad input: clear errors naming the argument."""

from __future__ import annotations

import pytest
import torch
from memory_cases import make_inputs

from ttmem.memory import memorize


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
        memorize(**x)


def test_state_of_another_shape_or_rule():
    x = base()
    _, state = memorize(**x)
    with pytest.raises(ValueError, match="state: rule 'moneta'|state.weights"):
        memorize(**make_inputs("moneta", time=5, dim=4), rule="moneta", state=state)
    y = make_inputs("titans", time=5, dim=4, batch=2)
    with pytest.raises(ValueError, match=r"state.weights\[0\]: expected shape"):
        memorize(**y, state=state)


def test_momentum_for_rule_without_momentum():
    x = make_inputs("delta", time=3)
    x["momentum"] = torch.rand_like(x["lr"])
    with pytest.raises(ValueError, match="momentum was given but rule 'delta' has no momentum"):
        memorize(**x, rule="delta")
