"""The optimizer registry: every optimizer class `ttmem.optim` exports is named in `OPTIMIZERS`, and the
trainer builds each by that name (and variants by `BASE-VARIANT`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ttmem.optim
from ttmem.optim import OPTIMIZERS
from ttmem.train.optim import build_optimizer, optimizer_names


def exported_optimizer_classes() -> set[type]:
    return {
        obj for obj in vars(ttmem.optim).values() if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)
    }


def test_every_exported_optimizer_is_registered_under_its_lower_case_class_name() -> None:
    assert set(OPTIMIZERS.values()) == exported_optimizer_classes()
    assert all(name == cls.__name__.lower() for name, cls in OPTIMIZERS.items())
    assert optimizer_names() == ["adamw", "adam", "sgd", *OPTIMIZERS]


@pytest.mark.parametrize("name", [*OPTIMIZERS, *(f"m3-{v}" for v in ttmem.optim.M3.VARIANTS)])
def test_the_trainer_builds_every_registered_name(name: str) -> None:
    model = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 8))
    optimizer = build_optimizer(name, model, 1e-3, 0.1, (0.9, 0.95))
    base = name.partition("-")[0]
    assert type(optimizer) is OPTIMIZERS[base]
    if base != name:
        assert optimizer.defaults["variant"] == name.partition("-")[2]
    with pytest.raises(ValueError, match="unknown optimizer 'nope'; available: adamw, adam, sgd, m3"):
        build_optimizer("nope", model, 1e-3, 0.1, (0.9, 0.95))
