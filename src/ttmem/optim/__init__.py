"""Outer-loop optimisers from Nested Learning, plus EWC for continual learning.

All optimisers are drop-in ``torch.optim.Optimizer`` classes (parameter groups, ``state_dict``,
closures). ``OPTIMIZERS`` names them for configs and the command line (``optimizer=m3``; a class with
``VARIANTS`` also answers ``m3-paper`` and the like, see ``ttmem.train.optim``). ``newton_schulz`` is a
standalone batched orthogonalisation other packages can reuse.
"""

import torch

from ttmem.newton_schulz import newton_schulz
from ttmem.optim.deep_momentum import DeepMomentumGD
from ttmem.optim.ewc import EWC, estimate_fisher
from ttmem.optim.m3 import M3, m3_param_groups
from ttmem.optim.momentum import DeltaRuleMomentum, MomentumGD, PreconditionedMomentum
from ttmem.optim.nested import NestedDeepMomentumGD

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "m3": M3,
    "deepmomentumgd": DeepMomentumGD,
    "nesteddeepmomentumgd": NestedDeepMomentumGD,
    "momentumgd": MomentumGD,
    "preconditionedmomentum": PreconditionedMomentum,
    "deltarulemomentum": DeltaRuleMomentum,
}

__all__ = [
    "OPTIMIZERS",
    "M3",
    "m3_param_groups",
    "DeepMomentumGD",
    "NestedDeepMomentumGD",
    "DeltaRuleMomentum",
    "PreconditionedMomentum",
    "MomentumGD",
    "EWC",
    "estimate_fisher",
    "newton_schulz",
]
